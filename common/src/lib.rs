//! What every vhostkit daemon shares: the command-line pieces, the daemon lifecycle
//! (listen, serve a frontend, accept the next one, exit cleanly on a signal),
//! logging set-up, rate-limited logging for guest-triggered errors, the control-request
//! watchdog of vhost-user frontends, and, behind the
//! `driver` feature, a user-space vhost-user driver for tests and benchmarks.

pub mod backend;
pub mod caps;
pub mod cli;
pub mod daemon;
pub mod lifecycle;
pub mod logging;
pub mod queue;
pub mod seccomp;
pub mod socket;
pub mod watchdog;

#[cfg(feature = "driver")]
pub mod driver;
