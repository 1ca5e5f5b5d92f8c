//! Command line to validated configuration.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use vhostkit_common::cli::{
    check_queue_size, check_range, poll_duration, CoalesceArgs, ListenAddr, ListenArgs, LogArgs,
    SeccompArgs,
};
use vhostkit_common::seccomp::SeccompAction;

use crate::engine::EngineKind;
use crate::request::ID_BYTES;

/// vhost-user-blk: serves a raw image file or a block device to a VMM (QEMU,
/// cloud-hypervisor, vhostkit) over the vhost-user protocol.
#[derive(Parser, Clone, Debug)]
#[command(name = "vhost-user-blk", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub listen: ListenArgs,

    /// Raw disk image or block device to serve.
    #[arg(long, value_name = "FILE")]
    pub path: PathBuf,

    /// Serve the disk read-only (the guest sees VIRTIO_BLK_F_RO; writes fail).
    #[arg(long)]
    pub readonly: bool,

    /// Number of request queues (one worker thread each), 1 to 64 [default: one
    /// per host CPU, at most 64]. QEMU's vhost-user-blk-pci asks for one per guest
    /// vCPU unless given num-queues=, and refuses a backend that offers fewer.
    #[arg(long, value_name = "N")]
    pub num_queues: Option<u16>,

    /// Largest queue size the frontend may configure: a power of two, 2 to 32768.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub queue_size: u16,

    /// Open the disk with O_DIRECT, bypassing the host page cache.
    #[arg(long)]
    pub direct: bool,

    /// Serial number answered to GET_ID (at most 20 bytes); default: the image's
    /// file name.
    #[arg(long, value_name = "STRING")]
    pub serial: Option<String>,

    /// I/O engine: io_uring (many requests in flight per queue) or sync; null
    /// completes requests without touching the disk (for benchmarking the transport).
    #[arg(long, value_enum, default_value_t = EngineKind::IoUring)]
    pub engine: EngineKind,

    /// Busy-poll a queue for up to this many microseconds after it runs dry
    /// before sleeping (trades CPU for latency); adaptive: only while the guest
    /// sends its next request within this time. 0 turns polling off.
    #[arg(long, default_value_t = 0, value_name = "US")]
    pub poll_us: u64,

    #[command(flatten)]
    pub coalesce: CoalesceArgs,

    #[command(flatten)]
    pub seccomp: SeccompArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct BlkConfig {
    pub listen: ListenAddr,
    pub path: PathBuf,
    pub readonly: bool,
    pub num_queues: u16,
    pub queue_size: u16,
    pub direct: bool,
    pub serial: [u8; ID_BYTES],
    pub engine: EngineKind,
    pub poll: Duration,
    /// Interrupt-coalescing window (`--coalesce-us`); zero: off.
    pub coalesce: Duration,
    pub seccomp: SeccompAction,
    pub log_level: String,
}

/// One queue per host CPU, 1 to 64: what QEMU's default device asks of a guest
/// with as many vCPUs.
pub fn default_num_queues() -> u16 {
    std::thread::available_parallelism()
        .map(|n| u16::try_from(n.get()).unwrap_or(64))
        .unwrap_or(1)
        .clamp(1, 64)
}

impl TryFrom<Args> for BlkConfig {
    type Error = String;

    fn try_from(args: Args) -> Result<Self, String> {
        let listen = ListenAddr::try_from(args.listen)?;
        let num_queues = match args.num_queues {
            Some(n) => check_range("--num-queues", n, 1..=64)?,
            None => default_num_queues(),
        };
        let queue_size = check_queue_size(args.queue_size)?;
        let poll = poll_duration(args.poll_us)?;
        let coalesce = args.coalesce.window()?;
        let serial = match &args.serial {
            Some(s) if s.len() > ID_BYTES => {
                return Err(format!("--serial {s:?}: at most {ID_BYTES} bytes"));
            }
            Some(s) => s.clone(),
            None => args
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        Ok(BlkConfig {
            listen,
            path: args.path,
            readonly: args.readonly,
            num_queues,
            queue_size,
            direct: args.direct,
            serial: crate::backend::serial_bytes(&serial),
            engine: args.engine,
            poll,
            coalesce,
            seccomp: args.seccomp.seccomp,
            log_level: args.log.log_level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<BlkConfig, String> {
        let mut full = vec!["vhost-user-blk"];
        full.extend_from_slice(args);
        let args = Args::try_parse_from(full).map_err(|e| e.to_string())?;
        BlkConfig::try_from(args)
    }

    /// The launcher's typed options (vhostkit-launch, used by the VMM, the tests
    /// and the benchmarks) render flags and values this parser takes, each to the
    /// value meant: a flag renamed on either side fails here.
    #[test]
    fn launch_args_parse() {
        use vhostkit_tests::launch::blk::{BlkArgs, Engine};
        use vhostkit_tests::launch::{Launch, LogLevel, SeccompAction};
        let engines = [
            (Engine::IoUring, EngineKind::IoUring),
            (Engine::Sync, EngineKind::Sync),
            (Engine::Null, EngineKind::Null),
        ];
        for (engine, kind) in engines {
            let daemon = BlkArgs {
                readonly: true,
                num_queues: Some(3),
                queue_size: Some(64),
                direct: true,
                serial: Some("sn-1".into()),
                engine: Some(engine),
                poll_us: Some(20),
                ..BlkArgs::new("/tmp/d.img")
            };
            let launch = Launch::on_socket("/tmp/b.sock", daemon)
                .socket_group("0")
                .seccomp(SeccompAction::Kill)
                .log_level(LogLevel::Warn)
                .coalesce_us(7);
            let args = Args::try_parse_from(
                std::iter::once("vhost-user-blk".into()).chain(launch.to_args()),
            )
            .unwrap();
            assert_eq!(args.listen.socket_group.as_deref(), Some("0"));
            let c = BlkConfig::try_from(args).unwrap();
            assert_eq!(
                c.listen,
                ListenAddr::Path {
                    path: "/tmp/b.sock".into(),
                    group: Some(0)
                }
            );
            assert_eq!(c.path, std::path::Path::new("/tmp/d.img"));
            assert!(c.readonly && c.direct);
            assert_eq!((c.num_queues, c.queue_size), (3, 64));
            assert_eq!(&c.serial[..5], b"sn-1\0");
            assert_eq!(c.engine, kind);
            assert_eq!(c.poll, Duration::from_micros(20));
            assert_eq!(c.coalesce, Duration::from_micros(7));
            assert_eq!(c.seccomp, SeccompAction::Kill);
            assert_eq!(c.log_level, "warn");
        }
        let fd = Launch::on_fd(7, BlkArgs::new("/tmp/d.img")).to_args();
        let args = Args::try_parse_from(std::iter::once("x".into()).chain(fd)).unwrap();
        assert_eq!(BlkConfig::try_from(args).unwrap().listen, ListenAddr::Fd(7));
    }

    #[test]
    fn defaults() {
        let c = parse(&["--socket-path", "/tmp/b.sock", "--path", "/tmp/disk.img"]).unwrap();
        assert_eq!(c.num_queues, default_num_queues());
        assert!((1..=64).contains(&c.num_queues));
        assert_eq!(c.queue_size, 256);
        assert_eq!(c.engine, EngineKind::IoUring);
        assert!(!c.readonly && !c.direct);
        assert!(c.poll.is_zero());
        assert_eq!(
            c.coalesce,
            Duration::from_micros(vhostkit_common::cli::DEFAULT_COALESCE_US)
        );
        assert_eq!(&c.serial[..8], b"disk.img");
    }

    #[test]
    fn bad_values_are_refused() {
        let base = ["--socket-path", "/tmp/b.sock", "--path", "/tmp/d"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            parse(&v)
        };
        assert!(with(&["--num-queues", "0"])
            .unwrap_err()
            .contains("--num-queues"));
        assert!(with(&["--num-queues", "65"]).is_err());
        assert!(with(&["--queue-size", "100"])
            .unwrap_err()
            .contains("power of two"));
        assert!(with(&["--queue-size", "1"]).is_err());
        assert!(with(&["--serial", "012345678901234567890"])
            .unwrap_err()
            .contains("20 bytes"));
        assert!(with(&["--engine", "aio"]).is_err());
        assert!(with(&["--poll-us", "5000000"]).is_err());
        assert!(with(&["--coalesce-us", "1001"])
            .unwrap_err()
            .contains("--coalesce-us 1001: must be 0 to 1000"));
        assert!(with(&["--coalesce-us", "0"]).unwrap().coalesce.is_zero());
        assert!(parse(&["--path", "/tmp/d"]).is_err());
        let c = with(&[
            "--engine",
            "sync",
            "--num-queues",
            "4",
            "--serial",
            "abc",
            "--readonly",
        ])
        .unwrap();
        assert_eq!(c.engine, EngineKind::Sync);
        assert_eq!(c.num_queues, 4);
        assert_eq!(&c.serial[..4], b"abc\0");
        assert!(c.readonly);
    }
}
