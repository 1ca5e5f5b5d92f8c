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

use std::path::Path;

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VHOST_USER_MAX_VRINGS,
};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;

/// `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30): vhost-user only, never shown to the guest.
pub const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to the vhost-user backend at {0}")]
    Connect(String, #[source] vhost::Error),
    #[error("vhost-user {0} failed")]
    Request(&'static str, #[source] vhost::Error),
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

/// Host virtual addresses of a queue's three areas (what SET_VRING_ADDR carries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingHostAddrs {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

/// A connected vhost-user backend.
pub struct Backend {
    frontend: Frontend,
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

fn req<T>(what: &'static str, r: vhost::Result<T>) -> Result<T> {
    r.map_err(|e| BackendError::Request(what, e))
}

impl Backend {
    /// Connects to `socket` and runs the set-up that needs no guest: features,
    /// protocol features (MQ, REPLY_ACK, CONFIG where offered), queue count, owner.
    pub fn connect(socket: &Path) -> Result<Self> {
        let mut frontend = Frontend::connect(socket, VHOST_USER_MAX_VRINGS)
            .map_err(|e| BackendError::Connect(socket.display().to_string(), e))?;
        let features = req("GET_FEATURES", frontend.get_features())?;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if features & PROTOCOL_FEATURES != 0 {
            let offered = req("GET_PROTOCOL_FEATURES", frontend.get_protocol_features())?;
            protocol = offered
                & (VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::CONFIG);
            req(
                "SET_PROTOCOL_FEATURES",
                frontend.set_protocol_features(protocol),
            )?;
            if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every message without a reply of its own asks for an ack: a refusal
                // is the error of the call that caused it.
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        let mut num_queues = 1;
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            num_queues = req("GET_QUEUE_NUM", frontend.get_queue_num())?;
            if num_queues == 0 || num_queues > VHOST_USER_MAX_VRINGS {
                return Err(BackendError::QueueCount(num_queues));
            }
        }
        req("SET_OWNER", frontend.set_owner())?;
        Ok(Backend {
            frontend,
            features,
            protocol,
            num_queues: num_queues as u16,
        })
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
        req("SET_FEATURES", self.frontend.set_features(features))
    }

    /// SET_MEM_TABLE with every region of `mem` (all must be file-backed).
    pub fn set_mem_table(&mut self, mem: &GuestMemory) -> Result<()> {
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<vhost::Result<Vec<_>>>()
            .map_err(BackendError::Memory)?;
        req("SET_MEM_TABLE", self.frontend.set_mem_table(&regions)).map(drop)
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
        let f = &mut self.frontend;
        req("SET_VRING_NUM", f.set_vring_num(i, size))?;
        req("SET_VRING_ADDR", f.set_vring_addr(i, &config))?;
        req("SET_VRING_BASE", f.set_vring_base(i, 0))?;
        req("SET_VRING_CALL", f.set_vring_call(i, call))?;
        req("SET_VRING_KICK", f.set_vring_kick(i, kick))?;
        if self.protocol_negotiated() {
            req("SET_VRING_ENABLE", self.frontend.set_vring_enable(i, true))?;
        }
        Ok(())
    }

    /// Stops queue `index` on the backend (SET_VRING_ENABLE 0 when protocol features
    /// are in use, then GET_VRING_BASE); returns the backend's next avail index.
    pub fn stop_queue(&mut self, index: u16) -> Result<u32> {
        let i = usize::from(index);
        if self.protocol_negotiated() {
            req("SET_VRING_ENABLE", self.frontend.set_vring_enable(i, false))?;
        }
        req("GET_VRING_BASE", self.frontend.get_vring_base(i))
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
        let (_, payload) = req(
            "GET_CONFIG",
            self.frontend
                .get_config(0, wanted as u32, VhostUserConfigFlags::empty(), &zero),
        )?;
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
        req(
            "SET_CONFIG",
            self.frontend
                .set_config(offset, VhostUserConfigFlags::WRITABLE, data),
        )
    }
}
