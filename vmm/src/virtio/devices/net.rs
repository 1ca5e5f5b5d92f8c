//! virtio-net: `--net` / `[[net]]`, served by a vhost-user backend at `socket=` or by
//! our vhost-user-net on the tap at `tap=`. The config space (`mac`, `status` link
//! up, `max_virtqueue_pairs`) is the VMM's, as in QEMU and cloud-hypervisor; so are
//! the MAC and STATUS features.

use std::mem::offset_of;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vhostkit_launch::net::{HostIp, Mac, NetArgs};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    virtio_net_config, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};

use super::{
    check_range, number, queue_size, resolve, ConfigSpace, DeviceBackend, DeviceConfig, DeviceKind,
    DeviceLayout, QueueRequest, VirtioKind, DEFAULT_QUEUE_SIZE, MAX_QUEUE_SIZE,
};

/// Most queue pairs of a network device (`num-queue-pairs`): 64 virtqueues.
pub const MAX_NET_QUEUE_PAIRS: u16 = 32;
/// Bytes of `virtio_net_config` shown: `mac`, `status`, `max_virtqueue_pairs` (10).
pub const CONFIG_SIZE: u32 = offset_of!(virtio_net_config, mtu) as u32;
/// Feature bits the VMM provides itself, whatever the backend offers: MAC (the
/// address is the VMM's) and STATUS (the link is always up).
const VMM_FEATURES: u64 = 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS;
/// A control queue and several queue pairs: hidden when the backend has no control
/// queue.
const CTRL_FEATURES: u64 = 1 << VIRTIO_NET_F_CTRL_VQ | 1 << VIRTIO_NET_F_MQ;

/// The kind. See the [module docs](self).
pub struct Net;

/// A `--net` spec or `[[net]]` table, before validation.
#[derive(Deserialize, Default, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NetSpec {
    socket: Option<PathBuf>,
    tap: Option<String>,
    host_ip: Option<String>,
    mac: Option<String>,
    num_queue_pairs: Option<u16>,
    queue_size: Option<u16>,
}

/// Parses a unicast MAC address "52:54:00:12:34:56".
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("mac {s}: expected six hex bytes separated by colons");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "mac {s}: a multicast address (lowest bit of the first byte set)"
        ));
    }
    if mac == [0; 6] {
        return Err(format!("mac {s}: the all-zero address"));
    }
    Ok(mac)
}

/// Parses "ADDR/PREFIX" (IPv4 or IPv6).
fn parse_host_ip(s: &str) -> Result<HostIp, String> {
    let bad = || format!("host-ip={s}: expected ADDR/PREFIX, e.g. 192.168.100.1/24");
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("host-ip={s}: prefix must be at most {max}"));
    }
    Ok(HostIp { addr, prefix })
}

/// Guest MAC of the `nth` net device without `mac=`: QEMU's default pattern
/// (52:54:00:12:34:56, counting up), so guests see the addresses they are used to.
pub fn default_mac(nth: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, 0x34, 0x56u8.wrapping_add(nth as u8)]
}

impl VirtioKind for Net {
    const OPTION: &'static str = "--net";
    const FORMS: &'static str = "socket=PATH or tap=NAME";
    const KEYS: &'static [&'static str] = &[
        "socket",
        "tap",
        "host-ip",
        "mac",
        "num-queue-pairs",
        "queue-size",
    ];
    const DAEMON_KEY: (&'static str, &'static str) = ("tap", "--tap");
    type Spec = NetSpec;
    type Params = Option<[u8; 6]>;

    fn set(spec: &mut NetSpec, key: &str, val: &str) -> Result<(), String> {
        match key {
            "socket" => spec.socket = Some(val.into()),
            "tap" => spec.tap = Some(val.into()),
            "host-ip" => spec.host_ip = Some(val.into()),
            "mac" => spec.mac = Some(val.into()),
            "queue-size" => spec.queue_size = Some(number(key, val)?),
            _ => spec.num_queue_pairs = Some(number(key, val)?),
        }
        Ok(())
    }

    fn resolve(spec: &mut NetSpec, base: &Path) {
        resolve(&mut spec.socket, base);
    }

    fn validate(spec: NetSpec) -> Result<DeviceConfig, String> {
        let mac = spec.mac.as_deref().map(parse_mac).transpose()?;
        let pairs = spec
            .num_queue_pairs
            .map(|n| check_range("num-queue-pairs", n, MAX_NET_QUEUE_PAIRS))
            .transpose()?;
        let queue_size = queue_size(spec.queue_size, MAX_QUEUE_SIZE, DEFAULT_QUEUE_SIZE)?;
        let backend = match (spec.socket, spec.tap) {
            (Some(_), Some(_)) => return Err("give socket or tap, not both".into()),
            (None, None) => {
                return Err("needs socket=PATH (a vhost-user backend) or tap=NAME (a tap device for our vhost-user-net)".into())
            }
            (Some(socket), None) => {
                if spec.host_ip.is_some() {
                    return Err("host-ip applies to tap= only".into());
                }
                DeviceBackend::Socket(socket)
            }
            (None, Some(tap)) => {
                // Linux interface names: at most IFNAMSIZ - 1 bytes.
                if tap.len() > 15 || tap.contains(['/', ':', '\0']) || tap.contains(char::is_whitespace) {
                    return Err(format!(
                        "tap={tap}: not an interface name (at most 15 bytes, no '/', ':' or spaces)"
                    ));
                }
                let host_ip = spec.host_ip.as_deref().map(parse_host_ip).transpose()?;
                DeviceBackend::daemon(&NetArgs {
                    host_ip,
                    mac: mac.map(Mac),
                    num_queue_pairs: pairs,
                    // Always given: the VMM's QueueNumMax.
                    queue_size: Some(queue_size),
                    ..NetArgs::new(tap)
                })
            }
        };
        Ok(DeviceConfig {
            kind: DeviceKind::Net { mac },
            backend,
            num_queues: pairs.map(|n| 2 * n),
            queue_size,
        })
    }

    fn layout(mac: &Option<[u8; 6]>, q: QueueRequest) -> DeviceLayout {
        let mac = mac.unwrap_or_else(|| default_mac(q.nth));
        layout(q.backend_queues, mac, q.num_queues, q.queue_size)
    }
}

/// virtio-net: the config (`mac`, `status` link up, `max_virtqueue_pairs`) is the
/// VMM's. The backend's queues are rx/tx pairs and, when it offers CTRL_VQ, a
/// control queue after them (an odd count); `num_queues` (rx+tx queues) caps the
/// pairs used.
pub fn layout(
    backend_queues: u16,
    mac: [u8; 6],
    num_queues: Option<u16>,
    queue_max_size: u16,
) -> DeviceLayout {
    let has_ctrl = backend_queues % 2 == 1 && backend_queues > 1;
    let backend_pairs = (backend_queues / 2).max(1);
    let pairs = num_queues.map_or(backend_pairs, |n| (n / 2).clamp(1, backend_pairs));
    let mut config = Vec::with_capacity(CONFIG_SIZE as usize);
    config.extend_from_slice(&mac);
    config.extend_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    config.extend_from_slice(&pairs.to_le_bytes());
    debug_assert_eq!(config.len(), CONFIG_SIZE as usize);
    DeviceLayout {
        device_id: VIRTIO_ID_NET,
        config_size: CONFIG_SIZE,
        queue_max_size,
        num_queues: 2 * pairs + u16::from(has_ctrl),
        vmm_features: VMM_FEATURES,
        masked_features: if has_ctrl { 0 } else { CTRL_FEATURES },
        config_space: ConfigSpace::Local(config),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_the_old_literals() {
        assert_eq!(CONFIG_SIZE, 10);
        assert_eq!(VMM_FEATURES, 1 << 5 | 1 << 16);
        assert_eq!(CTRL_FEATURES, 1 << 17 | 1 << 22);
    }

    /// The daemon the VMM starts for `tap=`: each option the spec sets, and
    /// `--queue-size` always.
    #[test]
    fn daemon_command_line() {
        let spec = NetSpec {
            tap: Some("vk1".into()),
            host_ip: Some("192.168.100.1/24".into()),
            mac: Some("02:00:00:00:00:0a".into()),
            num_queue_pairs: Some(3),
            ..Default::default()
        };
        let DeviceBackend::Daemon { program, args } = Net::validate(spec).unwrap().backend else {
            panic!("not a daemon");
        };
        assert_eq!(program, "vhost-user-net");
        assert_eq!(
            args,
            [
                "--tap",
                "vk1",
                "--host-ip",
                "192.168.100.1/24",
                "--mac",
                "02:00:00:00:00:0a",
                "--num-queue-pairs",
                "3",
                "--queue-size",
                "256"
            ]
        );
    }

    #[test]
    fn default_macs_count_up() {
        assert_eq!(default_mac(0), [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(default_mac(2)[5], 0x58);
        let l = Net::layout(
            &None,
            QueueRequest {
                backend_queues: 2,
                num_queues: None,
                queue_size: 256,
                nth: 1,
            },
        );
        assert_eq!(
            l.config_space,
            ConfigSpace::Local(vec![0x52, 0x54, 0, 0x12, 0x34, 0x57, 1, 0, 1, 0])
        );
    }
}
