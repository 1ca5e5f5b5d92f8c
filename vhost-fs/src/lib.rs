//! vhost-user-fs: a virtio-fs device backend, a FUSE passthrough server sharing a
//! host folder over vhost-user.
//!
//! - [`config`]: command line to validated configuration (virtiofsd's flag names);
//! - [`fuse`]: the FUSE protocol (messages, parsing, replies), knowing nothing of
//!   vhost-user;
//! - [`passthrough`]: the file system: FUSE operations on the shared folder;
//! - [`backend`]: the vhost-user device (features, config space, dispatch);
//! - [`worker`]: the per-queue request loop.

pub mod backend;
pub mod config;
pub mod fuse;
pub mod passthrough;
pub mod worker;

pub use backend::FsBackend;
pub use config::{Args, FsConfig};

use std::sync::Arc;

use log::info;
use vhostkit_common::cli::ListenAddr;
use vhostkit_common::lifecycle::{self, StopHandle};

/// Serves frontends until `stop` is requested; each connection gets a fresh FUSE
/// session on the shared folder.
pub fn run(config: FsConfig, stop: &StopHandle) -> Result<(), String> {
    info!(
        "sharing {}{} with {} request queue(s), cache {:?}{}",
        config.shared_dir.display(),
        if config.readonly { " read-only" } else { "" },
        config.num_request_queues,
        config.cache,
        if config.xattr { ", xattr" } else { "" },
    );
    if let Some(n) = config.thread_pool_size {
        info!("--thread-pool-size {n} ignored: each request queue is served by its own thread");
    }
    raise_open_file_limit();
    // The guest kernel has already applied the guest process's umask to the modes of
    // MKDIR, MKNOD, CREATE and SYMLINK (FUSE_DONT_MASK is not negotiated): the files
    // must get exactly those modes, not ours masked again, as with virtiofsd.
    // SAFETY: umask only sets this process's file mode creation mask.
    unsafe { libc::umask(0) };
    let config = Arc::new(config);
    let listen: ListenAddr = config.listen.clone();
    let socket_group = config.socket_group;
    let on_listening = move || -> std::io::Result<()> {
        if let (Some(gid), ListenAddr::Path(path)) = (socket_group, &listen) {
            std::os::unix::fs::chown(path, None, Some(gid))?;
        }
        Ok(())
    };
    lifecycle::serve_with_hook("vhost-user-fs", &config.listen, stop, on_listening, || {
        FsBackend::new(config.clone())
    })
    .map_err(|e| {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(&format!(": {s}"));
            source = s.source();
        }
        msg
    })
}

/// Every inode the guest looks up holds a descriptor: raise the soft limit on
/// open files to the hard one, as virtiofsd does.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the rlimit we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                log::warn!(
                    "cannot raise the open file limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}
