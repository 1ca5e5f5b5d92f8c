//! The `main` of every vhostkit daemon: parse the command line, set up logging,
//! validate into a config, install the stop-signal handler, serve, and map the outcome
//! to an exit code. Each daemon only says how its own `Args` and config fit in, by
//! implementing [`Daemon`] on its config type.

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use log::error;

use crate::cli::{ListenAddr, LogArgs};
use crate::lifecycle::{install_signal_handler, StopHandle};
use crate::logging;
use crate::socket::SocketFile;

/// Exit code for a command line that parses but does not validate (clap itself exits
/// with 2 on a syntax error, so both kinds of usage error look alike to a caller).
pub const EXIT_USAGE: u8 = 2;

/// How long the signal handler waits for a clean stop before it exits anyway.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A daemon's validated configuration and what [`daemon_main`] needs from it.
pub trait Daemon: Sized {
    /// The daemon's clap command line.
    type Args: clap::Parser;

    /// The logging options inside `args`, used before validation so that validation
    /// errors are logged at the requested level.
    fn log_args(args: &Self::Args) -> &LogArgs;

    /// Validates the command line; the message is logged and the exit code is
    /// [`EXIT_USAGE`].
    fn from_args(args: Self::Args) -> Result<Self, String>;

    /// Where the daemon listens (a socket path is removed by the signal handler).
    fn listen(&self) -> &ListenAddr;

    /// Serves until `stop`; an error is logged and the exit code is 1.
    fn run(self, stop: &StopHandle) -> Result<(), String>;

    /// Looks at the raw command line before clap does: `Some(code)` ends `main` at
    /// once with that code (a flag answered without the rest, like
    /// `--print-capabilities`, or arguments refused with the daemon's own message).
    fn early_exit(_argv: &[OsString]) -> Option<ExitCode> {
        None
    }

    /// Start-up that must happen while the process has one thread, before the
    /// signal thread starts (binding the socket, entering a sandbox, installing a
    /// seccomp filter); an error is logged and the exit code is 1.
    fn start(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// The socket file the signal handler removes if a stop takes too long (the
    /// one [`Daemon::start`] created; none for an inherited socket).
    fn socket_to_remove(&self) -> Option<Arc<SocketFile>> {
        None
    }
}

/// A daemon in two steps: [`Service::prepare`] does the start-up that needs the
/// process's privileges and must finish before the signal thread starts (opening
/// the device, binding the socket, dropping capabilities, installing the seccomp
/// filter); [`Service::serve`] serves. Implement it on the validated configuration
/// and run `daemon_main::<ServiceDaemon<Config>>()`.
pub trait Service: Sized + Clone {
    /// The daemon's clap command line.
    type Args: clap::Parser;
    /// What start-up leaves for serving.
    type Prepared;

    /// See [`Daemon::log_args`].
    fn log_args(args: &Self::Args) -> &LogArgs;
    /// See [`Daemon::from_args`].
    fn from_args(args: Self::Args) -> Result<Self, String>;
    /// See [`Daemon::listen`].
    fn listen(&self) -> &ListenAddr;
    /// See [`Daemon::early_exit`].
    fn early_exit(_argv: &[OsString]) -> Option<ExitCode> {
        None
    }
    /// The start-up; an error is logged and the exit code is 1.
    fn prepare(self) -> Result<Self::Prepared, String>;
    /// The socket file start-up created (the signal handler removes it if a stop
    /// takes too long).
    fn socket(prepared: &Self::Prepared) -> Option<Arc<SocketFile>>;
    /// Serves until `stop`.
    fn serve(prepared: Self::Prepared, stop: &StopHandle) -> Result<(), String>;
}

/// The [`Daemon`] of a [`Service`]: its configuration, then what start-up prepared.
pub struct ServiceDaemon<S: Service> {
    config: S,
    prepared: Option<S::Prepared>,
}

impl<S: Service> Daemon for ServiceDaemon<S> {
    type Args = S::Args;

    fn log_args(args: &S::Args) -> &LogArgs {
        S::log_args(args)
    }

    fn from_args(args: S::Args) -> Result<Self, String> {
        Ok(ServiceDaemon {
            config: S::from_args(args)?,
            prepared: None,
        })
    }

    fn listen(&self) -> &ListenAddr {
        self.config.listen()
    }

    fn early_exit(argv: &[OsString]) -> Option<ExitCode> {
        S::early_exit(argv)
    }

    fn start(&mut self) -> Result<(), String> {
        self.prepared = Some(self.config.clone().prepare()?);
        Ok(())
    }

    fn socket_to_remove(&self) -> Option<Arc<SocketFile>> {
        self.prepared.as_ref().and_then(S::socket)
    }

    fn run(self, stop: &StopHandle) -> Result<(), String> {
        let prepared = match self.prepared {
            Some(prepared) => prepared,
            None => self.config.prepare()?,
        };
        S::serve(prepared, stop)
    }
}

/// The whole `main` of a daemon: `fn main() -> ExitCode { daemon_main::<MyConfig>() }`.
///
/// Exit codes: 0 after a clean stop, 2 for a bad command line, 1 for anything else.
pub fn daemon_main<D: Daemon>() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if let Some(code) = D::early_exit(&argv) {
        return code;
    }
    let args = <D::Args as clap::Parser>::parse_from(argv);
    logging::init(&D::log_args(&args).log_level);
    let mut config = match D::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(e) = config.start() {
        error!("{e}");
        return ExitCode::FAILURE;
    }
    let stop = match StopHandle::new() {
        Ok(stop) => stop,
        Err(e) => {
            error!("cannot create the stop event: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = install_signal_handler(stop.clone(), config.socket_to_remove(), STOP_GRACE) {
        error!("{e}");
        return ExitCode::FAILURE;
    }
    match config.run(&stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// An error and its sources on one line (`outer: inner: root`), for the one-line
/// messages a daemon logs before it exits.
pub fn error_chain(e: impl std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}
