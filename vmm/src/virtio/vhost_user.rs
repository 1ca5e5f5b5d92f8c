//! The device side of a virtio device served by a vhost-user backend: one
//! connection, through `vhost::vhost_user::Frontend`.
//!
//! [`Backend::connect`] runs what QEMU does when it creates the device: GET_FEATURES,
//! GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM (with MQ), SET_OWNER. When the guest
//! driver sets DRIVER_OK, the transport calls [`Backend::set_features`],
//! [`Backend::set_mem_table`] and, per ready queue, [`Backend::start_queue`]
//! (SET_VRING_NUM/ADDR/BASE/CALL/KICK/ENABLE). A device reset calls
//! [`Backend::stop_queue`] (SET_VRING_ENABLE 0, GET_VRING_BASE) for each started queue.
//!
//! The message sequence is the one of the test driver in
//! `vhostkit_common::driver::device`; the driver owns its rings and memory, here the
//! guest does, so only the sequence is shared, not the code.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VHOST_USER_MAX_VRINGS,
};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vhostkit_common::watchdog::ControlWatchdog;
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;

/// `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30): vhost-user only, never shown to the guest.
pub const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// How long the VMM waits for the backend's answer to one control request: a backend
/// that stops answering fails the request (a watchdog shuts the socket down), and
/// the VMM goes on, instead of hanging a vCPU forever.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to the vhost-user backend at {0}")]
    Connect(String, #[source] io::Error),
    #[error("vhost-user {0} failed")]
    Request(&'static str, #[source] vhost::Error),
    #[error("vhost-user {0}: no answer from the backend within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("the backend has {0} queues (at most {VHOST_USER_MAX_VRINGS} supported)")]
    QueueCount(u64),
    #[error("the backend lacks the CONFIG protocol feature: no config space")]
    NoConfig,
    #[error("GET_CONFIG answered {got} bytes for {wanted}")]
    ConfigSize { got: usize, wanted: usize },
    #[error("guest memory region without a file: the backend cannot map it")]
    Memory(#[source] vhost::Error),
}

pub type Result<T> = std::result::Result<T, BackendError>;

impl BackendError {
    /// Whether the backend is gone (the connection broke or reached its end), as
    /// opposed to refusing a request. The VMM's watch reports a hang-up as the error
    /// that ends the VM; the device that hit it only notes it.
    pub fn is_disconnect(&self) -> bool {
        use vhost::vhost_user::Error as E;
        match self {
            BackendError::Request(_, vhost::Error::VhostUserProtocol(e)) => matches!(
                e,
                E::SocketBroken(_) | E::Disconnected | E::PartialMessage | E::SocketError(_)
            ),
            _ => false,
        }
    }
}

/// Host virtual addresses of a queue's three areas (what SET_VRING_ADDR carries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingHostAddrs {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

/// A connected vhost-user backend.
pub struct Backend {
    conn: Connection,
    /// The same connection, for watching it for a hang-up.
    socket: UnixStream,
    features: u64,
    protocol: VhostUserProtocolFeatures,
    num_queues: u16,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("features", &format_args!("{:#x}", self.features))
            .field("protocol", &self.protocol)
            .field("num_queues", &self.num_queues)
            .finish()
    }
}

/// The connection: every request goes through [`Connection::req`], under the
/// watchdog.
struct Connection {
    frontend: Frontend,
    watchdog: ControlWatchdog,
}

impl Connection {
    fn req<T>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T> {
        self.watchdog.arm();
        let r = f(&mut self.frontend);
        let fired = self.watchdog.disarm();
        r.map_err(|e| {
            if fired {
                BackendError::Timeout(what, CONTROL_TIMEOUT)
            } else {
                BackendError::Request(what, e)
            }
        })
    }
}

impl Backend {
    /// Connects to `socket` and runs the set-up that needs no guest: features,
    /// protocol features (MQ, REPLY_ACK, CONFIG where offered), queue count, owner.
    pub fn connect(socket: &Path) -> Result<Self> {
        let connect_err = |e| BackendError::Connect(socket.display().to_string(), e);
        let stream = UnixStream::connect(socket).map_err(connect_err)?;
        let watch = stream.try_clone().map_err(connect_err)?;
        let watchdog =
            ControlWatchdog::new(stream.try_clone().map_err(connect_err)?, CONTROL_TIMEOUT)
                .map_err(connect_err)?;
        let mut conn = Connection {
            frontend: Frontend::from_stream(stream, VHOST_USER_MAX_VRINGS),
            watchdog,
        };
        let features = conn.req("GET_FEATURES", |f| f.get_features())?;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if features & PROTOCOL_FEATURES != 0 {
            let offered = conn.req("GET_PROTOCOL_FEATURES", |f| f.get_protocol_features())?;
            protocol = offered
                & (VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::CONFIG);
            conn.req("SET_PROTOCOL_FEATURES", |f| {
                f.set_protocol_features(protocol)
            })?;
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every message without a reply of its own asks for an ack: a refusal
                // is the error of the call that caused it.
                conn.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        let mut num_queues = 1;
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            num_queues = conn.req("GET_QUEUE_NUM", |f| f.get_queue_num())?;
            if num_queues == 0 || num_queues > VHOST_USER_MAX_VRINGS {
                return Err(BackendError::QueueCount(num_queues));
            }
        }
        conn.req("SET_OWNER", |f| f.set_owner())?;
        Ok(Backend {
            conn,
            socket: watch,
            features,
            protocol,
            num_queues: num_queues as u16,
        })
    }

    /// The connection's socket: it polls readable with POLLRDHUP once the backend
    /// hangs up (nothing else arrives unasked on it).
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Virtio feature bits the backend offers (including `PROTOCOL_FEATURES`).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Protocol features in use.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// Queues the backend has.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    fn protocol_negotiated(&self) -> bool {
        self.features & PROTOCOL_FEATURES != 0
    }

    /// SET_FEATURES with the guest's `acked` bits (plus `PROTOCOL_FEATURES` when in use).
    pub fn set_features(&mut self, acked: u64) -> Result<()> {
        let features = acked | (self.features & PROTOCOL_FEATURES);
        self.conn.req("SET_FEATURES", |f| f.set_features(features))
    }

    /// SET_MEM_TABLE with every region of `mem` (all must be file-backed).
    pub fn set_mem_table(&mut self, mem: &GuestMemory) -> Result<()> {
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<vhost::Result<Vec<_>>>()
            .map_err(BackendError::Memory)?;
        self.conn
            .req("SET_MEM_TABLE", |f| f.set_mem_table(&regions))
            .map(drop)
    }

    /// Hands queue `index` to the backend: SET_VRING_NUM, SET_VRING_ADDR (host
    /// addresses), SET_VRING_BASE 0, SET_VRING_CALL, SET_VRING_KICK, and
    /// SET_VRING_ENABLE 1 when protocol features are in use.
    pub fn start_queue(
        &mut self,
        index: u16,
        size: u16,
        addrs: RingHostAddrs,
        call: &EventFd,
        kick: &EventFd,
    ) -> Result<()> {
        let i = usize::from(index);
        let config = VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: addrs.desc,
            used_ring_addr: addrs.used,
            avail_ring_addr: addrs.avail,
            log_addr: None,
        };
        self.conn
            .req("SET_VRING_NUM", |f| f.set_vring_num(i, size))?;
        self.conn
            .req("SET_VRING_ADDR", |f| f.set_vring_addr(i, &config))?;
        self.conn
            .req("SET_VRING_BASE", |f| f.set_vring_base(i, 0))?;
        self.conn
            .req("SET_VRING_CALL", |f| f.set_vring_call(i, call))?;
        self.conn
            .req("SET_VRING_KICK", |f| f.set_vring_kick(i, kick))?;
        if self.protocol_negotiated() {
            self.conn
                .req("SET_VRING_ENABLE", |f| f.set_vring_enable(i, true))?;
        }
        Ok(())
    }

    /// Stops queue `index` on the backend (SET_VRING_ENABLE 0 when protocol features
    /// are in use, then GET_VRING_BASE); returns the backend's next avail index.
    pub fn stop_queue(&mut self, index: u16) -> Result<u32> {
        let i = usize::from(index);
        if self.protocol_negotiated() {
            self.conn
                .req("SET_VRING_ENABLE", |f| f.set_vring_enable(i, false))?;
        }
        self.conn.req("GET_VRING_BASE", |f| f.get_vring_base(i))
    }

    /// Reads `buf.len()` bytes of device config space at `offset` (GET_CONFIG).
    ///
    /// The request always starts at offset 0 and covers `offset + buf.len()` bytes,
    /// as QEMU's frontend does (it fetches the whole config): libvhost-user backends
    /// such as qemu-storage-daemon ignore GET_CONFIG's offset and return the config
    /// from its start.
    pub fn get_config(&mut self, offset: u32, buf: &mut [u8]) -> Result<()> {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(BackendError::NoConfig);
        }
        let start = offset as usize;
        let wanted = start + buf.len();
        let zero = vec![0u8; wanted];
        let (_, payload) = self.conn.req("GET_CONFIG", |f| {
            f.get_config(0, wanted as u32, VhostUserConfigFlags::empty(), &zero)
        })?;
        if payload.len() != wanted {
            return Err(BackendError::ConfigSize {
                got: payload.len(),
                wanted,
            });
        }
        buf.copy_from_slice(&payload[start..]);
        Ok(())
    }

    /// Writes device config space at `offset` (SET_CONFIG).
    pub fn set_config(&mut self, offset: u32, data: &[u8]) -> Result<()> {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(BackendError::NoConfig);
        }
        self.conn.req("SET_CONFIG", |f| {
            f.set_config(offset, VhostUserConfigFlags::WRITABLE, data)
        })
    }
}
