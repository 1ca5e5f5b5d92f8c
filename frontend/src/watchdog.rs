//! A bound on how long the frontend waits for its backend's answer to one control
//! request ([`crate::Connection`] arms it around every request).

use std::io;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Shuts the control socket down if a request takes longer than the timeout.
///
/// vhost's `Frontend` retries a receive that times out (`SO_RCVTIMEO`) forever, so a
/// socket timeout alone cannot bound a request; shutting the socket down makes the
/// pending receive return and the request fail.
pub struct ControlWatchdog {
    shared: Arc<(Mutex<WatchState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    timeout: Duration,
}

#[derive(Default)]
struct WatchState {
    deadline: Option<Instant>,
    fired: bool,
    stop: bool,
}

impl ControlWatchdog {
    /// Watches `stream` (a clone of the frontend's socket): a request armed for longer
    /// than `timeout` gets the socket shut down.
    pub fn new(stream: UnixStream, timeout: Duration) -> io::Result<Self> {
        let shared = Arc::new((Mutex::new(WatchState::default()), Condvar::new()));
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vhost-user-watchdog".into())
            .spawn(move || {
                let (lock, cv) = &*s;
                let mut st = lock.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    if st.stop {
                        return;
                    }
                    st = match st.deadline {
                        None => cv.wait(st).unwrap_or_else(PoisonError::into_inner),
                        Some(d) => {
                            let now = Instant::now();
                            if now >= d {
                                let _ = stream.shutdown(std::net::Shutdown::Both);
                                st.fired = true;
                                st.deadline = None;
                                st
                            } else {
                                cv.wait_timeout(st, d - now)
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .0
                            }
                        }
                    };
                }
            })?;
        Ok(ControlWatchdog {
            shared,
            thread: Some(thread),
            timeout,
        })
    }

    fn state(&self) -> MutexGuard<'_, WatchState> {
        self.shared.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the clock for one request.
    pub fn arm(&self) {
        self.state().deadline = Some(Instant::now() + self.timeout);
        self.shared.1.notify_one();
    }

    /// The bound it was made with.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Disarms; returns whether it fired (now or earlier).
    pub fn disarm(&self) -> bool {
        let mut st = self.state();
        st.deadline = None;
        st.fired
    }
}

impl Drop for ControlWatchdog {
    fn drop(&mut self) {
        self.state().stop = true;
        self.shared.1.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
