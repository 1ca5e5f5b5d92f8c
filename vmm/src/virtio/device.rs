//! The seam between a virtio transport and a device: [`VirtioDevice`].
//!
//! The transport ([`super::mmio::MmioTransport`]) owns the registers, the queue
//! set-up the guest writes, the kick and call eventfds and the status state
//! machine; it knows no device kind. A device says what it is (ID, features,
//! queues, config space) and does what activation, queue start and stop mean for
//! it. The VMM's devices are vhost-user backends
//! ([`super::devices::VhostUserDevice`]), one kind each in [`super::devices`]; the
//! transport's unit tests use a dummy device.

use std::fmt;

use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;

/// Host virtual addresses of a queue's three areas and its size: where the guest
/// placed the ring, checked by the transport to lie inside guest memory, aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueRings {
    /// Entries (QueueNum).
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

/// A device operation that failed. `gone` tells a device whose backend went away
/// (the VMM's watch of the connection reports that as the run's error, so the
/// transport only notes it) from one that refused.
#[derive(Debug)]
pub struct DeviceError {
    gone: bool,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl DeviceError {
    /// A failure; `gone` if the device's backend is no longer there.
    pub fn new(gone: bool, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        DeviceError {
            gone,
            source: Box::new(source),
        }
    }

    /// Whether the backend is gone, as opposed to refusing a request.
    pub fn is_disconnect(&self) -> bool {
        self.gone
    }
}

/// Shows the error it wraps (its sources follow through [`std::error::Error::source`]).
impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for DeviceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.source()
    }
}

/// What a virtio transport needs of a device. Every call comes from the transport
/// after it checked the guest's input (selectors, bounds, status order): a device
/// need not check it again.
pub trait VirtioDevice: Send + fmt::Debug {
    /// The virtio device ID (`virtio_bindings::virtio_ids`).
    fn device_id(&self) -> u32;

    /// Feature bits the device offers (the transport masks them with what it
    /// implements). May include bits the guest never sees, such as vhost-user's
    /// PROTOCOL_FEATURES: the transport's mask drops them.
    fn features(&self) -> u64;

    /// Queues shown to the guest (at least 1).
    fn num_queues(&self) -> u16;

    /// QueueNumMax: the largest queue the guest may set up.
    fn queue_max_size(&self) -> u16;

    /// Bytes of config space the guest may access.
    fn config_size(&self) -> u32;

    /// Reads config space: `data.len()` bytes at `offset`, within
    /// [`config_size`](Self::config_size), a naturally aligned 1, 2, 4 or 8 bytes.
    fn read_config(&mut self, offset: u32, data: &mut [u8]) -> Result<(), DeviceError>;

    /// Writes config space (same bounds as a read). A device with read-only config
    /// ignores the write (and may log it).
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), DeviceError>;

    /// DRIVER_OK: the guest accepted `features` (a subset of what was offered, with
    /// VIRTIO_F_VERSION_1); the device may now use guest memory `mem`. Queues that
    /// are ready follow with [`start_queue`](Self::start_queue).
    fn activate(&mut self, features: u64, mem: &GuestMemory) -> Result<(), DeviceError>;

    /// Starts queue `index` (after activation): its rings, the eventfd the guest's
    /// kicks arrive on and the one the device signals when it used buffers.
    fn start_queue(
        &mut self,
        index: u16,
        rings: QueueRings,
        call: &EventFd,
        kick: &EventFd,
    ) -> Result<(), DeviceError>;

    /// Stops queue `index`, started before (device reset).
    fn stop_queue(&mut self, index: u16) -> Result<(), DeviceError>;
}
