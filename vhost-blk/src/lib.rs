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
    let disk = Arc::new(disk);
    let config = Arc::new(config);
    let listen: ListenAddr = config.listen.clone();
    lifecycle::serve("vhost-user-blk", &listen, stop, || {
        BlkBackend::new(config.clone(), disk.clone())
    })
    .map_err(error_chain)
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
