//! What every vhostkit daemon shares: the command-line pieces, the daemon lifecycle
//! (listen, serve a frontend, accept the next one, exit cleanly on a signal),
//! logging set-up, rate-limited logging for guest-triggered errors, confinement
//! (capabilities, seccomp). The vhost-user frontend (VMM, test driver) is crate
//! vhostkit-frontend, which the daemons do not depend on.

// A cast that could truncate a value or lose its sign is a bug waiting for a
// large or hostile input: convert instead, or say at the cast why it holds.
// (Serving code only: unit tests cast their fixtures' small constants freely.)
#![cfg_attr(
    not(test),
    warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)
)]

pub mod backend;
pub mod caps;
pub mod cli;
pub mod daemon;
pub mod lifecycle;
pub mod logging;
pub mod queue;
pub mod seccomp;
pub mod socket;
