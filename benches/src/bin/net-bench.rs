//! net-bench: our vhost-user-net against DPDK's vhost-user backend (dpdk-testpmd,
//! `net_vhost` port forwarding to a `net_tap` port in io mode), driven by the same
//! user-space vhost-user driver (no guest), each backend on a tap of its own, in one
//! run.
//!
//! - tx rows: the driver keeps the transmit queue full of frames (one descriptor
//!   each: header + frame, buffers reused); a frame counts where it lands: the tap's
//!   kernel RX counters (`/sys/class/net/TAP/statistics/rx_packets`, `rx_bytes`),
//!   since what a backend writes into a tap is what the host receives on it. The
//!   frames go to a unicast MAC nobody has, with a test ethertype (TSO: TCP/IPv4), so
//!   the host drops them right after counting, alike for both backends.
//! - rx rows: frames are injected into the tap by a host-side AF_PACKET socket
//!   (PACKET_QDISC_BYPASS, `sendmmsg` batches of 64) in the driver's thread, closed
//!   loop: at most one queue's worth of frames between injection and the driver's
//!   receive queue; a window that makes no progress for 2 ms is written off.
//!   Frames count at the driver's receive queue.
//!
//! Rows alternate backends (`--rounds` rounds, the order flipping every round), each
//! measurement on a freshly started backend with a fresh tap; the table shows medians.
//!
//! ```text
//! cargo build --release -p vhost-net -p vhostkit-benches
//! target/release/net-bench --seconds 3 --rounds 3 --json net.json --svg net.svg
//! target/release/net-bench --quick            # CI smoke run (no DPDK needed)
//! ```

use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use vhostkit_benches::report::{
    process_cpu_seconds, row_selected, Measurement, OutputArgs, Report, Row,
};
use vhostkit_benches::setup::{ours_bin, RunDir};
use vhostkit_driver::net::{
    NetDevice, NetHdr, NetQueuePair, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VNET_HDR_LEN,
};
use vhostkit_driver::{Buf, DriverConfig};
use vhostkit_tests::launch::net::{Mac, NetArgs};
use vhostkit_tests::launch::{Launch, LogLevel};

/// Compare vhost-user-net with DPDK's vhost-user PMD through a user-space driver.
#[derive(Parser, Debug)]
#[command(name = "net-bench", about, long_about = None)]
struct Args {
    /// Measured seconds per row, per backend, per round.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,

    /// Rounds per row (backends alternate; the table shows the median).
    #[arg(long, default_value_t = 3)]
    rounds: usize,

    /// Only rows whose name contains one of these comma-separated strings
    /// (e.g. "tx-1500,rx").
    #[arg(long)]
    rows: Option<String>,

    #[command(flatten)]
    output: OutputArgs,

    /// Short run for a CI smoke test (0.25 s rows, one round; DPDK only if installed).
    #[arg(long)]
    quick: bool,

    /// Virtqueue size the driver sets up.
    #[arg(long, default_value_t = 256)]
    queue_size: u16,

    /// Our daemon's binary (default: vhost-user-net next to this executable).
    #[arg(long, value_name = "PATH")]
    ours_bin: Option<PathBuf>,

    /// dpdk-testpmd binary.
    #[arg(long, default_value = "dpdk-testpmd", value_name = "PATH")]
    testpmd: String,

    /// EAL core list of testpmd (one main core, the rest forward; it needs two).
    #[arg(long, default_value = "0-1")]
    testpmd_lcores: String,

    /// Pin the driver thread (and the rx rows' injector, which runs in it) to this
    /// CPU while it measures, for both backends; testpmd's forwarding lcore is the
    /// last CPU of --testpmd-lcores. -1: no pinning.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    driver_cpu: i32,

    /// Measure ours only.
    #[arg(long)]
    no_peer: bool,

    /// Folder for sockets and logs.
    #[arg(long, default_value = "/tmp")]
    dir: PathBuf,

    /// MSS (gso_size) of the TSO row. DPDK 22.11's tap PMD drops a TSO frame whose
    /// MSS plus 54 header bytes exceeds the tap's MTU (1500), so 1446 is the largest
    /// it segments; with 1448 (Linux with timestamps) or 1460 it drops every frame.
    #[arg(long, default_value_t = 1446, value_parser = clap::value_parser!(u16).range(536..=9000))]
    tso_mss: u16,

    /// Keep the run's folder (backend logs, testpmd's forward statistics) in --dir.
    #[arg(long)]
    keep: bool,

    /// List the row names and exit.
    #[arg(long)]
    list: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Tx,
    Rx,
}

#[derive(Clone, Debug)]
struct Workload {
    name: &'static str,
    dir: Dir,
    /// Ethernet frame bytes (no FCS).
    len: usize,
    tso: bool,
}

fn workloads() -> Vec<Workload> {
    let w = |name, dir, len, tso| Workload {
        name,
        dir,
        len,
        tso,
    };
    vec![
        w("tx-64", Dir::Tx, 64, false),
        w("tx-1500", Dir::Tx, 1514, false),
        // Length set from --tso-mss (tso_frame_len).
        w("tx-64k-tso", Dir::Tx, 0, true),
        w("rx-64", Dir::Rx, 64, false),
        w("rx-1500", Dir::Rx, 1514, false),
    ]
}

/// Ethernet + IPv4 + TCP headers of a TSO frame (no options).
const TSO_HDRS: usize = 14 + 20 + 20;

/// Full MSS segments in one TSO frame: as many as an IPv4 packet holds, at most 45.
fn tso_segments(mss: usize) -> usize {
    ((65535 - 40) / mss).min(45)
}

/// Length of the TSO row's frame: headers and `tso_segments` full segments.
fn tso_frame_len(mss: usize) -> usize {
    TSO_HDRS + tso_segments(mss) * mss
}
/// An ethertype for local experiments (IEEE 802): nothing on the host handles it.
const ETHERTYPE_TEST: u16 = 0x88b5;
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// Where transmitted frames go: a unicast address nobody has.
const NOBODY_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0xbe, 0xef];
const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
const WAIT: Duration = Duration::from_secs(10);
/// Receive buffer size: an MTU frame and its header fit in one.
const RX_BUF: u32 = 2048;
const RX_BATCH: usize = 64;

/// A frame of `len` bytes: test ethertype, or for TSO a TCP/IPv4 packet.
fn make_frame(dst: [u8; 6], src: [u8; 6], len: usize, tso: bool) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if tso {
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let ip_len = (len - 14) as u16;
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 6; // TCP
        ip[12..16].copy_from_slice(&[10, 214, 0, 2]);
        ip[16..20].copy_from_slice(&[10, 214, 0, 99]);
        let sum = ip_checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&ip);
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18; // PSH ACK
        tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
        f.extend_from_slice(&tcp);
    } else {
        f.extend_from_slice(&ETHERTYPE_TEST.to_be_bytes());
    }
    let mut x = 0x3bu8;
    while f.len() < len {
        x = x.wrapping_mul(31).wrapping_add(7);
        f.push(x);
    }
    f
}

fn ip_checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The virtio-net header of a TSO frame (gso TCPv4, checksum left to the device).
fn tso_hdr(mss: usize) -> NetHdr {
    NetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        hdr_len: 54,
        gso_size: mss as u16,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    }
}

// ---- processes and taps -------------------------------------------------------------

/// A backend child process; killed and reaped on drop. Its stdin is a pipe we keep
/// open (testpmd without `-i` runs until a line arrives on stdin).
struct Proc {
    name: String,
    child: Child,
    _stdin: Option<ChildStdin>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc, String> {
        let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        // Only testpmd reads stdin.
        let stdin = child.stdin.take().filter(|_| name == "dpdk");
        Ok(Proc {
            name: name.to_string(),
            child,
            _stdin: stdin,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `socket` exists (and, for a backend that keeps listening after a
    /// frontend hangs up, accepts a connection) and `tap` exists.
    fn wait_ready(&mut self, socket: &Path, tap: &str, log: &Path) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(format!(
                    "{} exited with {status} before it was ready; its log ({}) ends:\n{}",
                    self.name,
                    log.display(),
                    tail.join("\n")
                ));
            }
            if socket.exists() && Path::new(&format!("/sys/class/net/{tap}")).exists() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not create {} and tap {tap} within 30 s (log: {})",
                    self.name,
                    socket.display(),
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // testpmd quits on a line on stdin, printing its forward statistics; give
        // it a moment, then kill (our daemon does not read stdin and is killed).
        if let Some(mut stdin) = self._stdin.take() {
            if stdin.write_all(b"\n").is_ok() {
                drop(stdin);
                let deadline = Instant::now() + Duration::from_secs(3);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = self.child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deletes a tap on drop (after its backend is gone; a tap the backend did not make
/// persistent is usually gone already).
struct TapGuard(String);

impl Drop for TapGuard {
    fn drop(&mut self) {
        if Path::new(&format!("/sys/class/net/{}", self.0)).exists() {
            let _ = Command::new("ip")
                .args(["link", "del", "dev", &self.0])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Turns IPv6 off on `tap` (so the host sends nothing of its own into it) and
/// brings it up.
fn tap_up(tap: &str) -> Result<(), String> {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{tap}/disable_ipv6"), "1");
    let st = Command::new("ip")
        .args(["link", "set", "dev", tap, "up"])
        .status()
        .map_err(|e| format!("cannot run ip (package iproute2): {e}"))?;
    if !st.success() {
        return Err(format!("ip link set dev {tap} up: {st}"));
    }
    Ok(())
}

/// rx_packets and rx_bytes of `tap`: what the backend wrote into it.
fn tap_rx_counters(tap: &str) -> Result<(u64, u64), String> {
    let read = |what: &str| -> Result<u64, String> {
        let p = format!("/sys/class/net/{tap}/statistics/{what}");
        std::fs::read_to_string(&p)
            .map_err(|e| format!("{p}: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("{p}: {e}"))
    };
    Ok((read("rx_packets")?, read("rx_bytes")?))
}

#[derive(Clone, Debug)]
enum Backend {
    Ours { bin: PathBuf },
    Dpdk { bin: String, lcores: String },
}

struct Running {
    // Field order is drop order: the process first, then its tap.
    proc: Proc,
    _tap: TapGuard,
    tap: String,
    socket: PathBuf,
}

impl Backend {
    fn label(&self) -> &'static str {
        match self {
            Backend::Ours { .. } => "ours",
            Backend::Dpdk { .. } => "dpdk",
        }
    }

    fn command(&self, socket: &Path, tap: &str, qsize: u16) -> Command {
        match self {
            Backend::Ours { bin } => {
                let daemon = NetArgs {
                    mac: Some(Mac(GUEST_MAC)),
                    queue_size: Some(qsize.max(256)),
                    ..NetArgs::new(tap)
                };
                Launch::on_socket(socket, daemon)
                    .log_level(LogLevel::Warn)
                    .command(bin)
            }
            Backend::Dpdk { bin, lcores } => {
                let mut cmd = Command::new(bin);
                cmd.args(testpmd_args(lcores, socket, tap, &cmdline_file(socket)));
                cmd
            }
        }
    }

    fn start(&self, dir: &Path, n: usize, qsize: u16) -> Result<Running, String> {
        let tap = format!("vknb{}-{n}", std::process::id() % 100_000);
        let socket = dir.join(format!("{}-{n}.sock", self.label()));
        let log = dir.join(format!("{}-{n}.log", self.label()));
        let _ = std::fs::remove_file(&socket);
        if let Backend::Dpdk { .. } = self {
            let path = cmdline_file(&socket);
            std::fs::write(&path, TESTPMD_COMMANDS)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let tap_guard = TapGuard(tap.clone());
        let mut proc = Proc::spawn(self.label(), self.command(&socket, &tap, qsize), &log)?;
        proc.wait_ready(&socket, &tap, &log)?;
        tap_up(&tap)?;
        Ok(Running {
            proc,
            _tap: tap_guard,
            tap,
            socket,
        })
    }
}

/// testpmd commands run before forwarding starts: the tap port (1) takes TSO and
/// checksum offload on transmit, which its PMD does in software (librte_gso), so a
/// gso TCPv4 frame from the vhost port is segmented instead of dropped as larger than
/// the tap's MTU.
const TESTPMD_COMMANDS: &str = "port stop 1
port config 1 tx_offload tcp_tso on
port config 1 tx_offload ipv4_cksum on
port config 1 tx_offload tcp_cksum on
port start 1
";

fn cmdline_file(socket: &Path) -> PathBuf {
    socket.with_extension("cmds")
}

/// The testpmd arguments: a vhost-user server port and a tap port, io forwarding
/// between them on one core. `tso=1` lets a frontend negotiate HOST_TSO4;
/// `legacy-ol-flags=1` makes the vhost PMD turn a virtio_net_hdr's gso request into
/// the transmit TSO flags the tap PMD acts on (the default "compliant" flags mark it
/// as received LRO, which no transmit path segments).
fn testpmd_args(lcores: &str, socket: &Path, tap: &str, cmdfile: &Path) -> Vec<String> {
    vec![
        "-l".into(),
        lcores.into(),
        "--no-huge".into(),
        "-m".into(),
        "1024".into(),
        "--no-pci".into(),
        format!("--file-prefix=vknb{}", std::process::id()),
        "--vdev".into(),
        format!(
            "net_vhost0,iface={},client=0,tso=1,legacy-ol-flags=1",
            socket.display()
        ),
        "--vdev".into(),
        format!("net_tap0,iface={tap}"),
        "--".into(),
        "--forward-mode=io".into(),
        "--auto-start".into(),
        "--total-num-mbufs=32768".into(),
        format!("--cmdline-file={}", cmdfile.display()),
    ]
}

/// Connects, retrying while the backend is still setting up its socket.
fn connect(socket: &Path, features: u64, mem_size: u64) -> Result<NetDevice, String> {
    let cfg = DriverConfig {
        features,
        ..DriverConfig::with_mem_size(mem_size)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match NetDevice::connect(socket, &cfg) {
            Ok(d) => return Ok(d),
            Err(e) if Instant::now() < deadline => {
                log::debug!("connect: {e}; retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("connect {}: {e}", socket.display())),
        }
    }
}

/// Pins the calling thread to one CPU; restores its former CPU set on drop.
struct Pin(libc::cpu_set_t);

impl Pin {
    fn to(cpu: usize) -> Result<Pin, String> {
        // SAFETY: cpu_set_t is plain data; all zeroes is an empty set.
        let mut old: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `old` is a valid cpu_set_t of the size given; 0 is this thread.
        if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&old), &mut old) } != 0 {
            return Err(format!(
                "sched_getaffinity: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: as above.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU_SET only writes inside `set` (it checks `cpu` against its size).
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: `set` is a valid cpu_set_t of the size given.
        if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
            return Err(format!(
                "--driver-cpu {cpu}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Pin(old))
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        // SAFETY: `self.0` is a valid cpu_set_t of the size given.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&self.0), &self.0) };
    }
}

// ---- the host-side sender -----------------------------------------------------------

/// An AF_PACKET socket bound to a tap that sends batches of one frame with
/// `sendmmsg`, bypassing the qdisc.
struct Injector {
    fd: OwnedFd,
    frame: Vec<u8>,
    sll: libc::sockaddr_ll,
}

impl Injector {
    fn open(tap: &str, frame: Vec<u8>) -> Result<Injector, String> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket() takes no pointers.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if raw < 0 {
            return Err(format!(
                "AF_PACKET socket: {} (needs root)",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `raw` is a new socket that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = std::ffi::CString::new(tap).map_err(|e| e.to_string())?;
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex <= 0 {
            return Err(format!("no interface {tap}"));
        }
        let one: libc::c_int = 1;
        // SAFETY: PACKET_QDISC_BYPASS reads one int from the pointer and length given.
        let rc = unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                4,
            )
        };
        if rc != 0 {
            return Err(format!(
                "PACKET_QDISC_BYPASS: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: sockaddr_ll is plain data; all zeroes is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        Ok(Injector { fd, frame, sll })
    }

    /// Sends `n` copies of the frame (at most [`RX_BATCH`]); returns how many went.
    fn send(&self, n: usize) -> usize {
        let n = n.min(RX_BATCH);
        let mut iov = libc::iovec {
            iov_base: self.frame.as_ptr() as *mut libc::c_void,
            iov_len: self.frame.len(),
        };
        // SAFETY: mmsghdr is plain data; all zeroes is valid.
        let mut msgs: [libc::mmsghdr; RX_BATCH] = unsafe { std::mem::zeroed() };
        for m in msgs.iter_mut().take(n) {
            m.msg_hdr.msg_name = (&self.sll as *const libc::sockaddr_ll) as *mut libc::c_void;
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `n` headers point at `self.sll` and `iov`, which point at
        // `self.frame`; all outlive the call and the kernel only reads through them.
        let rc = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
            )
        };
        rc.max(0) as usize
    }
}

// ---- one measurement ----------------------------------------------------------------

struct Settings {
    driver_cpu: Option<usize>,
    mss: usize,
    dir: PathBuf,
    seconds: f64,
    queue_size: u16,
}

/// What a measurement saw besides the report's figures.
#[derive(Default)]
struct Extra {
    /// Frames the driver got back as used (tx) or received (rx).
    completed: u64,
    /// rx: frames written off after 2 ms without progress (dropped, or late).
    written_off: u64,
    /// TSO: average bytes per frame that landed (tells whether a backend segmented).
    bytes_per_landed: f64,
}

struct TxState {
    pair: NetQueuePair,
    bufs: Vec<(u64, u32)>,
    free: Vec<u64>,
}

impl TxState {
    /// Keeps the transmit queue full until `deadline`; returns completions.
    fn run_until(&mut self, deadline: Instant) -> Result<u64, String> {
        let mut done = 0u64;
        loop {
            let mut got = 0;
            while let Some(u) = self.pair.tx.pop_used() {
                self.free.push(u.token.unwrap_or(0));
                got += 1;
            }
            done += got;
            if Instant::now() >= deadline {
                return Ok(done);
            }
            if !self.free.is_empty() {
                for tok in self.free.drain(..) {
                    let (addr, len) = self.bufs[tok as usize];
                    self.pair
                        .tx
                        .add(&[Buf::readable(addr, len)], false, tok)
                        .map_err(|e| e.to_string())?;
                }
                self.pair.tx.submit().map_err(|e| e.to_string())?;
            }
            if got == 0 && !self.pair.tx.wait_used(WAIT).map_err(|e| e.to_string())? {
                return Err(format!(
                    "no transmit completion within {WAIT:?} ({} in flight)",
                    self.pair.tx.in_flight()
                ));
            }
        }
    }
}

struct RxState {
    pair: NetQueuePair,
    injector: Injector,
    sizes: std::collections::HashMap<u64, u32>,
    outstanding: u64,
    window: u64,
    written_off: u64,
}

impl RxState {
    /// Injects and receives until `deadline`; returns (frames, bytes) received.
    fn run_until(&mut self, deadline: Instant) -> Result<(u64, u64), String> {
        let (mut frames, mut bytes) = (0u64, 0u64);
        loop {
            if self.outstanding < self.window {
                let n = (self.window - self.outstanding) as usize;
                self.outstanding += self.injector.send(n) as u64;
            }
            let mut got = 0u64;
            while let Some(u) = self.pair.rx.pop_used() {
                let addr = u.token.unwrap_or(0);
                let size = *self.sizes.get(&addr).ok_or("unknown receive buffer")?;
                self.pair
                    .rx
                    .add(&[Buf::writable(addr, size)], false, addr)
                    .map_err(|e| e.to_string())?;
                got += 1;
                bytes += u64::from(u.len).saturating_sub(VNET_HDR_LEN as u64);
            }
            if got > 0 {
                self.pair.rx.submit().map_err(|e| e.to_string())?;
            }
            frames += got;
            self.outstanding = self.outstanding.saturating_sub(got);
            if Instant::now() >= deadline {
                return Ok((frames, bytes));
            }
            if got == 0
                && !self
                    .pair
                    .rx
                    .wait_used(Duration::from_millis(2))
                    .map_err(|e| e.to_string())?
            {
                // Nothing for 2 ms: write off what is outstanding (dropped on the
                // way, or late: a late frame then only shrinks the next window).
                self.written_off += self.outstanding;
                self.outstanding = 0;
            }
        }
    }
}

fn features_for(w: &Workload) -> u64 {
    let mut f = DriverConfig::DEFAULT_FEATURES;
    if !w.tso {
        // Plain frames: no offloads either way (CSUM, GUEST_CSUM, and the guest and
        // host TSO/ECN/UFO bits 7 to 14), so neither backend can skip work.
        f &= !((1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_GUEST_CSUM) | (0xff << 7));
    }
    f
}

fn measure(
    backend: &Backend,
    w: &Workload,
    s: &Settings,
    n: usize,
) -> Result<(Measurement, Extra), String> {
    let run = backend.start(&s.dir, n, s.queue_size)?;
    let label = backend.label();
    let qsize = s.queue_size;
    let len = if w.tso { tso_frame_len(s.mss) } else { w.len };
    let buf_len = (VNET_HDR_LEN + len) as u64;
    let mem_size =
        (buf_len.max(u64::from(RX_BUF)) * u64::from(qsize) + (16 << 20)).next_multiple_of(1 << 20);
    let mut dev =
        connect(&run.socket, features_for(w), mem_size).map_err(|e| format!("{label}: {e}"))?;
    if w.tso {
        for (bit, name) in [
            (VIRTIO_NET_F_HOST_TSO4, "HOST_TSO4"),
            (VIRTIO_NET_F_CSUM, "CSUM"),
        ] {
            if !dev.driver.has_feature(bit) {
                return Err(format!("{label}: does not offer {name}"));
            }
        }
    }
    let mut pairs = dev
        .setup_pairs(1, qsize)
        .map_err(|e| format!("{label}: queue set-up: {e}"))?;
    let mut pair = pairs.remove(0);
    let mem = pair.memory().clone();
    // The backend is running (with the whole CPU set): pin only this thread now.
    let _pin = match s.driver_cpu {
        Some(cpu) => Some(Pin::to(cpu)?),
        None => None,
    };
    let pid = run.proc.pid();
    let measured = Duration::from_secs_f64(s.seconds);
    let warmup = Duration::from_secs_f64((s.seconds / 5.0).clamp(0.05, 0.5));
    let err = |e: vhostkit_driver::Error| format!("{label}: {e}");

    let (frames, bytes, elapsed, cpu, extra) = match w.dir {
        Dir::Tx => {
            let frame = make_frame(NOBODY_MAC, GUEST_MAC, len, w.tso);
            let hdr = if w.tso {
                tso_hdr(s.mss)
            } else {
                NetHdr::default()
            };
            let mut bufs = Vec::new();
            for _ in 0..qsize {
                let a = mem.alloc(buf_len, 64).map_err(err)?;
                mem.write(a, &hdr.to_bytes()).map_err(err)?;
                mem.write(a + VNET_HDR_LEN as u64, &frame).map_err(err)?;
                bufs.push((a, buf_len as u32));
            }
            let mut st = TxState {
                pair,
                free: (0..u64::from(qsize)).collect(),
                bufs,
            };
            st.run_until(Instant::now() + warmup)
                .map_err(|e| format!("{label}: {e}"))?;
            let (p0, b0) = tap_rx_counters(&run.tap)?;
            let cpu0 = process_cpu_seconds(pid).map_err(|e| e.to_string())?;
            let t0 = Instant::now();
            let done = st
                .run_until(t0 + measured)
                .map_err(|e| format!("{label}: {e}"))?;
            let elapsed = t0.elapsed().as_secs_f64();
            let cpu1 = process_cpu_seconds(pid).map_err(|e| e.to_string())?;
            let (p1, b1) = tap_rx_counters(&run.tap)?;
            let (packets, bytes) = (p1 - p0, b1 - b0);
            let extra = Extra {
                completed: done,
                written_off: 0,
                bytes_per_landed: if packets > 0 {
                    bytes as f64 / packets as f64
                } else {
                    0.0
                },
            };
            let (frames, bytes) = if w.tso {
                // A backend may land a TSO frame whole or as its segments: count
                // the TCP payload that landed, in whole TSO frames.
                let payload = bytes.saturating_sub(packets * TSO_HDRS as u64);
                let per_frame = (len - TSO_HDRS) as f64;
                let frames = payload as f64 / per_frame;
                (frames, frames * len as f64)
            } else {
                (packets as f64, bytes as f64)
            };
            (frames, bytes, elapsed, cpu1 - cpu0, extra)
        }
        Dir::Rx => {
            let mut sizes = std::collections::HashMap::new();
            for _ in 0..qsize {
                let a = mem.alloc(u64::from(RX_BUF), 64).map_err(err)?;
                pair.rx
                    .add(&[Buf::writable(a, RX_BUF)], false, a)
                    .map_err(err)?;
                sizes.insert(a, RX_BUF);
            }
            pair.rx.submit().map_err(err)?;
            let injector = Injector::open(&run.tap, make_frame(GUEST_MAC, HOST_MAC, len, false))?;
            let mut st = RxState {
                pair,
                injector,
                sizes,
                outstanding: 0,
                window: u64::from(qsize),
                written_off: 0,
            };
            st.run_until(Instant::now() + warmup)
                .map_err(|e| format!("{label}: {e}"))?;
            st.written_off = 0;
            let cpu0 = process_cpu_seconds(pid).map_err(|e| e.to_string())?;
            let t0 = Instant::now();
            let (frames, bytes) = st
                .run_until(t0 + measured)
                .map_err(|e| format!("{label}: {e}"))?;
            let elapsed = t0.elapsed().as_secs_f64();
            let cpu1 = process_cpu_seconds(pid).map_err(|e| e.to_string())?;
            let extra = Extra {
                completed: frames,
                written_off: st.written_off,
                bytes_per_landed: if frames > 0 {
                    bytes as f64 / frames as f64
                } else {
                    0.0
                },
            };
            (frames as f64, bytes as f64, elapsed, cpu1 - cpu0, extra)
        }
    };
    drop(dev);
    drop(run);
    Ok((
        Measurement {
            ops_per_sec: frames / elapsed,
            mb_per_sec: bytes / elapsed / 1e6,
            cpu_s_per_mop: (frames > 0.0).then(|| cpu / (frames / 1e6)),
        },
        extra,
    ))
}

/// Whether `--rows` selects row `name`: a full row name selects that row only
/// ("tx-64" is not "tx-64k-tso"), anything else every row containing it ("rx").
fn selected(filter: &Option<String>, name: &str) -> bool {
    let names: Vec<&str> = workloads().iter().map(|w| w.name).collect();
    row_selected(filter.as_deref(), name, &names)
}

/// Whether `bin` runs (a path, or a name on $PATH).
fn have_command(bin: &str) -> bool {
    if bin.contains('/') {
        return Path::new(bin).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).exists()))
        .unwrap_or(false)
}

fn testpmd_version(bin: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "dpdk-dev"])
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !v.is_empty()).then(|| format!("{bin} (DPDK {v})"))
}

fn run(mut args: Args) -> Result<(), String> {
    if args.quick {
        args.seconds = 0.25;
        args.rounds = 1;
    }
    if args.rounds == 0 || !args.seconds.is_finite() || args.seconds <= 0.0 {
        return Err("--rounds and --seconds must be positive".into());
    }
    if !args.queue_size.is_power_of_two() || args.queue_size < 64 {
        return Err("--queue-size must be a power of two, at least 64".into());
    }
    let work: Vec<Workload> = workloads()
        .into_iter()
        .filter(|w| selected(&args.rows, w.name))
        .collect();
    if args.list {
        for w in workloads() {
            println!("{}", w.name);
        }
        return Ok(());
    }
    if work.is_empty() {
        return Err("--rows selects no row (see --list)".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/net/tun").exists() {
        return Err("needs root and /dev/net/tun (taps, AF_PACKET)".into());
    }
    let bin = ours_bin(args.ours_bin.as_deref(), "vhost-user-net", "vhost-net")?;
    let run_dir = RunDir::create(&args.dir, "net-bench", args.keep)?;
    let dir = run_dir.path().to_path_buf();
    if args.keep {
        eprintln!("net-bench: keeping {}", dir.display());
    }

    let ours = Backend::Ours { bin };
    let peer_note;
    let peer = if args.no_peer {
        peer_note = "peer: not run (--no-peer)".to_string();
        None
    } else if !have_command(&args.testpmd) {
        peer_note = "peer: SKIPPED (dpdk-testpmd not installed: apt-get install dpdk-dev)".into();
        eprintln!("net-bench: {peer_note}");
        None
    } else {
        peer_note = format!(
            "peer: {} {}",
            args.testpmd,
            testpmd_args(
                &args.testpmd_lcores,
                Path::new("SOCK"),
                "TAP",
                Path::new("CMDS")
            )
            .join(" ")
            .replace(
                &format!("--file-prefix=vknb{} ", std::process::id()),
                "--file-prefix=vknbPID "
            )
        );
        Some(Backend::Dpdk {
            bin: args.testpmd.clone(),
            lcores: args.testpmd_lcores.clone(),
        })
    };
    let peer_name = match &peer {
        Some(_) => testpmd_version(&args.testpmd).unwrap_or_else(|| args.testpmd.clone()),
        None => "-".into(),
    };
    let settings = Settings {
        driver_cpu: usize::try_from(args.driver_cpu).ok(),
        mss: usize::from(args.tso_mss),
        dir: dir.clone(),
        seconds: args.seconds,
        queue_size: args.queue_size,
    };

    let mut report = Report::new(
        "vhost-user-net vs DPDK vhost-user PMD -> tap (user-space vhost-user driver, no guest)",
        "vhostkit vhost-user-net (tap)",
        &peer_name,
    );
    report.op_name = "frames".into();
    report.gbit = true;
    let mut tso_notes = Vec::new();
    let mut n = 0;
    for (i, w) in work.iter().enumerate() {
        let tag = format!("[{}/{}]", i + 1, work.len());
        let mut ours_ms = Vec::new();
        let mut peer_ms = Vec::new();
        let mut peer_err = None;
        for round in 1..=args.rounds {
            let mut order: Vec<&Backend> = vec![&ours];
            if let Some(p) = &peer {
                order.push(p);
            }
            if round % 2 == 0 {
                order.reverse();
            }
            for b in order {
                n += 1;
                let is_ours = matches!(b, Backend::Ours { .. });
                match measure(b, w, &settings, n) {
                    Ok((m, x)) => {
                        eprintln!(
                            "  {tag} {:<11} {:<4} round {round}: {:>9.0} frames/s {:>6.2} Gbit/s {:>7.2} CPU s/Mframe  ({} completed, {} written off, {:.0} B/frame)",
                            w.name,
                            b.label(),
                            m.ops_per_sec,
                            m.mb_per_sec * 8.0 / 1000.0,
                            m.cpu_s_per_mop.unwrap_or(f64::NAN),
                            x.completed,
                            x.written_off,
                            x.bytes_per_landed
                        );
                        if w.tso && round == 1 {
                            tso_notes.push(format!(
                                "{}: {} frames of {} B sent with gso TCPv4 landed in the tap as {:.0} B frames on average",
                                w.name, b.label(), tso_frame_len(usize::from(args.tso_mss)), x.bytes_per_landed
                            ));
                        }
                        if is_ours {
                            ours_ms.push(m);
                        } else {
                            peer_ms.push(m);
                        }
                    }
                    // Our daemon must manage every row; the peer may not (reported).
                    Err(e) if !is_ours => {
                        eprintln!("  {tag} {:<11} {}: {e}", w.name, b.label());
                        peer_err = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(e) = &peer_err {
            report.notes.push(format!(
                "{}: dpdk failed: {}",
                w.name,
                e.lines().next().unwrap_or("")
            ));
        }
        report.rows.push(Row {
            workload: w.name.to_string(),
            ours: Measurement::median_of(&ours_ms),
            peer: (!peer_ms.is_empty()).then(|| Measurement::median_of(&peer_ms)),
            spread: None,
            costs: None,
        });
    }

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut notes = vec![
        peer_note,
        "ours: vhost-user-net --tap TAP (one queue pair, no --poll-us); each measurement on a fresh backend and tap, IPv6 off on the tap".to_string(),
        format!(
            "{} s measured per row and backend after a warm-up, median of {} rounds, backends alternating",
            args.seconds, args.rounds
        ),
        format!(
            "driver: queue size {}, one pair, EVENT_IDX, blocks on the call eventfd; tx: queue kept full, frames counted by the tap's rx_packets/rx_bytes; rx: AF_PACKET sendmmsg into the tap, closed loop of one queue of frames, counted at the driver's rx queue",
            args.queue_size
        ),
        format!(
            "64/1500 rows negotiate no offloads; tx-64k-tso sends {} B TCP/IPv4 frames with gso TCPv4 (MSS {}, NEEDS_CSUM 34/16); it counts landed TCP payload in whole frames (a backend may land a frame whole or segmented)",
            tso_frame_len(usize::from(args.tso_mss)),
            args.tso_mss
        ),
        "Gbit/s: Ethernet frame bytes (no FCS, preamble or vnet header); CPU s/Mframe: utime+stime of the backend process over the measured interval per million frames (DPDK's forwarding lcore polls: ~1 CPU s per second whatever the load)".into(),
        format!(
            "host: {cores} CPUs shared by the backend, the driver thread and the host side of the tap; driver thread {}",
            match args.driver_cpu {
                c if c >= 0 => format!("pinned to CPU {c} while measuring (testpmd's forwarding lcore: the last of -l {}; our daemon's threads are not pinned)", args.testpmd_lcores),
                _ => "not pinned".to_string(),
            }
        ),
        "dpdk tx-64k-tso: the vhost PMD (legacy-ol-flags=1) marks the frame for TSO and the tap PMD segments it in software (librte_gso, tx_offload tcp_tso on the tap port) into MSS-sized frames; it drops any whose MSS + 54 exceeds the tap MTU, hence MSS 1446 (with 1448 every frame is dropped). Ours hands the frame to the tap whole with its vnet header".into(),
        "dpdk rx rows: the tap PMD reads the tap only after a SIGIO arrived since its last read (its receive path returns empty otherwise), so receiving costs it a signal per batch on top of its polling".into(),
    ];
    notes.extend(tso_notes);
    notes.extend(std::mem::take(&mut report.notes));
    report.notes = notes;
    report.emit_to(&args.output)
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("net-bench: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_well_formed() {
        let f = make_frame(NOBODY_MAC, GUEST_MAC, 64, false);
        assert_eq!(f.len(), 64);
        assert_eq!(f[12..14], ETHERTYPE_TEST.to_be_bytes());
        for mss in [536, 1446, 1448, 1460, 9000] {
            let len = tso_frame_len(mss);
            assert!(len - 14 <= 65535, "{mss}");
            assert_eq!((len - TSO_HDRS) % mss, 0);
        }
        assert_eq!(tso_frame_len(1446), 54 + 45 * 1446);
        let len = tso_frame_len(1446);
        let t = make_frame(NOBODY_MAC, GUEST_MAC, len, true);
        assert_eq!(t.len(), len);
        assert_eq!(u16::from_be_bytes([t[16], t[17]]) as usize, len - 14);
        // A correct IPv4 header checksum sums to zero.
        assert_eq!(ip_checksum(&t[14..34]), 0);
        assert_eq!(t[23], 6);
        assert_eq!(tso_hdr(1446).gso_size, 1446);
    }

    #[test]
    fn rows_and_filter() {
        let names: Vec<&str> = workloads().iter().map(|w| w.name).collect();
        assert_eq!(
            names,
            ["tx-64", "tx-1500", "tx-64k-tso", "rx-64", "rx-1500"]
        );
        assert!(selected(&Some("tx-1500".into()), "tx-1500"));
        assert!(!selected(&Some("tx-1500".into()), "rx-1500"));
        assert!(!selected(&Some("tx-64".into()), "tx-64k-tso"));
        assert!(selected(&Some("rx, tso".into()), "tx-64k-tso"));
        assert!(selected(&Some("rx".into()), "rx-64"));
    }

    #[test]
    fn testpmd_command_line() {
        let a = testpmd_args("0-1", Path::new("/s.sock"), "t0", Path::new("/c")).join(" ");
        assert!(a.contains("--no-huge"), "{a}");
        assert!(a.contains("net_vhost0,iface=/s.sock,client=0,tso=1"), "{a}");
        assert!(a.ends_with("--cmdline-file=/c"), "{a}");
        assert!(TESTPMD_COMMANDS.contains("tcp_tso on"));
        assert!(a.contains("net_tap0,iface=t0"), "{a}");
        assert!(a.contains("-- --forward-mode=io --auto-start"), "{a}");
    }

    #[test]
    fn cli_parses() {
        let a = Args::try_parse_from(["net-bench", "--quick", "--rows", "tx-1500"]).unwrap();
        assert!(a.quick);
        assert!(Args::try_parse_from(["net-bench", "--bogus"]).is_err());
    }
}
