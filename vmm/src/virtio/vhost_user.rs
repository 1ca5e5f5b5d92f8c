//! The device side of a virtio device served by a vhost-user backend: a
//! [`vhostkit_frontend::Connection`], the frontend the test driver uses too.
//!
//! [`Backend::connect`] runs what QEMU does when it creates the device: GET_FEATURES,
//! GET/SET_PROTOCOL_FEATURES (MQ, REPLY_ACK, CONFIG where offered), GET_QUEUE_NUM
//! (with MQ), SET_OWNER. When the guest driver sets DRIVER_OK, the transport
//! ([`super::mmio`]) activates the device, and the vhost-user device
//! ((`devices::vhost_user_device`)) calls [`Backend::set_features`],
//! [`Backend::set_mem_table`] and, per ready queue, [`Backend::set_up_vring`]
//! (SET_VRING_NUM/ADDR/BASE/CALL/KICK/ENABLE). A device reset stops each started
//! vring ([`Backend::stop_vring`]: SET_VRING_ENABLE 0 and GET_VRING_BASE). The guest
//! owns the rings; the VMM only passes their host addresses on.

use std::time::Duration;

pub use vhostkit_frontend::{
    Connection as Backend, Error as BackendError, Result, VringHostAddrs, VringSetup,
};

/// How long the VMM waits for the backend's answer to one control request (the
/// timeout [`Backend::connect`] sets): a backend that stops answering fails the
/// request (a watchdog shuts the socket down), and the VMM goes on, instead of
/// hanging a vCPU forever.
pub const CONTROL_TIMEOUT: Duration = vhostkit_frontend::DEFAULT_CONTROL_TIMEOUT;
