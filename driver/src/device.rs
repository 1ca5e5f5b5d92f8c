//! One vhost-user connection: feature negotiation, memory table, queue set-up and
//! config space, through `vhost::vhost_user::Frontend`.
//!
//! Message order, as QEMU sends it: GET_FEATURES; GET_PROTOCOL_FEATURES and
//! SET_PROTOCOL_FEATURES (if `VHOST_USER_F_PROTOCOL_FEATURES` is offered);
//! GET_QUEUE_NUM (if MQ was acked); SET_OWNER; SET_FEATURES; SET_MEM_TABLE. Then per
//! queue ([`Driver::setup_queue`]): SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE,
//! SET_VRING_CALL, SET_VRING_KICK, SET_VRING_ENABLE. With REPLY_ACK acked, every
//! message that has no reply of its own asks for an ack, so a backend's refusal
//! shows up as an error of the call that caused it.
//!
//! [`DriverConfig::ring_enable`] moves the SET_VRING_ENABLE requests elsewhere, to
//! replay other orders the protocol allows: before SET_FEATURES as QEMU 7.2's
//! virtio-net does with one queue pair ([`RingEnable::BeforeFeatures`]), or
//! wherever the test sends them ([`RingEnable::Manual`]).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserVringState,
    VHOST_USER_MAX_VRINGS,
};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::ByteValued;

use super::memory::{GuestMem, DEFAULT_BASE};
use super::virtq::Queue;
use super::{Error, Result};
use vhostkit_common::watchdog::ControlWatchdog;

/// `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30).
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// When the driver enables the rings (SET_VRING_ENABLE 1). Only with
/// `VHOST_USER_F_PROTOCOL_FEATURES` acked: without it the backend enables every
/// ring at SET_FEATURES and the driver sends no SET_VRING_ENABLE at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RingEnable {
    /// After each queue's SET_VRING_KICK ([`Driver::attach_queue`]).
    #[default]
    AfterKick,
    /// Rings `0..n`, during the handshake after SET_OWNER and before SET_FEATURES
    /// (and not again): QEMU 7.2's virtio-net with one queue pair. It sends
    /// SET_VRING_ENABLE for its rings while the guest negotiates features (because
    /// the backend offered PROTOCOL_FEATURES), and after SET_FEATURES only when the
    /// guest's MQ command changes the pairs in use, which a one-pair device never
    /// sends. The vhost crate's frontend refuses to send the request before
    /// SET_FEATURES, so the driver writes these messages itself.
    BeforeFeatures(u16),
    /// Never by itself: the test sends SET_VRING_ENABLE
    /// ([`Driver::set_vring_enable`]) where it wants, e.g. before the rings are
    /// set up or after they carry frames.
    Manual,
}

/// What the driver asks for. Features are masks: the driver acks `offered & mask`.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Guest memory size in bytes (a multiple of 4 KiB).
    pub mem_size: u64,
    /// Guest physical address of guest memory.
    pub mem_base: u64,
    /// Virtio feature bits we are willing to ack.
    pub features: u64,
    /// Protocol feature bits we are willing to ack.
    pub protocol_features: VhostUserProtocolFeatures,
    /// Entries of the indirect table each descriptor gets (0: no indirect chains).
    pub max_indirect: u16,
    /// Longest a control request (one vhost-user message and its reply) may take;
    /// past it the socket is shut down and the request fails with
    /// [`Error::ControlTimeout`]. `None`: wait forever. A backend that serves one
    /// frontend at a time (qemu-storage-daemon) accepts a second connection but does
    /// not answer it, so without a timeout a second `connect` hangs.
    pub timeout: Option<Duration>,
    /// When the rings are enabled (see [`RingEnable`]).
    pub ring_enable: RingEnable,
}

impl DriverConfig {
    /// Feature bits the driver side implements: all device-specific bits (0..24),
    /// `VIRTIO_F_VERSION_1`, indirect descriptors, EVENT_IDX and
    /// `VHOST_USER_F_PROTOCOL_FEATURES`. Not packed rings, IN_ORDER, ACCESS_PLATFORM,
    /// NOTIFICATION_DATA or RING_RESET.
    pub const DEFAULT_FEATURES: u64 = 0x00ff_ffff
        | 1 << VIRTIO_F_VERSION_1
        | 1 << VIRTIO_RING_F_INDIRECT_DESC
        | 1 << VIRTIO_RING_F_EVENT_IDX
        | VHOST_USER_F_PROTOCOL_FEATURES;

    /// Protocol features the driver uses: MQ, REPLY_ACK, CONFIG.
    pub fn default_protocol_features() -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
    }

    /// Same, with guest memory of `mem_size` bytes.
    pub fn with_mem_size(mem_size: u64) -> Self {
        DriverConfig {
            mem_size,
            ..Self::default()
        }
    }
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            mem_size: 64 << 20,
            mem_base: DEFAULT_BASE,
            features: Self::DEFAULT_FEATURES,
            protocol_features: Self::default_protocol_features(),
            max_indirect: 32,
            timeout: Some(Duration::from_secs(10)),
            ring_enable: RingEnable::AfterKick,
        }
    }
}

/// A vhost-user connection to one backend, with its guest memory. See the
/// [module docs](self). Dropping it closes the socket.
pub struct Driver {
    frontend: Frontend,
    /// The same socket, for the messages the frontend will not send
    /// ([`RingEnable::BeforeFeatures`]).
    raw: UnixStream,
    ring_enable: RingEnable,
    watchdog: Option<ControlWatchdog>,
    mem: Arc<GuestMem>,
    max_indirect: u16,
    offered_features: u64,
    features: u64,
    offered_protocol: VhostUserProtocolFeatures,
    protocol: VhostUserProtocolFeatures,
    num_queues: u64,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("mem", &self.mem)
            .field("features", &format_args!("{:#x}", self.features))
            .field("protocol", &self.protocol)
            .field("num_queues", &self.num_queues)
            .finish()
    }
}

impl Driver {
    /// Connects to `socket`, creates guest memory per `cfg` and runs the handshake up
    /// to and including SET_MEM_TABLE.
    pub fn connect(socket: impl AsRef<Path>, cfg: &DriverConfig) -> Result<Self> {
        let mem = Arc::new(GuestMem::new(cfg.mem_size, cfg.mem_base)?);
        Self::connect_with_memory(socket, cfg, mem)
    }

    /// [`Driver::connect`], then the device's config space through `read` (a
    /// GET_CONFIG) if the backend acked the CONFIG protocol feature, else
    /// `C::default()`: a backend without it has no config space to ask for.
    pub fn connect_with_config<C: Default>(
        socket: impl AsRef<Path>,
        cfg: &DriverConfig,
        read: impl FnOnce(&mut Driver) -> Result<C>,
    ) -> Result<(Self, C)> {
        let mut driver = Self::connect(socket, cfg)?;
        let config = if driver
            .protocol_features()
            .contains(VhostUserProtocolFeatures::CONFIG)
        {
            read(&mut driver)?
        } else {
            C::default()
        };
        Ok((driver, config))
    }

    /// Like [`Driver::connect`], with existing guest memory (e.g. to reconnect and find
    /// the data of an earlier session). `cfg.mem_size` and `cfg.mem_base` are ignored.
    pub fn connect_with_memory(
        socket: impl AsRef<Path>,
        cfg: &DriverConfig,
        mem: Arc<GuestMem>,
    ) -> Result<Self> {
        let path = socket.as_ref();
        let connect_err = |source| Error::Connect {
            path: path.display().to_string(),
            source,
        };
        // Like vhost's Frontend::connect, retry briefly while the backend is not yet
        // listening.
        let mut tries = 0;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && tries < 5 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(connect_err(e)),
            }
        };
        let raw = stream.try_clone().map_err(connect_err)?;
        let watchdog = match cfg.timeout {
            Some(t) => Some(
                ControlWatchdog::new(stream.try_clone().map_err(connect_err)?, t)
                    .map_err(connect_err)?,
            ),
            None => None,
        };
        let mut d = Driver {
            frontend: Frontend::from_stream(stream, VHOST_USER_MAX_VRINGS),
            raw,
            ring_enable: cfg.ring_enable,
            watchdog,
            mem,
            max_indirect: cfg.max_indirect,
            offered_features: 0,
            features: 0,
            offered_protocol: VhostUserProtocolFeatures::empty(),
            protocol: VhostUserProtocolFeatures::empty(),
            num_queues: 1,
        };
        d.handshake(cfg)?;
        Ok(d)
    }

    /// Runs `f` (one or more requests on the raw [`Frontend`]) under the control
    /// timeout of [`DriverConfig::timeout`]; `request` names it in errors. Tests that
    /// send messages of their own should use this rather than [`Driver::frontend`].
    pub fn request<T>(
        &mut self,
        request: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T> {
        if let Some(w) = &self.watchdog {
            w.arm();
        }
        let r = f(&mut self.frontend);
        let fired = self.watchdog.as_ref().is_some_and(ControlWatchdog::disarm);
        r.map_err(|source| {
            if fired {
                Error::ControlTimeout { request }
            } else {
                Error::Vhost { request, source }
            }
        })
    }

    fn handshake(&mut self, cfg: &DriverConfig) -> Result<()> {
        self.offered_features = self.request("GET_FEATURES", |f| f.get_features())?;
        self.features = self.offered_features & cfg.features;
        if self.features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            self.offered_protocol =
                self.request("GET_PROTOCOL_FEATURES", |f| f.get_protocol_features())?;
            let protocol = self.offered_protocol & cfg.protocol_features;
            self.request("SET_PROTOCOL_FEATURES", |f| {
                f.set_protocol_features(protocol)
            })?;
            self.protocol = protocol;
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        if self.protocol.contains(VhostUserProtocolFeatures::MQ) {
            self.num_queues = self.request("GET_QUEUE_NUM", |f| f.get_queue_num())?;
        }
        self.request("SET_OWNER", |f| f.set_owner())?;
        if let RingEnable::BeforeFeatures(rings) = self.ring_enable {
            if self.features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
                for index in 0..rings {
                    self.early_vring_enable(index, true)?;
                }
            }
        }
        let features = self.features;
        self.request("SET_FEATURES", |f| f.set_features(features))?;
        let region = self.mem.region_info()?;
        self.request("SET_MEM_TABLE", |f| f.set_mem_table(&[region]))?;
        Ok(())
    }

    /// The guest memory shared with the backend.
    pub fn memory(&self) -> &Arc<GuestMem> {
        &self.mem
    }

    /// Feature bits the backend offered.
    pub fn offered_features(&self) -> u64 {
        self.offered_features
    }

    /// Feature bits we acked (SET_FEATURES).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether virtio feature `bit` was acked.
    pub fn has_feature(&self, bit: u32) -> bool {
        bit < 64 && self.features & (1 << bit) != 0
    }

    /// Protocol features the backend offered.
    pub fn offered_protocol_features(&self) -> VhostUserProtocolFeatures {
        self.offered_protocol
    }

    /// Protocol features we acked.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// Queues the backend has (GET_QUEUE_NUM, or 1 without MQ).
    pub fn num_queues(&self) -> u64 {
        self.num_queues
    }

    /// The underlying frontend, for tests that send messages of their own.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }

    /// Creates queue `index` with `size` entries in guest memory and hands it to the
    /// backend: SET_VRING_NUM, SET_VRING_ADDR (our virtual addresses), SET_VRING_BASE
    /// 0, SET_VRING_CALL, SET_VRING_KICK, and SET_VRING_ENABLE 1 when protocol
    /// features were negotiated and [`DriverConfig::ring_enable`] is
    /// [`RingEnable::AfterKick`].
    pub fn setup_queue(&mut self, index: u16, size: u16) -> Result<Queue> {
        if u64::from(index) >= self.num_queues {
            return Err(Error::BadQueueIndex {
                index,
                count: self.num_queues,
            });
        }
        let indirect = if self.has_feature(VIRTIO_RING_F_INDIRECT_DESC) {
            self.max_indirect
        } else {
            0
        };
        let event_idx = self.has_feature(VIRTIO_RING_F_EVENT_IDX);
        let queue = Queue::new(self.mem.clone(), index, size, event_idx, indirect)?;
        self.attach_queue(&queue)?;
        Ok(queue)
    }

    /// Sends the vring messages for a queue made with [`Queue::new`] (what
    /// [`Driver::setup_queue`] does after creating it).
    pub fn attach_queue(&mut self, queue: &Queue) -> Result<()> {
        let i = usize::from(queue.index());
        let a = queue.addrs();
        let l = queue.layout();
        let config = VringConfigData {
            queue_max_size: queue.size(),
            queue_size: queue.size(),
            flags: 0,
            desc_table_addr: self.mem.host_address(a.desc, l.desc_table_bytes())?,
            used_ring_addr: self.mem.host_address(a.used, l.used_bytes())?,
            avail_ring_addr: self.mem.host_address(a.avail, l.avail_bytes())?,
            log_addr: None,
        };
        self.request("SET_VRING_NUM", |f| f.set_vring_num(i, queue.size()))?;
        self.request("SET_VRING_ADDR", |f| f.set_vring_addr(i, &config))?;
        self.request("SET_VRING_BASE", |f| f.set_vring_base(i, 0))?;
        self.request("SET_VRING_CALL", |f| f.set_vring_call(i, queue.call_fd()))?;
        self.request("SET_VRING_KICK", |f| f.set_vring_kick(i, queue.kick_fd()))?;
        if self.features & VHOST_USER_F_PROTOCOL_FEATURES != 0
            && self.ring_enable == RingEnable::AfterKick
        {
            self.request("SET_VRING_ENABLE", |f| f.set_vring_enable(i, true))?;
        }
        Ok(())
    }

    /// Sets up queues `0..count`, all of `size` entries.
    pub fn setup_queues(&mut self, count: u16, size: u16) -> Result<Vec<Queue>> {
        (0..count).map(|i| self.setup_queue(i, size)).collect()
    }

    /// SET_VRING_ENABLE.
    pub fn set_vring_enable(&mut self, index: u16, enable: bool) -> Result<()> {
        self.request("SET_VRING_ENABLE", |f| {
            f.set_vring_enable(usize::from(index), enable)
        })
    }

    /// SET_VRING_ENABLE before SET_FEATURES, written to the socket by hand (the
    /// frontend refuses to send it before PROTOCOL_FEATURES is acked): the header
    /// (request, flags with protocol version 1, body size; little-endian u32s), the
    /// ring state and, with REPLY_ACK, the backend's ack (a header and a u64) read back.
    fn early_vring_enable(&mut self, index: u16, enable: bool) -> Result<()> {
        const REQUEST: &str = "SET_VRING_ENABLE (before SET_FEATURES)";
        const VERSION_1: u32 = 0x1;
        let need_reply = self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
        let mut flags = VERSION_1;
        if need_reply {
            flags |= VhostUserHeaderFlag::NEED_REPLY.bits();
        }
        let code = u32::from(FrontendReq::SET_VRING_ENABLE);
        let body = VhostUserVringState::new(u32::from(index), u32::from(enable));
        let mut msg = Vec::new();
        for word in [code, flags, body.as_slice().len() as u32] {
            msg.extend_from_slice(&word.to_le_bytes());
        }
        msg.extend_from_slice(body.as_slice());
        if let Some(w) = &self.watchdog {
            w.arm();
        }
        let raw = &mut self.raw;
        let r = (|| -> io::Result<u64> {
            raw.write_all(&msg)?;
            if !need_reply {
                return Ok(0);
            }
            let mut reply = [0u8; 12 + 8];
            raw.read_exact(&mut reply)?;
            let word = |i: usize| u32::from_le_bytes(reply[4 * i..4 * i + 4].try_into().unwrap());
            if word(0) != code || word(1) & VhostUserHeaderFlag::REPLY.bits() == 0 || word(2) != 8 {
                return Err(io::Error::other(format!(
                    "unexpected reply header {:x?}",
                    &reply[..12]
                )));
            }
            Ok(u64::from_le_bytes(reply[12..].try_into().unwrap()))
        })();
        let fired = self.watchdog.as_ref().is_some_and(ControlWatchdog::disarm);
        let source = match r {
            Ok(0) => return Ok(()),
            // What the frontend reports for a refusal (a non-zero ack).
            Ok(_) => vhost::vhost_user::Error::BackendInternalError,
            Err(e) => vhost::vhost_user::Error::SocketError(e),
        };
        Err(if fired {
            Error::ControlTimeout { request: REQUEST }
        } else {
            Error::Vhost {
                request: REQUEST,
                source: vhost::Error::VhostUserProtocol(source),
            }
        })
    }

    /// GET_VRING_BASE: stops the queue on the backend and returns its next avail index.
    pub fn get_vring_base(&mut self, index: u16) -> Result<u32> {
        self.request("GET_VRING_BASE", |f| f.get_vring_base(usize::from(index)))
    }

    /// Reads `len` bytes of device config space at `offset` (GET_CONFIG; needs the
    /// CONFIG protocol feature).
    pub fn get_config(&mut self, offset: u32, len: u32) -> Result<Vec<u8>> {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(Error::MissingFeature("the CONFIG protocol feature"));
        }
        let buf = vec![0u8; len as usize];
        let (_, payload) = self.request("GET_CONFIG", |f| {
            f.get_config(offset, len, VhostUserConfigFlags::empty(), &buf)
        })?;
        if payload.len() != len as usize {
            return Err(Error::ConfigSize {
                got: payload.len(),
                wanted: len as usize,
            });
        }
        Ok(payload)
    }
}
