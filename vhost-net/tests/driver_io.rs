//! The daemon through the user-space vhost-user driver, with a real tap: frames
//! the driver puts on a transmit queue come out of the tap, frames sent into the
//! tap reach the driver's receive buffers, the control queue, hostile chains, and
//! a second frontend after the first hangs up.
//!
//! The daemon creates the tap (a name per test) and, with --host-ip, brings it up.
//! The test watches and feeds the tap through an AF_PACKET socket bound to it:
//! frames the daemon writes into the tap are "received" by the host on that
//! interface, and frames the socket sends out of the interface are what the
//! daemon reads. Needs root and /dev/net/tun; otherwise each test prints SKIPPED.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vhost::VhostBackend;
use vhostkit_driver::net::{
    self, CtrlQueue, NetDevice, NetHdr, NetQueuePair, VIRTIO_NET_CTRL_MAC,
    VIRTIO_NET_CTRL_MAC_TABLE_SET, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
    VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_ERR, VIRTIO_NET_OK,
};
use vhostkit_driver::{Buf, DriverConfig, RingEnable};
use vhostkit_tests::daemon::DaemonProcess;
use vhostkit_tests::launch::net::{HostIp, Mac, NetArgs};
use vhostkit_tests::launch::{Launch, SeccompAction};
use vhostkit_tests::packet::{frame, PacketSocket};
use vhostkit_tests::TempDir;
use virtio_bindings::virtio_net::*;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-net");
const TIMEOUT: Duration = Duration::from_secs(10);
const BROADCAST: [u8; 6] = [0xff; 6];
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// A locally administered MAC the test frames come from on the host side.
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !std::path::Path::new("/dev/net/tun").exists() {
        vhostkit_tests::skip::skip(format_args!("needs root and /dev/net/tun"));
        return false;
    }
    true
}

/// A tap name unique to this process and test (at most 15 bytes).
fn tap_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "vk{}-{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

struct Setup {
    dir: TempDir,
    tap: String,
    /// Killed when the test ends.
    daemon: DaemonProcess,
}

impl Setup {
    /// A daemon with the options `daemon` on a new tap (the fixture's: leave
    /// `daemon.tap` empty), the guest at [`GUEST_MAC`], the tap brought up with
    /// 10.213.`subnet`.1/24, IPv6 off on it so the host sends nothing of its own
    /// into the tap.
    fn new(subnet: u8, daemon: NetArgs) -> Setup {
        Self::launch(subnet, daemon, |launch| launch)
    }

    /// [`new`](Self::new) with the options every daemon takes (`--seccomp`...) set
    /// by `common` on the daemon's [`Launch`].
    fn launch(
        subnet: u8,
        daemon: NetArgs,
        common: impl FnOnce(Launch<NetArgs>) -> Launch<NetArgs>,
    ) -> Setup {
        assert!(
            daemon.tap.is_empty(),
            "the fixture names the tap, not {}",
            daemon.tap
        );
        let dir = TempDir::new("net").unwrap();
        let tap = tap_name();
        let sock = dir.join("net.sock");
        let daemon = NetArgs {
            tap: tap.clone(),
            mac: Some(Mac(GUEST_MAC)),
            host_ip: Some(HostIp {
                addr: Ipv4Addr::new(10, 213, subnet, 1).into(),
                prefix: 24,
            }),
            ..daemon
        };
        let mut cmd = common(Launch::on_socket(&sock, daemon)).command(Path::new(BIN));
        cmd.env_remove("RUST_LOG")
            .stderr(Stdio::from(File::create(dir.join("daemon.log")).unwrap()));
        let daemon = DaemonProcess::spawn("vhost-user-net", cmd, &sock, TIMEOUT).unwrap();
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{tap}/disable_ipv6"), "1");
        Setup { dir, tap, daemon }
    }

    /// Connects a frontend and sets up queue pairs `0..count` of 256 entries; the
    /// device must live as long as the pairs are used.
    fn connect_pairs(&self, features: u64, count: u16) -> (NetDevice, Vec<NetQueuePair>) {
        let mut dev = self.connect(features);
        let pairs = dev.setup_pairs(count, 256).unwrap();
        (dev, pairs)
    }

    fn connect(&self, features: u64) -> NetDevice {
        let cfg = DriverConfig {
            features,
            ..DriverConfig::default()
        };
        NetDevice::connect(self.dir.join("net.sock"), &cfg).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn wait_for_log(&self, needle: &str) -> String {
        vhostkit_tests::wait_for_log(&self.dir.join("daemon.log"), needle, TIMEOUT)
    }
}

fn marker(tag: &str) -> Vec<u8> {
    format!("vhostkit-{tag}-{}", std::process::id()).into_bytes()
}

/// The next received frame carrying `marker`, skipping whatever else the host sent
/// into the tap (IPv6 neighbour discovery before it was turned off).
fn recv_marked(pair: &mut NetQueuePair, marker: &[u8]) -> Option<net::RxFrame> {
    let deadline = Instant::now() + TIMEOUT;
    while let Some(got) = pair
        .recv(deadline.saturating_duration_since(Instant::now()))
        .unwrap()
    {
        if got.data.windows(marker.len()).any(|w| w == marker) {
            return Some(got);
        }
    }
    None
}

/// The virtio_net_hdr of a TCP/IPv4 TSO frame from [`tcp4_frame`] with an MSS of
/// 1448 (Linux with timestamps), checksum left to the receiver.
fn tso4_hdr() -> NetHdr {
    NetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    }
}

/// Sends a TCP/IPv4 frame with `payload` bytes to the guest from the host side as
/// one GSO packet ([`tso4_hdr`] through PACKET_VNET_HDR: `sock` must have it on); returns
/// the frame.
fn send_host_gso(sock: &PacketSocket, payload: usize, marker: &[u8]) -> Vec<u8> {
    let f = tcp4_frame(GUEST_MAC, HOST_MAC, payload, marker);
    let mut bytes = tso4_hdr().to_bytes()[..10].to_vec();
    bytes.extend_from_slice(&f);
    sock.send_raw(&bytes, &GUEST_MAC);
    f
}

fn all_features() -> u64 {
    DriverConfig::DEFAULT_FEATURES
}

/// Sends a frame on `pair`'s transmit queue and checks it comes out of the tap.
fn check_tx_passes(pair: &mut NetQueuePair, sock: &PacketSocket, len: usize, tag: &str) {
    let m = marker(tag);
    let f = frame(BROADCAST, GUEST_MAC, len, &m);
    pair.send(&NetHdr::default(), &f).unwrap();
    let done = pair.reap_tx(TIMEOUT).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].len, 0, "tx chains are returned with length 0");
    let got = sock
        .recv_with(&m, TIMEOUT)
        .unwrap_or_else(|| panic!("{len}-byte frame {tag} never came out of the tap"));
    assert_eq!(got, f, "{len}-byte frame {tag} changed on the way");
}

#[test]
fn config_space_and_features() {
    if !can_run() {
        return;
    }
    let s = Setup::new(
        1,
        NetArgs {
            num_queue_pairs: Some(3),
            mtu: Some(9000),
            ..NetArgs::default()
        },
    );
    let dev = s.connect(all_features());
    assert_eq!(dev.config.mac, GUEST_MAC);
    assert_eq!(u32::from(dev.config.status), VIRTIO_NET_S_LINK_UP);
    assert_eq!(dev.config.max_virtqueue_pairs, 3);
    assert_eq!(dev.config.mtu, 9000);
    assert_eq!(
        dev.driver.num_queues(),
        7,
        "rx/tx per pair and the control queue"
    );
    let offered = dev.driver.offered_features();
    for bit in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_ECN,
        VIRTIO_NET_F_CTRL_VQ,
        VIRTIO_NET_F_MQ,
        32, // VERSION_1
        28, // INDIRECT_DESC
        29, // EVENT_IDX
    ] {
        assert_ne!(offered & (1 << bit), 0, "feature bit {bit} not offered");
    }
    let link = Command::new("ip")
        .args(["link", "show", &s.tap])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("mtu 9000") && link.contains(",UP"), "{link}");
    s.wait_for_log("listening on");
}

#[test]
fn tx_frames_come_out_of_the_tap_intact() {
    if !can_run() {
        return;
    }
    let s = Setup::new(2, NetArgs::default());
    let sock = PacketSocket::open(&s.tap, false);
    let (_dev, mut pairs) = s.connect_pairs(all_features(), 1);
    let pair = &mut pairs[0];
    check_tx_passes(pair, &sock, 64, "tx64");
    check_tx_passes(pair, &sock, 1514, "tx1514");
    // Header and frame in separate descriptors, and as an indirect table.
    let m = marker("split");
    let f = frame(BROADCAST, GUEST_MAC, 600, &m);
    let mem = pair.memory().clone();
    let hdr = mem.alloc(12, 16).unwrap();
    mem.write(hdr, &NetHdr::default().to_bytes()).unwrap();
    let a = mem.alloc(300, 16).unwrap();
    let b = mem.alloc(300, 16).unwrap();
    mem.write(a, &f[..300]).unwrap();
    mem.write(b, &f[300..]).unwrap();
    let bufs = [
        Buf::readable(hdr, 12),
        Buf::readable(a, 300),
        Buf::readable(b, 300),
    ];
    for indirect in [false, true] {
        pair.send_chain(&bufs, indirect).unwrap();
        pair.reap_tx(TIMEOUT).unwrap();
        assert_eq!(sock.recv_with(&m, TIMEOUT).as_deref(), Some(&f[..]));
    }
}

/// A TCP/IPv4 frame: Ethernet, IPv4 (checksummed), TCP, `payload` bytes.
fn tcp4_frame(dst: [u8; 6], src: [u8; 6], payload: usize, m: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 20 + payload) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[10, 213, 3, 2, 10, 213, 3, 3]);
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    // TCP: ports, seq, ack, data offset 5, ACK|PSH, window; checksum left for the
    // offload (NEEDS_CSUM).
    f.extend_from_slice(&[
        0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff,
    ]);
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(m);
    while f.len() < 14 + total as usize {
        f.push((f.len() % 251) as u8);
    }
    f
}

#[test]
fn gso_frame_crosses_with_its_segmentation_metadata() {
    if !can_run() {
        return;
    }
    let s = Setup::new(3, NetArgs::default());
    // A socket that reports the vnet header of what the tap received.
    let sock = PacketSocket::open(&s.tap, true);
    let (_dev, mut pairs) = s.connect_pairs(all_features(), 1);
    let m = marker("gso");
    let f = tcp4_frame(BROADCAST, GUEST_MAC, 64000, &m);
    pairs[0].send(&tso4_hdr(), &f).unwrap();
    pairs[0].reap_tx(TIMEOUT).unwrap();
    let got = sock
        .recv_with(&m, TIMEOUT)
        .expect("the GSO frame never reached the host");
    // virtio_net_hdr (10 bytes) as the kernel describes the packet, then the frame.
    assert_eq!(got[1], VIRTIO_NET_HDR_GSO_TCPV4 as u8, "gso_type");
    assert_eq!(u16::from_le_bytes([got[4], got[5]]), 1448, "gso_size");
    assert_eq!(&got[10..], &f[..], "the 64 KB frame changed on the way");
    assert!(!s.log().contains("ERROR"), "{}", s.log());
}

#[test]
fn rx_frames_reach_the_guest_buffers() {
    if !can_run() {
        return;
    }
    let s = Setup::new(
        4,
        NetArgs {
            mtu: Some(9000),
            ..NetArgs::default()
        },
    );
    let sock = PacketSocket::open(&s.tap, false);
    let (_dev, mut pairs) = s.connect_pairs(all_features(), 1);
    let pair = &mut pairs[0];
    pair.post_rx(64, 1536).unwrap();
    for (len, tag) in [
        (60, "rx60"),
        (1000, "rx1000"),
        (1514, "rx1514"),
        (4000, "rx4000"),
    ] {
        let m = marker(tag);
        let f = frame(GUEST_MAC, HOST_MAC, len, &m);
        sock.send(&f);
        let got = recv_marked(pair, &m)
            .unwrap_or_else(|| panic!("frame {tag} never reached the rx queue"));
        assert_eq!(got.data, f, "frame {tag}");
        // 1536-byte buffers: a 4000-byte frame (+ header) takes three.
        let buffers = (len + 12).div_ceil(1536) as u16;
        assert_eq!(got.hdr.num_buffers, buffers, "num_buffers of {tag}");
        assert_eq!(got.hdr.gso_type, VIRTIO_NET_HDR_GSO_NONE as u8);
    }
}

#[test]
fn rx_waits_for_buffers_then_delivers() {
    if !can_run() {
        return;
    }
    let s = Setup::new(5, NetArgs::default());
    let sock = PacketSocket::open(&s.tap, false);
    let (_dev, mut pairs) = s.connect_pairs(all_features(), 1);
    let pair = &mut pairs[0];
    // No buffers yet: the frame waits in the tap until the guest posts some.
    let m = marker("late");
    let f = frame(GUEST_MAC, HOST_MAC, 200, &m);
    sock.send(&f);
    std::thread::sleep(Duration::from_millis(200));
    pair.post_rx(8, 2048).unwrap();
    let got = recv_marked(pair, &m).expect("frame lost while no buffers");
    assert_eq!(got.data, f);
}

#[test]
fn host_gso_frames_reach_the_guest_whole_with_guest_tso4() {
    if !can_run() {
        return;
    }
    let s = Setup::new(11, NetArgs::default());
    // The host sends a 64 KB TCP segment with its GSO metadata (PACKET_VNET_HDR).
    // With GUEST_TSO4 acked the daemon set TUN_F_TSO4 on the tap, so the kernel
    // hands it over unsegmented and the guest gets it whole with gso_type TCPV4.
    let sock = PacketSocket::open(&s.tap, true);
    let (_dev, mut pairs) = s.connect_pairs(all_features(), 1);
    let pair = &mut pairs[0];
    pair.post_rx(128, 1536).unwrap();
    let m = marker("guest-tso");
    let f = send_host_gso(&sock, 60000, &m);
    let got = recv_marked(pair, &m).expect("the GSO frame never reached the guest");
    assert_eq!(
        got.hdr.gso_type, VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        "segmented on the way: {:?}",
        got.hdr
    );
    assert_eq!(got.hdr.gso_size, 1448);
    assert_eq!(got.data.len(), f.len());
    assert!(got.data == f, "the frame changed on the way");
    assert!(
        got.buffers > 1,
        "a 60 KB frame fills several 1536-byte buffers"
    );
}

/// With MRG_RXBUF a 60 KB GSO frame that meets a ring with room for only 12 KB is
/// held until the guest posts more buffers, not dropped (a guest under load refills
/// its ring late; dropping made TCP retransmit).
#[test]
fn a_large_frame_waits_for_enough_rx_buffers() {
    if !can_run() {
        return;
    }
    let s = Setup::new(14, NetArgs::default());
    let sock = PacketSocket::open(&s.tap, true);
    let (_dev, mut pairs) = s.connect_pairs(all_features(), 1);
    let pair = &mut pairs[0];
    pair.post_rx(8, 1536).unwrap();
    let m = marker("short-ring");
    let f = send_host_gso(&sock, 60000, &m);
    // It cannot arrive in 12 KB of buffers; the daemon must keep it. (Small frames
    // of the host's own, e.g. IPv6 neighbour discovery, may come meanwhile.)
    let until = Instant::now() + Duration::from_millis(300);
    while let Some(early) = pair
        .recv(until.saturating_duration_since(Instant::now()))
        .unwrap()
    {
        assert!(
            !early.data.windows(m.len()).any(|w| w == m),
            "the frame arrived in too few buffers ({} bytes)",
            early.data.len()
        );
    }
    pair.post_rx(64, 1536).unwrap();
    let got = recv_marked(pair, &m)
        .unwrap_or_else(|| panic!("the frame was lost while the ring was short\n{}", s.log()));
    assert_eq!(got.hdr.gso_type, VIRTIO_NET_HDR_GSO_TCPV4 as u8);
    assert!(got.data == f, "the frame changed on the way");
    assert_eq!(got.buffers as usize, (f.len() + 12).div_ceil(1536));
    assert!(!s.log().contains("dropping"), "{}", s.log());
}

/// A UDP/IPv4 frame from 10.213.12.2:`sport` to 10.213.12.3:9 carrying `m`.
fn udp4_frame(sport: u16, m: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + m.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[10, 213, 12, 2, 10, 213, 12, 3]);
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&((8 + m.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(m);
    f
}

/// Sends one UDP frame per source port and collects which pair each arrived on.
fn spread(pairs: &mut [NetQueuePair], sock: &PacketSocket, tag: &str, flows: u16) -> Vec<usize> {
    let marks: Vec<Vec<u8>> = (0..flows)
        .map(|i| marker(&format!("{tag}-{i:03}")))
        .collect();
    for (i, m) in marks.iter().enumerate() {
        sock.send(&udp4_frame(20000 + i as u16 * 7, m));
    }
    let mut per_pair = vec![0usize; pairs.len()];
    let mut seen = 0;
    let deadline = Instant::now() + TIMEOUT;
    while seen < marks.len() && Instant::now() < deadline {
        for (p, pair) in pairs.iter_mut().enumerate() {
            while let Some(got) = pair.recv(Duration::from_millis(20)).unwrap() {
                if marks.iter().any(|m| got.data.ends_with(m)) {
                    per_pair[p] += 1;
                    seen += 1;
                }
            }
        }
    }
    per_pair
}

#[test]
fn frames_go_only_to_the_pairs_the_guest_uses() {
    if !can_run() {
        return;
    }
    let s = Setup::new(
        12,
        NetArgs {
            num_queue_pairs: Some(2),
            ..NetArgs::default()
        },
    );
    let sock = PacketSocket::open(&s.tap, false);
    let (mut dev, mut pairs) = s.connect_pairs(all_features(), 2);
    let mut ctrl = dev.setup_ctrl(64).unwrap();
    for pair in pairs.iter_mut() {
        pair.post_rx(128, 2048).unwrap();
    }
    // With the control queue the guest starts on one pair: every flow lands there.
    let before = spread(&mut pairs, &sock, "one-pair", 32);
    assert_eq!(
        before,
        vec![32, 0],
        "frames steered to a pair the guest does not use"
    );
    assert_eq!(mq_set(&mut ctrl, 2), VIRTIO_NET_OK);
    let after = spread(&mut pairs, &sock, "two-pairs", 32);
    assert_eq!(after.iter().sum::<usize>(), 32, "frames lost: {after:?}");
    assert!(after[1] > 0, "no flow reached pair 1: {after:?}");
    assert_eq!(mq_set(&mut ctrl, 1), VIRTIO_NET_OK);
    let back = spread(&mut pairs, &sock, "back-to-one", 32);
    assert_eq!(back, vec![32, 0]);
}

#[test]
fn offloads_are_reset_for_the_next_frontend() {
    if !can_run() {
        return;
    }
    let s = Setup::new(
        13,
        NetArgs {
            poll_us: Some(50),
            ..NetArgs::default()
        },
    );
    let sock = PacketSocket::open(&s.tap, true);
    let tso = (1 << VIRTIO_NET_F_GUEST_CSUM) | (1 << VIRTIO_NET_F_GUEST_TSO4);
    for (round, features) in [all_features(), all_features() & !tso]
        .into_iter()
        .enumerate()
    {
        let (dev, mut pairs) = s.connect_pairs(features, 1);
        let pair = &mut pairs[0];
        pair.post_rx(128, 2048).unwrap();
        let m = marker(&format!("reset-{round}"));
        let f = send_host_gso(&sock, 20000, &m);
        // The marker sits at the start of the payload: in the first segment.
        let got = recv_marked(pair, &m).expect("frame lost");
        if round == 0 {
            assert_eq!(got.hdr.gso_type, VIRTIO_NET_HDR_GSO_TCPV4 as u8);
            assert_eq!(got.data.len(), f.len());
        } else {
            // This guest takes no TSO: the kernel segments before the tap.
            assert_eq!(got.hdr.gso_type, VIRTIO_NET_HDR_GSO_NONE as u8);
            assert_eq!(got.data.len(), 14 + 20 + 20 + 1448);
        }
        check_tx_passes(
            pair,
            &PacketSocket::open(&s.tap, false),
            200,
            &format!("poll-{round}"),
        );
        drop(dev);
        s.wait_for_log(&format!("frontend {} disconnected", round + 2));
    }
}

fn mq_set(ctrl: &mut CtrlQueue, pairs: u16) -> u8 {
    ctrl.command(
        VIRTIO_NET_CTRL_MQ,
        VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
        &pairs.to_le_bytes(),
        TIMEOUT,
    )
    .unwrap()
}

#[test]
fn control_queue_sets_pairs_and_refuses_bad_commands() {
    if !can_run() {
        return;
    }
    let s = Setup::new(
        6,
        NetArgs {
            num_queue_pairs: Some(2),
            ..NetArgs::default()
        },
    );
    let sock = PacketSocket::open(&s.tap, false);
    let (mut dev, mut pairs) = s.connect_pairs(all_features(), 2);
    let mut ctrl = dev.setup_ctrl(64).unwrap();
    assert_eq!(mq_set(&mut ctrl, 2), VIRTIO_NET_OK);
    s.wait_for_log("guest uses 2 queue pair(s)");
    assert_eq!(
        mq_set(&mut ctrl, 5),
        VIRTIO_NET_ERR,
        "more pairs than the device has"
    );
    assert_eq!(mq_set(&mut ctrl, 0), VIRTIO_NET_ERR);
    let promisc = ctrl
        .command(
            VIRTIO_NET_CTRL_RX,
            VIRTIO_NET_CTRL_RX_PROMISC,
            &[1],
            TIMEOUT,
        )
        .unwrap();
    assert_eq!(promisc, VIRTIO_NET_OK);
    let mut table = 1u32.to_le_bytes().to_vec();
    table.extend_from_slice(&GUEST_MAC);
    table.extend_from_slice(&0u32.to_le_bytes());
    let mac = ctrl
        .command(
            VIRTIO_NET_CTRL_MAC,
            VIRTIO_NET_CTRL_MAC_TABLE_SET,
            &table,
            TIMEOUT,
        )
        .unwrap();
    assert_eq!(mac, VIRTIO_NET_OK);
    // Malformed: unknown class, wrong data length, a table that lies about its size.
    assert_eq!(ctrl.command(77, 0, &[], TIMEOUT).unwrap(), VIRTIO_NET_ERR);
    assert_eq!(
        ctrl.command(
            VIRTIO_NET_CTRL_MQ,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
            &[2],
            TIMEOUT
        )
        .unwrap(),
        VIRTIO_NET_ERR
    );
    let lying = [0xff, 0xff, 0, 0, 0, 0, 0, 0];
    assert_eq!(
        ctrl.command(
            VIRTIO_NET_CTRL_MAC,
            VIRTIO_NET_CTRL_MAC_TABLE_SET,
            &lying,
            TIMEOUT
        )
        .unwrap(),
        VIRTIO_NET_ERR
    );
    // A chain with only the header and no ack byte, and one with only an ack byte.
    let mem = pairs[0].memory().clone();
    let cmd = mem.alloc(64, 16).unwrap();
    mem.write(cmd, &[VIRTIO_NET_CTRL_MQ as u8, 0, 1, 0])
        .unwrap();
    assert_eq!(ctrl.run(&[Buf::readable(cmd, 4)], TIMEOUT).unwrap(), 0);
    mem.write(cmd + 32, &[net::ACK_UNWRITTEN]).unwrap();
    assert_eq!(ctrl.run(&[Buf::writable(cmd + 32, 1)], TIMEOUT).unwrap(), 1);
    assert_eq!(mem.read_vec(cmd + 32, 1).unwrap(), vec![VIRTIO_NET_ERR]);
    // A command outside guest memory, with a good ack byte: refused.
    mem.write(cmd + 32, &[net::ACK_UNWRITTEN]).unwrap();
    let outside = [
        Buf::readable(0x7f00_0000_0000, 4),
        Buf::writable(cmd + 32, 1),
    ];
    assert_eq!(ctrl.run(&outside, TIMEOUT).unwrap(), 1);
    assert_eq!(mem.read_vec(cmd + 32, 1).unwrap(), vec![VIRTIO_NET_ERR]);
    // Both pairs carry traffic after all that.
    check_tx_passes(&mut pairs[0], &sock, 100, "ctrl-pair0");
    check_tx_passes(&mut pairs[1], &sock, 100, "ctrl-pair1");
    assert!(!s.log().contains("panicked"));
}

#[test]
fn hostile_tx_chains_are_dropped_and_returned() {
    if !can_run() {
        return;
    }
    let s = Setup::new(7, NetArgs::default());
    let sock = PacketSocket::open(&s.tap, false);
    let (_dev, mut pairs) = s.connect_pairs(all_features(), 1);
    let pair = &mut pairs[0];
    let mem = pair.memory().clone();
    let buf = mem.alloc(128 * 1024, 64).unwrap();
    mem.fill(buf, 128 * 1024, 0).unwrap();
    let cases: Vec<(&str, Vec<Buf>, &str)> = vec![
        (
            "short header",
            vec![Buf::readable(buf, 8)],
            "shorter than the virtio-net header",
        ),
        (
            "empty header",
            vec![Buf::readable(buf, 0)],
            "shorter than the virtio-net header",
        ),
        (
            "no readable part",
            vec![Buf::writable(buf, 1514)],
            "device-writable descriptor",
        ),
        (
            "frame over 64 KiB",
            vec![Buf::readable(buf, 12), Buf::readable(buf + 12, 66000)],
            "longer than the largest frame",
        ),
        (
            "outside guest memory",
            vec![Buf::readable(buf, 12), Buf::readable(0x7f00_0000_0000, 100)],
            "outside guest memory",
        ),
        (
            "bad gso header",
            vec![Buf::readable(buf + 64 * 1024, 12 + 100)],
            "the tap refused the frame",
        ),
    ];
    // A header the tap refuses: GSO TCPv4 with a csum_start past the frame.
    let bad = NetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 5000,
        csum_offset: 16,
        num_buffers: 0,
    };
    mem.write(buf + 64 * 1024, &bad.to_bytes()).unwrap();
    for (what, bufs, needle) in cases {
        pair.send_chain(&bufs, false).unwrap();
        let done = pair.reap_tx(TIMEOUT).unwrap();
        assert_eq!(done.len(), 1, "{what}: chain not returned");
        assert_eq!(done[0].len, 0, "{what}");
        s.wait_for_log(needle);
        check_tx_passes(
            pair,
            &sock,
            300,
            &format!("after-{}", what.replace(' ', "-")),
        );
    }
}

#[test]
fn rx_buffers_too_small_without_mrg_rxbuf_drop_the_frame() {
    if !can_run() {
        return;
    }
    let s = Setup::new(8, NetArgs::default());
    let sock = PacketSocket::open(&s.tap, false);
    let (_dev, mut pairs) = s.connect_pairs(all_features() & !(1 << VIRTIO_NET_F_MRG_RXBUF), 1);
    let pair = &mut pairs[0];
    pair.post_rx(4, 512).unwrap();
    let big = marker("toolarge");
    sock.send(&frame(GUEST_MAC, HOST_MAC, 1400, &big));
    s.wait_for_log("dropping a received frame of over 512 bytes");
    // The buffers stay with the device and take the next frame that fits.
    let m = marker("fits");
    let f = frame(GUEST_MAC, HOST_MAC, 400, &m);
    sock.send(&f);
    let got = recv_marked(pair, &m).expect("small frame lost");
    assert_eq!(got.data, f);
    assert_eq!(got.hdr.num_buffers, 1);
    assert_eq!(pair.rx_posted(), 4);
}

#[test]
fn hostile_rx_buffers_are_returned_empty() {
    if !can_run() {
        return;
    }
    let s = Setup::new(9, NetArgs::default());
    let sock = PacketSocket::open(&s.tap, false);
    let (_dev, mut pairs) = s.connect_pairs(all_features(), 1);
    let pair = &mut pairs[0];
    // An rx buffer outside guest memory, then a readable one: both come back empty.
    pair.rx
        .add(&[Buf::writable(0x7f00_0000_0000, 2048)], false, 0)
        .unwrap();
    let mem = pair.memory().clone();
    let ro = mem.alloc(2048, 64).unwrap();
    pair.rx.add(&[Buf::readable(ro, 2048)], false, 0).unwrap();
    pair.rx.submit().unwrap();
    pair.post_rx(4, 2048).unwrap();
    let m = marker("after-bad-rx");
    let f = frame(GUEST_MAC, HOST_MAC, 300, &m);
    sock.send(&f);
    let mut empties = 0;
    let deadline = Instant::now() + TIMEOUT;
    while empties < 2 && Instant::now() < deadline {
        if let Some(u) = pair.rx.pop_used() {
            assert_eq!(u.len, 0);
            empties += 1;
        } else {
            pair.rx.wait_used(Duration::from_millis(100)).unwrap();
        }
    }
    assert_eq!(empties, 2, "unusable rx chains not returned");
    let got = recv_marked(pair, &m).expect("frame lost after bad buffers");
    assert_eq!(got.data, f);
    let log = s.wait_for_log("unusable rx chain");
    assert!(log.contains("outside guest memory"), "{log}");
}

#[test]
fn a_second_frontend_is_served_after_the_first_hangs_up() {
    if !can_run() {
        return;
    }
    let s = Setup::new(10, NetArgs::default());
    let sock = PacketSocket::open(&s.tap, false);
    for round in 0..2 {
        let (dev, mut pairs) = s.connect_pairs(all_features(), 1);
        check_tx_passes(&mut pairs[0], &sock, 500, &format!("round{round}"));
        pairs[0].post_rx(8, 2048).unwrap();
        let m = marker(&format!("rx-round{round}"));
        let f = frame(GUEST_MAC, HOST_MAC, 300, &m);
        sock.send(&f);
        let got = recv_marked(&mut pairs[0], &m).expect("rx after reconnect");
        assert_eq!(got.data, f);
        drop(dev);
        s.wait_for_log(&format!("frontend {} disconnected", round + 2));
    }
}

/// Heads outside the queue in the transmit, receive and control avail rings: each
/// chain is dropped with one rate-limited line of ours, never handed to the used
/// ring (where virtio-queue refuses it with an error line per entry), and the rings
/// go on carrying frames and commands.
#[test]
fn heads_outside_the_queue_are_dropped_before_the_used_ring() {
    if !can_run() {
        return;
    }
    let s = Setup::new(17, NetArgs::default());
    let sock = PacketSocket::open(&s.tap, false);
    let (mut dev, mut pairs) = s.connect_pairs(all_features(), 1);
    let mut ctrl = dev.setup_ctrl(64).unwrap();
    let pair = &mut pairs[0];
    for q in [&mut pair.tx, &mut pair.rx, &mut ctrl.q] {
        for _ in 0..40 {
            q.push_avail(300);
        }
        q.publish();
        q.kick().unwrap();
    }
    pair.post_rx(16, 2048).unwrap();
    check_tx_passes(pair, &sock, 200, "after-bad-heads");
    let m = marker("rx-after-bad-heads");
    sock.send(&frame(GUEST_MAC, HOST_MAC, 100, &m));
    assert!(recv_marked(pair, &m).is_some(), "rx goes on");
    assert_eq!(mq_set(&mut ctrl, 1), VIRTIO_NET_OK, "control goes on");
    let log = s.log();
    assert!(!log.contains("out of bounds descriptor"), "{log}");
    let ours = log
        .lines()
        .filter(|l| l.contains("outside the queue"))
        .count();
    assert!((1..=12).contains(&ours), "{ours} lines: {log}");
}

/// What QEMU 7.2 acks for a one-pair virtio-net (no `mq=on`): it keeps the
/// control queue to itself and passes neither CTRL_VQ nor MQ to the backend.
fn qemu_one_pair_features() -> u64 {
    all_features() & !(1 << VIRTIO_NET_F_CTRL_VQ | 1 << VIRTIO_NET_F_MQ)
}

/// One frame each way on pair 0: a transmit frame comes out of the tap, and a
/// frame sent into the tap reaches the receive buffers (posted if none are).
fn check_pair_carries_frames(pair: &mut NetQueuePair, sock: &PacketSocket, tag: &str) {
    let m = marker(&format!("{tag}-tx"));
    let f = frame(BROADCAST, GUEST_MAC, 300, &m);
    pair.send(&NetHdr::default(), &f).unwrap();
    if let Err(e) = pair.reap_tx(TIMEOUT) {
        panic!("{tag}: the transmit chain never came back ({e}): the ring is not served");
    }
    assert_eq!(
        sock.recv_with(&m, TIMEOUT).as_deref(),
        Some(&f[..]),
        "{tag}: the transmitted frame did not come out of the tap"
    );
    if pair.rx_posted() == 0 {
        pair.post_rx(8, 2048).unwrap();
    }
    let m = marker(&format!("{tag}-rx"));
    let f = frame(GUEST_MAC, HOST_MAC, 300, &m);
    sock.send(&f);
    let got = recv_marked(pair, &m)
        .unwrap_or_else(|| panic!("{tag}: a frame sent into the tap never reached the rx queue"));
    assert_eq!(got.data, f, "{tag}");
}

/// QEMU 7.2 with one queue pair and no `mq=on` (the default device) enables the
/// rings only before SET_FEATURES, while the guest negotiates features:
/// SET_VRING_ENABLE 1 for rings 0 and 1, then SET_FEATURES (PROTOCOL_FEATURES
/// acked), SET_MEM_TABLE, SET_VRING_NUM/BASE/ADDR/KICK/CALL, and no enable after.
/// The daemon once acknowledged those early requests and forgot them, so the
/// rings stayed disabled: no frame moved either way. (With `mq=on` QEMU enables
/// the rings again after the guest's MQ command, which hid it.)
#[test]
fn rings_enabled_before_set_features_carry_frames() {
    if !can_run() {
        return;
    }
    let s = Setup::new(15, NetArgs::default());
    let sock = PacketSocket::open(&s.tap, false);
    let cfg = DriverConfig {
        features: qemu_one_pair_features(),
        ring_enable: RingEnable::BeforeFeatures(2),
        ..DriverConfig::default()
    };
    let mut dev = NetDevice::connect(s.dir.join("net.sock"), &cfg).unwrap();
    let mut pairs = dev.setup_pairs(1, 256).unwrap();
    check_pair_carries_frames(&mut pairs[0], &sock, "qemu-one-pair");
}

/// Every order of SET_FEATURES, SET_VRING_KICK and SET_VRING_ENABLE the
/// protocol allows works for both rings of a pair, each on a new connection to
/// the same daemon: the rings are enabled before SET_FEATURES (QEMU, one pair),
/// between SET_FEATURES and the kick, after the kick (the driver's default), after
/// the kick with receive buffers already posted and a frame waiting in the tap,
/// and disabled and enabled again after carrying frames, with a frame arriving
/// while they are disabled (the daemon detaches the tap queue of a disabled
/// receive ring and must attach it again).
#[test]
fn every_ring_enable_order_carries_frames() {
    if !can_run() {
        return;
    }
    let s = Setup::new(16, NetArgs::default());
    let sock = PacketSocket::open(&s.tap, false);
    let socket = s.dir.join("net.sock");
    let connect = |ring_enable| {
        let cfg = DriverConfig {
            features: qemu_one_pair_features(),
            ring_enable,
            ..DriverConfig::default()
        };
        NetDevice::connect(&socket, &cfg).unwrap()
    };
    let enable_pair = |dev: &mut NetDevice, enable: bool| {
        for ring in [0, 1] {
            dev.driver.set_vring_enable(ring, enable).unwrap();
        }
    };
    let waiting_frame = |tag: &str| {
        let m = marker(tag);
        sock.send(&frame(GUEST_MAC, HOST_MAC, 200, &m));
        // Let the daemon see the tap readable while the ring is disabled.
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut frontends = 1; // DaemonProcess::spawn's readiness probe
    let mut next = |dev: NetDevice| {
        drop(dev);
        frontends += 1;
        s.wait_for_log(&format!("frontend {frontends} disconnected"));
    };

    let mut dev = connect(RingEnable::BeforeFeatures(2));
    let mut pairs = dev.setup_pairs(1, 256).unwrap();
    check_pair_carries_frames(&mut pairs[0], &sock, "before-features");
    next(dev);

    let mut dev = connect(RingEnable::Manual);
    enable_pair(&mut dev, true);
    let mut pairs = dev.setup_pairs(1, 256).unwrap();
    check_pair_carries_frames(&mut pairs[0], &sock, "before-kick");
    next(dev);

    let mut dev = connect(RingEnable::AfterKick);
    let mut pairs = dev.setup_pairs(1, 256).unwrap();
    check_pair_carries_frames(&mut pairs[0], &sock, "after-kick");
    next(dev);

    let mut dev = connect(RingEnable::Manual);
    let mut pairs = dev.setup_pairs(1, 256).unwrap();
    pairs[0].post_rx(8, 2048).unwrap();
    waiting_frame("while-disabled");
    enable_pair(&mut dev, true);
    check_pair_carries_frames(&mut pairs[0], &sock, "after-kick-with-buffers");
    next(dev);

    let mut dev = connect(RingEnable::AfterKick);
    let mut pairs = dev.setup_pairs(1, 256).unwrap();
    check_pair_carries_frames(&mut pairs[0], &sock, "first-enable");
    enable_pair(&mut dev, false);
    waiting_frame("while-disabled-again");
    enable_pair(&mut dev, true);
    check_pair_carries_frames(&mut pairs[0], &sock, "enabled-again");
    next(dev);
}

/// A frame the daemon holds back for a ring too short for it belongs to the driver
/// that posted that ring. When the rings are reset (GET_VRING_BASE, as a guest
/// driver reset or reboot does) and the features negotiated again, it is dropped:
/// the next driver may use another header size, and never gets a stale frame.
#[test]
fn a_held_frame_is_dropped_when_the_rings_are_reset() {
    if !can_run() {
        return;
    }
    let s = Setup::new(18, NetArgs::default());
    let sock = PacketSocket::open(&s.tap, true);
    let (mut dev, mut pairs) = s.connect_pairs(all_features(), 1);
    pairs[0].post_rx(8, 1536).unwrap();
    let stale = marker("held-then-reset");
    send_host_gso(&sock, 60000, &stale);
    // Held: it cannot arrive in 12 KB of buffers.
    let until = Instant::now() + Duration::from_millis(300);
    while let Some(early) = pairs[0]
        .recv(until.saturating_duration_since(Instant::now()))
        .unwrap()
    {
        assert!(!early.data.windows(stale.len()).any(|w| w == &stale[..]));
    }
    // The driver resets: rings stopped, features negotiated again, rings set up anew.
    for index in [0, 1] {
        dev.driver.get_vring_base(index).unwrap();
    }
    drop(pairs);
    let features = dev.driver.features();
    dev.driver.frontend().set_features(features).unwrap();
    let rx = dev.driver.setup_queue(0, 256).unwrap();
    let tx = dev.driver.setup_queue(1, 256).unwrap();
    let mut pair = NetQueuePair::new(rx, tx);
    pair.post_rx(64, 1536).unwrap();
    let fresh = marker("after-reset");
    let mut bytes = NetHdr::default().to_bytes()[..10].to_vec();
    bytes.extend_from_slice(&frame(GUEST_MAC, HOST_MAC, 200, &fresh));
    sock.send_raw(&bytes, &GUEST_MAC);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let got = pair
            .recv(deadline.saturating_duration_since(Instant::now()))
            .unwrap()
            .expect("the frame sent after the reset never arrived");
        assert!(
            !got.data.windows(stale.len()).any(|w| w == &stale[..]),
            "the new driver got the frame held for the old one"
        );
        if got.data.windows(fresh.len()).any(|w| w == &fresh[..]) {
            break;
        }
    }
}

/// `--seccomp kill`: frames both ways on two pairs (a large GSO frame too), the
/// control queue, a second frontend, all served with the filter on every thread and
/// no capability left once the tap is set up; SIGTERM still ends the daemon cleanly.
#[test]
fn confined_daemon_serves_frames_without_capabilities() {
    if !can_run() {
        return;
    }
    let mut s = Setup::launch(
        19,
        NetArgs {
            num_queue_pairs: Some(2),
            ..NetArgs::default()
        },
        |launch| launch.seccomp(SeccompAction::Kill),
    );
    let sock = PacketSocket::open(&s.tap, true);
    for round in 0..2 {
        let (mut dev, mut pairs) = s.connect_pairs(all_features(), 2);
        let mut ctrl = dev.setup_ctrl(64).unwrap();
        // One pair in use until the guest asks for more: the GSO frame lands on it.
        pairs[0].post_rx(64, 1536).unwrap();
        let m = marker(&format!("confined-gso-{round}"));
        let f = send_host_gso(&sock, 60000, &m);
        let got = recv_marked(&mut pairs[0], &m).expect("the GSO frame reached the guest");
        assert_eq!(got.data.len(), f.len());
        assert_eq!(mq_set(&mut ctrl, 2), VIRTIO_NET_OK);
        for (i, pair) in pairs.iter_mut().enumerate() {
            let m = marker(&format!("confined-tx-{round}-{i}"));
            let f = frame(BROADCAST, GUEST_MAC, 300, &m);
            pair.send(&NetHdr::default(), &f).unwrap();
            assert_eq!(pair.reap_tx(TIMEOUT).unwrap().len(), 1);
            assert!(sock.recv_with(&m, TIMEOUT).is_some(), "pair {i}: tx");
        }
        drop(dev);
        s.wait_for_log(&format!("frontend {} disconnected", round + 2));
    }
    let pid = s.daemon.pid();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
            assert!(status.contains("Seccomp:\t2"), "{status}");
        }
    }
    // Every thread, the signal thread included (it starts after the drop).
    for (effective, permitted, bounding) in vhostkit_common::caps::sets_of_threads(pid).unwrap() {
        assert_eq!(
            (effective, permitted, bounding),
            (0, 0, 0),
            "capabilities dropped"
        );
    }
    let status = s
        .daemon
        .signal_and_wait(libc::SIGTERM, TIMEOUT)
        .unwrap()
        .expect("the daemon stops on SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", s.log());
    assert!(!s.dir.join("net.sock").exists());
}

/// Control commands are logged rate-limited: 200 queue-pair changes give a burst of
/// "guest uses N queue pair(s)" lines, not 200.
#[test]
fn control_command_log_lines_are_rate_limited() {
    if !can_run() {
        return;
    }
    let s = Setup::new(
        20,
        NetArgs {
            num_queue_pairs: Some(2),
            ..NetArgs::default()
        },
    );
    let (mut dev, _pairs) = s.connect_pairs(all_features(), 2);
    let mut ctrl = dev.setup_ctrl(64).unwrap();
    let started = Instant::now();
    for i in 0..200 {
        assert_eq!(mq_set(&mut ctrl, 1 + i % 2), VIRTIO_NET_OK);
    }
    let elapsed = started.elapsed().as_secs() as usize;
    let log = s.log();
    let n = log.lines().filter(|l| l.contains("guest uses")).count();
    let bound = 10 + elapsed + 1;
    assert!(
        (1..=bound).contains(&n),
        "{n} lines (at most {bound}): {log}"
    );
}
