//! Virtio devices: the virtio-mmio transport ([`mmio`]) with a vhost-user backend
//! behind it ([`vhost_user`]).

pub mod mmio;
pub mod vhost_user;
