//! One vhost-user connection with its guest memory: a [`vhostkit_frontend::Connection`]
//! (the frontend the VMM uses too) driven the way a test wants it.
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

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::{Frontend, VhostUserProtocolFeatures};
use vhostkit_frontend::{
    supported_protocol_features, ConnectOptions, Connection, VringHostAddrs, VringSetup,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::memory::{GuestMem, DEFAULT_BASE};
use super::virtq::Queue;
use super::{Error, Result};

/// `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30).
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = vhostkit_frontend::PROTOCOL_FEATURES;

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
    /// SET_FEATURES; [`vhostkit_frontend::Connection::set_vring_enable`] writes
    /// these messages itself.
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
    /// [`vhostkit_frontend::Error::Timeout`]. `None`: wait forever. A backend that serves one
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

    /// Protocol features the driver uses: all the frontend implements (MQ,
    /// REPLY_ACK, CONFIG).
    pub fn default_protocol_features() -> VhostUserProtocolFeatures {
        supported_protocol_features()
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
    connection: Connection,
    ring_enable: RingEnable,
    mem: Arc<GuestMem>,
    max_indirect: u16,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("mem", &self.mem)
            .field("features", &format_args!("{:#x}", self.features()))
            .field("protocol", &self.protocol_features())
            .field("num_queues", &self.num_queues())
            .finish()
    }
}

/// How many times [`Driver::connect`] tries again, 100 ms apart, while the socket
/// refuses: a daemon a test just started may have bound it but not yet listen.
const REFUSED_RETRIES: u32 = 5;

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
        // Protocol features only if the test's feature mask lets the driver ack them.
        let protocol_features =
            (cfg.features & VHOST_USER_F_PROTOCOL_FEATURES != 0).then_some(cfg.protocol_features);
        let options = ConnectOptions {
            protocol_features,
            timeout: cfg.timeout,
            refused_retries: REFUSED_RETRIES,
        };
        let mut connection = Connection::connect_with(socket, &options)?;
        if let RingEnable::BeforeFeatures(rings) = cfg.ring_enable {
            if connection.protocol_features_negotiated() {
                for index in 0..rings {
                    connection.set_vring_enable(index, true)?;
                }
            }
        }
        connection.set_features(connection.offered_features() & cfg.features)?;
        connection.set_mem_table(mem.mmap())?;
        Ok(Driver {
            connection,
            ring_enable: cfg.ring_enable,
            mem,
            max_indirect: cfg.max_indirect,
        })
    }

    /// Runs `f` (one or more requests on the raw [`Frontend`]) under the control
    /// timeout of [`DriverConfig::timeout`]; `request` names it in errors. Tests that
    /// send messages of their own should use this rather than [`Driver::frontend`].
    pub fn request<T>(
        &mut self,
        request: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T> {
        Ok(self.connection.request(request, f)?)
    }

    /// The guest memory shared with the backend.
    pub fn memory(&self) -> &Arc<GuestMem> {
        &self.mem
    }

    /// Feature bits the backend offered.
    pub fn offered_features(&self) -> u64 {
        self.connection.offered_features()
    }

    /// Feature bits we acked (SET_FEATURES).
    pub fn features(&self) -> u64 {
        // Set by every connect; 0 only if it were not.
        self.connection.acked_features().unwrap_or(0)
    }

    /// Whether virtio feature `bit` was acked.
    pub fn has_feature(&self, bit: u32) -> bool {
        bit < 64 && self.features() & (1 << bit) != 0
    }

    /// Protocol features the backend offered.
    pub fn offered_protocol_features(&self) -> VhostUserProtocolFeatures {
        self.connection.offered_protocol_features()
    }

    /// Protocol features we acked.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.connection.protocol_features()
    }

    /// Queues the backend has (GET_QUEUE_NUM, or 1 without MQ).
    pub fn num_queues(&self) -> u64 {
        u64::from(self.connection.num_queues())
    }

    /// The underlying frontend, for tests that send messages of their own.
    pub fn frontend(&mut self) -> &mut Frontend {
        self.connection.frontend()
    }

    /// The vhost-user connection, for tests that want its typed requests (stopping
    /// vrings, config space writes) rather than raw messages.
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.connection
    }

    /// Creates queue `index` with `size` entries in guest memory and hands it to the
    /// backend: SET_VRING_NUM, SET_VRING_ADDR (our virtual addresses), SET_VRING_BASE
    /// 0, SET_VRING_CALL, SET_VRING_KICK, and SET_VRING_ENABLE 1 when protocol
    /// features were negotiated and [`DriverConfig::ring_enable`] is
    /// [`RingEnable::AfterKick`].
    pub fn setup_queue(&mut self, index: u16, size: u16) -> Result<Queue> {
        if u64::from(index) >= self.num_queues() {
            return Err(Error::BadQueueIndex {
                index,
                count: self.num_queues(),
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
        let a = queue.addrs();
        let l = queue.layout();
        let vring = VringSetup {
            index: queue.index(),
            size: queue.size(),
            addrs: VringHostAddrs {
                desc: self.mem.host_address(a.desc, l.desc_table_bytes())?,
                avail: self.mem.host_address(a.avail, l.avail_bytes())?,
                used: self.mem.host_address(a.used, l.used_bytes())?,
            },
            base: 0,
            call: queue.call_fd(),
            kick: queue.kick_fd(),
            err: None,
            enable: self.ring_enable == RingEnable::AfterKick,
        };
        Ok(self.connection.set_up_vring(&vring)?)
    }

    /// Sets up queues `0..count`, all of `size` entries.
    pub fn setup_queues(&mut self, count: u16, size: u16) -> Result<Vec<Queue>> {
        (0..count).map(|i| self.setup_queue(i, size)).collect()
    }

    /// SET_VRING_ENABLE.
    pub fn set_vring_enable(&mut self, index: u16, enable: bool) -> Result<()> {
        Ok(self.connection.set_vring_enable(index, enable)?)
    }

    /// GET_VRING_BASE: stops the queue on the backend and returns its next avail index.
    pub fn get_vring_base(&mut self, index: u16) -> Result<u32> {
        Ok(self.connection.get_vring_base(index)?)
    }

    /// Reads `len` bytes of device config space at `offset` (GET_CONFIG; needs the
    /// CONFIG protocol feature).
    pub fn get_config(&mut self, offset: u32, len: u32) -> Result<Vec<u8>> {
        Ok(self.connection.get_config(offset, len)?)
    }
}
