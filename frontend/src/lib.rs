//! The vhost-user frontend of vhostkit: the one piece of code that talks to a
//! vhost-user backend from the frontend's side, for the VMM (`vhostkit`, whose guest
//! owns the rings) and for the test driver (`vhostkit-driver`, which lays out rings
//! of its own).
//!
//! A [`Connection`] wraps `vhost::vhost_user::Frontend` and adds what both users need
//! around it:
//!
//! - the handshake ([`Connection::connect`], [`Connection::connect_with`]):
//!   GET_FEATURES; GET_PROTOCOL_FEATURES and SET_PROTOCOL_FEATURES (when the backend
//!   offers `VHOST_USER_F_PROTOCOL_FEATURES` and [`ConnectOptions::protocol_features`]
//!   asks for it); GET_QUEUE_NUM (with MQ); SET_OWNER. With REPLY_ACK acked every
//!   message without a reply of its own asks for an ack, so that a backend's refusal
//!   is the error of the call that caused it;
//! - the rest of a session: [`Connection::set_features`],
//!   [`Connection::set_mem_table`], [`Connection::set_up_vring`] (SET_VRING_NUM,
//!   ADDR, BASE, CALL, ERR, KICK, ENABLE from a [`VringSetup`]),
//!   [`Connection::set_vring_enable`] (also before SET_FEATURES, as QEMU 7.2's
//!   virtio-net sends it), [`Connection::stop_vring`] and
//!   [`Connection::get_vring_base`], [`Connection::reset`], and config space
//!   ([`Connection::get_config`], [`Connection::read_config`],
//!   [`Connection::set_config`]);
//! - a control watchdog ([`ConnectOptions::timeout`]): a backend that does not
//!   answer a request within the timeout gets its socket shut down, and the request
//!   fails with [`Error::Timeout`] instead of hanging its caller (a vCPU, a test);
//! - [`Error::is_disconnect`] and [`Connection::socket`], to tell a backend that is
//!   gone from one that refuses, and to watch the socket for a hang-up.
//!
//! # Where the next features go
//!
//! - In-flight tracking (GET_INFLIGHT_FD/SET_INFLIGHT_FD): a protocol feature to add to
//!   [`supported_protocol_features`]; the shared memory is sent after SET_MEM_TABLE
//!   and before the first [`Connection::set_up_vring`], both of which callers already
//!   call in that order.
//! - Dirty-page logging (LOG_ALL, SET_LOG_BASE): a log address per vring on
//!   [`VringSetup`] (today `VringConfigData::log_addr` is `None`) and a request next to
//!   [`Connection::set_mem_table`].
//! - Reconnecting: [`Connection::started_vrings`] says which vrings a new connection
//!   must set up again, and [`Connection::stop_vring`] gives the base to resume from.
//! - A request this wrapper has no method for goes through [`Connection::request`],
//!   which runs it under the watchdog; a message `Frontend` refuses to send in some
//!   state is written by hand as in `raw.rs`.

// The answers of a backend are input: a cast that could truncate a value or lose its
// sign is a bug waiting for a large one (as in common's serving code).
#![cfg_attr(
    not(test),
    warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)
)]

mod connection;
mod raw;
mod watchdog;

use std::io;
use std::time::Duration;

use vhost::vhost_user::message::VHOST_USER_MAX_VRINGS;

pub use connection::{
    memory_regions, supported_protocol_features, ConnectOptions, Connection, VringHostAddrs,
    VringSetup, VringStopError, DEFAULT_CONTROL_TIMEOUT, PROTOCOL_FEATURES,
};
/// Re-exported so that users need not name the vhost crate for the feature masks and
/// for requests of their own ([`Connection::request`]).
pub use vhost::vhost_user::{Frontend, VhostUserProtocolFeatures};

/// Errors of a vhost-user connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to the vhost-user backend at {path}")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    /// A request failed: the backend refused it (a non-zero ack) or the connection
    /// broke ([`Error::is_disconnect`] tells which).
    #[error("vhost-user {0} failed")]
    Request(&'static str, #[source] vhost::Error),
    /// The backend did not answer the request within the timeout; the watchdog shut
    /// the socket down, so the connection is unusable from here on.
    #[error("vhost-user {0}: no answer from the backend within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("the backend has {0} queues (at most {VHOST_USER_MAX_VRINGS} supported)")]
    QueueCount(u64),
    #[error("the backend lacks the CONFIG protocol feature: no config space")]
    NoConfig,
    #[error("config space range {offset:#x}+{len:#x} does not fit a GET_CONFIG")]
    ConfigRange { offset: u32, len: usize },
    #[error("GET_CONFIG answered {got} bytes for {wanted}")]
    ConfigSize { got: usize, wanted: usize },
    #[error("guest memory region without a file: the backend cannot map it")]
    Memory(#[source] vhost::Error),
}

impl Error {
    /// Whether the backend is gone (the connection broke or reached its end), as
    /// opposed to refusing a request or not answering in time.
    pub fn is_disconnect(&self) -> bool {
        use vhost::vhost_user::Error as E;
        match self {
            Error::Request(_, vhost::Error::VhostUserProtocol(e)) => matches!(
                e,
                E::SocketBroken(_) | E::Disconnected | E::PartialMessage | E::SocketError(_)
            ),
            _ => false,
        }
    }
}

/// Result of a vhost-user connection.
pub type Result<T> = std::result::Result<T, Error>;
