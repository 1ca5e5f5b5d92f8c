//! The queue layer every device runs on: guest buffers as host iovecs
//! ([`iovec::IoVecs`]), the avail-ring server ([`QueueServer`], with the
//! [`QueueDevice`] trait a device implements), polling and interrupt-coalescing policies ([`Poller`], [`Coalescer`]) and
//! the hooks where per-request features attach ([`hooks`]: statistics, admission,
//! in-flight tracking, dirty logging).

mod coalesce;
pub mod hooks;
pub mod iovec;
mod poll;
mod server;

pub use coalesce::{Coalescer, Hold};
pub use hooks::{Admission, Admit, DirtyLog, InflightLog, QueueHooks, QueueStats};
pub use iovec::{IoVecError, IoVecs, IOV_MAX};
pub use poll::Poller;
pub use server::{ActiveQueue, Chain, QueueDevice, QueueServer, RingUnreadable};

#[cfg(test)]
mod tests;
