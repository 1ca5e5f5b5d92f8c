//! The places where features that concern every request of every device attach
//! to a queue, so that each is written once, in the queue layer, and not per
//! device: per-request accounting, admission, in-flight tracking and marking the
//! guest pages a device wrote.
//!
//! [`QueueStats`] counts now. The other three are traits with no implementation
//! in the daemons yet: rate limiting (admission), crash recovery (in-flight
//! tracking in the frontend's shared region) and live migration (the dirty log)
//! plug in here. The queue server calls each at a fixed point:
//!
//! | hook | called | with |
//! |---|---|---|
//! | [`Admission::admit`] | before each pop | the queue's stats so far |
//! | [`InflightLog::popped`] | a chain was taken off the avail ring | head |
//! | [`InflightLog::completed`] | its used entry was written (or it was put back) | head |
//! | [`DirtyLog::mark`] | a used entry was written | the used-ring element, then the chain's device-writable buffers up to the used length |
//! | [`QueueStats`] | pop, completion, signal | counts |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vm_memory::GuestAddress;

/// Counters of one queue, readable from any thread (a metrics endpoint).
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Chains taken off the avail ring.
    pub popped: AtomicU64,
    /// Chains returned in the used ring.
    pub completed: AtomicU64,
    /// Bytes the device reported written into guest buffers (used lengths).
    pub used_bytes: AtomicU64,
    /// Chains dropped unanswered (a head outside the queue).
    pub dropped: AtomicU64,
    /// Interrupts (call eventfd writes) sent to the guest.
    pub signals: AtomicU64,
    /// Times admission held the queue back.
    pub throttled: AtomicU64,
}

impl QueueStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Chains popped but not yet completed.
    pub fn in_flight(&self) -> u64 {
        self.popped
            .load(Ordering::Relaxed)
            .saturating_sub(self.completed.load(Ordering::Relaxed))
    }
}

/// What admission answers before a pop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Take the next chain.
    Yes,
    /// Not now: the server stops popping, leaves the rest on the ring and turns
    /// guest notifications back on; a kick (or the limiter's own wake-up, after
    /// about the given time) serves the queue again.
    Later(Duration),
}

/// Decides whether a queue may take its next request (a rate limiter).
pub trait Admission: Send + Sync {
    fn admit(&self, stats: &QueueStats) -> Admit;
}

/// Records which chains a device holds: popped and not yet completed. A
/// restarted daemon resubmits what such a log says was in flight.
pub trait InflightLog: Send + Sync {
    fn popped(&self, head: u16);
    fn completed(&self, head: u16);
}

/// Marks guest memory the device wrote (the used ring included), for live
/// migration to copy again.
pub trait DirtyLog: Send + Sync {
    fn mark(&self, addr: GuestAddress, len: u64);
}

/// The hooks of one queue. Cheap to clone (shared parts), and empty by default:
/// then the server does nothing beyond counting.
#[derive(Clone, Default)]
pub struct QueueHooks {
    pub stats: Arc<QueueStats>,
    pub admission: Option<Arc<dyn Admission>>,
    pub inflight: Option<Arc<dyn InflightLog>>,
    pub dirty: Option<Arc<dyn DirtyLog>>,
}

impl std::fmt::Debug for QueueHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueHooks")
            .field("stats", &self.stats)
            .field("admission", &self.admission.is_some())
            .field("inflight", &self.inflight.is_some())
            .field("dirty", &self.dirty.is_some())
            .finish()
    }
}
