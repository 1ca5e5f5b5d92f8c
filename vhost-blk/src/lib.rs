//! vhost-user-blk: a virtio block device backend serving a raw image file or a
//! block device over vhost-user.
//!
//! - [`config`]: command line to validated configuration;
//! - [`backend`]: the vhost-user device (features, config space, dispatch);
//! - [`worker`]: the per-queue request loop;
//! - [`request`]: the virtio-blk request protocol, knowing nothing of vhost-user;
//! - [`engine`]: the I/O engines (io_uring, sync, null) behind one trait;
//! - [`disk`]: the backing file or device.

// A cast that could truncate a value or lose its sign is a bug waiting for a
// large or hostile input: convert instead, or say at the cast why it holds.
// (Serving code only: unit tests cast their fixtures' small constants freely.)
#![cfg_attr(
    not(test),
    warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)
)]

pub mod backend;
pub mod config;
pub mod disk;
pub mod engine;
pub mod request;
pub mod worker;

use std::sync::{Arc, Mutex};

use log::{info, warn};
use vhostkit_common::cli::{ListenAddr, LogArgs};
use vhostkit_common::daemon::{error_chain, Service};
use vhostkit_common::lifecycle::{self, Listening, StopHandle};
use vhostkit_common::seccomp::Policy;
use vhostkit_common::socket::SocketFile;

pub use backend::BlkBackend;
pub use config::{Args, BlkConfig};

/// Each queue's I/O engine, made once at start-up (an io_uring ring cannot be made
/// under the seccomp filter: a ring of its own would let code that took over the
/// daemon run operations seccomp does not see) and lent to each connection in turn.
#[derive(Default)]
pub struct EnginePool {
    engines: Mutex<Vec<Option<Box<dyn engine::IoEngine>>>>,
}

impl EnginePool {
    /// `count` engines of `kind` on `file`, for queues of `depth` entries.
    pub fn new(
        kind: engine::EngineKind,
        file: &Arc<std::fs::File>,
        count: u16,
        depth: u32,
    ) -> std::io::Result<Self> {
        let engines = (0..count)
            .map(|_| engine::new_engine(kind, file.clone(), depth).map(Some))
            .collect::<std::io::Result<_>>()?;
        Ok(EnginePool {
            engines: Mutex::new(engines),
        })
    }

    /// Queue `index`'s engine for a connection.
    pub fn take(&self, index: usize) -> Option<Box<dyn engine::IoEngine>> {
        self.lock().get_mut(index).and_then(Option::take)
    }

    /// Queue `index`'s engine back, idle, when its connection ends.
    pub fn give_back(&self, index: usize, engine: Box<dyn engine::IoEngine>) {
        if let Some(slot) = self.lock().get_mut(index) {
            *slot = Some(engine);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Box<dyn engine::IoEngine>>>> {
        self.engines.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What start-up leaves for serving.
pub struct Prepared {
    config: Arc<BlkConfig>,
    disk: Arc<disk::Disk>,
    engines: Arc<EnginePool>,
    listening: Listening,
}

/// Start-up, while the process has one thread (before the signal thread, which
/// must not keep capabilities the rest drops): opens the disk, makes the engines,
/// binds the socket, drops every capability and installs the `--seccomp` filter.
pub fn start(mut config: BlkConfig) -> Result<Prepared, String> {
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
    let file = Arc::new(
        disk.file
            .try_clone()
            .map_err(|e| format!("cannot duplicate the disk descriptor: {e}"))?,
    );
    let engines = EnginePool::new(
        config.engine,
        &file,
        config.num_queues,
        u32::from(config.queue_size),
    )
    .map_err(|e| format!("cannot set up the {} engine: {e}", config.engine))?;
    let listening = lifecycle::listen(&config.listen).map_err(error_chain)?;
    vhostkit_common::caps::drop_all().map_err(|e| format!("cannot drop capabilities: {e}"))?;
    policy(listening.socket_file().as_deref()).install(config.seccomp)?;
    Ok(Prepared {
        config: Arc::new(config),
        disk: Arc::new(disk),
        engines: Arc::new(engines),
        listening,
    })
}

/// Serves frontends until `stop` is requested.
pub fn serve(prepared: Prepared, stop: &StopHandle) -> Result<(), String> {
    let Prepared {
        config,
        disk,
        engines,
        listening,
    } = prepared;
    lifecycle::serve_on("vhost-user-blk", listening, stop, || {
        BlkBackend::new(config.clone(), disk.clone(), engines.clone())
    })
    .map_err(error_chain)
}

/// Calls the daemon makes serving, on top of [`vhostkit_common::seccomp::BASE`]:
/// running its io_uring rings (made at start-up: no io_uring_setup, and no
/// io_uring_register, after it), flushes and the fallocate of discards and
/// write-zeroes.
pub const SECCOMP_CALLS: &[libc::c_long] = &[
    libc::SYS_io_uring_enter,
    libc::SYS_fallocate,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
];

/// The one ioctl: BLKDISCARD, a block device's discard.
pub const SECCOMP_IOCTLS: &[u64] = &[disk::BLKDISCARD];

/// The daemon's allow-list; with a socket of its own, `unlinkat` in the socket's
/// folder (removing it at exit).
pub fn policy(socket: Option<&SocketFile>) -> Policy {
    Policy::new(SECCOMP_CALLS)
        .ioctls(SECCOMP_IOCTLS)
        .socket(socket)
}

/// The daemon for `daemon_main::<ServiceDaemon<BlkConfig>>()`.
impl Service for BlkConfig {
    type Args = Args;
    type Prepared = Prepared;

    fn log_args(args: &Args) -> &LogArgs {
        &args.log
    }

    fn from_args(args: Args) -> Result<Self, String> {
        BlkConfig::try_from(args)
    }

    fn listen(&self) -> &ListenAddr {
        &self.listen
    }

    fn prepare(self) -> Result<Prepared, String> {
        start(self)
    }

    fn socket(prepared: &Prepared) -> Option<Arc<SocketFile>> {
        prepared.listening.socket_file()
    }

    fn serve(prepared: Prepared, stop: &StopHandle) -> Result<(), String> {
        serve(prepared, stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vhostkit_common::seccomp::{
        exited_cleanly, killed_by_sigsys, status_of_call_under, SeccompAction,
    };

    /// The daemon's filter kills a call outside its list (getppid, an ioctl other
    /// than BLKDISCARD, opening a file) and lets its own through.
    #[test]
    fn the_filter_allows_the_daemons_calls_only() {
        let kill = policy(None).program(SeccompAction::Kill).unwrap().unwrap();
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
