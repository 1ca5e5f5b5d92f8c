//! Interrupt coalescing: how long the kick loop may hold back the guest's signal
//! for requests it has completed, waiting (with notifications off) for the guest's
//! next requests, so that one interrupt answers many.
//!
//! Why: a guest pays for every interrupt (entry, handler, completion of the
//! block-layer or network work, the wake-up of the waiting process) and for every
//! kick (a trap out of the guest). A backend that completes each request as soon as
//! it is popped, page-cache reads for instance, answers a guest that submits
//! requests one at a time with one interrupt each, and the guest then kicks again
//! for its next request. Measured inside a guest under QEMU TCG (guest-bench, 4k
//! random reads at QD32): about 0.66 interrupts and 0.8 kicks per request, which
//! cost the guest more CPU than the I/O itself. Holding the signal while the guest
//! is still submitting cuts both to a few per 100 requests.
//!
//! Holding only pays while the guest is busy submitting; a guest that waits for
//! the answer (one request at a time) only gets it later. So the hold adapts, as
//! NIC interrupt moderation does: a hold that caught no new request in its first
//! window means the guest was waiting, and the queue then signals at once for the
//! next [`Coalescer::REST_EPISODES`] answers before it tries holding again. And no
//! completion waits longer than [`Coalescer::cap`] (`CAP_WINDOWS` windows) for its
//! signal however long the guest goes on submitting.

use std::cell::Cell;
use std::time::Duration;

/// One queue's interrupt-coalescing policy. See the module documentation.
#[derive(Debug, Clone)]
pub struct Coalescer {
    /// How long one hold waits for the guest's next requests; zero: never hold.
    window: Duration,
    /// Answers left to signal at once before holding again (0: holding).
    resting: u32,
}

impl Coalescer {
    /// Hold windows per episode at most: a completion waits at most this many
    /// windows for its signal.
    pub const CAP_WINDOWS: u32 = 16;
    /// After a hold caught nothing, this many answers are signalled at once before
    /// the queue tries holding again.
    pub const REST_EPISODES: u32 = 16;

    /// Never holds: every answer is signalled as soon as the ring runs dry.
    pub fn off() -> Self {
        Self::adaptive(Duration::ZERO)
    }

    /// Holds for windows of `window` while the guest keeps submitting (zero: off).
    pub fn adaptive(window: Duration) -> Self {
        Coalescer { window, resting: 0 }
    }

    /// How long to hold the signal now, or `None` to signal at once.
    pub fn window(&self) -> Option<Duration> {
        (!self.window.is_zero() && self.resting == 0).then_some(self.window)
    }

    /// The longest a completion is held before its signal.
    pub fn cap(&self) -> Duration {
        self.window * Self::CAP_WINDOWS
    }

    /// A hold ended; `caught` says whether any of its windows found new requests.
    pub fn hold_ended(&mut self, caught: bool) {
        if !caught {
            self.resting = Self::REST_EPISODES;
        }
    }

    /// An answer was signalled without a hold (the queue is resting).
    pub fn signalled_at_once(&mut self) {
        self.resting = self.resting.saturating_sub(1);
    }

    /// Sleeps for one hold window (see [`Self::precise_timers`]).
    pub fn wait(window: Duration) {
        Self::precise_timers();
        std::thread::sleep(window);
    }

    /// Makes the calling thread's timer slack 1 us, once: the default 50 us would
    /// stretch a 50 us window (a sleep's, or a poll's timeout) to 100.
    pub fn precise_timers() {
        thread_local! {
            static SLACK_SET: Cell<bool> = const { Cell::new(false) };
        }
        SLACK_SET.with(|set| {
            if !set.get() {
                set.set(true);
                // SAFETY: PR_SET_TIMERSLACK takes an integer and touches no memory
                // of ours; failing only leaves the default slack.
                unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000u64, 0u64, 0u64, 0u64) };
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_while_the_guest_submits_and_rests_after_a_hold_that_caught_nothing() {
        let us = Duration::from_micros;
        let mut c = Coalescer::adaptive(us(50));
        assert_eq!(c.window(), Some(us(50)));
        assert_eq!(c.cap(), us(50) * Coalescer::CAP_WINDOWS);
        c.hold_ended(true);
        assert_eq!(c.window(), Some(us(50)), "a useful hold keeps holding");
        c.hold_ended(false);
        for _ in 0..Coalescer::REST_EPISODES {
            assert_eq!(c.window(), None, "a guest that waited is answered at once");
            c.signalled_at_once();
        }
        assert_eq!(c.window(), Some(us(50)), "then holding is tried again");
    }

    #[test]
    fn off_never_holds() {
        let mut c = Coalescer::off();
        assert_eq!(c.window(), None);
        c.hold_ended(true);
        c.signalled_at_once();
        assert_eq!(c.window(), None);
    }
}
