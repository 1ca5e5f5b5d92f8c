//! Command line to validated configuration.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use vhostkit_common::cli::LogArgs;

/// Smallest guest memory: the boot area below 1 MiB plus room for a kernel.
pub const MIN_MEMORY: u64 = 2 << 20;
/// Largest guest memory (the memfd is sparse; the boot page tables map 1 GiB).
pub const MAX_MEMORY: u64 = 64 << 30;
/// Most vCPUs.
pub const MAX_CPUS: u8 = 64;
/// Most `--disk` devices.
pub const MAX_DISKS: usize = 8;

/// vhostkit: a small KVM virtual machine monitor.
#[derive(Parser, Clone, Debug)]
#[command(name = "vhostkit", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Clone, Debug)]
pub enum Command {
    /// Boot a 64-bit ELF kernel (vmlinux-style entry) with a serial console on stdout.
    Run(RunArgs),
}

#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// ELF kernel to boot (entered in 64-bit mode at its ELF entry, RSI = boot_params).
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,

    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "console=ttyS0")]
    pub cmdline: String,

    /// Number of vCPUs, 1 to 64.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u8,

    /// Guest memory: a number with a suffix K, M, G or T (powers of 1024), a
    /// multiple of 4 KiB; a bare number means MiB, as in QEMU.
    #[arg(long, value_name = "SIZE", default_value = "64M")]
    pub memory: String,

    /// A virtio-blk disk served by a vhost-user backend listening on PATH (e.g.
    /// vhost-user-blk), as a virtio-mmio device; repeat for more disks (at most 8).
    #[arg(long, value_name = "socket=PATH")]
    pub disk: Vec<String>,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Configuration errors: one line each, naming the option.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--memory {0:?}: expected a number with an optional K, M, G or T suffix")]
    BadSize(String),
    #[error("--memory {0:?}: must be from 2M to 64G")]
    MemoryRange(String),
    #[error("--memory {0:?}: must be a multiple of 4 KiB")]
    MemoryAlign(String),
    #[error("--cpus {0}: must be 1 to {MAX_CPUS}")]
    Cpus(u8),
    #[error("--kernel {0}: {1}")]
    Kernel(PathBuf, String),
    #[error("--disk {0:?}: expected socket=PATH")]
    Disk(String),
    #[error("--disk: at most {MAX_DISKS} disks")]
    TooManyDisks,
    #[error("--disk needs --memory of at most 3328M (the device windows start at 0xd0000000)")]
    DiskMemory,
}

/// The validated configuration of `vhostkit run`.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub kernel: PathBuf,
    pub cmdline: String,
    pub cpus: u8,
    pub memory: u64,
    /// vhost-user sockets of the virtio-blk disks, in device order.
    pub disks: Vec<PathBuf>,
    pub log_level: String,
}

/// Parses a `--disk` value: `socket=PATH`.
fn parse_disk(s: &str) -> Result<PathBuf, ConfigError> {
    match s.split_once('=') {
        Some(("socket", path)) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => Err(ConfigError::Disk(s.to_string())),
    }
}

/// Parses "64M", "1G", "512K", "4096B", "64" (MiB) into bytes.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize(s.to_string());
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" => 20,
        "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

impl TryFrom<RunArgs> for RunConfig {
    type Error = ConfigError;

    fn try_from(args: RunArgs) -> Result<Self, ConfigError> {
        let memory = parse_size(&args.memory)?;
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&memory) {
            return Err(ConfigError::MemoryRange(args.memory));
        }
        if memory % 4096 != 0 {
            return Err(ConfigError::MemoryAlign(args.memory));
        }
        if args.cpus == 0 || args.cpus > MAX_CPUS {
            return Err(ConfigError::Cpus(args.cpus));
        }
        match std::fs::metadata(&args.kernel) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(ConfigError::Kernel(
                    args.kernel,
                    "not a regular file".into(),
                ))
            }
            Err(e) => return Err(ConfigError::Kernel(args.kernel, e.to_string())),
        }
        if args.disk.len() > MAX_DISKS {
            return Err(ConfigError::TooManyDisks);
        }
        // Guest RAM is one range from 0: it must end below the MMIO windows.
        if !args.disk.is_empty() && memory > crate::devices::VIRTIO_MMIO_BASE {
            return Err(ConfigError::DiskMemory);
        }
        let disks = args
            .disk
            .iter()
            .map(|d| parse_disk(d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RunConfig {
            kernel: args.kernel,
            cmdline: args.cmdline,
            cpus: args.cpus,
            memory,
            disks,
            log_level: args.log.log_level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunConfig, String> {
        let mut full = vec!["vhostkit", "run"];
        full.extend_from_slice(args);
        let cli = Cli::try_parse_from(full).map_err(|e| e.to_string())?;
        let Command::Run(run) = cli.command;
        RunConfig::try_from(run).map_err(|e| e.to_string())
    }

    /// A kernel path that exists: this test binary itself.
    fn exe() -> String {
        std::env::current_exe().unwrap().display().to_string()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("128"), Ok(128 << 20));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        for bad in [
            "",
            "M",
            "12Q",
            "-1M",
            "1.5G",
            "99999999999999999999G",
            "18446744073709551615T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn defaults() {
        let k = exe();
        let c = parse(&["--kernel", &k]).unwrap();
        assert_eq!(c.cpus, 1);
        assert_eq!(c.memory, 64 << 20);
        assert_eq!(c.cmdline, "console=ttyS0");
    }

    #[test]
    fn bad_values_are_refused() {
        let k = exe();
        let with = |extra: &[&str]| {
            let mut v = vec!["--kernel", k.as_str()];
            v.extend_from_slice(extra);
            parse(&v)
        };
        assert!(with(&["--cpus", "0"]).unwrap_err().contains("--cpus 0"));
        assert!(with(&["--cpus", "65"]).is_err());
        assert!(with(&["--cpus", "-1"]).is_err());
        assert!(with(&["--memory", "lots"])
            .unwrap_err()
            .contains("--memory"));
        assert!(with(&["--memory", "1M"]).unwrap_err().contains("2M to 64G"));
        assert!(with(&["--memory", "65G"]).is_err());
        assert!(with(&["--memory", "4097K"]).unwrap_err().contains("4 KiB"));
        let c = with(&["--memory", "1G", "--cpus", "4", "--cmdline", "a=b c"]).unwrap();
        assert_eq!(
            (c.memory, c.cpus, c.cmdline.as_str()),
            (1 << 30, 4, "a=b c")
        );
    }

    #[test]
    fn disks() {
        let k = exe();
        let c = parse(&["--kernel", &k]).unwrap();
        assert!(c.disks.is_empty());
        let c = parse(&[
            "--kernel",
            &k,
            "--disk",
            "socket=/a.sock",
            "--disk",
            "socket=b",
        ])
        .unwrap();
        assert_eq!(c.disks, [PathBuf::from("/a.sock"), PathBuf::from("b")]);
        for bad in ["/a.sock", "socket=", "path=/a", "sock=/a"] {
            let e = parse(&["--kernel", &k, "--disk", bad]).unwrap_err();
            assert!(e.contains("socket=PATH"), "{bad}: {e}");
        }
        let mut many = vec!["--kernel", k.as_str()];
        for _ in 0..=MAX_DISKS {
            many.extend_from_slice(&["--disk", "socket=/s"]);
        }
        assert!(parse(&many).unwrap_err().contains("at most"));
        let e = parse(&["--kernel", &k, "--disk", "socket=/s", "--memory", "4G"]).unwrap_err();
        assert!(e.contains("3328M"), "{e}");
        assert!(parse(&["--kernel", &k, "--disk", "socket=/s", "--memory", "3328M"]).is_ok());
    }

    #[test]
    fn kernel_must_exist() {
        let e = parse(&["--kernel", "/nonexistent/vmlinux"]).unwrap_err();
        assert!(e.starts_with("--kernel /nonexistent/vmlinux: "), "{e}");
        let e = parse(&["--kernel", "/"]).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(parse(&[]).is_err());
    }
}
