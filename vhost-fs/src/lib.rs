//! vhost-user-fs: a virtio-fs device backend, a FUSE passthrough server sharing a
//! host folder over vhost-user.
//!
//! - [`config`]: command line to validated configuration (virtiofsd's flag names);
//! - [`fuse`]: the FUSE protocol (messages, parsing, replies), knowing nothing of
//!   vhost-user;
//! - [`passthrough`]: the file system: FUSE operations on the shared folder;
//! - [`backend`]: the vhost-user device (features, config space, dispatch);
//! - [`worker`]: the per-queue request loop.

pub mod config;
pub mod fuse;

pub use config::{Args, FsConfig};

use vhostkit_common::lifecycle::StopHandle;

/// Serves frontends until `stop` is requested.
pub fn run(config: FsConfig, _stop: &StopHandle) -> Result<(), String> {
    Err(format!(
        "serving {} is not implemented yet",
        config.shared_dir.display()
    ))
}
