//! How long a queue busy-polls its avail ring after running dry, before it turns
//! guest notifications back on and sleeps until a kick.

use std::time::{Duration, Instant};

/// A queue's polling policy: off, a fixed time, or adaptive.
///
/// Adaptive polling follows the guest the way KVM adapts halt polling: a kick that
/// comes within `max` of the queue going idle means a longer poll would have caught
/// it (grow: 10 us, then doubling, up to `max`); a kick after more than `max` means
/// polling only burns CPU for this guest (shrink to 0). So a guest that sends its
/// next request at once (a process doing file system calls back to back) is served
/// without kicks or wake-ups, and a slow or idle one costs no spinning.
#[derive(Debug, Clone)]
pub struct Poller {
    adaptive: bool,
    max: Duration,
    current: Duration,
    idle_since: Option<Instant>,
}

impl Poller {
    const START: Duration = Duration::from_micros(10);

    /// Never polls.
    pub fn off() -> Self {
        Self::fixed(Duration::ZERO)
    }

    /// Always polls for `time` (zero: never).
    pub fn fixed(time: Duration) -> Self {
        Poller {
            adaptive: false,
            max: time,
            current: time,
            idle_since: None,
        }
    }

    /// Polls adaptively, at most `max` (zero: never).
    pub fn adaptive(max: Duration) -> Self {
        Poller {
            adaptive: true,
            max,
            current: Duration::ZERO,
            idle_since: None,
        }
    }

    /// A kick woke the queue at `now`: adapt to how long it was idle.
    pub fn woken(&mut self, now: Instant) {
        let Some(since) = self.idle_since.take() else {
            return;
        };
        if !self.adaptive || self.max.is_zero() {
            return;
        }
        if now.duration_since(since) <= self.max {
            self.current = (self.current * 2).clamp(Self::START, self.max);
        } else {
            self.current = Duration::ZERO;
        }
    }

    /// The queue goes to sleep at `now`, waiting for a kick.
    pub fn idle(&mut self, now: Instant) {
        self.idle_since = Some(now);
    }

    /// How long to poll now.
    pub fn current(&self) -> Duration {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_polling_grows_for_a_quick_guest_and_stops_for_a_slow_one() {
        let max = Duration::from_micros(50);
        let mut poll = Poller::adaptive(max);
        let t = Instant::now();
        let us = Duration::from_micros;
        poll.woken(t);
        assert_eq!(poll.current(), Duration::ZERO, "nothing learnt yet");
        // Kicks 20 us after going idle: a poll would have caught them.
        let mut now = t;
        for wanted in [10, 20, 40, 50, 50] {
            poll.idle(now);
            now += us(20);
            poll.woken(now);
            assert_eq!(poll.current(), us(wanted));
        }
        // A kick 1 ms after: polling is wasted on this guest.
        poll.idle(now);
        now += us(1000);
        poll.woken(now);
        assert_eq!(poll.current(), Duration::ZERO);
        // A maximum of 0 never polls.
        let mut off = Poller::adaptive(Duration::ZERO);
        off.idle(t);
        off.woken(t);
        assert_eq!(off.current(), Duration::ZERO);
    }

    #[test]
    fn fixed_polling_does_not_adapt() {
        let mut poll = Poller::fixed(Duration::from_micros(30));
        let t = Instant::now();
        poll.idle(t);
        poll.woken(t + Duration::from_secs(1));
        assert_eq!(poll.current(), Duration::from_micros(30));
        assert_eq!(Poller::off().current(), Duration::ZERO);
    }
}
