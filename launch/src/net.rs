//! vhost-user-net's options (`vhost-net/src/config.rs`).

use std::fmt;
use std::net::IpAddr;

use crate::{ArgList, DaemonArgs};

/// `--host-ip ADDR/PREFIX`: the tap's address on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostIp {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl fmt::Display for HostIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A MAC address as a daemon argument: lower-case hex bytes with colons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// vhost-user-net's own options; `None` leaves the daemon's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetArgs {
    /// `--tap`: the interface (created if missing).
    pub tap: String,
    /// `--host-ip`.
    pub host_ip: Option<HostIp>,
    /// `--mac`: the guest's address.
    pub mac: Option<Mac>,
    /// `--mtu`.
    pub mtu: Option<u32>,
    /// `--num-queue-pairs`.
    pub num_queue_pairs: Option<u16>,
    /// `--queue-size`.
    pub queue_size: Option<u16>,
    /// `--poll-us`.
    pub poll_us: Option<u64>,
}

impl NetArgs {
    /// Serving the tap `tap` with the daemon's defaults.
    pub fn new(tap: impl Into<String>) -> Self {
        NetArgs {
            tap: tap.into(),
            ..Default::default()
        }
    }
}

impl DaemonArgs for NetArgs {
    const PROGRAM: &'static str = "vhost-user-net";

    fn render(&self, args: &mut ArgList) {
        args.value("--tap", &self.tap)
            .opt_value("--host-ip", self.host_ip)
            .opt_value("--mac", self.mac)
            .opt_value("--mtu", self.mtu)
            .opt_value("--num-queue-pairs", self.num_queue_pairs)
            .opt_value("--queue-size", self.queue_size)
            .opt_value("--poll-us", self.poll_us);
    }
}
