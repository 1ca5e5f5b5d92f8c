//! The `main` of every vhostkit daemon: parse the command line, set up logging,
//! validate into a config, install the stop-signal handler, serve, and map the outcome
//! to an exit code. Each daemon only says how its own `Args` and config fit in, by
//! implementing [`Daemon`] on its config type.

use std::process::ExitCode;
use std::time::Duration;

use log::error;

use crate::cli::{ListenAddr, LogArgs};
use crate::lifecycle::{install_signal_handler, StopHandle};
use crate::logging;

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
}

/// The whole `main` of a daemon: `fn main() -> ExitCode { daemon_main::<MyConfig>() }`.
///
/// Exit codes: 0 after a clean stop, 2 for a bad command line, 1 for anything else.
pub fn daemon_main<D: Daemon>() -> ExitCode {
    let args = <D::Args as clap::Parser>::parse();
    logging::init(&D::log_args(&args).log_level);
    let config = match D::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let stop = match StopHandle::new() {
        Ok(stop) => stop,
        Err(e) => {
            error!("cannot create the stop event: {e}");
            return ExitCode::FAILURE;
        }
    };
    let socket = match config.listen() {
        ListenAddr::Path(p) => Some(p.clone()),
        ListenAddr::Fd(_) => None,
    };
    if let Err(e) = install_signal_handler(stop.clone(), socket, STOP_GRACE) {
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
