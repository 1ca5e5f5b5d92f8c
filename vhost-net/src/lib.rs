//! vhost-user-net: a virtio network device backed by a multi-queue tap, served
//! over vhost-user.
//!
//! - [`config`]: command line to validated configuration;
//! - [`backend`]: the vhost-user device (features, config space, threads, dispatch);
//! - [`worker`]: the per-queue-pair frame loops and the control queue;
//! - [`net`]: the virtio-net header, features and config space, knowing nothing
//!   of vhost-user;
//! - [`ctrl`]: the control queue protocol;
//! - [`tap`]: the tap device.

pub mod backend;
pub mod config;
pub mod ctrl;
pub mod net;
pub mod tap;
pub mod worker;

/// Entry points for the fuzz targets (`fuzz/`); not part of the API.
#[doc(hidden)]
pub mod fuzzing;

use std::sync::Arc;

use log::info;
use vhostkit_common::cli::{ListenAddr, LogArgs};
use vhostkit_common::daemon::{error_chain, Daemon};
use vhostkit_common::lifecycle::{self, StopHandle};

pub use backend::NetBackend;
pub use config::{Args, NetConfig};

/// Opens the tap and serves frontends until `stop` is requested.
pub fn run(config: NetConfig, stop: &StopHandle) -> Result<(), String> {
    let tap = tap::Tap::open(&config.tap, config.num_queue_pairs).map_err(error_chain)?;
    tap.configure_host(config.host_ip, Some(config.mtu))
        .map_err(error_chain)?;
    let m = config.mac;
    info!(
        "serving tap {} ({} queue pair(s) of up to {} entries, MTU {}{}) to a guest with MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        tap.name(),
        config.num_queue_pairs,
        config.queue_size,
        config.mtu,
        match config.host_ip {
            Some((ip, prefix)) => format!(", host side {ip}/{prefix}"),
            None => String::new(),
        },
        m[0], m[1], m[2], m[3], m[4], m[5]
    );
    let tap = Arc::new(tap);
    let config = Arc::new(config);
    let listen: ListenAddr = config.listen.clone();
    lifecycle::serve("vhost-user-net", &listen, stop, || {
        NetBackend::new(config.clone(), tap.clone())
    })
    .map_err(error_chain)
}

/// What the shared daemon `main` ([`vhostkit_common::daemon::daemon_main`]) needs.
impl Daemon for NetConfig {
    type Args = Args;

    fn log_args(args: &Args) -> &LogArgs {
        &args.log
    }

    fn from_args(args: Args) -> Result<Self, String> {
        NetConfig::try_from(args)
    }

    fn listen(&self) -> &ListenAddr {
        &self.listen
    }

    fn run(self, stop: &StopHandle) -> Result<(), String> {
        run(self, stop)
    }
}
