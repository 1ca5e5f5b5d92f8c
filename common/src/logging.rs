//! Logging set-up, and rate limiting for log lines that a guest or a frontend can
//! trigger.
//!
//! A hostile guest, or a frontend that floods the socket, must not be able to flood
//! the host's logs. Two layers see to it:
//! - our own call sites that a guest or frontend can reach log through
//!   [`guest_error!`], [`guest_warn!`], [`guest_info!`] or [`guest_debug!`]: a
//!   token bucket per call site lets a burst through and then one line per second,
//!   counting what it suppressed;
//! - the logger [`init`] installs puts every line of the libraries we build on
//!   (vhost, vhost-user-backend, virtio-queue, ...) through a bucket per call site
//!   too: they log per message or per descriptor on errors a peer causes (an
//!   out-of-range queue size, a used entry for a bad head), and we cannot change
//!   those call sites.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Lines a library call site may log at once before the one-a-second limit.
pub const LIBRARY_BURST: u64 = 10;

/// Sets up env_logger at `level` ("info", "debug", ...), `RUST_LOG` refining it,
/// behind [`LibraryLimiter`].
pub fn init(level: &str) {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder.format_timestamp_micros();
    let logger = builder.build();
    let max = logger.filter();
    // A second init (tests) is harmless.
    if log::set_boxed_logger(Box::new(LibraryLimiter::new(logger))).is_ok() {
        log::set_max_level(max);
    }
}

/// Whether a log target (module path) is one of this workspace's crates, whose
/// guest-reachable call sites are limited where they log.
pub fn is_our_target(target: &str) -> bool {
    const OURS: [&str; 7] = [
        "vhost_blk",
        "vhost_net",
        "vhost_fs",
        "vhost_user_blk",
        "vhost_user_net",
        "vhost_user_fs",
        "vhostkit",
    ];
    let krate = target.split("::").next().unwrap_or(target);
    OURS.contains(&krate) || krate.starts_with("vhostkit_")
}

/// A logger that passes our own lines on and puts every other crate's lines
/// through a token bucket per call site (file and line), [`LIBRARY_BURST`] lines
/// at once, then one a second.
pub struct LibraryLimiter<L> {
    inner: L,
    sites: Mutex<HashMap<(&'static str, u32), RateLimit>>,
}

impl<L: log::Log> LibraryLimiter<L> {
    pub fn new(inner: L) -> Self {
        LibraryLimiter {
            inner,
            sites: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `record` may go out now, and how many of its call site's lines were
    /// suppressed before it.
    fn admit(&self, record: &log::Record<'_>) -> Option<u64> {
        if is_our_target(record.target()) {
            return Some(0);
        }
        // A call site without a static file name shares one bucket with the others.
        let key = (
            record.file_static().unwrap_or("<dynamic>"),
            record.line().unwrap_or(0),
        );
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        sites
            .entry(key)
            .or_insert_with(|| RateLimit::new(LIBRARY_BURST))
            .check()
    }
}

impl<L: log::Log> log::Log for LibraryLimiter<L> {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        match self.admit(record) {
            None => {}
            Some(0) => self.inner.log(record),
            Some(suppressed) => self.inner.log(
                &log::Record::builder()
                    .args(format_args!(
                        "{} ({suppressed} similar lines suppressed)",
                        record.args()
                    ))
                    .metadata(record.metadata().clone())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            ),
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    // Milliseconds since start-up fit 64 bits for half a billion years.
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
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

/// `log::log!` at `level` for lines a guest or frontend can cause, rate-limited per
/// call site: `burst` lines at once, then one a second. Lines below the enabled
/// level cost nothing and spend no tokens.
#[macro_export]
macro_rules! rate_limited {
    ($level:expr, $burst:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::logging::RateLimit = $crate::logging::RateLimit::new($burst);
        if log::log_enabled!($level) {
            if let Some(suppressed) = LIMIT.check() {
                if suppressed > 0 {
                    log::log!($level, "{} ({} similar lines suppressed)", format_args!($($arg)+), suppressed);
                } else {
                    log::log!($level, $($arg)+);
                }
            }
        }
    }};
}

/// `log::error!` for errors a guest or frontend can cause, rate-limited per call site.
#[macro_export]
macro_rules! guest_error {
    ($($arg:tt)+) => { $crate::rate_limited!(log::Level::Error, 10, $($arg)+) };
}

/// `log::warn!` for what a guest or frontend can cause, rate-limited per call site.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => { $crate::rate_limited!(log::Level::Warn, 10, $($arg)+) };
}

/// `log::info!` for what a guest or frontend can cause (a guest's choice of queues, a
/// frontend connecting), rate-limited per call site.
#[macro_export]
macro_rules! guest_info {
    ($($arg:tt)+) => { $crate::rate_limited!(log::Level::Info, 10, $($arg)+) };
}

/// `log::debug!` for what a guest or frontend can cause, rate-limited per call site.
#[macro_export]
macro_rules! guest_debug {
    ($($arg:tt)+) => { $crate::rate_limited!(log::Level::Debug, 10, $($arg)+) };
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

    /// Counts the lines that reach it.
    #[derive(Default)]
    struct Counting {
        lines: Mutex<Vec<String>>,
    }

    impl log::Log for Counting {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            self.lines.lock().unwrap().push(record.args().to_string());
        }
        fn flush(&self) {}
    }

    fn record_from<'a>(
        target: &'a str,
        line: u32,
        args: std::fmt::Arguments<'a>,
    ) -> log::Record<'a> {
        log::Record::builder()
            .target(target)
            .level(log::Level::Error)
            .file_static(Some("lib.rs"))
            .line(Some(line))
            .args(args)
            .build()
    }

    #[test]
    fn library_lines_are_limited_per_call_site_ours_are_not() {
        let limiter = LibraryLimiter::new(Counting::default());
        for _ in 0..1000 {
            log::Log::log(
                &limiter,
                &record_from("vhost_user_backend::handler", 7, format_args!("bad size")),
            );
            log::Log::log(
                &limiter,
                &record_from("virtio_queue::queue", 9, format_args!("bad head")),
            );
            log::Log::log(
                &limiter,
                &record_from("vhost_blk::worker", 1, format_args!("ours")),
            );
        }
        let lines = limiter.inner.lines.lock().unwrap();
        let count = |text: &str| lines.iter().filter(|l| l.contains(text)).count();
        // Each library call site: its burst (the test takes well under a second).
        assert!(
            count("bad size") <= usize::try_from(LIBRARY_BURST).unwrap() + 1,
            "{}",
            count("bad size")
        );
        assert!(count("bad head") <= usize::try_from(LIBRARY_BURST).unwrap() + 1);
        assert!(count("bad size") >= usize::try_from(LIBRARY_BURST).unwrap());
        assert_eq!(count("ours"), 1000);
    }

    #[test]
    fn our_targets() {
        for ours in [
            "vhost_blk::worker",
            "vhost_fs",
            "vhost_user_net",
            "vhostkit_common::lifecycle",
            "vhostkit",
        ] {
            assert!(is_our_target(ours), "{ours}");
        }
        for theirs in [
            "vhost_user_backend::handler",
            "vhost::vhost_user",
            "virtio_queue",
        ] {
            assert!(!is_our_target(theirs), "{theirs}");
        }
    }
}
