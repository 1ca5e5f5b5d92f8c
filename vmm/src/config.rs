//! Command line (and `--config` TOML file) to validated configuration.
//!
//! Devices are given QEMU-style as comma-separated `key=value` lists (`--disk
//! path=disk.img,readonly=on`) or as `[[disk]]`, `[[net]]` and `[[fs]]` tables of a
//! TOML file with the same keys. Both go through the same spec structs and the same
//! validation, each kind's own ([`crate::virtio::devices`]: this file only lists the
//! kinds), so a key means the same thing in either place.
//!
//! The TOML schema (every key optional; unknown keys are refused; relative paths
//! resolve against the folder of the TOML file; options given on the command line
//! override the scalars and append devices):
//!
//! ```toml
//! kernel = "build/guest/vmlinuz"
//! initrd = "build/guest/initramfs.cpio"
//! cmdline = "console=ttyS0"
//! cpus = 2
//! memory = "1G"
//! [[disk]]
//! socket = "/run/blk.sock"   # or path = "disk.img", readonly = true, direct = true
//! num-queues = 2
//! [[net]]
//! tap = "vk0"                # or socket = "/run/net.sock"
//! mac = "52:54:00:12:34:56"
//! num-queue-pairs = 2
//! host-ip = "192.168.100.1/24"
//! [[fs]]
//! dir = "/srv/share"         # or socket = "/run/fs.sock"
//! tag = "share"
//! num-queues = 1
//! ```

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use serde::Deserialize;
use vhostkit_common::cli::LogArgs;
pub use vhostkit_common::seccomp::SeccompAction;

use crate::virtio::devices::blk::{Blk, DiskSpec};
use crate::virtio::devices::fs::{Fs, FsSpec};
use crate::virtio::devices::net::{Net, NetSpec};
pub use crate::virtio::devices::{
    blk::MAX_BLK_QUEUES,
    fs::{FS_QUEUE_SIZE, FS_TAG_BYTES, MAX_FS_REQUEST_QUEUES},
    net::{parse_mac, MAX_NET_QUEUE_PAIRS},
    DeviceBackend, DeviceConfig, DeviceKind, DEFAULT_QUEUE_SIZE, MAX_QUEUE_SIZE,
};
use crate::virtio::devices::{parse_spec, VirtioKind};

/// Smallest guest memory: the boot area below 1 MiB plus room for a kernel.
pub const MIN_MEMORY: u64 = 2 << 20;
/// Largest guest memory (the memfd is sparse).
pub const MAX_MEMORY: u64 = 64 << 30;
/// Most vCPUs.
pub const MAX_CPUS: u8 = 64;
/// Most devices of all kinds together: the VMM has this many virtio-mmio slots.
pub const MAX_DEVICES: usize = 8;
/// Default kernel command line.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";
/// Default guest memory.
pub const DEFAULT_MEMORY: &str = "64M";

/// vhostkit: a small KVM virtual machine monitor.
#[derive(Parser, Clone, Debug)]
#[command(name = "vhostkit", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Clone, Debug)]
pub enum Command {
    /// Boot a Linux kernel (bzImage or ELF vmlinux) with a serial console on stdout,
    /// and virtio disks, network devices and shared folders over vhost-user
    /// (virtio-mmio devices described in ACPI).
    Run(RunArgs),
}

#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Kernel to boot: a bzImage (64-bit boot protocol, entered at its 64-bit entry)
    /// or an ELF vmlinux (entered at its ELF entry); both in long mode with RSI =
    /// boot_params. Required here or as `kernel` in the --config file.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initial ramdisk (initramfs) loaded for the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line [default: console=ttyS0].
    #[arg(long, value_name = "STR")]
    pub cmdline: Option<String>,

    /// Number of vCPUs, 1 to 64 [default: 1].
    #[arg(long, value_name = "N")]
    pub cpus: Option<u8>,

    /// Guest memory, 2M to 64G: a number with a suffix K, M, G or T (powers of
    /// 1024), a multiple of 4 KiB; a bare number means MiB, as in QEMU [default: 64M].
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,

    /// A virtio-blk disk; repeat for more. Either a vhost-user backend already
    /// listening: `socket=PATH[,num-queues=N][,queue-size=N]`, or an image file served
    /// by our vhost-user-blk, started by vhostkit:
    /// `path=IMG[,readonly=on|off][,num-queues=N][,queue-size=N][,direct=on|off]`
    /// (direct: O_DIRECT). num-queues: 1 to 64. queue-size: the largest queue the
    /// guest may set up, a power of two up to 32768 [default: 256]; with socket= it
    /// must not exceed the backend's own limit (vhost-user cannot ask it), with
    /// path= vhostkit gives it to the daemon.
    #[arg(long, value_name = "SPEC")]
    pub disk: Vec<String>,

    /// A virtio-net device; repeat for more. Either a vhost-user backend already
    /// listening: `socket=PATH[,mac=52:54:00:12:34:56][,num-queue-pairs=N][,queue-size=N]`,
    /// or a tap device served by our vhost-user-net, started by vhostkit:
    /// `tap=NAME[,host-ip=ADDR/PREFIX][,mac=MAC][,num-queue-pairs=N][,queue-size=N]`
    /// (host-ip: the address given to the tap on the host). mac: unicast, six hex
    /// bytes with colons; num-queue-pairs: 1 to 32; queue-size as for --disk.
    #[arg(long, value_name = "SPEC")]
    pub net: Vec<String>,

    /// A virtio-fs shared folder; repeat for more. Either a vhost-user backend
    /// already listening: `socket=PATH,tag=TAG[,num-queues=N][,queue-size=N]`, or a
    /// host folder served by our vhost-user-fs, started by vhostkit:
    /// `dir=DIR,tag=TAG[,num-queues=N][,queue-size=N]`. tag: the name the guest
    /// mounts (mount -t virtiofs TAG /mnt), 1 to 36 bytes; num-queues: request
    /// queues, 1 to 63 (plus the hiprio queue); queue-size: a power of two up to
    /// 1024 with dir= (our daemon's limit), up to 32768 with socket= [default: 1024].
    /// At most 8 devices (disks, nets and folders together).
    #[arg(long, value_name = "SPEC")]
    pub fs: Vec<String>,

    /// A TOML file describing the VM; options given on the command line override its
    /// values and add devices after its own. Relative paths in it resolve against
    /// its folder; unknown keys are refused. Every key is optional:
    ///   kernel = "vmlinuz"
    ///   initrd = "initramfs.cpio"
    ///   cmdline = "console=ttyS0"
    ///   cpus = 2
    ///   memory = "1G"
    ///   [[disk]]   # socket = "PATH" or path = "IMG", readonly = true, direct = true,
    ///              # num-queues = N, queue-size = N
    ///   [[net]]    # socket = "PATH" or tap = "NAME", host-ip = "ADDR/PREFIX",
    ///              # mac = "52:54:00:12:34:56", num-queue-pairs = N, queue-size = N
    ///   [[fs]]     # socket = "PATH" or dir = "DIR", tag = "TAG", num-queues = N,
    ///              # queue-size = N
    #[arg(long, value_name = "FILE", verbatim_doc_comment)]
    pub config: Option<PathBuf>,

    /// What a system call outside the VMM's allow-list gets once the VM is set up
    /// (the vCPU threads, the console, the watch of the backends run under it):
    /// kill (the process), log (allowed, logged by the kernel's audit), trap
    /// (SIGSYS) or none (no filter).
    #[arg(long, value_enum, value_name = "ACTION", default_value_t = SeccompAction::Kill)]
    pub seccomp: SeccompAction,

    #[command(flatten)]
    pub log: LogArgs,
}

/// Configuration errors: one line each, naming the option (or file) and the value.
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
    #[error("no kernel: give --kernel or kernel in the --config file")]
    NoKernel,
    #[error("--kernel {0}: {1}")]
    Kernel(PathBuf, String),
    #[error("--initrd {0}: {1}")]
    Initrd(PathBuf, String),
    /// A device spec: where it came from (`--disk "path=x"` or `vm.toml [[disk]] 1`)
    /// and what is wrong with it.
    #[error("{0}: {1}")]
    Device(String, String),
    #[error("at most {MAX_DEVICES} devices (--disk, --net and --fs together), got {0}")]
    TooManyDevices(usize),
    #[error("--config {0}: {1}")]
    File(PathBuf, String),
}

type Result<T> = std::result::Result<T, ConfigError>;

/// The validated configuration of `vhostkit run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: u8,
    pub memory: u64,
    /// Every virtio device, one virtio-mmio slot each: disks, then network devices,
    /// then shared folders, each kind in the order given (the --config file's first).
    pub devices: Vec<DeviceConfig>,
    pub seccomp: SeccompAction,
    pub log_level: String,
}

/// Parses "64M", "1G", "512K", "4096B", "64" (MiB) into bytes.
pub fn parse_size(s: &str) -> Result<u64> {
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

/// The `--config` file.
#[derive(Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
    cpus: Option<u8>,
    memory: Option<String>,
    #[serde(default)]
    disk: Vec<DiskSpec>,
    #[serde(default)]
    net: Vec<NetSpec>,
    #[serde(default)]
    fs: Vec<FsSpec>,
}

/// Makes a relative path relative to `base` (the `--config` file's folder).
fn resolve(path: &mut Option<PathBuf>, base: &Path) {
    crate::virtio::devices::resolve(path, base);
}

/// Reads and parses a `--config` file; relative paths in it made relative to its
/// folder.
fn load_file(path: &Path) -> Result<FileConfig> {
    let file_err = |msg: String| ConfigError::File(path.to_path_buf(), msg);
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    let mut file: FileConfig = toml::from_str(&text).map_err(|e| {
        let msg = e.message().trim().replace('\n', " ");
        match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                file_err(format!("line {line}: {msg}"))
            }
            None => file_err(msg),
        }
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    resolve(&mut file.kernel, base);
    resolve(&mut file.initrd, base);
    Ok(file)
}

/// Checks that `path` is a regular file; the reason if not.
fn regular_file(path: &Path) -> std::result::Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err("not a regular file".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The devices of one kind, not validated yet: the `--config` file's tables (and
/// the file) and the command line's specs.
struct Pending<K: VirtioKind> {
    file: Option<(PathBuf, Vec<K::Spec>)>,
    cli: Vec<String>,
}

/// [`Pending`] of any kind: what [`RunConfig::try_from`] lists, one line a kind.
trait PendingDevices {
    fn count(&self) -> usize;
    /// Validates the file's tables (relative paths resolved against its folder), then
    /// the command line's specs.
    fn validate(self: Box<Self>) -> Result<Vec<DeviceConfig>>;
}

fn pending<K: VirtioKind + 'static>(
    file: Option<&Path>,
    tables: Vec<K::Spec>,
    cli: &[String],
) -> Box<dyn PendingDevices> {
    Box::new(Pending::<K> {
        file: file.map(|f| (f.to_path_buf(), tables)),
        cli: cli.to_vec(),
    })
}

impl<K: VirtioKind> PendingDevices for Pending<K> {
    fn count(&self) -> usize {
        self.file.as_ref().map_or(0, |(_, t)| t.len()) + self.cli.len()
    }

    fn validate(self: Box<Self>) -> Result<Vec<DeviceConfig>> {
        let mut out = Vec::new();
        if let Some((path, specs)) = self.file {
            let table = K::OPTION.trim_start_matches('-');
            let base = path.parent().unwrap_or(Path::new(""));
            for (i, mut spec) in specs.into_iter().enumerate() {
                K::resolve(&mut spec, base);
                let place = format!("--config {} [[{table}]] {}", path.display(), i + 1);
                out.push(K::validate(spec).map_err(|e| ConfigError::Device(place, e))?);
            }
        }
        for value in &self.cli {
            let place = format!("{} {value:?}", K::OPTION);
            let dev = parse_spec::<K>(value)
                .and_then(K::validate)
                .map_err(|e| ConfigError::Device(place, e))?;
            out.push(dev);
        }
        Ok(out)
    }
}

impl TryFrom<RunArgs> for RunConfig {
    type Error = ConfigError;

    fn try_from(args: RunArgs) -> Result<Self> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let memory_str = args
            .memory
            .or(file.memory)
            .unwrap_or_else(|| DEFAULT_MEMORY.into());
        let memory = parse_size(&memory_str)?;
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&memory) {
            return Err(ConfigError::MemoryRange(memory_str));
        }
        if memory % 4096 != 0 {
            return Err(ConfigError::MemoryAlign(memory_str));
        }
        let cpus = args.cpus.or(file.cpus).unwrap_or(1);
        if cpus == 0 || cpus > MAX_CPUS {
            return Err(ConfigError::Cpus(cpus));
        }
        let kernel = args.kernel.or(file.kernel).ok_or(ConfigError::NoKernel)?;
        regular_file(&kernel).map_err(|e| ConfigError::Kernel(kernel.clone(), e))?;
        let initrd = args.initrd.or(file.initrd);
        if let Some(initrd) = &initrd {
            regular_file(initrd).map_err(|e| ConfigError::Initrd(initrd.clone(), e))?;
        }
        // The kinds, in slot order: disks, then nets, then folders.
        let path = args.config.as_deref();
        let kinds = [
            pending::<Blk>(path, file.disk, &args.disk),
            pending::<Net>(path, file.net, &args.net),
            pending::<Fs>(path, file.fs, &args.fs),
        ];
        let count = kinds.iter().map(|k| k.count()).sum();
        if count > MAX_DEVICES {
            return Err(ConfigError::TooManyDevices(count));
        }
        let mut devices_ = Vec::with_capacity(count);
        for kind in kinds {
            devices_.extend(kind.validate()?);
        }
        Ok(RunConfig {
            kernel,
            initrd,
            cmdline: args
                .cmdline
                .or(file.cmdline)
                .unwrap_or_else(|| DEFAULT_CMDLINE.into()),
            cpus,
            memory,
            devices: devices_,
            seccomp: args.seccomp,
            log_level: args.log.log_level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use vhostkit_tests::TempDir;

    fn parse(args: &[&str]) -> std::result::Result<RunConfig, String> {
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

    /// `--kernel EXE` and `extra`.
    fn with(extra: &[&str]) -> std::result::Result<RunConfig, String> {
        let k = exe();
        let mut v = vec!["--kernel", k.as_str()];
        v.extend_from_slice(extra);
        parse(&v)
    }

    /// Our daemon `program` with `args`; blk and net get the `--queue-size` vhostkit
    /// always passes (the default unless a spec gave one).
    fn daemon(program: &'static str, args: &[&str]) -> DeviceBackend {
        let mut args: Vec<OsString> = args.iter().map(OsString::from).collect();
        if program != "vhost-user-fs" && !args.iter().any(|a| a == "--queue-size") {
            args.extend(["--queue-size".into(), DEFAULT_QUEUE_SIZE.to_string().into()]);
        }
        DeviceBackend::Daemon { program, args }
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
    fn macs() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Ok([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(parse_mac("02:AB:cd:00:00:01").unwrap()[1], 0xab);
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52-54-00-12-34-56",
            "52:54:00:12:34:5",
            "52:54:00:12:34:567",
            "52:54:00:12:34:zz",
            "+2:54:00:12:34:56",
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_mac("01:00:5e:00:00:01")
            .unwrap_err()
            .contains("multicast"));
    }

    #[test]
    fn defaults() {
        let c = with(&[]).unwrap();
        assert_eq!(c.cpus, 1);
        assert_eq!(c.memory, 64 << 20);
        assert_eq!(c.cmdline, "console=ttyS0");
        assert_eq!(c.initrd, None);
        assert!(c.devices.is_empty());
        assert_eq!(c.log_level, "info");
    }

    #[test]
    fn bad_values_are_refused() {
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
        // RAM continues above 4 GiB now: disks and large memory go together.
        let c = with(&["--disk", "socket=/s", "--memory", "64G"]).unwrap();
        assert_eq!(c.memory, 64 << 30);
    }

    #[test]
    fn kernel_and_initrd_must_exist() {
        let e = parse(&["--kernel", "/nonexistent/vmlinux"]).unwrap_err();
        assert!(e.starts_with("--kernel /nonexistent/vmlinux: "), "{e}");
        let e = parse(&["--kernel", "/"]).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        assert_eq!(
            parse(&[]).unwrap_err(),
            "no kernel: give --kernel or kernel in the --config file"
        );
        let e = with(&["--initrd", "/nonexistent/initrd"]).unwrap_err();
        assert!(e.starts_with("--initrd /nonexistent/initrd: "), "{e}");
        assert!(with(&["--initrd", "/"])
            .unwrap_err()
            .contains("not a regular file"));
        let k = exe();
        let c = with(&["--initrd", &k]).unwrap();
        assert_eq!(c.initrd, Some(PathBuf::from(&k)));
    }

    #[test]
    fn disk_specs() {
        let dir = TempDir::new("cfg-disk").unwrap();
        let img = dir.image(4096).unwrap();
        let img = img.to_str().unwrap();
        let c = with(&[
            "--disk",
            "socket=/a.sock",
            "--disk",
            "socket=b,num-queues=4",
            "--disk",
            &format!("path={img}"),
            "--disk",
            &format!("num-queues=2,path={img},readonly=on,direct=on"),
            "--disk",
            &format!("path={img},readonly=off,direct=off"),
        ])
        .unwrap();
        let blk = |backend, num_queues| DeviceConfig {
            kind: DeviceKind::Block,
            backend,
            num_queues,
            queue_size: DEFAULT_QUEUE_SIZE,
        };
        assert_eq!(
            c.devices,
            [
                blk(DeviceBackend::Socket("/a.sock".into()), None),
                blk(DeviceBackend::Socket("b".into()), Some(4)),
                blk(daemon("vhost-user-blk", &["--path", img]), None),
                blk(
                    daemon(
                        "vhost-user-blk",
                        &["--path", img, "--readonly", "--num-queues", "2", "--direct"]
                    ),
                    Some(2)
                ),
                blk(daemon("vhost-user-blk", &["--path", img]), None),
            ]
        );
        assert_eq!(c.devices[2].describe(), format!("--disk path={img}"));
        assert_eq!(c.devices[0].describe(), "--disk socket=/a.sock");
    }

    /// `--OPTION SPEC` must fail with a message starting with the option and the spec
    /// and containing `needle`.
    fn refused(option: &str, spec: &str, needle: &str) {
        let e = with(&[option, spec]).unwrap_err();
        let prefix = format!("{option} {spec:?}: ");
        assert!(e.starts_with(&prefix), "{spec}: {e}");
        assert!(e.contains(needle), "{spec}: {e} lacks {needle:?}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn bad_disk_specs() {
        let dir = TempDir::new("cfg-bad-disk").unwrap();
        let img = dir.image(4096).unwrap();
        let img = img.to_str().unwrap();
        refused(
            "--disk",
            "/a.sock",
            "expected socket=PATH or path=IMG: key=value",
        );
        refused("--disk", "socket=", "needs a value");
        refused("--disk", "sock=/a", "unknown key \"sock\"");
        refused("--disk", "socket=/a,bogus=1", "unknown key \"bogus\"");
        refused("--disk", "socket=/a,socket=/b", "socket given twice");
        refused("--disk", &format!("socket=/a,path={img}"), "not both");
        refused("--disk", "num-queues=2", "socket=PATH");
        refused(
            "--disk",
            "socket=/a,num-queues=0",
            "num-queues=0: must be 1 to 64",
        );
        refused("--disk", "socket=/a,num-queues=65", "must be 1 to 64");
        refused("--disk", "socket=/a,num-queues=x", "expected a number");
        refused("--disk", "socket=/a,readonly=on", "path= only");
        refused("--disk", &format!("path={img},readonly=yes"), "on or off");
        refused("--disk", "path=/nonexistent/x.img", "No such file");
        refused(
            "--disk",
            &format!("path={}", dir.path().display()),
            "folder",
        );
        refused("--disk", "socket=/a,", "key=value");
    }

    #[test]
    fn net_specs() {
        let c = with(&[
            "--net",
            "socket=/n.sock",
            "--net",
            "socket=/m.sock,mac=52:54:00:12:34:56,num-queue-pairs=2",
            "--net",
            "tap=vk0",
            "--net",
            "tap=vk1,host-ip=192.168.100.1/24,mac=02:00:00:00:00:0A,num-queue-pairs=3",
        ])
        .unwrap();
        let mac = Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let net = |mac, backend, num_queues| DeviceConfig {
            kind: DeviceKind::Net { mac },
            backend,
            num_queues,
            queue_size: DEFAULT_QUEUE_SIZE,
        };
        assert_eq!(
            c.devices,
            [
                net(None, DeviceBackend::Socket("/n.sock".into()), None),
                net(mac, DeviceBackend::Socket("/m.sock".into()), Some(4)),
                net(None, daemon("vhost-user-net", &["--tap", "vk0"]), None),
                net(
                    Some([2, 0, 0, 0, 0, 0x0a]),
                    daemon(
                        "vhost-user-net",
                        &[
                            "--tap",
                            "vk1",
                            "--host-ip",
                            "192.168.100.1/24",
                            "--mac",
                            "02:00:00:00:00:0a",
                            "--num-queue-pairs",
                            "3"
                        ]
                    ),
                    Some(6)
                ),
            ]
        );
        assert_eq!(c.devices[2].describe(), "--net tap=vk0");
    }

    /// QueueNumMax is what the backend takes: given to the daemons vhostkit starts,
    /// the user's word for a socket backend, checked either way.
    #[test]
    fn queue_sizes() {
        let dir = TempDir::new("cfg-qsize").unwrap();
        let img = dir.image(4096).unwrap();
        let img = img.to_str().unwrap();
        let d = dir.path().to_str().unwrap();
        let c = with(&[
            "--disk",
            "socket=/a.sock,queue-size=64",
            "--disk",
            &format!("path={img},queue-size=1024"),
            "--net",
            "tap=vk0,queue-size=512",
            "--fs",
            &format!("dir={d},tag=t"),
            "--fs",
            "socket=/f.sock,tag=u,queue-size=4096",
        ])
        .unwrap();
        let sizes: Vec<u16> = c.devices.iter().map(|d| d.queue_size).collect();
        assert_eq!(sizes, [64, 1024, 512, FS_QUEUE_SIZE, 4096]);
        assert_eq!(
            c.devices[1].backend,
            daemon("vhost-user-blk", &["--path", img, "--queue-size", "1024"])
        );
        assert_eq!(
            c.devices[2].backend,
            daemon("vhost-user-net", &["--tap", "vk0", "--queue-size", "512"])
        );
        let c = with(&["--disk", "socket=/a.sock"]).unwrap();
        assert_eq!(c.devices[0].queue_size, DEFAULT_QUEUE_SIZE);
        refused("--disk", "socket=/a,queue-size=100", "power of two");
        refused("--disk", "socket=/a,queue-size=1", "power of two");
        refused("--net", "tap=vk0,queue-size=0", "power of two");
        refused(
            "--fs",
            &format!("dir={d},tag=t,queue-size=2048"),
            "2 to 1024",
        );
    }

    #[test]
    fn bad_net_specs() {
        refused("--net", "socket=/a,tap=vk0", "not both");
        refused("--net", "mac=52:54:00:12:34:56", "tap=NAME");
        refused("--net", "tap=vk0,mac=01:00:00:00:00:01", "multicast");
        refused("--net", "tap=vk0,mac=52:54:00:12:34", "six hex bytes");
        refused("--net", "tap=vk0,num-queue-pairs=0", "1 to 32");
        refused("--net", "tap=vk0,num-queue-pairs=33", "1 to 32");
        refused("--net", "tap=vk0,host-ip=10.0.0.1", "ADDR/PREFIX");
        refused("--net", "tap=vk0,host-ip=10.0.0.1/33", "at most 32");
        refused("--net", "tap=vk0,host-ip=300.0.0.1/8", "ADDR/PREFIX");
        refused("--net", "socket=/a,host-ip=10.0.0.1/8", "tap= only");
        refused("--net", "tap=a-very-long-interface", "interface name");
        refused("--net", "tap=vk0,tap=vk1", "tap given twice");
        refused(
            "--net",
            "tap=vk0,num-queues=2",
            "unknown key \"num-queues\"",
        );
        assert!(with(&["--net", "tap=vk0,host-ip=fd00::1/64"]).is_ok());
    }

    #[test]
    fn fs_specs() {
        let dir = TempDir::new("cfg-fs").unwrap();
        let d = dir.path().to_str().unwrap();
        let tag36 = "t".repeat(36);
        let c = with(&[
            "--fs",
            "socket=/f.sock,tag=share",
            "--fs",
            &format!("dir={d},tag={tag36},num-queues=63"),
        ])
        .unwrap();
        assert_eq!(
            c.devices,
            [
                DeviceConfig {
                    kind: DeviceKind::Fs {
                        tag: "share".into()
                    },
                    backend: DeviceBackend::Socket("/f.sock".into()),
                    num_queues: None,
                    queue_size: FS_QUEUE_SIZE,
                },
                DeviceConfig {
                    kind: DeviceKind::Fs { tag: tag36.clone() },
                    backend: daemon(
                        "vhost-user-fs",
                        &[
                            "--shared-dir",
                            d,
                            "--tag",
                            &tag36,
                            "--num-request-queues",
                            "63"
                        ]
                    ),
                    num_queues: Some(63),
                    queue_size: FS_QUEUE_SIZE,
                },
            ]
        );
        assert_eq!(c.devices[1].describe(), format!("--fs dir={d}"));
        refused("--fs", "socket=/f.sock", "needs tag=TAG");
        refused("--fs", &format!("dir={d}"), "needs tag=TAG");
        refused(
            "--fs",
            &format!("socket=/f,tag={}", "t".repeat(37)),
            "1 to 36 bytes",
        );
        refused("--fs", "socket=/f,tag=a\0b", "without NUL");
        refused("--fs", &format!("socket=/f,dir={d},tag=x"), "not both");
        refused("--fs", "tag=x", "dir=DIR");
        refused("--fs", "socket=/f,tag=x,num-queues=0", "1 to 63");
        refused("--fs", "socket=/f,tag=x,num-queues=64", "1 to 63");
        refused("--fs", "dir=/nonexistent/share,tag=x", "No such file");
        let k = exe();
        refused("--fs", &format!("dir={k},tag=x"), "not a folder");
        refused("--fs", "socket=/f,tag=x,readonly=on", "unknown key");
    }

    #[test]
    fn device_order_and_limit() {
        let c = with(&[
            "--fs",
            "socket=/f,tag=x",
            "--net",
            "socket=/n",
            "--disk",
            "socket=/d1",
            "--disk",
            "socket=/d2",
        ])
        .unwrap();
        let kinds: Vec<String> = c.devices.iter().map(|d| d.describe()).collect();
        assert_eq!(
            kinds,
            [
                "--disk socket=/d1",
                "--disk socket=/d2",
                "--net socket=/n",
                "--fs socket=/f"
            ]
        );
        let mut many = Vec::new();
        for _ in 0..4 {
            many.extend_from_slice(&["--disk", "socket=/s", "--net", "socket=/n"]);
        }
        assert_eq!(with(&many).unwrap().devices.len(), MAX_DEVICES);
        many.extend_from_slice(&["--fs", "socket=/f,tag=x"]);
        let e = with(&many).unwrap_err();
        assert!(e.contains("at most 8 devices"), "{e}");
    }

    const FULL: &str = r#"
kernel = "vmlinuz"
initrd = "sub/initramfs.cpio"
cmdline = "console=ttyS0 quiet"
cpus = 2
memory = "1G"
[[disk]]
socket = "/run/blk.sock"
num-queues = 2
[[disk]]
path = "disk.img"
readonly = true
direct = false
[[net]]
tap = "vk0"
mac = "52:54:00:12:34:56"
num-queue-pairs = 2
host-ip = "10.0.0.1/24"
[[net]]
socket = "net.sock"
[[fs]]
dir = "share"
tag = "share"
num-queues = 1
"#;

    /// A folder with the files FULL names, and FULL as vm.toml.
    fn full_dir() -> TempDir {
        let dir = TempDir::new("cfg-toml").unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::create_dir(dir.join("share")).unwrap();
        std::fs::write(dir.join("vmlinuz"), b"k").unwrap();
        std::fs::write(dir.join("sub/initramfs.cpio"), b"i").unwrap();
        dir.image(4096).unwrap();
        std::fs::write(dir.join("vm.toml"), FULL).unwrap();
        dir
    }

    #[test]
    fn toml_file() {
        let dir = full_dir();
        let toml = dir.join("vm.toml");
        let c = parse(&["--config", toml.to_str().unwrap()]).unwrap();
        let p = |name: &str| dir.join(name);
        let s = |name: &str| p(name).to_str().unwrap().to_string();
        assert_eq!(
            c,
            RunConfig {
                kernel: p("vmlinuz"),
                initrd: Some(p("sub/initramfs.cpio")),
                cmdline: "console=ttyS0 quiet".into(),
                cpus: 2,
                memory: 1 << 30,
                devices: vec![
                    DeviceConfig {
                        kind: DeviceKind::Block,
                        backend: DeviceBackend::Socket("/run/blk.sock".into()),
                        num_queues: Some(2),
                        queue_size: DEFAULT_QUEUE_SIZE,
                    },
                    DeviceConfig {
                        kind: DeviceKind::Block,
                        backend: daemon(
                            "vhost-user-blk",
                            &["--path", &s("disk.img"), "--readonly"]
                        ),
                        num_queues: None,
                        queue_size: DEFAULT_QUEUE_SIZE,
                    },
                    DeviceConfig {
                        kind: DeviceKind::Net {
                            mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
                        },
                        backend: daemon(
                            "vhost-user-net",
                            &[
                                "--tap",
                                "vk0",
                                "--host-ip",
                                "10.0.0.1/24",
                                "--mac",
                                "52:54:00:12:34:56",
                                "--num-queue-pairs",
                                "2"
                            ]
                        ),
                        num_queues: Some(4),
                        queue_size: DEFAULT_QUEUE_SIZE,
                    },
                    DeviceConfig {
                        kind: DeviceKind::Net { mac: None },
                        backend: DeviceBackend::Socket(p("net.sock")),
                        num_queues: None,
                        queue_size: DEFAULT_QUEUE_SIZE,
                    },
                    DeviceConfig {
                        kind: DeviceKind::Fs {
                            tag: "share".into()
                        },
                        backend: daemon(
                            "vhost-user-fs",
                            &[
                                "--shared-dir",
                                &s("share"),
                                "--tag",
                                "share",
                                "--num-request-queues",
                                "1"
                            ]
                        ),
                        num_queues: Some(1),
                        queue_size: FS_QUEUE_SIZE,
                    },
                ],
                seccomp: SeccompAction::Kill,
                log_level: "info".into(),
            }
        );
    }

    #[test]
    fn command_line_overrides_the_file_and_appends_devices() {
        let dir = full_dir();
        let toml = dir.join("vm.toml");
        let k = exe();
        let c = parse(&[
            "--config",
            toml.to_str().unwrap(),
            "--cpus",
            "3",
            "--memory",
            "128M",
            "--kernel",
            &k,
            "--cmdline",
            "x",
            "--disk",
            "socket=/cli.sock",
            "--fs",
            "socket=/fs.sock,tag=cli",
        ])
        .unwrap();
        assert_eq!((c.cpus, c.memory, c.cmdline.as_str()), (3, 128 << 20, "x"));
        assert_eq!(c.kernel, PathBuf::from(&k));
        assert_eq!(c.initrd, Some(dir.join("sub/initramfs.cpio")));
        let names: Vec<String> = c.devices.iter().map(|d| d.describe()).collect();
        assert_eq!(
            names,
            [
                "--disk socket=/run/blk.sock".to_string(),
                format!("--disk path={}", dir.join("disk.img").display()),
                "--disk socket=/cli.sock".into(),
                "--net tap=vk0".into(),
                format!("--net socket={}", dir.join("net.sock").display()),
                format!("--fs dir={}", dir.join("share").display()),
                "--fs socket=/fs.sock".into(),
            ]
        );
        // The file's devices count towards the limit.
        let e = parse(&[
            "--config",
            toml.to_str().unwrap(),
            "--disk",
            "socket=/a",
            "--disk",
            "socket=/b",
            "--disk",
            "socket=/c",
            "--disk",
            "socket=/d",
        ])
        .unwrap_err();
        assert!(
            e.contains("at most 8 devices") && e.ends_with("got 9"),
            "{e}"
        );
    }

    #[test]
    fn toml_errors() {
        let dir = TempDir::new("cfg-toml-bad").unwrap();
        let toml = dir.join("vm.toml");
        let t = toml.to_str().unwrap();
        let k = exe();
        let check = |text: &str, needles: &[&str]| {
            std::fs::write(&toml, text).unwrap();
            let e = parse(&["--config", t, "--kernel", &k]).unwrap_err();
            assert!(e.starts_with(&format!("--config {t}")), "{e}");
            assert!(!e.contains('\n'), "{e}");
            for needle in needles {
                assert!(e.contains(needle), "{e} lacks {needle:?}");
            }
        };
        check("cpus = 1\nkernal = \"x\"\n", &["line 2", "kernal"]);
        check(
            "[[disk]]\nsocket = \"/a\"\nbogus = 1\n",
            &["line 3", "bogus"],
        );
        check("cpus = \"two\"\n", &["line 1"]);
        check("cpus = 300\n", &["line 1"]);
        check("memory = \n", &["line 1"]);
        check(
            "[[disk]]\nsocket = \"/a\"\npath = \"/b\"\n",
            &["[[disk]] 1", "not both"],
        );
        check(
            "[[fs]]\nsocket = \"/a\"\ntag = \"a\"\n[[fs]]\nsocket = \"/b\"\n",
            &["[[fs]] 2", "needs tag"],
        );
        check(
            "[[net]]\ntap = \"vk0\"\nmac = \"ff:ff:ff:ff:ff:ff\"\n",
            &["[[net]] 1", "multicast"],
        );
        std::fs::write(&toml, "cpus = 2\n").unwrap();
        assert_eq!(
            parse(&["--config", t]).unwrap_err(),
            "no kernel: give --kernel or kernel in the --config file"
        );
        let e = parse(&["--config", "/nonexistent/vm.toml"]).unwrap_err();
        assert!(
            e.starts_with("--config /nonexistent/vm.toml: No such file"),
            "{e}"
        );
        // A kernel named by the file resolves against the file's folder.
        std::fs::write(&toml, "kernel = \"vmlinuz\"\n").unwrap();
        let e = parse(&["--config", t]).unwrap_err();
        assert!(
            e.starts_with(&format!("--kernel {}: ", dir.join("vmlinuz").display())),
            "{e}"
        );
    }
}
