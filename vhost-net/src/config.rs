//! Command line to validated configuration.

use std::net::Ipv4Addr;
use std::time::Duration;

use clap::Parser;
use vhostkit_common::cli::{
    check_queue_size, check_range, poll_duration, CoalesceArgs, ListenAddr, ListenArgs, LogArgs,
    SeccompArgs,
};
use vhostkit_common::seccomp::SeccompAction;

use crate::net::{random_mac, MIN_MTU};
use crate::tap::MAX_NAME_LEN;

/// The most queue pairs. The vhost-user library assigns queues to threads with
/// 64-bit masks, so 2N + 1 queues (the pairs and the control queue) must fit in 64.
pub const MAX_QUEUE_PAIRS: u16 = 31;

/// vhost-user-net: a virtio network device backed by a (multi-queue) tap,
/// served to a VMM (QEMU, cloud-hypervisor, vhostkit) over vhost-user.
#[derive(Parser, Clone, Debug)]
#[command(name = "vhost-user-net", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub listen: ListenArgs,

    /// Tap interface to attach to, created if it does not exist (at most 15 bytes).
    #[arg(long, value_name = "NAME")]
    pub tap: String,

    /// Give the host side of the tap this IPv4 address and prefix and bring it up,
    /// e.g. 192.168.249.1/24.
    #[arg(long, value_name = "ADDR/PREFIX")]
    pub host_ip: Option<String>,

    /// The guest's MAC address (config space); default: a random locally
    /// administered unicast address.
    #[arg(long, value_name = "XX:XX:XX:XX:XX:XX")]
    pub mac: Option<String>,

    /// MTU of the tap and of the guest (config space), 68 to 65535.
    #[arg(long, default_value_t = 1500, value_name = "BYTES")]
    pub mtu: u32,

    /// Receive/transmit queue pairs (one worker thread and one tap queue each), 1 to 31.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub num_queue_pairs: u16,

    /// Largest queue size the frontend may configure: a power of two, 2 to 32768.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub queue_size: u16,

    /// Busy-poll the transmit queue for up to this many microseconds after it
    /// runs dry before sleeping (trades CPU for latency); adaptive: only while the
    /// guest sends within this time. 0 turns polling off.
    #[arg(long, default_value_t = 0, value_name = "US")]
    pub poll_us: u64,

    #[command(flatten)]
    pub coalesce: CoalesceArgs,

    #[command(flatten)]
    pub seccomp: SeccompArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub listen: ListenAddr,
    pub tap: String,
    pub host_ip: Option<(Ipv4Addr, u8)>,
    pub mac: [u8; 6],
    pub mtu: u16,
    pub num_queue_pairs: u16,
    pub queue_size: u16,
    pub poll: Duration,
    /// Interrupt-coalescing window of the transmit queues (`--coalesce-us`).
    pub coalesce: Duration,
    pub seccomp: SeccompAction,
    pub log_level: String,
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let err = || format!("--mac {s}: expected six hex bytes like 52:54:00:12:34:56");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next().ok_or_else(err)?;
        if part.len() != 2 {
            return Err(err());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
    }
    if parts.next().is_some() {
        return Err(err());
    }
    if mac[0] & 1 != 0 {
        return Err(format!("--mac {s}: a multicast address cannot be a NIC's"));
    }
    if mac == [0; 6] {
        return Err(format!("--mac {s}: the zero address cannot be a NIC's"));
    }
    Ok(mac)
}

fn parse_host_ip(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let err = || format!("--host-ip {s}: expected an IPv4 ADDR/PREFIX like 192.168.249.1/24");
    let (addr, prefix) = s.split_once('/').ok_or_else(err)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| err())?;
    let prefix: u8 = prefix.parse().map_err(|_| err())?;
    if prefix > 32 {
        return Err(err());
    }
    Ok((addr, prefix))
}

impl TryFrom<Args> for NetConfig {
    type Error = String;

    fn try_from(args: Args) -> Result<Self, String> {
        let listen = ListenAddr::try_from(args.listen)?;
        if args.tap.is_empty() || args.tap.len() > MAX_NAME_LEN || args.tap.contains(['/', '\0']) {
            return Err(format!(
                "--tap {:?}: must be 1 to {MAX_NAME_LEN} bytes without '/'",
                args.tap
            ));
        }
        let mtu = check_range("--mtu", args.mtu, u32::from(MIN_MTU)..=65535)?;
        // In range, so it fits.
        let mtu = u16::try_from(mtu).unwrap_or(u16::MAX);
        let num_queue_pairs = check_range(
            "--num-queue-pairs",
            args.num_queue_pairs,
            1..=MAX_QUEUE_PAIRS,
        )?;
        let queue_size = check_queue_size(args.queue_size)?;
        let poll = poll_duration(args.poll_us)?;
        let coalesce = args.coalesce.window()?;
        let mac = match &args.mac {
            Some(s) => parse_mac(s)?,
            None => random_mac(),
        };
        let host_ip = args.host_ip.as_deref().map(parse_host_ip).transpose()?;
        Ok(NetConfig {
            listen,
            tap: args.tap,
            host_ip,
            mac,
            mtu,
            num_queue_pairs,
            queue_size,
            poll,
            coalesce,
            seccomp: args.seccomp.seccomp,
            log_level: args.log.log_level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<NetConfig, String> {
        let mut full = vec!["vhost-user-net"];
        full.extend_from_slice(args);
        let args = Args::try_parse_from(full).map_err(|e| e.to_string())?;
        NetConfig::try_from(args)
    }

    fn with(extra: &[&str]) -> Result<NetConfig, String> {
        let mut v = vec!["--socket-path", "/tmp/n.sock", "--tap", "vk0"];
        v.extend_from_slice(extra);
        parse(&v)
    }

    /// The launcher's typed options (vhostkit-launch, used by the VMM, the tests
    /// and the benchmarks) render flags and values this parser takes, each to the
    /// value meant: a flag renamed on either side fails here.
    #[test]
    fn launch_args_parse() {
        use vhostkit_tests::launch::net::{HostIp, Mac, NetArgs};
        use vhostkit_tests::launch::{Launch, LogLevel, SeccompAction};
        let daemon = NetArgs {
            host_ip: Some(HostIp {
                addr: Ipv4Addr::new(10, 9, 8, 1).into(),
                prefix: 24,
            }),
            mac: Some(Mac([0x52, 0x54, 0, 0xab, 0xcd, 0xef])),
            mtu: Some(9000),
            num_queue_pairs: Some(3),
            queue_size: Some(512),
            poll_us: Some(15),
            ..NetArgs::new("vk7")
        };
        let launch = Launch::on_socket("/tmp/n.sock", daemon)
            .seccomp(SeccompAction::Trap)
            .log_level(LogLevel::Debug)
            .coalesce_us(1000);
        let args =
            Args::try_parse_from(std::iter::once("vhost-user-net".into()).chain(launch.to_args()))
                .unwrap();
        let c = NetConfig::try_from(args).unwrap();
        assert_eq!(
            c.listen,
            ListenAddr::Path {
                path: "/tmp/n.sock".into(),
                group: None
            }
        );
        assert_eq!(c.tap, "vk7");
        assert_eq!(c.host_ip, Some((Ipv4Addr::new(10, 9, 8, 1), 24)));
        assert_eq!(c.mac, [0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        assert_eq!((c.mtu, c.num_queue_pairs, c.queue_size), (9000, 3, 512));
        assert_eq!(c.poll, Duration::from_micros(15));
        assert_eq!(c.coalesce, Duration::from_micros(1000));
        assert_eq!(c.seccomp, SeccompAction::Trap);
        assert_eq!(c.log_level, "debug");
    }

    #[test]
    fn defaults() {
        let c = with(&[]).unwrap();
        assert_eq!(c.num_queue_pairs, 1);
        assert_eq!(c.queue_size, 256);
        assert_eq!(c.mtu, 1500);
        assert!(c.host_ip.is_none());
        assert_eq!(c.mac[0] & 3, 2);
        assert!(c.poll.is_zero());
    }

    #[test]
    fn values() {
        let c = with(&[
            "--mac",
            "52:54:00:ab:CD:ef",
            "--host-ip",
            "10.1.2.1/24",
            "--mtu",
            "9000",
            "--num-queue-pairs",
            "4",
        ])
        .unwrap();
        assert_eq!(c.mac, [0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        assert_eq!(c.host_ip, Some((Ipv4Addr::new(10, 1, 2, 1), 24)));
        assert_eq!(c.mtu, 9000);
        assert_eq!(c.num_queue_pairs, 4);
    }

    #[test]
    fn bad_values_are_refused() {
        for (extra, needle) in [
            (&["--mac", "52:54:00:ab:cd"][..], "--mac"),
            (&["--mac", "52:54:00:ab:cd:ef:01"][..], "--mac"),
            (&["--mac", "01:00:5e:00:00:01"][..], "multicast"),
            (&["--mac", "zz:54:00:ab:cd:ef"][..], "--mac"),
            (&["--mtu", "67"][..], "--mtu"),
            (&["--mtu", "65536"][..], "--mtu"),
            (&["--num-queue-pairs", "0"][..], "--num-queue-pairs"),
            (&["--num-queue-pairs", "32"][..], "--num-queue-pairs"),
            (&["--queue-size", "100"][..], "power of two"),
            (&["--host-ip", "10.0.0.1"][..], "--host-ip"),
            (&["--host-ip", "10.0.0.1/33"][..], "--host-ip"),
            (&["--poll-us", "5000000"][..], "--poll-us"),
        ] {
            let err = with(extra).unwrap_err();
            assert!(err.contains(needle), "{extra:?}: {err}");
        }
        assert!(parse(&["--socket-path", "/tmp/n.sock"]).is_err());
        assert!(parse(&["--socket-path", "/tmp/n.sock", "--tap", "0123456789abcdef"]).is_err());
    }
}
