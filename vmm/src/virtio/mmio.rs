//! A virtio-mmio transport (virtio 1.x, register layout version 2) that knows no
//! device kind: it drives a [`VirtioDevice`] (in the VMM a vhost-user backend, one
//! kind each in [`super::devices`]; in the unit tests below a dummy).
//!
//! [`MmioTransport::read`] and [`MmioTransport::write`] take an offset into the device's
//! 4 KiB window and the access's bytes: what a vCPU's `KVM_EXIT_MMIO` carries, and what
//! the in-process tests feed it. Guest mistakes and hostile values (bad queue sizes,
//! rings outside guest memory, out-of-range selectors, unaligned or odd-sized
//! accesses) are refused with a rate-limited [`guest_error!`] and never panic; a
//! device failure sets DEVICE_NEEDS_RESET.
//!
//! Kicks: a QueueNotify write signals the queue's kick eventfd, the one the device
//! (its backend) waits on. [`MmioTransport::register_ioeventfds`] also gives KVM those eventfds on the
//! QueueNotify address (datamatch = queue index), so a running guest's kick never
//! leaves the kernel.
//!
//! Interrupts: the device signals the queue's call eventfd. With an irqchip,
//! [`MmioTransport::register_irqfds`] hands the call eventfds to KVM as irqfds; the VMM
//! then never sees a call, so InterruptStatus reports "used buffer" whenever the
//! device is live (as Firecracker does: a spurious vring interrupt is harmless to
//! Linux's virtio_mmio). Without one (in-process use), [`MmioTransport::call_fd`]
//! exposes the call eventfds to wait on, and reading InterruptStatus (or
//! [`MmioTransport::interrupt_pending`]) consumes pending calls into its "used buffer"
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
use virtio_bindings::virtio_mmio as reg;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{DeviceError, QueueRings, VirtioDevice};
use crate::memory::GuestMemory;

/// Size of a device's MMIO window.
pub const MMIO_WINDOW: u64 = 0x1000;

pub const MAGIC_VALUE: u64 = reg::VIRTIO_MMIO_MAGIC_VALUE as u64;
pub const VERSION: u64 = reg::VIRTIO_MMIO_VERSION as u64;
pub const DEVICE_ID: u64 = reg::VIRTIO_MMIO_DEVICE_ID as u64;
pub const VENDOR_ID: u64 = reg::VIRTIO_MMIO_VENDOR_ID as u64;
pub const DEVICE_FEATURES: u64 = reg::VIRTIO_MMIO_DEVICE_FEATURES as u64;
pub const DEVICE_FEATURES_SEL: u64 = reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
pub const DRIVER_FEATURES: u64 = reg::VIRTIO_MMIO_DRIVER_FEATURES as u64;
pub const DRIVER_FEATURES_SEL: u64 = reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
pub const QUEUE_SEL: u64 = reg::VIRTIO_MMIO_QUEUE_SEL as u64;
pub const QUEUE_NUM_MAX: u64 = reg::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
pub const QUEUE_NUM: u64 = reg::VIRTIO_MMIO_QUEUE_NUM as u64;
pub const QUEUE_READY: u64 = reg::VIRTIO_MMIO_QUEUE_READY as u64;
pub const QUEUE_NOTIFY: u64 = reg::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
pub const INTERRUPT_STATUS: u64 = reg::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
pub const INTERRUPT_ACK: u64 = reg::VIRTIO_MMIO_INTERRUPT_ACK as u64;
pub const STATUS: u64 = reg::VIRTIO_MMIO_STATUS as u64;
pub const QUEUE_DESC_LOW: u64 = reg::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
pub const QUEUE_DESC_HIGH: u64 = reg::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
/// QueueDriverLow: the driver area (avail ring); Linux's header still says AVAIL.
pub const QUEUE_DRIVER_LOW: u64 = reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
pub const QUEUE_DRIVER_HIGH: u64 = reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
/// QueueDeviceLow: the device area (used ring).
pub const QUEUE_DEVICE_LOW: u64 = reg::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
pub const QUEUE_DEVICE_HIGH: u64 = reg::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
pub const CONFIG_GENERATION: u64 = reg::VIRTIO_MMIO_CONFIG_GENERATION as u64;
pub const CONFIG: u64 = reg::VIRTIO_MMIO_CONFIG as u64;

/// "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// Vendor ID we report ("VHKT").
pub const VENDOR: u32 = 0x544b_4856;
/// InterruptStatus bit: a queue's used ring was updated.
pub const INT_VRING: u32 = reg::VIRTIO_MMIO_INT_VRING;
/// InterruptStatus bit: the config space (or the status: DEVICE_NEEDS_RESET) changed.
pub const INT_CONFIG: u32 = reg::VIRTIO_MMIO_INT_CONFIG;

/// Feature bits 0 to 23: the device type's own (virtio 1.2, 6 "Reserved Feature
/// Bits"); the transport passes them through whatever they mean.
pub const DEVICE_TYPE_FEATURES: u64 = (1 << 24) - 1;

/// Feature bits the transport implements: all device-type bits (which include blk's
/// and net's MQ), VERSION_1, INDIRECT_DESC and EVENT_IDX. Not packed rings, IN_ORDER,
/// ACCESS_PLATFORM, NOTIFICATION_DATA or RING_RESET.
pub const SUPPORTED_FEATURES: u64 = DEVICE_TYPE_FEATURES
    | 1 << VIRTIO_F_VERSION_1
    | 1 << VIRTIO_RING_F_INDIRECT_DESC
    | 1 << VIRTIO_RING_F_EVENT_IDX;

const S_ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const S_DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const S_DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const S_FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const S_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
const S_FAILED: u32 = VIRTIO_CONFIG_S_FAILED;

#[derive(Debug)]
struct Queue {
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
    /// Handed to the device ([`VirtioDevice::start_queue`]): must be stopped on reset.
    started: bool,
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
            started: false,
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
        self.started = false;
        // Drop kicks and calls of the old session.
        let _ = self.kick.read();
        let _ = self.call.read();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("KVM refused the ioeventfd of queue {0} at {1:#x}")]
    IoEventFd(u16, u64, #[source] kvm_ioctls::Error),
    #[error("KVM refused the irqfd of queue {0} (GSI {1})")]
    IrqFd(u16, u32, #[source] kvm_ioctls::Error),
}

/// Logs a failed device request: an error, or a note when the backend is gone (the
/// VMM's watch of the connection reports that as the run's error).
fn log_device_error(what: &str, e: &DeviceError) {
    if e.is_disconnect() {
        guest_info!(
            "virtio-mmio: {what}: backend gone: {}",
            crate::error_chain(e)
        );
    } else {
        guest_error!("virtio-mmio: {what}: {}", crate::error_chain(e));
    }
}

/// The virtio-mmio transport of one device. See the [module docs](self).
#[derive(Debug)]
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Arc<GuestMemory>,
    /// Offered to the guest: the device's features masked by [`SUPPORTED_FEATURES`].
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
    /// DRIVER_OK was accepted and the device activated.
    activated: bool,
    stats: NotificationStats,
}

/// Virtio notifications that passed through the VMM rather than KVM: each one is a
/// VMM thread woken for the data path. With ioeventfds and irqfds registered both
/// stay zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotificationStats {
    /// QueueNotify writes that reached [`MmioTransport::write`] (a vCPU exit to user
    /// space instead of an ioeventfd signal inside KVM).
    pub kicks: u64,
    /// Backend calls the VMM consumed from a call eventfd (no irqfd).
    pub calls: u64,
}

impl MmioTransport {
    /// The transport of `device`, with guest memory `mem` (for a vhost-user device
    /// it must be file-backed, as [`crate::memory::create`] makes it).
    pub fn new(device: Box<dyn VirtioDevice>, mem: Arc<GuestMemory>) -> Result<Self, MmioError> {
        let count = device.num_queues().max(1);
        let queues = (0..count)
            .map(|_| Queue::new())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(MmioError::EventFd)?;
        let device_features = device.features() & SUPPORTED_FEATURES;
        if device_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            warn!("virtio device {} does not offer VIRTIO_F_VERSION_1; no modern driver will accept it", device.device_id());
        }
        Ok(MmioTransport {
            device,
            mem,
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
        self.device.device_id()
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

    /// The call eventfd of queue `index` (the device signals it when it used
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
            DEVICE_ID => self.device.device_id(),
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => match self.queues.get(self.queue_sel as usize) {
                Some(_) => u32::from(self.device.queue_max_size()),
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
        let max = u32::from(self.device.queue_max_size());
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
    fn ring_host_addrs(&self, index: usize) -> Option<QueueRings> {
        let q = &self.queues[index];
        let n = u64::from(q.size);
        if n == 0 {
            guest_error!("virtio-mmio: queue {index} made ready without a QueueNum");
            return None;
        }
        Some(QueueRings {
            size: q.size,
            desc: self.ring_host_address("descriptor table", q.desc, 16 * n, 16)?,
            avail: self.ring_host_address("driver area", q.avail, 6 + 2 * n, 2)?,
            used: self.ring_host_address("device area", q.used, 6 + 8 * n, 4)?,
        })
    }

    fn write_queue_ready(&mut self, v: u32) {
        let index = self.queue_sel as usize;
        if v == 0 {
            let Some(q) = self.selected_queue("QueueReady 0") else {
                return;
            };
            if q.started {
                // Stopping one queue of a live device needs RING_RESET, not offered.
                guest_error!(
                    "virtio-mmio: QueueReady 0 on a running queue ignored (reset the device)"
                );
                return;
            }
            q.ready = false;
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
            Some(q) if q.started => {
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

    /// DRIVER_OK: the device activated with the acked features, then the ready
    /// queues started.
    fn activate(&mut self) {
        if let Err(e) = self.device.activate(self.driver_features, &self.mem) {
            self.device_failed(&e);
            return;
        }
        self.activated = true;
        guest_info!(
            "virtio-mmio: device {} live, features {:#x}",
            self.device.device_id(),
            self.driver_features
        );
        for i in 0..self.queues.len() {
            if self.queues[i].ready {
                self.start_queue(i);
            }
        }
    }

    fn start_queue(&mut self, index: usize) {
        let Some(rings) = self.ring_host_addrs(index) else {
            return; // checked at QueueReady; memory does not shrink
        };
        let q = &self.queues[index];
        let r = self
            .device
            .start_queue(index as u16, rings, &q.call, &q.kick);
        match r {
            Ok(()) => self.queues[index].started = true,
            Err(e) => self.device_failed(&e),
        }
    }

    /// A device that failed needs a reset: DEVICE_NEEDS_RESET, and a config-change
    /// interrupt to make the driver look.
    fn device_failed(&mut self, e: &DeviceError) {
        if e.is_disconnect() {
            // The VMM's watch of the connection reports this as the run's error.
            guest_info!(
                "virtio-mmio: device {}: backend gone: {}",
                self.device.device_id(),
                crate::error_chain(e)
            );
        } else {
            guest_error!(
                "virtio-mmio: device {}: {}",
                self.device.device_id(),
                crate::error_chain(e)
            );
        }
        self.status |= S_NEEDS_RESET;
        // A config-change interrupt tells a driver to look at the status.
        self.interrupt_status |= INT_CONFIG;
    }

    /// Status 0: stops the queues the device runs and forgets the session.
    fn reset(&mut self) {
        for i in 0..self.queues.len() {
            if self.queues[i].started {
                if let Err(e) = self.device.stop_queue(i as u16) {
                    log_device_error(&format!("stopping queue {i} on reset"), &e);
                }
            }
            self.queues[i].reset();
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
                .is_some_and(|end| end <= u64::from(self.device.config_size()));
        if !ok {
            guest_error!(
                "virtio-mmio: {len}-byte config {what} at {offset:#x} refused (size {}, naturally aligned 1/2/4/8-byte accesses)",
                self.device.config_size()
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
        if let Err(e) = self.device.read_config(off, data) {
            log_device_error(&format!("config read at {off:#x}"), &e);
            data.fill(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let Some(off) = self.config_range("write", offset, data.len()) else {
            return;
        };
        if let Err(e) = self.device.write_config(off, data) {
            log_device_error(&format!("config write at {off:#x}"), &e);
        }
    }
}

/// The transport against a dummy device that records what it is asked: no backend,
/// no KVM; guest memory is a memfd as the VMM makes it.
#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    const MEM_SIZE: u64 = 1 << 20;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const V1: u64 = 1 << VIRTIO_F_VERSION_1;
    /// Offered by the dummy: a device-type bit, EVENT_IDX, VERSION_1, and two bits the
    /// transport does not implement (vhost-user's PROTOCOL_FEATURES, packed rings).
    const OFFERED: u64 = 1 << 5 | 1 << VIRTIO_RING_F_EVENT_IDX | V1 | 1 << 30 | 1 << 34;
    const S_ACK_DRIVER: u32 = S_ACKNOWLEDGE | S_DRIVER;

    /// What the dummy was asked, for the test to look at.
    #[derive(Debug, Default)]
    struct Log {
        activated: Vec<u64>,
        started: Vec<(u16, QueueRings)>,
        stopped: Vec<u16>,
        config_reads: Vec<(u32, usize)>,
        config_writes: Vec<(u32, Vec<u8>)>,
        fail_activate: bool,
        fail_start: bool,
    }

    #[derive(Debug)]
    struct Dummy {
        log: Arc<Mutex<Log>>,
        config: Vec<u8>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("dummy refuses")]
    struct Refused;

    impl VirtioDevice for Dummy {
        fn device_id(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            OFFERED
        }
        fn num_queues(&self) -> u16 {
            2
        }
        fn queue_max_size(&self) -> u16 {
            64
        }
        fn config_size(&self) -> u32 {
            self.config.len() as u32
        }
        fn read_config(&mut self, offset: u32, data: &mut [u8]) -> Result<(), DeviceError> {
            self.log
                .lock()
                .unwrap()
                .config_reads
                .push((offset, data.len()));
            let start = offset as usize;
            data.copy_from_slice(&self.config[start..start + data.len()]);
            Ok(())
        }
        fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), DeviceError> {
            self.log
                .lock()
                .unwrap()
                .config_writes
                .push((offset, data.to_vec()));
            let start = offset as usize;
            self.config[start..start + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn activate(&mut self, features: u64, _mem: &GuestMemory) -> Result<(), DeviceError> {
            let mut log = self.log.lock().unwrap();
            if log.fail_activate {
                return Err(DeviceError::new(false, Refused));
            }
            log.activated.push(features);
            Ok(())
        }
        fn start_queue(
            &mut self,
            index: u16,
            rings: QueueRings,
            _call: &EventFd,
            _kick: &EventFd,
        ) -> Result<(), DeviceError> {
            let mut log = self.log.lock().unwrap();
            if log.fail_start {
                return Err(DeviceError::new(false, Refused));
            }
            log.started.push((index, rings));
            Ok(())
        }
        fn stop_queue(&mut self, index: u16) -> Result<(), DeviceError> {
            self.log.lock().unwrap().stopped.push(index);
            Ok(())
        }
    }

    struct T {
        dev: MmioTransport,
        log: Arc<Mutex<Log>>,
        mem: Arc<GuestMemory>,
    }

    /// A transport on a dummy with a 10-byte config space 0, 1, 2, ... 9.
    fn transport() -> T {
        let log = Arc::new(Mutex::new(Log::default()));
        let mem = Arc::new(crate::memory::create(MEM_SIZE).unwrap());
        let dummy = Dummy {
            log: log.clone(),
            config: (0..10).collect(),
        };
        let dev = MmioTransport::new(Box::new(dummy), mem.clone()).unwrap();
        T { dev, log, mem }
    }

    impl T {
        fn r(&mut self, off: u64) -> u32 {
            let mut b = [0u8; 4];
            self.dev.read(off, &mut b);
            u32::from_le_bytes(b)
        }
        fn w(&mut self, off: u64, v: u32) {
            self.dev.write(off, &v.to_le_bytes());
        }
        fn offered(&mut self) -> u64 {
            self.w(DEVICE_FEATURES_SEL, 0);
            let low = self.r(DEVICE_FEATURES);
            self.w(DEVICE_FEATURES_SEL, 1);
            u64::from(low) | u64::from(self.r(DEVICE_FEATURES)) << 32
        }
        fn ack(&mut self, features: u64) {
            self.w(DRIVER_FEATURES_SEL, 0);
            self.w(DRIVER_FEATURES, features as u32);
            self.w(DRIVER_FEATURES_SEL, 1);
            self.w(DRIVER_FEATURES, (features >> 32) as u32);
        }
        /// Up to FEATURES_OK with `features` acked.
        fn features_ok(&mut self, features: u64) {
            self.w(STATUS, S_ACKNOWLEDGE);
            self.w(STATUS, S_ACK_DRIVER);
            self.ack(features);
            self.w(STATUS, S_ACK_DRIVER | S_FEATURES_OK);
            assert_eq!(self.r(STATUS), S_ACK_DRIVER | S_FEATURES_OK);
        }
        /// Queue `q`: `size` entries at the usual rings (+ `q` pages), QueueReady 1.
        fn queue(&mut self, q: u32, size: u32) {
            let shift = u64::from(q) * 0x10000;
            self.w(QUEUE_SEL, q);
            self.w(QUEUE_NUM, size);
            for (low, addr) in [
                (QUEUE_DESC_LOW, DESC + shift),
                (QUEUE_DRIVER_LOW, AVAIL + shift),
                (QUEUE_DEVICE_LOW, USED + shift),
            ] {
                self.w(low, addr as u32);
                self.w(low + 4, (addr >> 32) as u32);
            }
            self.w(QUEUE_READY, 1);
        }
        fn live(&mut self) {
            self.features_ok(V1);
            self.queue(0, 16);
            self.w(STATUS, S_ACK_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
        }
        fn log(&self) -> std::sync::MutexGuard<'_, Log> {
            self.log.lock().unwrap()
        }
        fn host(&self, gpa: u64) -> u64 {
            self.mem.get_host_address(GuestAddress(gpa)).unwrap() as u64
        }
    }

    #[test]
    fn identity_registers_and_bad_accesses() {
        let mut t = transport();
        assert_eq!(t.r(MAGIC_VALUE), MAGIC);
        assert_eq!(t.r(VERSION), 2);
        assert_eq!(t.r(DEVICE_ID), 42, "the device's ID, whatever it is");
        assert_eq!(t.r(VENDOR_ID), VENDOR);
        assert_eq!(t.r(CONFIG_GENERATION), 0);
        // Read-only registers ignore writes.
        t.w(MAGIC_VALUE, 0);
        t.w(DEVICE_ID, 7);
        assert_eq!((t.r(MAGIC_VALUE), t.r(DEVICE_ID)), (MAGIC, 42));
        // Write-only and unknown registers read as 0.
        for off in [QUEUE_NOTIFY, INTERRUPT_ACK, DRIVER_FEATURES, 0x0c0, 0x0f8] {
            assert_eq!(t.r(off), 0, "register {off:#x}");
        }
        // Odd-sized and unaligned register accesses: zeros, no effect.
        let mut two = [0xaa; 2];
        t.dev.read(MAGIC_VALUE, &mut two);
        assert_eq!(two, [0, 0]);
        let mut four = [0xaa; 4];
        t.dev.read(MAGIC_VALUE + 2, &mut four);
        assert_eq!(four, [0; 4]);
        let mut eight = [0xaa; 8];
        t.dev.read(MAGIC_VALUE, &mut eight);
        assert_eq!(eight, [0; 8]);
        t.dev.write(STATUS, &[1]);
        t.dev.write(STATUS + 2, &1u32.to_le_bytes());
        t.dev.write(STATUS, &1u64.to_le_bytes());
        assert_eq!(t.r(STATUS), 0);
    }

    /// Both 32-bit halves of the 64-bit feature words, each way.
    #[test]
    fn feature_negotiation_uses_both_words() {
        let mut t = transport();
        let offered = OFFERED & SUPPORTED_FEATURES;
        assert_eq!(
            t.offered(),
            offered,
            "masked by what the transport implements"
        );
        assert_eq!(offered & (1 << 30 | 1 << 34), 0);
        assert_eq!(t.dev.device_features(), offered);
        t.w(DEVICE_FEATURES_SEL, 2);
        assert_eq!(t.r(DEVICE_FEATURES), 0, "no third word");
        t.w(DEVICE_FEATURES_SEL, 1);
        assert_eq!(t.r(DEVICE_FEATURES), 1, "VERSION_1: bit 0 of word 1");
        t.w(DEVICE_FEATURES_SEL, 0);
        assert_eq!(t.r(DEVICE_FEATURES), offered as u32);

        // DriverFeatures only between DRIVER and FEATURES_OK.
        t.ack(V1);
        t.w(STATUS, S_ACKNOWLEDGE);
        t.w(STATUS, S_ACK_DRIVER);
        t.w(STATUS, S_ACK_DRIVER | S_FEATURES_OK);
        assert_eq!(
            t.r(STATUS),
            S_ACK_DRIVER,
            "features written too early were dropped"
        );

        // An unoffered bit in either word, or no VERSION_1: FEATURES_OK refused.
        for bad in [V1 | 1 << 6, V1 | 1 << 40, V1 | 1 << 30, 1 << 5] {
            t.ack(bad);
            t.w(STATUS, S_ACK_DRIVER | S_FEATURES_OK);
            assert_eq!(t.r(STATUS), S_ACK_DRIVER, "{bad:#x} accepted");
        }
        // A selector beyond word 1 changes nothing.
        t.ack(offered);
        t.w(DRIVER_FEATURES_SEL, 2);
        t.w(DRIVER_FEATURES, u32::MAX);
        t.w(STATUS, S_ACK_DRIVER | S_FEATURES_OK);
        assert_eq!(t.r(STATUS), S_ACK_DRIVER | S_FEATURES_OK);
        // Frozen after FEATURES_OK.
        t.w(DRIVER_FEATURES_SEL, 0);
        t.w(DRIVER_FEATURES, 0);
        t.queue(0, 16);
        t.w(STATUS, S_ACK_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
        assert_eq!(t.log().activated, [offered], "both words reach the device");
    }

    #[test]
    fn status_state_machine() {
        let mut t = transport();
        // Out of order: FEATURES_OK without DRIVER, DRIVER_OK without FEATURES_OK,
        // unknown bits.
        t.w(STATUS, S_ACKNOWLEDGE);
        t.w(STATUS, S_ACKNOWLEDGE | S_FEATURES_OK);
        assert_eq!(t.r(STATUS), S_ACKNOWLEDGE);
        t.w(STATUS, S_ACK_DRIVER | S_DRIVER_OK);
        assert_eq!(t.r(STATUS), S_ACK_DRIVER);
        t.w(STATUS, S_ACK_DRIVER | 0x10);
        assert_eq!(t.r(STATUS), S_ACK_DRIVER);
        t.w(STATUS, S_ACK_DRIVER | S_NEEDS_RESET);
        assert_eq!(
            t.r(STATUS),
            S_ACK_DRIVER,
            "the driver cannot set NEEDS_RESET"
        );
        // Only a write of 0 clears bits: a write that drops one is refused whole,
        // even with a bit that would be accepted otherwise.
        t.w(STATUS, S_DRIVER);
        assert_eq!(t.r(STATUS), S_ACK_DRIVER);
        t.ack(V1);
        t.w(STATUS, S_ACKNOWLEDGE | S_FEATURES_OK);
        assert_eq!(
            t.r(STATUS),
            S_ACK_DRIVER,
            "DRIVER dropped, FEATURES_OK taken"
        );
        assert!(t.log().activated.is_empty());

        t.w(STATUS, 0);
        t.live();
        assert_eq!(
            t.r(STATUS),
            S_ACK_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
            "no NEEDS_RESET"
        );
        assert_eq!(t.log().activated, [V1]);
        assert_eq!(t.log().started.len(), 1);
        // FAILED may be added.
        t.w(
            STATUS,
            S_ACK_DRIVER | S_FEATURES_OK | S_DRIVER_OK | S_FAILED,
        );
        assert_ne!(t.r(STATUS) & S_FAILED, 0);

        // Reset: the started queue is stopped, every register back to its start.
        t.w(STATUS, 0);
        assert_eq!(t.log().stopped, [0]);
        assert_eq!(t.r(STATUS), 0);
        t.w(QUEUE_SEL, 0);
        assert_eq!(t.r(QUEUE_READY), 0);
        t.features_ok(V1);
        t.w(STATUS, 0);
        assert_eq!(t.log().stopped, [0], "a queue never started is not stopped");
    }

    #[test]
    fn device_failures_set_needs_reset() {
        let mut t = transport();
        t.log().fail_activate = true;
        t.live();
        let s = t.r(STATUS);
        assert_eq!(s & S_NEEDS_RESET, S_NEEDS_RESET, "status {s:#x}");
        assert_eq!(t.r(INTERRUPT_STATUS) & INT_CONFIG, INT_CONFIG);
        assert!(t.log().started.is_empty(), "no queue on a failed device");
        // A reset clears it; the next session works.
        t.log().fail_activate = false;
        t.w(STATUS, 0);
        assert_eq!(t.r(STATUS), 0);
        assert_eq!(t.r(INTERRUPT_STATUS), 0);
        t.live();
        assert_eq!(t.r(STATUS) & S_NEEDS_RESET, 0);

        // A queue the device refuses to start.
        t.w(STATUS, 0);
        t.log().fail_start = true;
        t.live();
        assert_eq!(t.r(STATUS) & S_NEEDS_RESET, S_NEEDS_RESET);
        t.w(STATUS, 0);
        assert_eq!(t.log().stopped, [0], "only the queue started in session 2");
    }

    #[test]
    fn queue_set_up_registers() {
        let mut t = transport();
        // Before FEATURES_OK nothing sticks.
        t.queue(0, 16);
        assert_eq!(t.r(QUEUE_READY), 0);
        t.features_ok(V1);
        // QueueNumMax: the device's, for its queues only.
        t.w(QUEUE_SEL, 1);
        assert_eq!(t.r(QUEUE_NUM_MAX), 64);
        t.w(QUEUE_SEL, 2);
        assert_eq!(t.r(QUEUE_NUM_MAX), 0, "no third queue");
        t.queue(2, 16);
        assert_eq!(t.r(QUEUE_READY), 0);
        t.w(QUEUE_SEL, u32::MAX);
        assert_eq!(t.r(QUEUE_NUM_MAX), 0);
        // Sizes: not a power of two, zero, above QueueNumMax: ready refused.
        for bad in [3, 0, 128, u32::MAX] {
            t.queue(0, bad);
            assert_eq!(t.r(QUEUE_READY), 0, "size {bad}");
        }
        // Rings outside memory (via the high word), straddling its end, unaligned.
        for (reg, addr) in [
            (QUEUE_DESC_HIGH, 1u64),
            (QUEUE_DESC_LOW, MEM_SIZE - 16),
            (QUEUE_DRIVER_LOW, AVAIL + 1),
            (QUEUE_DEVICE_LOW, USED + 2),
        ] {
            t.w(QUEUE_SEL, 0);
            t.w(QUEUE_NUM, 16);
            for (low, a) in [
                (QUEUE_DESC_LOW, DESC),
                (QUEUE_DRIVER_LOW, AVAIL),
                (QUEUE_DEVICE_LOW, USED),
            ] {
                t.w(low, a as u32);
                t.w(low + 4, 0);
            }
            t.w(reg, addr as u32);
            t.w(QUEUE_READY, 1);
            assert_eq!(t.r(QUEUE_READY), 0, "{reg:#x} = {addr:#x} accepted");
        }
        // Queue 1 at a 64-bit address written in two halves: the full value counts
        // (the high word 0 here, written after a non-zero one).
        t.w(QUEUE_SEL, 1);
        t.w(QUEUE_DESC_HIGH, 5);
        t.queue(1, 32);
        assert_eq!(t.r(QUEUE_READY), 1);
        // A ready queue's registers are frozen.
        t.w(QUEUE_NUM, 8);
        t.w(QUEUE_DESC_LOW, 0);
        t.w(STATUS, S_ACK_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
        let shift = 0x10000;
        let want = QueueRings {
            size: 32,
            desc: t.host(DESC + shift),
            avail: t.host(AVAIL + shift),
            used: t.host(USED + shift),
        };
        assert_eq!(t.log().started, [(1, want)], "host addresses, QueueNum");
        // A queue made ready on a live device starts at once.
        t.queue(0, 16);
        assert_eq!(t.log().started.len(), 2);
        assert_eq!(t.log().started[1].0, 0);
        // QueueReady 0 on a running queue is refused (no RING_RESET).
        t.w(QUEUE_SEL, 0);
        t.w(QUEUE_READY, 0);
        assert_eq!(t.r(QUEUE_READY), 1);
        t.w(STATUS, 0);
        assert_eq!(t.log().stopped, [0, 1]);
    }

    #[test]
    fn notify_signals_the_kick_eventfd_of_running_queues() {
        let mut t = transport();
        t.w(QUEUE_NOTIFY, 0);
        assert!(
            t.dev.kick_fd(0).unwrap().read().is_err(),
            "before DRIVER_OK"
        );
        t.live();
        t.w(QUEUE_NOTIFY, 1);
        assert!(
            t.dev.kick_fd(1).unwrap().read().is_err(),
            "queue 1 not running"
        );
        t.w(QUEUE_NOTIFY, 7);
        t.w(QUEUE_NOTIFY, 0);
        assert_eq!(t.dev.kick_fd(0).unwrap().read().unwrap(), 1);
        assert_eq!(t.dev.notification_stats().kicks, 4);
    }

    /// Bounds: the device's size, naturally aligned 1/2/4/8-byte accesses; anything
    /// else reads as zeros and never reaches the device.
    #[test]
    fn config_space_access_bounds() {
        let mut t = transport();
        let mut b8 = [0u8; 8];
        t.dev.read(CONFIG, &mut b8);
        assert_eq!(b8, [0, 1, 2, 3, 4, 5, 6, 7]);
        let mut b2 = [0u8; 2];
        t.dev.read(CONFIG + 8, &mut b2);
        assert_eq!(b2, [8, 9], "the last two bytes");
        let mut b1 = [0u8; 1];
        t.dev.read(CONFIG + 9, &mut b1);
        assert_eq!(b1, [9]);
        assert_eq!(t.log().config_reads, [(0, 8), (8, 2), (9, 1)]);
        // Past the end (straddling or beyond), odd sizes, unaligned, wrapping.
        let mut b4 = [0xaa; 4];
        t.dev.read(CONFIG + 8, &mut b4);
        assert_eq!(b4, [0; 4], "straddles the end");
        t.dev.read(CONFIG + 12, &mut b4);
        assert_eq!(b4, [0; 4]);
        t.dev.read(CONFIG + 0xefc, &mut b4);
        assert_eq!(b4, [0; 4]);
        let mut b3 = [0xaa; 3];
        t.dev.read(CONFIG, &mut b3);
        assert_eq!(b3, [0; 3], "3 bytes");
        t.dev.read(CONFIG + 2, &mut b4);
        assert_eq!(b4, [0; 4], "unaligned");
        let mut b16 = [0xaa; 16];
        t.dev.read(CONFIG, &mut b16);
        assert_eq!(b16, [0; 16]);
        t.dev.read(u64::MAX - 1, &mut b2);
        assert_eq!(b2, [0; 2]);
        assert_eq!(t.log().config_reads.len(), 3, "none reached the device");
        // Writes: the same bounds.
        t.dev.write(CONFIG + 4, &[0xee, 0xff]);
        t.dev.write(CONFIG + 8, &[1, 2, 3, 4]);
        t.dev.write(CONFIG + 1, &[1, 2]);
        t.dev.write(CONFIG, &[1, 2, 3]);
        t.dev.write(u64::MAX - 3, &[1, 2, 3, 4]);
        assert_eq!(t.log().config_writes, [(4, vec![0xee, 0xff])]);
        t.dev.read(CONFIG + 4, &mut b2);
        assert_eq!(b2, [0xee, 0xff]);
    }

    /// Without irqfds, the device's calls become "used buffer" in InterruptStatus,
    /// which InterruptACK clears bit by bit.
    #[test]
    fn interrupt_status_and_ack() {
        let mut t = transport();
        assert_eq!(t.r(INTERRUPT_STATUS), 0);
        assert!(!t.dev.interrupt_pending());
        t.live();
        t.dev.call_fd(0).unwrap().write(1).unwrap();
        assert!(t.dev.interrupt_pending());
        assert_eq!(t.r(INTERRUPT_STATUS), INT_VRING);
        assert_eq!(t.dev.notification_stats().calls, 1);
        t.w(INTERRUPT_ACK, INT_CONFIG);
        assert_eq!(t.r(INTERRUPT_STATUS), INT_VRING, "ack of another bit");
        t.w(INTERRUPT_ACK, INT_VRING);
        assert_eq!(t.r(INTERRUPT_STATUS), 0, "acked, and the call was consumed");
        // A call on queue 1 (not running) counts too: the eventfd is the device's.
        t.dev.call_fd(1).unwrap().write(1).unwrap();
        assert_eq!(t.r(INTERRUPT_STATUS), INT_VRING);
        // Reset drops pending interrupts and calls.
        t.dev.call_fd(0).unwrap().write(1).unwrap();
        t.w(STATUS, 0);
        assert_eq!(t.r(INTERRUPT_STATUS), 0);
    }
}
