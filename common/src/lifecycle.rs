//! The daemon lifecycle: listen, serve one frontend at a time, and after it
//! disconnects (or dies) accept the next one, until a stop is requested.
//!
//! Each connection gets a fresh backend instance and a fresh `VhostUserDaemon`, so
//! nothing a previous frontend negotiated (features, rings, memory) leaks into the
//! next one; dropping the daemon after a connection ends stops and joins its worker
//! threads (the backend's `exit_event` makes that possible).
//!
//! A stop (SIGTERM, SIGINT or SIGHUP through [`install_signal_handler`], or
//! [`StopHandle::stop`]) shuts the current connection down, waits for the workers,
//! removes the socket the daemon created and returns.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{error, info, warn};
use thiserror::Error;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VhostUserDaemon, VringEpollHandler};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::cli::ListenAddr;
use crate::socket::SocketFile;

/// Guest memory as every vhostkit backend sees it: no dirty-page bitmap.
pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap<()>>;
/// The vring type every vhostkit backend uses.
pub type Vring = vhost_user_backend::VringRwLock<GuestMemory>;

/// Errors of the lifecycle.
#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot listen on {path}")]
    Listen {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the per-connection backend")]
    NewBackend(#[source] io::Error),
    // vhost_user_backend::Error implements Display but not std::error::Error.
    #[error("cannot create the vhost-user daemon: {0}")]
    NewDaemon(vhost_user_backend::Error),
    #[error("cannot register the backend's event sources")]
    Attach(#[source] io::Error),
    #[error("waiting for a connection or a stop failed")]
    Poll(#[source] io::Error),
    #[error("cannot set up signal handling")]
    Signals(#[source] io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A backend the lifecycle can serve: a [`VhostUserBackend`] on plain guest memory,
/// plus the hook that registers its extra event sources with the worker threads.
pub trait ServedBackend: VhostUserBackend<Bitmap = (), Vring = Vring> + Clone + 'static {
    /// Called once per connection, before the frontend is accepted. `handlers[i]`
    /// runs worker thread `i` (see `queues_per_thread`); register extra file
    /// descriptors (completion eventfds, taps) there with ids above `num_queues()`.
    /// Do not keep the handlers: they own the backend, and keeping them would leak
    /// the connection's threads.
    fn attach(&self, _handlers: &[Arc<VringEpollHandler<Self>>]) -> io::Result<()> {
        Ok(())
    }
}

/// The exit events of one connection's worker threads (the backend's
/// `exit_event`), closed when the connection's backend goes.
///
/// vhost-user-backend 0.24 keeps the consumer end of each exit event only as a raw
/// descriptor (`VringEpollHandler::new` calls `into_raw_fd` on it) and never closes
/// it: one descriptor leaked per worker thread per connection, so a frontend that
/// reconnects long enough would exhaust the daemon's descriptor table. A backend
/// makes its pairs here; once the connection's threads are joined and the backend
/// dropped (the library's last use of the descriptor was registering it with the
/// thread's epoll, gone with the thread), the consumers are closed.
#[derive(Debug, Default)]
pub struct ExitEvents {
    consumers: Mutex<Vec<std::os::fd::RawFd>>,
}

impl ExitEvents {
    /// A new pair for one worker thread.
    pub fn new_pair(
        &self,
    ) -> Option<(
        vmm_sys_util::event::EventConsumer,
        vmm_sys_util::event::EventNotifier,
    )> {
        let (consumer, notifier) = vmm_sys_util::event::new_event_consumer_and_notifier(
            vmm_sys_util::event::EventFlag::NONBLOCK,
        )
        .ok()?;
        self.consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(consumer.as_raw_fd());
        Some((consumer, notifier))
    }
}

impl Drop for ExitEvents {
    fn drop(&mut self) {
        for fd in self
            .consumers
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            // SAFETY: the library turned this descriptor into a raw one and never
            // closes it; its only use, the connection's epoll, is gone with the
            // connection's threads, which were joined before the backend (and
            // this) was dropped. Nothing else owns the number.
            unsafe { libc::close(fd) };
        }
    }
}

struct StopState {
    stopped: AtomicBool,
    wake: EventFd,
    connection: Mutex<Option<ShutdownHandle>>,
}

/// Requests the serve loop to end: the current frontend is disconnected, the
/// workers are joined and [`serve`] returns.
#[derive(Clone)]
pub struct StopHandle {
    state: Arc<StopState>,
}

impl StopHandle {
    pub fn new() -> io::Result<Self> {
        Ok(StopHandle {
            state: Arc::new(StopState {
                stopped: AtomicBool::new(false),
                wake: EventFd::new(EFD_NONBLOCK)?,
                connection: Mutex::new(None),
            }),
        })
    }

    pub fn stop(&self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        let _ = self.state.wake.write(1);
        if let Some(conn) = self.lock_connection().as_ref() {
            conn.shutdown();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.state.stopped.load(Ordering::SeqCst)
    }

    fn lock_connection(&self) -> std::sync::MutexGuard<'_, Option<ShutdownHandle>> {
        // A poisoned lock only means another thread panicked while holding a handle.
        self.state
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_connection(&self, handle: Option<ShutdownHandle>) {
        let mut conn = self.lock_connection();
        *conn = handle;
        if self.is_stopped() {
            if let Some(conn) = conn.as_ref() {
                conn.shutdown();
            }
        }
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and so in every thread it
/// starts later) and starts a thread that turns them into [`StopHandle::stop`]. Call
/// it from `main` before anything starts threads.
///
/// If the serve loop has not finished `grace` after the signal (a stuck frontend or
/// I/O), the signal thread removes `socket_to_remove` (if it is still ours) and
/// exits the process itself.
pub fn install_signal_handler(
    stop: StopHandle,
    socket_to_remove: Option<Arc<SocketFile>>,
    grace: Duration,
) -> Result<()> {
    // SAFETY: sigset_t is plain data that sigemptyset initialises before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame; these calls only write it
    // and this thread's signal mask.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(Error::Signals(io::Error::from_raw_os_error(rc)));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` is initialised and `signal` is a valid out pointer.
            let rc = unsafe { libc::sigwait(&set, &mut signal) };
            if rc != 0 {
                error!("sigwait failed: {}", io::Error::from_raw_os_error(rc));
                return;
            }
            info!("signal {signal} received, shutting down");
            stop.stop();
            std::thread::sleep(grace);
            warn!("shutdown did not finish within {grace:?}; exiting now");
            if let Some(socket) = socket_to_remove {
                socket.remove();
            }
            std::process::exit(0);
        })
        .map_err(Error::Signals)?;
    Ok(())
}

/// The listener for `addr`, and for a socket it created, the file to remove at the end.
fn open_listener(addr: &ListenAddr) -> Result<(Listener, Option<Arc<SocketFile>>)> {
    match addr {
        ListenAddr::Path { path, group } => crate::socket::bind(path, *group)
            .map(|(listener, file)| (Listener::from(listener), Some(Arc::new(file))))
            .map_err(|source| Error::Listen {
                path: path.display().to_string(),
                source,
            }),
        ListenAddr::Fd(fd) => {
            // Check it is a socket before taking ownership of it.
            // SAFETY: fstat only writes the stat buffer we pass.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `st` is a valid, writable stat buffer.
            if unsafe { libc::fstat(*fd, &mut st) } != 0
                || (st.st_mode & libc::S_IFMT) != libc::S_IFSOCK
            {
                return Err(Error::Listen {
                    path: format!("fd {fd}"),
                    source: io::Error::other("not an open socket"),
                });
            }
            // SAFETY: the fd is an open socket handed to us on the command line for
            // exclusive use; nothing else in this process owns it.
            Ok((unsafe { Listener::from_raw_fd(*fd) }, None))
        }
    }
}

/// Waits until the listener has a connection pending (true) or a stop was requested.
fn wait_for_connection(listener: &Listener, stop: &StopHandle) -> Result<bool> {
    loop {
        if stop.is_stopped() {
            return Ok(false);
        }
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.state.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the length given.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Poll(err));
        }
        if stop.is_stopped() {
            return Ok(false);
        }
        if fds[0].revents != 0 {
            return Ok(true);
        }
    }
}

/// A frontend that hangs up (a VMM exiting, a guest powering off) ends the
/// connection with one of these; anything else is worth a warning.
fn is_plain_disconnect(e: &vhost_user_backend::Error) -> bool {
    use vhost::vhost_user::Error as VuError;
    matches!(
        e,
        vhost_user_backend::Error::HandleRequest(VuError::Disconnected | VuError::PartialMessage)
    )
}

/// A listening vhost-user socket. A daemon binds it ([`listen`]) before it drops
/// its privileges (the socket's group needs CAP_CHOWN) and serves on it later
/// ([`serve_on`]). Dropping it removes the socket file it created, if that is
/// still its own.
pub struct Listening {
    listener: Listener,
    addr: ListenAddr,
    socket_file: Option<Arc<SocketFile>>,
}

impl Listening {
    /// The socket file this daemon created (None for an inherited one), for the
    /// signal handler that removes it if a stop takes too long.
    pub fn socket_file(&self) -> Option<Arc<SocketFile>> {
        self.socket_file.clone()
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Some(file) = &self.socket_file {
            file.remove();
        }
    }
}

/// Creates (or takes, for `--fd`) the listening socket of `addr`.
pub fn listen(addr: &ListenAddr) -> Result<Listening> {
    let (listener, socket_file) = open_listener(addr)?;
    Ok(Listening {
        listener,
        addr: addr.clone(),
        socket_file,
    })
}

/// Serves frontends on `addr` one after another until `stop` is requested.
///
/// `new_backend` makes the backend for each connection (sharing whatever it
/// captured, like an open image file). Errors of a single connection are logged and
/// the next frontend is accepted; only set-up errors end the loop.
pub fn serve<B, F>(name: &str, addr: &ListenAddr, stop: &StopHandle, new_backend: F) -> Result<()>
where
    B: ServedBackend,
    F: FnMut() -> io::Result<B>,
{
    serve_on(name, listen(addr)?, stop, new_backend)
}

/// [`serve`] on a socket bound before.
pub fn serve_on<B, F>(
    name: &str,
    mut listening: Listening,
    stop: &StopHandle,
    mut new_backend: F,
) -> Result<()>
where
    B: ServedBackend,
    F: FnMut() -> io::Result<B>,
{
    match &listening.addr {
        ListenAddr::Path { path, .. } => info!("{name}: listening on {}", path.display()),
        ListenAddr::Fd(fd) => info!("{name}: listening on inherited fd {fd}"),
    }
    // Dropping `listening` afterwards removes the socket file it created.
    serve_connections(name, &mut listening.listener, stop, &mut new_backend)
}

/// The accept loop of [`serve_on`].
fn serve_connections<B, F>(
    name: &str,
    listener: &mut Listener,
    stop: &StopHandle,
    new_backend: &mut F,
) -> Result<()>
where
    B: ServedBackend,
    F: FnMut() -> io::Result<B>,
{
    let mut connections: u64 = 0;
    while wait_for_connection(listener, stop)? {
        let backend = new_backend().map_err(Error::NewBackend)?;
        let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new(name.to_string(), backend.clone(), memory)
            .map_err(Error::NewDaemon)?;
        backend
            .attach(&daemon.get_epoll_handlers())
            .map_err(Error::Attach)?;
        if let Err(e) = daemon.start(listener) {
            crate::rate_limited!(log::Level::Error, 30, "accepting a frontend failed: {e}");
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        connections += 1;
        crate::rate_limited!(log::Level::Info, 30, "frontend {connections} connected");
        stop.set_connection(daemon.shutdown_handle());
        match daemon.wait() {
            Ok(()) => {
                crate::rate_limited!(log::Level::Info, 30, "frontend {connections} disconnected")
            }
            Err(e) if is_plain_disconnect(&e) => {
                crate::rate_limited!(log::Level::Info, 30, "frontend {connections} disconnected")
            }
            Err(e) => crate::rate_limited!(
                log::Level::Warn,
                30,
                "frontend {connections} connection ended: {e}"
            ),
        }
        stop.set_connection(None);
        // Dropping the daemon sends the exit event to the workers and joins them.
        drop(daemon);
    }
    info!("{name}: stopped after {connections} frontend(s)");
    Ok(())
}
