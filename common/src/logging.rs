//! Logging set-up, and a rate limiter for log lines that a guest can trigger.
//!
//! A hostile guest must not be able to flood the host's logs: every call site that
//! logs guest-caused errors goes through [`guest_error!`], which lets a burst through
//! and then one line per second at most, counting what it suppressed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Sets up env_logger at `level` ("info", "debug", ...). `RUST_LOG` refines it.
pub fn init(level: &str) {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder.format_timestamp_micros();
    // A second init (tests) is harmless.
    let _ = builder.try_init();
}

fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A token bucket per call site: `burst` lines at once, refilled at one per second.
pub struct RateLimit {
    burst: u64,
    /// Time (ms since start) at which the bucket is full again; a line costs 1000 ms.
    full_at_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub const fn new(burst: u64) -> Self {
        RateLimit {
            burst,
            full_at_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged now; if so, also how many were suppressed since
    /// the last one that was.
    pub fn check(&self) -> Option<u64> {
        self.check_at(monotonic_ms())
    }

    fn check_at(&self, now: u64) -> Option<u64> {
        let window = self.burst * 1000;
        let mut current = self.full_at_ms.load(Ordering::Relaxed);
        loop {
            let base = current.max(now);
            if base + 1000 > now + window {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match self.full_at_ms.compare_exchange_weak(
                current,
                base + 1000,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Err(actual) => current = actual,
            }
        }
    }
}

/// `log::error!` for errors a guest or frontend can cause, rate-limited per call site.
#[macro_export]
macro_rules! guest_error {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::logging::RateLimit = $crate::logging::RateLimit::new(10);
        if let Some(suppressed) = LIMIT.check() {
            if suppressed > 0 {
                log::error!("{} ({} similar lines suppressed)", format_args!($($arg)+), suppressed);
            } else {
                log::error!($($arg)+);
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_one_per_second() {
        let limit = RateLimit::new(3);
        let t = 10_000;
        assert_eq!(limit.check_at(t), Some(0));
        assert_eq!(limit.check_at(t), Some(0));
        assert_eq!(limit.check_at(t), Some(0));
        assert_eq!(limit.check_at(t), None);
        assert_eq!(limit.check_at(t + 500), None);
        // One token back after a second; it reports the two suppressed lines.
        assert_eq!(limit.check_at(t + 1000), Some(2));
        assert_eq!(limit.check_at(t + 1000), None);
        // A long quiet period refills the whole burst, not more.
        let later = t + 60_000;
        for _ in 0..3 {
            assert!(limit.check_at(later).is_some());
        }
        assert_eq!(limit.check_at(later), None);
    }
}
