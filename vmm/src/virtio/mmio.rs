//! A virtio-mmio transport (virtio 1.x, register layout version 2) whose device side
//! is a vhost-user backend ([`Backend`]).
//!
//! [`MmioDevice::read`] and [`MmioDevice::write`] take an offset into the device's
//! 4 KiB window and the access's bytes: what a vCPU's `KVM_EXIT_MMIO` carries, and what
//! the in-process tests feed it. Guest mistakes and hostile values (bad queue sizes,
//! rings outside guest memory, out-of-range selectors, unaligned or odd-sized
//! accesses) are refused with a rate-limited [`guest_error!`] and never panic; a
//! backend failure sets DEVICE_NEEDS_RESET.
//!
//! Kicks: a QueueNotify write signals the queue's kick eventfd, the one the backend
//! waits on. [`MmioDevice::register_ioeventfds`] also gives KVM those eventfds on the
//! QueueNotify address (datamatch = queue index), so a running guest's kick never
//! leaves the kernel.
//!
//! Interrupts: the backend signals the queue's call eventfd. With an irqchip,
//! [`MmioDevice::register_irqfds`] hands the call eventfds to KVM as irqfds; the VMM
//! then never sees a call, so InterruptStatus reports "used buffer" whenever the
//! device is live (as Firecracker does: a spurious vring interrupt is harmless to
//! Linux's virtio_mmio). Without one (in-process use), [`MmioDevice::call_fd`]
//! exposes the call eventfds to wait on, and reading InterruptStatus (or
//! [`MmioDevice::interrupt_pending`]) consumes pending calls into its "used buffer"
//! bit until InterruptACK clears it.

use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, VmFd};
use log::warn;
use vhostkit_common::{guest_error, guest_info};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::vhost_user::{Backend, BackendError, VringHostAddrs, VringSetup};
use crate::memory::GuestMemory;

/// Size of a device's MMIO window.
pub const MMIO_WINDOW: u64 = 0x1000;

pub const MAGIC_VALUE: u64 = 0x000;
pub const VERSION: u64 = 0x004;
pub const DEVICE_ID: u64 = 0x008;
pub const VENDOR_ID: u64 = 0x00c;
pub const DEVICE_FEATURES: u64 = 0x010;
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
pub const DRIVER_FEATURES: u64 = 0x020;
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
pub const QUEUE_SEL: u64 = 0x030;
pub const QUEUE_NUM_MAX: u64 = 0x034;
pub const QUEUE_NUM: u64 = 0x038;
pub const QUEUE_READY: u64 = 0x044;
pub const QUEUE_NOTIFY: u64 = 0x050;
pub const INTERRUPT_STATUS: u64 = 0x060;
pub const INTERRUPT_ACK: u64 = 0x064;
pub const STATUS: u64 = 0x070;
pub const QUEUE_DESC_LOW: u64 = 0x080;
pub const QUEUE_DESC_HIGH: u64 = 0x084;
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const CONFIG_GENERATION: u64 = 0x0fc;
pub const CONFIG: u64 = 0x100;

/// "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// Vendor ID we report ("VHKT").
pub const VENDOR: u32 = 0x544b_4856;
/// InterruptStatus bit: a queue's used ring was updated.
pub const INT_VRING: u32 = 1;

/// Feature bits the transport implements: all device-specific bits (0..24, which
/// include blk's and net's MQ), VERSION_1, INDIRECT_DESC and EVENT_IDX. Not packed rings,
/// IN_ORDER, ACCESS_PLATFORM, NOTIFICATION_DATA or RING_RESET.
pub const SUPPORTED_FEATURES: u64 = 0x00ff_ffff
    | 1 << VIRTIO_F_VERSION_1
    | 1 << VIRTIO_RING_F_INDIRECT_DESC
    | 1 << VIRTIO_RING_F_EVENT_IDX;

const S_ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const S_DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const S_DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const S_FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const S_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
const S_FAILED: u32 = VIRTIO_CONFIG_S_FAILED;

/// Where the device's config space comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSpace {
    /// Forwarded to the backend (GET_CONFIG/SET_CONFIG), with some bytes replaced
    /// by the VMM's own values on reads: (offset, bytes) pairs.
    Backend { overrides: Vec<(u32, Vec<u8>)> },
    /// Held by the VMM (backends such as virtiofsd and vhost-user-net daemons have
    /// no config space of their own, as in QEMU and cloud-hypervisor); guest writes
    /// are refused.
    Local(Vec<u8>),
}

/// virtio-net `status` field: link up.
const NET_S_LINK_UP: u16 = 1;
/// virtio-net feature bits the VMM provides itself, whatever the backend offers:
/// MAC (the address is the VMM's) and STATUS (the link is always up).
const NET_VMM_FEATURES: u64 = 1 << 5 | 1 << 16;
/// virtio-net MQ and CTRL_VQ: the device has several queue pairs and a control queue.
const NET_F_CTRL_VQ: u64 = 1 << 17;
const NET_F_MQ: u64 = 1 << 22;
/// virtio-blk MQ: `num_queues` at config offset 34 is valid.
const BLK_F_MQ: u64 = 1 << 12;
/// Offset of virtio-blk's `num_queues` config field.
const BLK_CONFIG_NUM_QUEUES: u32 = 34;
/// Length of virtio-fs's `tag` config field.
pub const FS_TAG_LEN: usize = 36;

/// What kind of device sits behind the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Virtio device ID (1: network, 2: block, 26: filesystem).
    pub device_id: u32,
    /// Bytes of device config space the guest may access at 0x100.
    pub config_size: u32,
    /// QueueNumMax: the largest queue size offered (vhost-user has no message for the
    /// backend's limit; a size it refuses fails activation).
    pub queue_max_size: u16,
    /// Queues shown to the guest (at most the backend's).
    pub num_queues: u16,
    /// Feature bits the VMM offers on top of the backend's.
    pub vmm_features: u64,
    /// Feature bits never offered (e.g. MQ when only one queue is used).
    pub masked_features: u64,
    pub config_space: ConfigSpace,
}

impl DeviceConfig {
    /// virtio-blk: device ID 2, the 60-byte `virtio_blk_config` (up to
    /// `write_zeroes_may_unmap` and its padding) from the backend, queues of up to
    /// `queue_max_size` entries (what the backend takes). With `num_queues` below the
    /// backend's count, the guest sees that many and the config's `num_queues` says so.
    pub fn blk(backend_queues: u16, num_queues: Option<u16>, queue_max_size: u16) -> Self {
        let n = num_queues.map_or(backend_queues, |n| n.min(backend_queues));
        DeviceConfig {
            device_id: 2,
            config_size: 60,
            queue_max_size,
            num_queues: n,
            vmm_features: 0,
            masked_features: if n == 1 { BLK_F_MQ } else { 0 },
            config_space: ConfigSpace::Backend {
                overrides: vec![(BLK_CONFIG_NUM_QUEUES, n.to_le_bytes().to_vec())],
            },
        }
    }

    /// virtio-net: device ID 1; the config (`mac`, `status` link up,
    /// `max_virtqueue_pairs`) is the VMM's. The backend's queues are rx/tx pairs
    /// and, when it offers CTRL_VQ, a control queue after them (an odd count);
    /// `num_queues` (rx+tx queues) caps the pairs used.
    pub fn net(
        backend_queues: u16,
        mac: [u8; 6],
        num_queues: Option<u16>,
        queue_max_size: u16,
    ) -> Self {
        let has_ctrl = backend_queues % 2 == 1 && backend_queues > 1;
        let backend_pairs = (backend_queues / 2).max(1);
        let pairs = num_queues.map_or(backend_pairs, |n| (n / 2).clamp(1, backend_pairs));
        let mut config = Vec::with_capacity(12);
        config.extend_from_slice(&mac);
        config.extend_from_slice(&NET_S_LINK_UP.to_le_bytes());
        config.extend_from_slice(&pairs.to_le_bytes());
        DeviceConfig {
            device_id: 1,
            config_size: config.len() as u32,
            queue_max_size,
            num_queues: 2 * pairs + u16::from(has_ctrl),
            vmm_features: NET_VMM_FEATURES,
            masked_features: if has_ctrl {
                0
            } else {
                NET_F_CTRL_VQ | NET_F_MQ
            },
            config_space: ConfigSpace::Local(config),
        }
    }

    /// virtio-fs: device ID 26; the config (`tag`, NUL-padded to 36 bytes, and
    /// `num_request_queues`) is the VMM's. Queue 0 is the hiprio queue, the rest
    /// are request queues.
    pub fn fs(
        backend_queues: u16,
        tag: &str,
        num_request_queues: Option<u16>,
        queue_max_size: u16,
    ) -> Self {
        let backend_requests = backend_queues.saturating_sub(1).max(1);
        let requests =
            num_request_queues.map_or(backend_requests, |n| n.clamp(1, backend_requests));
        let mut config = vec![0u8; FS_TAG_LEN];
        let tag = tag.as_bytes();
        let len = tag.len().min(FS_TAG_LEN);
        config[..len].copy_from_slice(&tag[..len]);
        config.extend_from_slice(&u32::from(requests).to_le_bytes());
        DeviceConfig {
            device_id: 26,
            config_size: config.len() as u32,
            queue_max_size,
            num_queues: 1 + requests,
            vmm_features: 0,
            masked_features: 0,
            config_space: ConfigSpace::Local(config),
        }
    }
}

#[derive(Debug)]
struct Queue {
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
    kick: EventFd,
    call: EventFd,
}

impl Queue {
    fn new() -> std::io::Result<Self> {
        Ok(Queue {
            size: 0,
            ready: false,
            desc: 0,
            avail: 0,
            used: 0,
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    fn reset(&mut self) {
        self.size = 0;
        self.ready = false;
        self.desc = 0;
        self.avail = 0;
        self.used = 0;
        // Drop kicks and calls of the old session.
        let _ = self.kick.read();
        let _ = self.call.read();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("KVM refused the ioeventfd of queue {0} at {1:#x}")]
    IoEventFd(u16, u64, #[source] kvm_ioctls::Error),
    #[error("KVM refused the irqfd of queue {0} (GSI {1})")]
    IrqFd(u16, u32, #[source] kvm_ioctls::Error),
}

/// Logs a failed backend request: an error, or a note when the backend is gone (the
/// VMM's watch of the connection reports that as the run's error).
fn log_backend_error(what: &str, e: &BackendError) {
    if e.is_disconnect() {
        guest_info!(
            "virtio-mmio: {what}: backend gone: {}",
            crate::error_chain(e)
        );
    } else {
        guest_error!("virtio-mmio: {what}: {}", crate::error_chain(e));
    }
}

/// One virtio-mmio device backed by a vhost-user backend. See the [module docs](self).
#[derive(Debug)]
pub struct MmioDevice {
    backend: Backend,
    mem: Arc<GuestMemory>,
    config: DeviceConfig,
    /// Offered to the guest: the backend's features masked by [`SUPPORTED_FEATURES`].
    device_features: u64,
    device_features_sel: u32,
    driver_features: u64,
    driver_features_sel: u32,
    queue_sel: u32,
    queues: Vec<Queue>,
    status: u32,
    interrupt_status: u32,
    /// Call eventfds are KVM irqfds: the VMM never sees a call.
    irqfd: bool,
    /// DRIVER_OK was accepted and the backend got the memory table.
    activated: bool,
    stats: NotificationStats,
}

/// Virtio notifications that passed through the VMM rather than KVM: each one is a
/// VMM thread woken for the data path. With ioeventfds and irqfds registered both
/// stay zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotificationStats {
    /// QueueNotify writes that reached [`MmioDevice::write`] (a vCPU exit to user
    /// space instead of an ioeventfd signal inside KVM).
    pub kicks: u64,
    /// Backend calls the VMM consumed from a call eventfd (no irqfd).
    pub calls: u64,
}

impl MmioDevice {
    /// A device for the backend at `backend`, with guest memory `mem` (which must be
    /// file-backed, as [`crate::memory::create`] makes it).
    pub fn new(
        backend: Backend,
        mem: Arc<GuestMemory>,
        config: DeviceConfig,
    ) -> Result<Self, MmioError> {
        let count = config.num_queues.clamp(1, backend.num_queues());
        let queues = (0..count)
            .map(|_| Queue::new())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(MmioError::EventFd)?;
        let device_features = (backend.offered_features() | config.vmm_features)
            & SUPPORTED_FEATURES
            & !config.masked_features;
        if device_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            warn!("the vhost-user backend does not offer VIRTIO_F_VERSION_1; no modern driver will accept the device");
        }
        Ok(MmioDevice {
            backend,
            mem,
            config,
            device_features,
            device_features_sel: 0,
            driver_features: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            queues,
            status: 0,
            interrupt_status: 0,
            irqfd: false,
            activated: false,
            stats: NotificationStats::default(),
        })
    }

    /// Notifications that went through the VMM so far.
    pub fn notification_stats(&self) -> NotificationStats {
        self.stats
    }

    /// Virtio device ID.
    pub fn device_id(&self) -> u32 {
        self.config.device_id
    }

    /// Number of queues shown to the guest.
    pub fn num_queues(&self) -> u16 {
        self.queues.len() as u16
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Feature bits offered to the guest.
    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// The call eventfd of queue `index` (the backend signals it when it used
    /// buffers); for waiting on without an irqchip. Reading it consumes the call.
    pub fn call_fd(&self, index: u16) -> Option<&EventFd> {
        self.queues.get(usize::from(index)).map(|q| &q.call)
    }

    /// The kick eventfd of queue `index`.
    pub fn kick_fd(&self, index: u16) -> Option<&EventFd> {
        self.queues.get(usize::from(index)).map(|q| &q.kick)
    }

    /// Registers each queue's kick eventfd with KVM on the QueueNotify register of a
    /// device mapped at `base`, datamatch = the queue index (4-byte writes).
    pub fn register_ioeventfds(&self, vm: &VmFd, base: u64) -> Result<(), MmioError> {
        let addr = base + QUEUE_NOTIFY;
        for (i, q) in self.queues.iter().enumerate() {
            vm.register_ioevent(&q.kick, &IoEventAddress::Mmio(addr), i as u32)
                .map_err(|e| MmioError::IoEventFd(i as u16, addr, e))?;
        }
        Ok(())
    }

    /// Registers each queue's call eventfd with KVM as an irqfd on `gsi` (needs an
    /// irqchip). From then on InterruptStatus reports "used buffer" while the device
    /// is live.
    pub fn register_irqfds(&mut self, vm: &VmFd, gsi: u32) -> Result<(), MmioError> {
        for (i, q) in self.queues.iter().enumerate() {
            vm.register_irqfd(&q.call, gsi)
                .map_err(|e| MmioError::IrqFd(i as u16, gsi, e))?;
        }
        self.irqfd = true;
        Ok(())
    }

    /// Whether an interrupt is pending: consumes signalled call eventfds into
    /// InterruptStatus (without irqfds) and says whether it is non-zero.
    pub fn interrupt_pending(&mut self) -> bool {
        self.interrupt_status() != 0
    }

    fn interrupt_status(&mut self) -> u32 {
        if self.irqfd {
            return self.interrupt_status | if self.activated { INT_VRING } else { 0 };
        }
        for q in &self.queues {
            // Non-blocking: Err(WouldBlock) means no call.
            if q.call.read().is_ok() {
                self.interrupt_status |= INT_VRING;
                self.stats.calls += 1;
            }
        }
        self.interrupt_status
    }

    fn selected_queue(&mut self, what: &str) -> Option<&mut Queue> {
        let sel = self.queue_sel;
        let q = self.queues.get_mut(sel as usize);
        if q.is_none() {
            guest_error!("virtio-mmio: {what} with QueueSel {sel} out of range");
        }
        q
    }

    /// A guest read of `data.len()` bytes at `offset` into the device window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            self.read_config(offset - CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            guest_error!(
                "virtio-mmio: {}-byte read at {offset:#x} (registers take aligned 4-byte accesses)",
                data.len()
            );
            data.fill(0);
            return;
        }
        let v: u32 = match offset {
            MAGIC_VALUE => MAGIC,
            VERSION => 2,
            DEVICE_ID => self.config.device_id,
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => match self.queues.get(self.queue_sel as usize) {
                Some(_) => u32::from(self.config.queue_max_size),
                None => 0, // no such queue
            },
            QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready)),
            INTERRUPT_STATUS => self.interrupt_status(),
            STATUS => self.status,
            CONFIG_GENERATION => 0,
            _ => {
                guest_error!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// A guest write of `data` at `offset` into the device window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            self.write_config(offset - CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            guest_error!(
                "virtio-mmio: {}-byte write at {offset:#x} (registers take aligned 4-byte accesses)",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            guest_error!("virtio-mmio: unaligned write at {offset:#x}");
            return;
        }
        let v = u32::from_le_bytes(bytes);
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            DRIVER_FEATURES => self.write_driver_features(v),
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM => self.write_queue_num(v),
            QUEUE_READY => self.write_queue_ready(v),
            QUEUE_NOTIFY => self.notify(v),
            INTERRUPT_ACK => self.interrupt_status &= !v,
            STATUS => self.write_status(v),
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => self.write_queue_addr(offset, v),
            _ => guest_error!("virtio-mmio: write of read-only or unknown register {offset:#x}"),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        if self.status & S_DRIVER == 0 || self.status & S_FEATURES_OK != 0 {
            guest_error!(
                "virtio-mmio: DriverFeatures written in status {:#x} (only after DRIVER, before FEATURES_OK)",
                self.status
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
            sel if v != 0 => {
                guest_error!("virtio-mmio: DriverFeatures {v:#x} for word {sel}: no such bits")
            }
            _ => {}
        }
    }

    /// Whether queue registers may change now: before DRIVER_OK, or for a queue not
    /// yet ready (which the guest may then enable on a live device).
    fn queue_writable(&mut self, what: &str) -> bool {
        let status = self.status;
        let Some(q) = self.selected_queue(what) else {
            return false;
        };
        if q.ready {
            guest_error!(
                "virtio-mmio: {what} on a ready queue (write QueueReady 0 or reset first)"
            );
            return false;
        }
        if status & S_FEATURES_OK == 0 {
            guest_error!("virtio-mmio: {what} before FEATURES_OK (status {status:#x})");
            return false;
        }
        true
    }

    fn write_queue_num(&mut self, v: u32) {
        if !self.queue_writable("QueueNum") {
            return;
        }
        let max = u32::from(self.config.queue_max_size);
        if v == 0 || v > max || !v.is_power_of_two() {
            guest_error!("virtio-mmio: QueueNum {v} refused (a power of two, 1 to {max})");
            return;
        }
        if let Some(q) = self.queues.get_mut(self.queue_sel as usize) {
            q.size = v as u16;
        }
    }

    fn write_queue_addr(&mut self, offset: u64, v: u32) {
        if !self.queue_writable("a ring address") {
            return;
        }
        let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
            return;
        };
        let (field, high) = match offset {
            QUEUE_DESC_LOW => (&mut q.desc, false),
            QUEUE_DESC_HIGH => (&mut q.desc, true),
            QUEUE_DRIVER_LOW => (&mut q.avail, false),
            QUEUE_DRIVER_HIGH => (&mut q.avail, true),
            QUEUE_DEVICE_LOW => (&mut q.used, false),
            _ => (&mut q.used, true),
        };
        *field = if high {
            (*field & 0xffff_ffff) | (u64::from(v) << 32)
        } else {
            (*field & !0xffff_ffff) | u64::from(v)
        };
    }

    /// Host address of `[gpa, gpa + len)`, which must lie in one region, aligned.
    fn ring_host_address(&self, what: &str, gpa: u64, len: u64, align: u64) -> Option<u64> {
        if !gpa.is_multiple_of(align) {
            guest_error!("virtio-mmio: {what} at {gpa:#x} is not {align}-byte aligned");
            return None;
        }
        let region = self.mem.find_region(GuestAddress(gpa));
        let fits = region.is_some_and(|r| {
            let off = gpa - r.start_addr().0;
            off.checked_add(len).is_some_and(|end| end <= r.len())
        });
        if !fits {
            guest_error!("virtio-mmio: {what} at {gpa:#x} ({len} bytes) is outside guest memory");
            return None;
        }
        self.mem
            .get_host_address(GuestAddress(gpa))
            .ok()
            .map(|p| p as u64)
    }

    /// Checks the selected queue's size and ring addresses.
    fn ring_host_addrs(&self, index: usize) -> Option<VringHostAddrs> {
        let q = &self.queues[index];
        let n = u64::from(q.size);
        if n == 0 {
            guest_error!("virtio-mmio: queue {index} made ready without a QueueNum");
            return None;
        }
        Some(VringHostAddrs {
            desc: self.ring_host_address("descriptor table", q.desc, 16 * n, 16)?,
            avail: self.ring_host_address("driver area", q.avail, 6 + 2 * n, 2)?,
            used: self.ring_host_address("device area", q.used, 6 + 8 * n, 4)?,
        })
    }

    fn write_queue_ready(&mut self, v: u32) {
        let index = self.queue_sel as usize;
        if v == 0 {
            if self.selected_queue("QueueReady 0").is_none() {
                return;
            }
            // In range, so at most the backend's queue count: a u16.
            if self.backend.is_vring_started(index as u16) {
                // Stopping one queue of a live device needs RING_RESET, not offered.
                guest_error!(
                    "virtio-mmio: QueueReady 0 on a running queue ignored (reset the device)"
                );
                return;
            }
            self.queues[index].ready = false;
            return;
        }
        if !self.queue_writable("QueueReady") {
            return;
        }
        if self.ring_host_addrs(index).is_none() {
            return; // refused: QueueReady stays 0
        }
        self.queues[index].ready = true;
        if self.activated {
            self.start_queue(index);
        }
    }

    fn notify(&mut self, v: u32) {
        self.stats.kicks += 1;
        if self.status & S_DRIVER_OK == 0 {
            guest_error!("virtio-mmio: QueueNotify {v} before DRIVER_OK");
            return;
        }
        match self.queues.get(v as usize) {
            Some(q) if self.backend.is_vring_started(v as u16) => {
                if let Err(e) = q.kick.write(1) {
                    guest_error!("virtio-mmio: cannot signal the kick eventfd of queue {v}: {e}");
                }
            }
            Some(_) => guest_error!("virtio-mmio: QueueNotify for queue {v}, which is not running"),
            None => guest_error!("virtio-mmio: QueueNotify for queue {v}, out of range"),
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if v & old != old {
            guest_error!(
                "virtio-mmio: status {v:#x} clears bits of {old:#x} (only a write of 0 resets)"
            );
            return;
        }
        let new = v & !old;
        if new & !(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK | S_FAILED) != 0 {
            guest_error!("virtio-mmio: unknown status bits in {v:#x}");
            return;
        }
        let mut status = old | (new & (S_ACKNOWLEDGE | S_DRIVER | S_FAILED));
        if new & S_FEATURES_OK != 0 {
            if status & S_DRIVER == 0 {
                guest_error!("virtio-mmio: FEATURES_OK without DRIVER");
            } else if let Some(bad) = self.check_driver_features() {
                guest_error!("virtio-mmio: FEATURES_OK refused: {bad}");
            } else {
                status |= S_FEATURES_OK;
            }
        }
        self.status = status;
        if new & S_DRIVER_OK != 0 {
            if self.status & S_FEATURES_OK == 0 {
                guest_error!("virtio-mmio: DRIVER_OK without FEATURES_OK");
            } else {
                self.status |= S_DRIVER_OK;
                self.activate();
            }
        }
    }

    /// Why the driver's features cannot be accepted, if they cannot.
    fn check_driver_features(&self) -> Option<String> {
        let extra = self.driver_features & !self.device_features;
        if extra != 0 {
            return Some(format!("bits {extra:#x} were not offered"));
        }
        if self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Some("VIRTIO_F_VERSION_1 not acked (legacy drivers are not served)".into());
        }
        None
    }

    /// DRIVER_OK: features and memory table to the backend, then the ready queues.
    fn activate(&mut self) {
        let r = (|| -> Result<(), BackendError> {
            self.backend.set_features(self.driver_features)?;
            self.backend.set_mem_table(&self.mem)
        })();
        if let Err(e) = r {
            self.backend_failed(&e);
            return;
        }
        self.activated = true;
        guest_info!(
            "virtio-mmio: device {} live, features {:#x}",
            self.config.device_id,
            self.driver_features
        );
        for i in 0..self.queues.len() {
            if self.queues[i].ready {
                self.start_queue(i);
            }
        }
    }

    fn start_queue(&mut self, index: usize) {
        let Some(addrs) = self.ring_host_addrs(index) else {
            return; // checked at QueueReady; memory does not shrink
        };
        let q = &self.queues[index];
        let vring = VringSetup {
            index: index as u16,
            size: q.size,
            addrs,
            base: 0,
            call: &q.call,
            kick: &q.kick,
            err: None,
            enable: true,
        };
        if let Err(e) = self.backend.set_up_vring(&vring) {
            self.backend_failed(&e);
        }
    }

    fn backend_failed(&mut self, e: &BackendError) {
        if e.is_disconnect() {
            // The VMM's watch of the connection reports this as the run's error.
            guest_info!(
                "virtio-mmio: device {}: backend gone: {}",
                self.config.device_id,
                crate::error_chain(e)
            );
        } else {
            guest_error!(
                "virtio-mmio: device {}: {}",
                self.config.device_id,
                crate::error_chain(e)
            );
        }
        self.status |= S_NEEDS_RESET;
        // A config-change interrupt tells a driver to look at the status.
        self.interrupt_status |= 2;
    }

    /// Status 0: stops the queues the backend runs and forgets the session.
    fn reset(&mut self) {
        for failed in self.backend.reset() {
            let i = failed.index;
            log_backend_error(&format!("stopping queue {i} on reset"), &failed.error);
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.interrupt_status = 0;
        self.device_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.activated = false;
    }

    fn config_range(&self, what: &str, offset: u64, len: usize) -> Option<u32> {
        let ok = matches!(len, 1 | 2 | 4 | 8)
            && offset.is_multiple_of(len as u64)
            && offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= u64::from(self.config.config_size));
        if !ok {
            guest_error!(
                "virtio-mmio: {len}-byte config {what} at {offset:#x} refused (size {}, naturally aligned 1/2/4/8-byte accesses)",
                self.config.config_size
            );
            return None;
        }
        Some(offset as u32)
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        let Some(off) = self.config_range("read", offset, data.len()) else {
            data.fill(0);
            return;
        };
        let overrides = match &self.config.config_space {
            ConfigSpace::Local(bytes) => {
                let start = off as usize;
                data.copy_from_slice(&bytes[start..start + data.len()]);
                return;
            }
            ConfigSpace::Backend { overrides } => overrides,
        };
        if let Err(e) = self.backend.read_config(off, data) {
            log_backend_error(&format!("config read at {off:#x}"), &e);
            data.fill(0);
            return;
        }
        // Replace the bytes of the VMM's fields that overlap the access.
        let (start, end) = (u64::from(off), u64::from(off) + data.len() as u64);
        for (field, bytes) in overrides {
            for (i, b) in bytes.iter().enumerate() {
                let at = u64::from(*field) + i as u64;
                if (start..end).contains(&at) {
                    data[(at - start) as usize] = *b;
                }
            }
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let Some(off) = self.config_range("write", offset, data.len()) else {
            return;
        };
        if matches!(self.config.config_space, ConfigSpace::Local(_)) {
            guest_error!(
                "virtio-mmio: device {} config write at {off:#x} ignored (read-only fields)",
                self.config.device_id
            );
            return;
        }
        if let Err(e) = self.backend.set_config(off, data) {
            log_backend_error(&format!("config write at {off:#x}"), &e);
        }
    }
}
