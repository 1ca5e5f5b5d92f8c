//! Virtio devices: the virtio-mmio transport ([`mmio`]), which drives any
//! [`device::VirtioDevice`]; the device kinds the VMM offers ([`devices`]), each a
//! vhost-user backend behind it ([`vhost_user`]: the frontend).

pub mod device;
pub mod devices;
pub mod mmio;
pub mod vhost_user;
