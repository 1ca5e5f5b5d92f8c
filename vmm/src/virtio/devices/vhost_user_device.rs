//! A virtio device served by a vhost-user backend: what the transport's
//! [`VirtioDevice`] calls become on the backend's connection, shaped by the
//! [`DeviceLayout`] a kind's module gives.

use vhostkit_common::guest_error;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;
use crate::virtio::device::{DeviceError, QueueRings, VirtioDevice};
use crate::virtio::vhost_user::{Backend, BackendError, VringHostAddrs, VringSetup};

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

/// What the guest sees of a device, as its kind's module lays it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceLayout {
    /// Virtio device ID (`virtio_bindings::virtio_ids`).
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

/// A vhost-user backend behind a [`DeviceLayout`].
#[derive(Debug)]
pub struct VhostUserDevice {
    backend: Backend,
    layout: DeviceLayout,
}

impl VhostUserDevice {
    /// The device `layout` describes, on `backend`'s connection. Shows at most the
    /// backend's queues, at least one.
    pub fn new(backend: Backend, mut layout: DeviceLayout) -> Self {
        layout.num_queues = layout.num_queues.clamp(1, backend.num_queues());
        VhostUserDevice { backend, layout }
    }

    /// The backend's connection (to watch it for a hang-up).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn layout(&self) -> &DeviceLayout {
        &self.layout
    }
}

impl From<BackendError> for DeviceError {
    fn from(e: BackendError) -> Self {
        DeviceError::new(e.is_disconnect(), e)
    }
}

impl VirtioDevice for VhostUserDevice {
    fn device_id(&self) -> u32 {
        self.layout.device_id
    }

    fn features(&self) -> u64 {
        (self.backend.offered_features() | self.layout.vmm_features) & !self.layout.masked_features
    }

    fn num_queues(&self) -> u16 {
        self.layout.num_queues
    }

    fn queue_max_size(&self) -> u16 {
        self.layout.queue_max_size
    }

    fn config_size(&self) -> u32 {
        self.layout.config_size
    }

    fn read_config(&mut self, offset: u32, data: &mut [u8]) -> Result<(), DeviceError> {
        let overrides = match &self.layout.config_space {
            ConfigSpace::Local(bytes) => {
                let start = offset as usize;
                match bytes.get(start..start + data.len()) {
                    Some(b) => data.copy_from_slice(b),
                    None => data.fill(0),
                }
                return Ok(());
            }
            ConfigSpace::Backend { overrides } => overrides,
        };
        self.backend.read_config(offset, data)?;
        // Replace the bytes of the VMM's fields that overlap the access.
        let (start, end) = (u64::from(offset), u64::from(offset) + data.len() as u64);
        for (field, bytes) in overrides {
            for (i, b) in bytes.iter().enumerate() {
                let at = u64::from(*field) + i as u64;
                if (start..end).contains(&at) {
                    data[(at - start) as usize] = *b;
                }
            }
        }
        Ok(())
    }

    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), DeviceError> {
        if matches!(self.layout.config_space, ConfigSpace::Local(_)) {
            guest_error!(
                "virtio-mmio: device {} config write at {offset:#x} ignored (read-only fields)",
                self.layout.device_id
            );
            return Ok(());
        }
        Ok(self.backend.set_config(offset, data)?)
    }

    /// SET_FEATURES and SET_MEM_TABLE.
    fn activate(&mut self, features: u64, mem: &GuestMemory) -> Result<(), DeviceError> {
        self.backend.set_features(features)?;
        Ok(self.backend.set_mem_table(mem)?)
    }

    fn start_queue(
        &mut self,
        index: u16,
        rings: QueueRings,
        call: &EventFd,
        kick: &EventFd,
    ) -> Result<(), DeviceError> {
        let vring = VringSetup {
            index,
            size: rings.size,
            addrs: VringHostAddrs {
                desc: rings.desc,
                avail: rings.avail,
                used: rings.used,
            },
            base: 0,
            call,
            kick,
            err: None,
            enable: true,
        };
        Ok(self.backend.set_up_vring(&vring)?)
    }

    fn stop_queue(&mut self, index: u16) -> Result<(), DeviceError> {
        self.backend.stop_vring(index).map(drop)?;
        Ok(())
    }
}
