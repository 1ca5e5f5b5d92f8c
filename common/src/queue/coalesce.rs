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
use std::time::{Duration, Instant};

/// One hold of a queue's signal, from its first window to the signal.
#[derive(Debug, Default)]
pub struct Hold {
    since: Option<Instant>,
    caught: bool,
}

impl Hold {
    /// A window of this hold found new work; or it was cut short for other work
    /// of the thread, which says nothing about the guest.
    pub fn caught(&mut self) {
        self.caught = true;
    }
}

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

    /// The next window of `hold` (starting it if it has not started): how long
    /// to wait for the guest now, or `None` to signal now (the queue is not
    /// holding, or the hold reached its cap).
    pub fn next_window(&self, hold: &mut Hold) -> Option<Duration> {
        let window = self.window()?;
        let since = *hold.since.get_or_insert_with(Instant::now);
        (since.elapsed() < self.cap()).then_some(window)
    }

    /// The guest is being signalled: ends `hold` if one was under way and
    /// learns from it (see the module documentation).
    pub fn signalled(&mut self, hold: &mut Hold) {
        if hold.since.take().is_some() {
            if !std::mem::take(&mut hold.caught) {
                self.resting = Self::REST_EPISODES;
            }
        } else {
            self.resting = self.resting.saturating_sub(1);
        }
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
        assert_eq!(c.cap(), us(50) * Coalescer::CAP_WINDOWS);
        let mut hold = Hold::default();
        assert_eq!(c.next_window(&mut hold), Some(us(50)));
        hold.caught();
        assert_eq!(c.next_window(&mut hold), Some(us(50)));
        c.signalled(&mut hold);
        assert_eq!(
            c.next_window(&mut hold),
            Some(us(50)),
            "a useful hold: hold again"
        );
        c.signalled(&mut hold);
        for _ in 0..Coalescer::REST_EPISODES {
            assert_eq!(
                c.next_window(&mut hold),
                None,
                "the guest waited: answer at once"
            );
            c.signalled(&mut hold);
        }
        assert_eq!(
            c.next_window(&mut hold),
            Some(us(50)),
            "then holding is tried again"
        );
    }

    #[test]
    fn off_never_holds() {
        let mut c = Coalescer::off();
        let mut hold = Hold::default();
        assert_eq!(c.next_window(&mut hold), None);
        c.signalled(&mut hold);
        assert_eq!(c.next_window(&mut hold), None);
    }

    #[test]
    fn a_hold_ends_at_its_cap() {
        let c = Coalescer::adaptive(Duration::from_micros(1));
        let mut hold = Hold::default();
        assert!(c.next_window(&mut hold).is_some());
        std::thread::sleep(c.cap() + Duration::from_micros(100));
        assert_eq!(c.next_window(&mut hold), None);
    }
}
