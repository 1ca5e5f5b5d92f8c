//! vhost-user-blk: a virtio block device backend serving a raw image file or a
//! block device over vhost-user.
//!
//! - [`config`]: command line to validated configuration;
//! - [`backend`]: the vhost-user device (features, config space, dispatch);
//! - [`worker`]: the per-queue request loop;
//! - [`request`]: the virtio-blk request protocol, knowing nothing of vhost-user;
//! - [`engine`]: the I/O engines (io_uring, sync, null) behind one trait;
//! - [`disk`]: the backing file or device.

pub mod backend;
pub mod config;
pub mod disk;
pub mod engine;
pub mod request;
pub mod worker;

use std::sync::Arc;

use log::{info, warn};
use vhostkit_common::cli::{ListenAddr, LogArgs};
use vhostkit_common::daemon::{error_chain, Daemon};
use vhostkit_common::lifecycle::{self, StopHandle};

pub use backend::BlkBackend;
pub use config::{Args, BlkConfig};

/// Opens the disk and serves frontends until `stop` is requested.
pub fn run(mut config: BlkConfig, stop: &StopHandle) -> Result<(), String> {
    if config.engine == engine::EngineKind::IoUring {
        if let Err(e) = engine::io_uring_available() {
            warn!("io_uring is not available here ({e}); using the sync engine");
            config.engine = engine::EngineKind::Sync;
        }
    }
    let disk = disk::Disk::open(&config.path, config.readonly, config.direct)
        .map_err(|e| format!("cannot open {}: {e}", config.path.display()))?;
    info!(
        "serving {} ({} bytes, {}{}) with {} queue(s) of up to {} entries, engine {}",
        config.path.display(),
        disk.size,
        if disk.readonly {
            "read-only"
        } else {
            "read-write"
        },
        if config.direct { ", O_DIRECT" } else { "" },
        config.num_queues,
        config.queue_size,
        config.engine
    );
    let listening = lifecycle::listen(&config.listen).map_err(error_chain)?;
    confine(config.seccomp)?;
    if config.engine == engine::EngineKind::IoUring {
        // kernel.io_uring_disabled = 1 lets only privileged processes make rings.
        if let Err(e) = engine::io_uring_available() {
            warn!("io_uring is refused without privileges ({e}); using the sync engine");
            config.engine = engine::EngineKind::Sync;
        }
    }
    let disk = Arc::new(disk);
    let config = Arc::new(config);
    lifecycle::serve_on("vhost-user-blk", listening, stop, || {
        BlkBackend::new(config.clone(), disk.clone())
    })
    .map_err(error_chain)
}

/// Calls the daemon makes serving, on top of [`vhostkit_common::seccomp::BASE`]:
/// io_uring, flushes and the fallocate of discards and write-zeroes.
pub const SECCOMP_CALLS: &[libc::c_long] = &[
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_fallocate,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
];

/// The one ioctl: BLKDISCARD, a block device's discard.
pub const SECCOMP_IOCTLS: &[u64] = &[disk::BLKDISCARD];

/// Once the image is open and the socket bound: drops every capability and
/// installs the `--seccomp` filter.
fn confine(seccomp: vhostkit_common::seccomp::SeccompAction) -> Result<(), String> {
    vhostkit_common::caps::drop_all().map_err(|e| format!("cannot drop capabilities: {e}"))?;
    vhostkit_common::seccomp::install(seccomp, SECCOMP_CALLS, SECCOMP_IOCTLS)
}

/// What the shared daemon `main` ([`vhostkit_common::daemon::daemon_main`]) needs.
impl Daemon for BlkConfig {
    type Args = Args;

    fn log_args(args: &Args) -> &LogArgs {
        &args.log
    }

    fn from_args(args: Args) -> Result<Self, String> {
        BlkConfig::try_from(args)
    }

    fn listen(&self) -> &ListenAddr {
        &self.listen
    }

    fn run(self, stop: &StopHandle) -> Result<(), String> {
        run(self, stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vhostkit_common::seccomp::{
        exited_cleanly, filter, killed_by_sigsys, status_of_call_under, SeccompAction,
    };

    /// The daemon's filter kills a call outside its list (getppid, an ioctl other
    /// than BLKDISCARD, opening a file) and lets its own through.
    #[test]
    fn the_filter_allows_the_daemons_calls_only() {
        let kill = filter(SeccompAction::Kill, SECCOMP_CALLS, SECCOMP_IOCTLS)
            .unwrap()
            .unwrap();
        let run = |nr, args| status_of_call_under(&kill, nr, args);
        assert!(killed_by_sigsys(run(libc::SYS_getppid, [0; 3])));
        assert!(killed_by_sigsys(run(libc::SYS_openat, [0; 3])));
        assert!(killed_by_sigsys(run(
            libc::SYS_ioctl,
            [u64::MAX, 0x5401, 0]
        )));
        assert!(exited_cleanly(run(libc::SYS_ioctl, [u64::MAX, 0x1277, 0])));
        assert!(exited_cleanly(run(
            libc::SYS_io_uring_enter,
            [u64::MAX, 0, 0]
        )));
        assert!(exited_cleanly(run(libc::SYS_fallocate, [u64::MAX, 0, 0])));
    }
}
