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

// A cast that could truncate a value or lose its sign is a bug waiting for a
// large or hostile input: convert instead, or say at the cast why it holds.
// (Serving code only: unit tests cast their fixtures' small constants freely.)
#![cfg_attr(
    not(test),
    warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)
)]

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
use vhostkit_common::daemon::{error_chain, Service};
use vhostkit_common::lifecycle::{self, Listening, StopHandle};
use vhostkit_common::seccomp::Policy;
use vhostkit_common::socket::SocketFile;

pub use backend::NetBackend;
pub use config::{Args, NetConfig};

/// What start-up leaves for serving.
pub struct Prepared {
    config: Arc<NetConfig>,
    tap: Arc<tap::Tap>,
    listening: Listening,
}

/// Start-up, while the process has one thread (before the signal thread, which
/// must not keep capabilities the rest drops): opens and configures the tap, binds
/// the socket, drops every capability and installs the `--seccomp` filter.
pub fn start(config: NetConfig) -> Result<Prepared, String> {
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
    let listening = lifecycle::listen(&config.listen).map_err(error_chain)?;
    vhostkit_common::caps::drop_all().map_err(|e| format!("cannot drop capabilities: {e}"))?;
    policy(listening.socket_file().as_deref()).install(config.seccomp)?;
    Ok(Prepared {
        config: Arc::new(config),
        tap: Arc::new(tap),
        listening,
    })
}

/// Serves frontends until `stop` is requested.
pub fn serve(prepared: Prepared, stop: &StopHandle) -> Result<(), String> {
    let Prepared {
        config,
        tap,
        listening,
    } = prepared;
    lifecycle::serve_on("vhost-user-net", listening, stop, || {
        NetBackend::new(config.clone(), tap.clone())
    })
    .map_err(error_chain)
}

/// Calls the daemon makes serving, on top of [`vhostkit_common::seccomp::BASE`]:
/// none (frames move with readv and writev on the tap).
pub const SECCOMP_CALLS: &[libc::c_long] = &[];

/// The tap's ioctls of each new guest driver: which queues carry frames, the
/// offloads it takes and its header size. None of them needs a capability (the
/// tap has no owner set), so the daemon runs without any.
// libc's ioctl request type is u64 here but 32 bits on some targets.
#[allow(clippy::unnecessary_cast)]
pub const SECCOMP_IOCTLS: &[u64] = &[
    libc::TUNSETQUEUE as u64,
    libc::TUNSETOFFLOAD as u64,
    libc::TUNSETVNETHDRSZ as u64,
];

/// The daemon's allow-list; with a socket of its own, `unlinkat` in the socket's
/// folder (removing it at exit).
pub fn policy(socket: Option<&SocketFile>) -> Policy {
    Policy::new(SECCOMP_CALLS)
        .ioctls(SECCOMP_IOCTLS)
        .socket(socket)
}

/// The daemon for `daemon_main::<ServiceDaemon<NetConfig>>()`.
impl Service for NetConfig {
    type Args = Args;
    type Prepared = Prepared;

    fn log_args(args: &Args) -> &LogArgs {
        &args.log
    }

    fn from_args(args: Args) -> Result<Self, String> {
        NetConfig::try_from(args)
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

    /// The daemon's filter kills a call outside its list (getppid, TUNSETIFF,
    /// opening a file) and lets the tap's queue, offload and header ioctls through.
    #[test]
    fn the_filter_allows_the_daemons_calls_only() {
        let kill = policy(None).program(SeccompAction::Kill).unwrap().unwrap();
        let run = |nr, args| status_of_call_under(&kill, nr, args);
        assert!(killed_by_sigsys(run(libc::SYS_getppid, [0; 3])));
        assert!(killed_by_sigsys(run(libc::SYS_openat, [0; 3])));
        #[allow(clippy::unnecessary_cast)]
        let tunsetiff = libc::TUNSETIFF as u64;
        assert!(killed_by_sigsys(run(
            libc::SYS_ioctl,
            [u64::MAX, tunsetiff, 0]
        )));
        for ok in SECCOMP_IOCTLS {
            assert!(exited_cleanly(run(libc::SYS_ioctl, [u64::MAX, *ok, 0])));
        }
        assert!(exited_cleanly(run(libc::SYS_readv, [u64::MAX, 0, 0])));
    }
}
