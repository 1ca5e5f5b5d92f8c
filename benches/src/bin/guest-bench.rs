//! guest-bench: fio inside a Linux guest, on our vhost-user-blk and on
//! qemu-storage-daemon, side by side.
//!
//! Each backend serves its own image on /dev/shm (same size, same contents) with two
//! queues; the guest boots once per backend and round, backends alternating, and
//! runs every selected fio row. The table shows IOPS, MB/s, the daemon's CPU seconds
//! per million requests (measured on the host while the row runs) and ours/peer.
//!
//! Under TCG (no vmx/svm on the host) the guest's emulated CPU is the bottleneck for
//! both backends: the figures then compare backends, as a ratio within one run, and
//! do not measure either backend's ceiling.
//!
//! Where the host has hardware virtualization (`--vhostkit auto`, the default, or
//! `--vhostkit on`), each round also boots the guest through our VMM `vhostkit`
//! with our daemon (virtio-mmio, found through ACPI): the rows labelled
//! `vhostkit+ours` compare that whole stack with QEMU + the peer.
//!
//! Net rows (unless `--no-net`; only them with `--net-only`): in the same boots,
//! iperf3 TCP between the guest and the host, guest->host and host->guest, 1 and 4
//! streams, over a virtio-net-pci device with two queue pairs (INTx: QEMU 7.2 under
//! TCG needs `vectors=0` for vhost-user-net). Ours: our vhost-user-net on a tap;
//! peer: QEMU's own tap backend (`-netdev tap,vhost=off`). The tap, its host address
//! and the iperf3 server live in a network namespace per boot. In the table the
//! ops/s columns of net rows hold Mbit/s (iperf3's receiver-side goodput), the MB/s
//! columns the same in 10^6 bytes/s; the guest boot (and its Linux stack under TCG)
//! is shared by both backends, so the ratio is the comparison.
//!
//! File system rows (unless `--no-fs`; only them with `--fs-only`): in the same
//! boots, two virtio-fs devices (`vhost-user-fs-pci`, one request queue each)
//! mounted at /mnt/ours and /mnt/peer; ours: our vhost-user-fs, peer: virtiofsd
//! (scripts/build-fs-tools.sh), the same cache policy for both (`--fs-cache`,
//! default auto), each sharing its own folder on /dev/shm. Every QEMU boot runs each
//! fs row on both mounts back to back (the boot's slot first, then alternating by
//! row): the pairs are seconds apart, which keeps the drift of a shared, loaded
//! host out of the ratio. fio on a file of the mount (made on the host, pre-filled): 4k
//! random read and write, 1M sequential read and write, libaio with direct=1 (the
//! guest's page cache bypassed: every I/O is a FUSE request); then busybox
//! `tar -x` of a source tree (default: the kernel's uapi headers, /usr/include/linux,
//! tarred on the host and put in the guest's RAM) onto the mount, timed in the
//! guest: ops/s are files/s, MB/s the files' bytes per second. The host then counts
//! the extracted files in the shared folder.

use clap::Parser;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use vhostkit_benches::procs::ProcCounters;
use vhostkit_benches::report::{
    process_cpu_seconds, Costs, CostsPair, Measurement, OutputArgs, Report, Row, Spread,
};
use vhostkit_tests::daemon::{
    qemu_storage_daemon_cmd, qemu_storage_daemon_version, workspace_bin, DaemonProcess,
};
use vhostkit_tests::fs::{spawn_fs_daemon, virtiofsd_bin, virtiofsd_cmd_with};
use vhostkit_tests::guest::{
    hardware_kvm, vhostkit_bin, Accel, BlkDevice, FsDevice, Guest, GuestImage, NetDevice, Vmm,
};
use vhostkit_tests::launch::blk::{BlkArgs, Engine};
use vhostkit_tests::launch::fs::{Cache, FsArgs};
use vhostkit_tests::launch::net::{HostIp, Mac, NetArgs};
use vhostkit_tests::launch::{DaemonArgs, Launch};
use vhostkit_tests::netns::{self, NetNs};
use vhostkit_tests::TempDir;

const NUM_QUEUES: u16 = 2;
/// Queue pairs of the guest's network device, on both backends.
const NET_QUEUE_PAIRS: u16 = 2;
const GUEST_MAC: Mac = Mac([0x52, 0x54, 0x00, 0x77, 0x00, 0x02]);
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const GUEST_IP: &str = "10.77.0.2";
const IPERF_PORT: u16 = 5201;
/// The virtio-fs tags: `vkfs-ours`, `vkfs-peer`.
const FS_TAG: &str = "vkfs";
/// The fio file in the shared folder.
const FS_FILE: &str = "fio.dat";
/// Where the source tree's tarball is in the guest (its RAM, not the mount).
const FS_TARBALL: &str = "src.tar";
/// The folder of the shared folder the tarball is extracted into.
const FS_TREE: &str = "tree";

/// The virtio-fs tag of the daemon `label` (`ours` or `peer`).
fn fs_tag(label: &str) -> String {
    format!("{FS_TAG}-{label}")
}

/// Where the guest mounts the daemon `label`'s device.
fn fs_mount(label: &str) -> String {
    format!("/mnt/{label}")
}

/// Which daemon goes first for fs row `i` of a boot whose daemons are `labels`
/// (first of them first on even rows): ABBA within the boot.
fn fs_row_order<'l>(labels: &[&'l str], i: usize) -> Vec<&'l str> {
    let mut order = labels.to_vec();
    if i % 2 == 1 {
        order.reverse();
    }
    order
}

/// One file system row: fio on the mount's file, or the tar extract.
struct FsWorkload {
    id: &'static str,
    title: &'static str,
    /// fio's rw, bs and iodepth; `None`: the tar extract.
    fio: Option<(&'static str, &'static str, u32)>,
}

const FS_WORKLOADS: &[FsWorkload] = &[
    FsWorkload {
        id: "fs-randread-4k-qd16",
        title: "virtiofs 4k randread QD16",
        fio: Some(("randread", "4k", 16)),
    },
    FsWorkload {
        id: "fs-randwrite-4k-qd16",
        title: "virtiofs 4k randwrite QD16",
        fio: Some(("randwrite", "4k", 16)),
    },
    FsWorkload {
        id: "fs-seqread-1m-qd4",
        title: "virtiofs 1M seqread QD4",
        fio: Some(("read", "1m", 4)),
    },
    FsWorkload {
        id: "fs-seqwrite-1m-qd4",
        title: "virtiofs 1M seqwrite QD4",
        fio: Some(("write", "1m", 4)),
    },
    FsWorkload {
        id: "fs-tar-x",
        title: "virtiofs tar -x [files/s]",
        fio: None,
    },
];

/// One iperf3 row.
struct NetWorkload {
    id: &'static str,
    title: &'static str,
    /// Host->guest (`iperf3 -R`: the host end sends).
    reverse: bool,
    streams: u32,
}

const NET_WORKLOADS: &[NetWorkload] = &[
    NetWorkload {
        id: "tcp-g2h-p1",
        title: "TCP guest->host 1 stream",
        reverse: false,
        streams: 1,
    },
    NetWorkload {
        id: "tcp-g2h-p4",
        title: "TCP guest->host 4 streams",
        reverse: false,
        streams: 4,
    },
    NetWorkload {
        id: "tcp-h2g-p1",
        title: "TCP host->guest 1 stream",
        reverse: true,
        streams: 1,
    },
    NetWorkload {
        id: "tcp-h2g-p4",
        title: "TCP host->guest 4 streams",
        reverse: true,
        streams: 4,
    },
];

/// One fio workload.
struct Workload {
    id: &'static str,
    title: &'static str,
    rw: &'static str,
    bs: &'static str,
    iodepth: u32,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        id: "randread-4k-qd32",
        title: "4k randread QD32",
        rw: "randread",
        bs: "4k",
        iodepth: 32,
    },
    Workload {
        id: "randwrite-4k-qd32",
        title: "4k randwrite QD32",
        rw: "randwrite",
        bs: "4k",
        iodepth: 32,
    },
    Workload {
        id: "randread-4k-qd1",
        title: "4k randread QD1",
        rw: "randread",
        bs: "4k",
        iodepth: 1,
    },
    Workload {
        id: "seqread-128k-qd8",
        title: "128k seqread QD8",
        rw: "read",
        bs: "128k",
        iodepth: 8,
    },
];

#[derive(Parser, Debug)]
#[command(
    name = "guest-bench",
    about = "fio, tar and iperf3 inside a Linux guest (QEMU): our vhost-user-blk against qemu-storage-daemon, our vhost-user-fs against virtiofsd, our vhost-user-net against QEMU's tap backend, side by side",
    after_help = "fio rows (--rows): randread-4k-qd32, randwrite-4k-qd32, randread-4k-qd1, seqread-128k-qd8.\n\
Net rows (--no-net, --net-only): iperf3 TCP guest->host and host->guest, 1 and 4 streams;\n\
their ops/s columns hold Mbit/s. Net rows need root, /dev/net/tun, ip and iperf3.\n\
File system rows (--no-fs, --fs-only): vhost-user-fs against virtiofsd (build/tools, from\n\
scripts/build-fs-tools.sh), same --fs-cache: fio 4k randread/randwrite QD16 and 1M\n\
seqread/seqwrite QD4 (direct=1) on a file of the virtiofs mount, and a tar extract of\n\
--fs-tree onto the mount (its ops/s are files/s); both daemons serve every boot, each\n\
row runs on both mounts back to back.\n\
Needs the guest image (scripts/build-guest-image.sh, run automatically) and the\n\
daemons built (cargo build --release --workspace --bins)."
)]
struct Args {
    /// Seconds of fio per row and backend (time-based).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=600))]
    seconds: u32,
    /// fio rows to run: comma-separated names or parts of names (e.g. "randread" or "qd32").
    #[arg(long, value_delimiter = ',')]
    rows: Vec<String>,
    /// Leave out the net rows (iperf3 over vhost-user-net vs QEMU's tap backend).
    #[arg(long, conflicts_with = "net_only")]
    no_net: bool,
    /// Only the net rows: no block device, no fio, no virtio-fs.
    #[arg(long)]
    net_only: bool,
    /// Leave out the file system rows (vhost-user-fs vs virtiofsd).
    #[arg(long, conflicts_with_all = ["fs_only", "net_only"])]
    no_fs: bool,
    /// Only the file system rows: no block device, no network.
    #[arg(long, conflicts_with = "net_only")]
    fs_only: bool,
    /// Cache policy of both virtio-fs daemons (their --cache).
    #[arg(long, value_enum, default_value_t = FsCache::Auto)]
    fs_cache: FsCache,
    /// Size of the fio file on the virtiofs mount, MiB (made on the host, pre-filled).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(16..=8192))]
    fs_file_mib: u64,
    /// The source tree the tar row extracts (tarred on the host once per run).
    #[arg(long, default_value = "/usr/include/linux")]
    fs_tree: PathBuf,
    /// Seconds of iperf3 per net row and backend.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=600))]
    net_seconds: u32,
    /// Guest boots per backend; backends alternate (ours, peer, peer, ours, ...) and
    /// the table shows means. Each backend's boots, split in two interleaved halves,
    /// give the row's A/A noise floor (see the notes under the table): with 4, each
    /// half holds two boots.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Image size per backend, MiB (a file on /dev/shm, filled with data first).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(64..=16384))]
    image_mib: u64,
    /// I/O engine of our daemon (its --engine).
    #[arg(long, value_enum, default_value_t = Engine::IoUring)]
    engine: Engine,
    /// qemu-storage-daemon's aio mode (threads or io_uring; native needs O_DIRECT,
    /// which /dev/shm does not offer).
    #[arg(long, default_value = "io_uring")]
    peer_aio: String,
    /// A/A run: the peer in both columns, to see the run-to-run noise.
    #[arg(long)]
    aa: bool,
    /// `--coalesce-us` of our three daemons (interrupt coalescing window; 0: off)
    /// [default: the daemons' own].
    #[arg(long, value_name = "US")]
    coalesce_us: Option<u64>,
    #[command(flatten)]
    output: OutputArgs,
    /// Also boot the guest through our VMM vhostkit with our daemon (rows
    /// `vhostkit+ours`): `auto` does where the host has hardware virtualization
    /// (vmx/svm; Linux is far too slow through vhostkit without it).
    #[arg(long, value_enum, default_value_t = VhostkitMode::Auto)]
    vhostkit: VhostkitMode,
    /// Copy the guest console to stderr.
    #[arg(long)]
    verbose: bool,
    /// Only print which VMM would boot the guest (and whether the vhostkit rows
    /// run, and why), then exit.
    #[arg(long)]
    print_vmm: bool,
}

/// `--fs-cache`: the cache policies both daemons have.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum FsCache {
    Auto,
    Always,
    Never,
}

impl FsCache {
    fn as_str(self) -> &'static str {
        match self {
            FsCache::Auto => "auto",
            FsCache::Always => "always",
            FsCache::Never => "never",
        }
    }

    /// Our daemon's `--cache` of the same name.
    fn ours(self) -> Cache {
        match self {
            FsCache::Auto => Cache::Auto,
            FsCache::Always => Cache::Always,
            FsCache::Never => Cache::Never,
        }
    }
}

/// `--vhostkit`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum VhostkitMode {
    Auto,
    On,
    Off,
}

/// The line that says whether the vhostkit rows run, and why: the one
/// scripts/demo.sh shows.
fn vhostkit_decision(mode: VhostkitMode, aa: bool, hw: bool) -> (bool, String) {
    const NO_HW: &str =
        "no hardware virtualization: Linux boots through vhostkit only with vmx/svm";
    match mode {
        _ if aa => (false, "vhostkit rows: SKIPPED (--aa)".into()),
        VhostkitMode::Off => (false, "vhostkit rows: SKIPPED (--vhostkit off)".into()),
        VhostkitMode::On if !hw => (
            true,
            format!("vhostkit rows: on (--vhostkit on), although there is {NO_HW}"),
        ),
        VhostkitMode::On | VhostkitMode::Auto if hw => (
            true,
            "vhostkit rows: on (hardware virtualization: the guest also boots through vhostkit)"
                .into(),
        ),
        _ => (false, format!("vhostkit rows: SKIPPED ({NO_HW})")),
    }
}

/// Which daemon serves a boot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Slot {
    Ours,
    Peer,
    /// Our daemon, the guest booted through vhostkit.
    Vhostkit,
}

impl Slot {
    fn label(self) -> &'static str {
        match self {
            Slot::Ours => "ours",
            Slot::Peer => "peer",
            Slot::Vhostkit => "vhostkit+ours",
        }
    }

    fn vmm(self) -> Vmm {
        match self {
            Slot::Vhostkit => Vmm::Vhostkit,
            Slot::Ours | Slot::Peer => Vmm::Qemu,
        }
    }
}

/// What the harness measured for one row in one boot.
#[derive(Clone, Debug, Default)]
struct Sample {
    iops: f64,
    mb_per_sec: f64,
    ios: u64,
    cpu_seconds: Option<f64>,
    /// The guest's and the host's counters over the row.
    counters: Option<RowCounters>,
}

/// What happened while a row ran in one boot: the guest's virtio interrupts (and
/// for a net row its packets), read by the guest script in the row's markers
/// (`irqs=N packets=N`), and the backend's and QEMU's process counters, read on
/// the host when the markers arrive. Marker to marker, so the interval is a little
/// wider than the measured one, on both sides alike.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct RowCounters {
    guest_irqs: Option<u64>,
    packets: Option<u64>,
    backend: Option<ProcCounters>,
    vmm: Option<ProcCounters>,
}

impl RowCounters {
    /// The counters now: the guest's from a marker's text after the row id, the
    /// host's read from /proc for the backend process (`None` for a backend inside
    /// QEMU) and for QEMU.
    fn now(marker_rest: &str, backend: Option<u32>, vmm: Option<u32>) -> Self {
        let field = |key: &str| -> Option<u64> {
            marker_rest
                .split_whitespace()
                .find_map(|t| t.strip_prefix(key))
                .and_then(|v| v.parse().ok())
        };
        RowCounters {
            guest_irqs: field("irqs="),
            packets: field("packets="),
            backend: backend.and_then(|pid| ProcCounters::read(pid).ok()),
            vmm: vmm.and_then(|pid| ProcCounters::read(pid).ok()),
        }
    }

    /// From `begin` to `self`.
    fn since(&self, begin: &RowCounters) -> RowCounters {
        let diff = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
        let procs = |a: Option<ProcCounters>, b: Option<ProcCounters>| Some(a?.since(&b?));
        RowCounters {
            guest_irqs: diff(self.guest_irqs, begin.guest_irqs),
            packets: diff(self.packets, begin.packets),
            backend: procs(self.backend, begin.backend),
            vmm: procs(self.vmm, begin.vmm),
        }
    }
}

/// One boot's result on one row, whatever the row's kind.
trait BootSample {
    /// The row's figure (IOPS, files/s, Mbit/s).
    fn value(&self) -> f64;
    /// What the costs are counted per: fio's I/Os, tar's files, a net row's packets.
    fn requests(&self) -> u64;
    fn counters(&self) -> Option<RowCounters>;
}

impl BootSample for Sample {
    fn value(&self) -> f64 {
        self.iops
    }
    fn requests(&self) -> u64 {
        self.ios
    }
    fn counters(&self) -> Option<RowCounters> {
        self.counters
    }
}

impl BootSample for NetSample {
    fn value(&self) -> f64 {
        self.mbit_per_sec
    }
    fn requests(&self) -> u64 {
        self.counters.and_then(|c| c.packets).unwrap_or(0)
    }
    fn counters(&self) -> Option<RowCounters> {
        self.counters
    }
}

/// A row's spread over the boots (with the A/A floor and the verdict) and its
/// costs, from each backend's boots in run order.
fn spread_and_costs<S: BootSample>(
    ours: &[S],
    peer: Option<&[S]>,
) -> (Option<Spread>, Option<CostsPair>) {
    let values = |v: &[S]| v.iter().map(S::value).collect::<Vec<_>>();
    let costs = |v: &[S]| {
        costs_of(
            &v.iter()
                .map(|s| (s.requests(), s.counters()))
                .collect::<Vec<_>>(),
        )
    };
    let spread = Spread::new(&values(ours), &values(peer.unwrap_or(&[])));
    let pair = costs(ours).map(|c| CostsPair {
        ours: c,
        peer: peer.and_then(costs),
    });
    (Some(spread), pair)
}

/// A row of the report from the boots of row `i` (in run order) under the label
/// `ours` (ours, or vhostkit+ours) and `peer`: the figures `mean` makes of them,
/// their spread and their costs.
fn row_of<S: BootSample>(
    workload: String,
    samples: &BTreeMap<(usize, &'static str), Vec<S>>,
    (i, ours): (usize, &'static str),
    mean: impl Fn(&[S]) -> Measurement,
) -> Row {
    let ours = samples.get(&(i, ours)).map(Vec::as_slice).unwrap_or(&[]);
    let peer = samples.get(&(i, "peer")).map(Vec::as_slice);
    let (spread, costs) = spread_and_costs(ours, peer);
    Row {
        workload,
        ours: mean(ours),
        peer: peer.map(&mean),
        spread,
        costs,
    }
}

/// [`Costs`] over a row's boots: each counter summed over the boots that have it,
/// per request summed over the same boots (`requests` of each boot).
fn costs_of(boots: &[(u64, Option<RowCounters>)]) -> Option<Costs> {
    if boots.iter().all(|(_, c)| c.is_none()) {
        return None;
    }
    let per = |get: &dyn Fn(&RowCounters) -> Option<f64>, scale: f64| -> Option<f64> {
        let (mut sum, mut requests) = (0.0, 0u64);
        for (n, c) in boots {
            if let Some(v) = c.as_ref().and_then(get) {
                sum += v;
                requests += n;
            }
        }
        (requests > 0).then(|| sum * scale / requests as f64)
    };
    Some(Costs {
        guest_irqs: per(&|c| c.guest_irqs.map(|v| v as f64), 1e3),
        kicks: per(&|c| c.vmm.map(|v| v.vcpu_writes as f64), 1e3),
        backend_wakeups: per(&|c| c.backend.map(|v| v.wakeups as f64), 1e3),
        backend_preempted: per(&|c| c.backend.map(|v| v.preempted as f64), 1e3),
        backend_cpu_us: per(&|c| c.backend.map(|v| v.cpu_seconds), 1e6),
        vmm_cpu_us: per(&|c| c.vmm.map(|v| v.cpu_seconds), 1e6),
    })
}

impl Sample {
    fn cpu_s_per_mop(&self) -> Option<f64> {
        let cpu = self.cpu_seconds?;
        (self.ios > 0).then(|| cpu / (self.ios as f64 / 1e6))
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("guest-bench: {e}");
        std::process::exit(1);
    }
}

/// The line saying which VMM boots the guest for which rows.
fn vmm_line(accel: Accel, with_vhostkit: bool) -> String {
    let qemu = format!("QEMU q35 (virtio-*-pci) under {accel}");
    if with_vhostkit {
        format!(
            "guest VMM: vhostkit (KVM, virtio-mmio) for rows vhostkit+ours; {qemu} for ours and peer"
        )
    } else {
        format!("guest VMM: {qemu} for ours and peer")
    }
}

fn run(args: &Args) -> Result<(), String> {
    if args.print_vmm {
        let accel = Accel::detect();
        let (with_vhostkit, line) = vhostkit_decision(args.vhostkit, args.aa, hardware_kvm());
        println!("{}", vmm_line(accel, with_vhostkit));
        println!("{line}");
        return Ok(());
    }
    let rows = if args.net_only || args.fs_only {
        Vec::new()
    } else {
        select_rows(&args.rows)?
    };
    let (net_rows, net_line) = net_decision(args);
    let net_rows: Vec<&'static NetWorkload> = net_rows;
    let fs = fs_decision(args);
    let mut fs_rows: Vec<&'static FsWorkload> = fs.rows.clone();
    if rows.is_empty() && net_rows.is_empty() && fs_rows.is_empty() {
        return Err(format!("nothing to run: {net_line}; {}", fs.line));
    }
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let image = GuestImage::ensure().map_err(|e| e.to_string())?;
    let accel = Accel::detect();
    let ours_bin = workspace_bin("vhost-user-blk");
    let ours_net_bin = workspace_bin("vhost-user-net");
    let ours_fs_bin = workspace_bin("vhost-user-fs");
    for (bin, needed) in [
        (&ours_bin, !rows.is_empty()),
        (&ours_net_bin, !net_rows.is_empty()),
        (&ours_fs_bin, !fs_rows.is_empty()),
    ] {
        if needed && !args.aa && !bin.is_file() {
            return Err(format!(
                "{} not found: build it first (cargo build --release --workspace --bins)",
                bin.display()
            ));
        }
    }
    let mut ours_names = Vec::new();
    let mut peer_names = Vec::new();
    if !rows.is_empty() {
        let peer_version = qemu_storage_daemon_version()
            .ok_or("qemu-storage-daemon not found (install qemu-system-common)")?;
        ours_names.push(if args.aa {
            format!("{peer_version} (A/A)")
        } else {
            format!("vhost-user-blk --engine {}", args.engine)
        });
        peer_names.push(format!(
            "{peer_version} (aio={}, cache.direct=off)",
            args.peer_aio
        ));
    }
    if !net_rows.is_empty() {
        let qemu = qemu_version().unwrap_or_else(|| "QEMU".into());
        let peer_net = format!("{qemu} tap backend (vhost=off)");
        ours_names.push(if args.aa {
            format!("{peer_net} (A/A)")
        } else {
            "vhost-user-net".to_string()
        });
        peer_names.push(peer_net);
    }
    if !fs_rows.is_empty() {
        let cache = args.fs_cache.as_str();
        let peer_fs = match &fs.virtiofsd {
            Some(bin) => format!(
                "{} (--cache {cache}, --sandbox none)",
                virtiofsd_version(bin).unwrap_or_else(|| "virtiofsd".into())
            ),
            None => "virtiofsd SKIPPED (not built)".to_string(),
        };
        ours_names.push(if args.aa {
            format!("{peer_fs} (A/A)")
        } else {
            format!("vhost-user-fs --cache {cache}")
        });
        peer_names.push(peer_fs);
    }
    let ours_name = ours_names.join(" / ");
    let peer_name = peer_names.join(" / ");
    let (with_vhostkit, vhostkit_line) = vhostkit_decision(args.vhostkit, args.aa, hardware_kvm());
    // The vhostkit slot runs the fio rows only (vhostkit's own --net is not part of
    // this comparison).
    let (with_vhostkit, vhostkit_line) = if with_vhostkit && rows.is_empty() {
        let only = if args.fs_only {
            "--fs-only"
        } else {
            "--net-only"
        };
        (false, format!("vhostkit rows: SKIPPED ({only})"))
    } else {
        (with_vhostkit, vhostkit_line)
    };
    if with_vhostkit && !vhostkit_bin().is_file() {
        return Err(format!(
            "{} not found: build it first (cargo build --release --workspace --bins)",
            vhostkit_bin().display()
        ));
    }

    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        TempDir::new_in(shm, "guest-bench")
    } else {
        TempDir::new("guest-bench")
    }
    .map_err(|e| format!("cannot create a temporary folder: {e}"))?;

    // The tar row's tarball, made once: the same bytes for every boot.
    // Without a tree to tar the tar row is left out (loudly), not the run.
    let mut tar_line = None;
    let tarball = if fs_rows.iter().any(|w| w.fio.is_none()) {
        match Tarball::make(&args.fs_tree, &dir.join(FS_TARBALL)) {
            Ok(tarball) => {
                eprintln!(
                    "guest-bench: tar row: {} ({} files, {:.1} MB in files, tarball {:.1} MB)",
                    args.fs_tree.display(),
                    tarball.files,
                    tarball.file_bytes as f64 / 1e6,
                    tarball.data.len() as f64 / 1e6
                );
                Some(tarball)
            }
            Err(e) => {
                let line = format!("fs row tar -x: SKIPPED ({e})");
                eprintln!("guest-bench: *** {line} ***");
                tar_line = Some(line);
                fs_rows.retain(|w| w.fio.is_some());
                None
            }
        }
    } else {
        None
    };

    eprintln!(
        "guest-bench: {} fio row(s) x {} s, {} fs row(s), {} net row(s) x {} s, {} round(s), guest under {accel}",
        rows.len(),
        args.seconds,
        fs_rows.len(),
        net_rows.len(),
        args.net_seconds,
        args.rounds
    );
    eprintln!("  ours: {ours_name}\n  peer: {peer_name}");
    eprintln!("  {}", vmm_line(accel, with_vhostkit));
    println!("{vhostkit_line}");
    println!("{net_line}");
    println!("{}", fs.line);
    if let Some(line) = &tar_line {
        println!("{line}");
    }
    if fs.virtiofsd.is_none() && !fs_rows.is_empty() {
        eprintln!("guest-bench: *** {} ***", fs.line);
    }

    let mut samples: BTreeMap<(usize, &'static str), Vec<Sample>> = BTreeMap::new();
    let mut net_samples: BTreeMap<(usize, &'static str), Vec<NetSample>> = BTreeMap::new();
    let mut fs_samples: BTreeMap<(usize, &'static str), Vec<Sample>> = BTreeMap::new();
    for round in 0..args.rounds {
        // Alternate which backend goes first, so drift does not favour one.
        let mut order = if round % 2 == 0 {
            vec![Slot::Ours, Slot::Peer]
        } else {
            vec![Slot::Peer, Slot::Ours]
        };
        if with_vhostkit {
            order.insert(if round % 2 == 0 { 2 } else { 0 }, Slot::Vhostkit);
        }
        for slot in order {
            let label = slot.label();
            eprintln!(
                "== round {}/{}: {label} ({}, guest through {})",
                round + 1,
                args.rounds,
                if slot == Slot::Peer {
                    &peer_name
                } else {
                    &ours_name
                },
                slot.vmm()
            );
            // The net and fs rows run in QEMU boots only. The fs rows run in every
            // QEMU boot on both daemons' mounts, the slot's daemon first (virtiofsd
            // may not be built: then ours alone).
            let boot_net_rows: &[&'static NetWorkload] = if slot == Slot::Vhostkit {
                &[]
            } else {
                &net_rows
            };
            let boot_fs_rows: &[&'static FsWorkload] = if slot == Slot::Vhostkit {
                &[]
            } else {
                &fs_rows
            };
            let fs_labels: &[&'static str] = match (fs.virtiofsd.is_some(), slot) {
                _ if boot_fs_rows.is_empty() => &[],
                (false, _) => &["ours"],
                (true, Slot::Peer) => &["peer", "ours"],
                (true, _) => &["ours", "peer"],
            };
            let boot_script = guest_script(
                &rows,
                args.seconds,
                (boot_fs_rows, fs_labels),
                boot_net_rows,
                args.net_seconds,
            );
            let bins = Bins {
                blk: &ours_bin,
                net: &ours_net_bin,
                fs: &ours_fs_bin,
                virtiofsd: fs.virtiofsd.as_deref(),
            };
            let plan = BootPlan {
                rows: &rows,
                fs_rows: boot_fs_rows,
                fs_labels,
                net_rows: boot_net_rows,
                tarball: tarball.as_ref(),
                script: &boot_script,
            };
            let (result, net_result, fs_result) =
                boot_once(args, &image, &dir, slot, &bins, &plan)?;
            for (i, sample) in result.into_iter().enumerate() {
                samples.entry((i, label)).or_default().push(sample);
            }
            for (i, sample) in net_result.into_iter().enumerate() {
                net_samples.entry((i, label)).or_default().push(sample);
            }
            for (i, fs_label, sample) in fs_result {
                fs_samples.entry((i, fs_label)).or_default().push(sample);
            }
        }
    }

    let title = report_title(
        !rows.is_empty(),
        !fs_rows.is_empty(),
        !net_rows.is_empty(),
        with_vhostkit,
    );
    let mut report = Report::new(&title, &ours_name, &peer_name);
    let accel_note = match accel {
        Accel::Tcg => "guest: QEMU TCG (this host has no vmx/svm). The emulated guest CPU bounds BOTH backends: \
                       compare the ratio, not the absolute figures",
        Accel::Kvm => "guest: QEMU with KVM (hardware virtualization)",
    };
    report.notes.push(accel_note.to_string());
    report.notes.push(vhostkit_line.clone());
    report.notes.push(net_line.clone());
    report.notes.push(fs.line.clone());
    if let Some(line) = &tar_line {
        report.notes.push(line.clone());
    }
    if with_vhostkit {
        report.notes.push(format!(
            "rows vhostkit+ours: our daemon, the guest booted through vhostkit (KVM, bzImage, \
             virtio-mmio from ACPI, 2 vCPU, 512 MiB), against the peer under QEMU; vhostkit {}",
            vhostkit_bin().display()
        ));
    }
    report.notes.push(format!(
        "Linux {} on q35, 2 vCPU, 512 MiB shared memfd memory",
        image.kernel_release
    ));
    if !rows.is_empty() {
        report.notes.push(format!(
            "fio 3.33 in the guest: vhost-user-blk-pci with {NUM_QUEUES} queues, libaio, direct=1, 1 job, \
             {} s time-based per row; image: {} MiB file on {} per backend, pre-filled",
            args.seconds,
            args.image_mib,
            dir.path().parent().map(|p| p.display().to_string()).unwrap_or_default()
        ));
    }
    report.notes.push(format!(
        "{} guest boot(s) per backend, backends alternating; figures are means. CPU s/Mop: the daemon's \
         user+sys CPU seconds (/proc/PID/stat) per million requests while the row ran",
        args.rounds
    ));
    report.notes.push(format!(
        "host: {host_cpus} CPU(s), shared by QEMU's vCPU threads and the daemon"
    ));
    report.notes.push(
        "every QEMU boot has the same guest devices (1 vhost-user-blk, 1 virtio-net, 2 \
         vhost-user-fs, as the rows need), whichever backend serves them: an idle \
         device of one side is in the other side's boots too"
            .to_string(),
    );
    report.notes.push(format!(
        "spread: each backend's min-max over its boots; A/A floor: each backend's boots \
         in run order split into two interleaved halves, the ratio of their means is the \
         backend against itself; the floor is the larger deviation of the two, as a \
         factor; verdict: ahead or behind only where ours/peer lies outside \
         [1/floor, floor] (needs 2 boots each; {} here)",
        args.rounds
    ));
    report.notes.push(
        "costs, per 1,000 requests (fio I/Os, tar files, net packets both ways in the \
         guest), marker to marker around each row: guest irqs = interrupts on the \
         guest's virtio lines (/proc/interrupts; INTx lines count whole); kicks = write \
         system calls of QEMU's vCPU threads (a kick is one: the ioeventfd of a \
         vhost-user queue, or the wake-up of QEMU's own tap backend); wakeups and \
         preempted = the backend's voluntary and involuntary context switches (all \
         threads); CPU = user+system microseconds per request, of the backend process \
         and of QEMU (the guest's vCPUs included). The net peer's backend runs inside \
         QEMU: its figures are QEMU's"
            .to_string(),
    );
    if !net_rows.is_empty() {
        report.notes.push(format!(
            "net rows: iperf3 3.12 TCP, {} s per row, the guest the client (-R for host->guest), \
             the server in a network namespace on the tap's host end; virtio-net-pci with \
             {NET_QUEUE_PAIRS} queue pairs, mq=on, vectors=0 (INTx) for both backends; ours: \
             vhost-user-net on a multi-queue tap; peer: QEMU's tap backend (vhost=off, \
             its I/O thread inside QEMU)",
            args.net_seconds
        ));
        report.notes.push(
            "net rows, units: the ops/s columns hold Mbit/s (receiver-side goodput), the MB/s \
             columns 10^6 bytes/s; ours/peer is the Mbit/s ratio. CPU s/Mop is left out (the \
             peer's backend runs inside QEMU)"
                .to_string(),
        );
        if accel == Accel::Tcg {
            report.notes.push(
                "net rows under TCG: the guest's emulated CPU (its TCP stack and virtio-net \
                 driver) bounds both backends; the ratio says whether the backend costs the \
                 guest anything, not what either backend could carry"
                    .to_string(),
            );
        }
        for (i, w) in net_rows.iter().enumerate() {
            let per_round = |label: &'static str| -> String {
                net_samples
                    .get(&(i, label))
                    .map(|v| {
                        v.iter()
                            .map(|s| format!("{:.0}", s.mbit_per_sec))
                            .collect::<Vec<_>>()
                            .join(" / ")
                    })
                    .unwrap_or_default()
            };
            let cpu: Vec<f64> = net_samples
                .get(&(i, "ours"))
                .map(|v| v.iter().filter_map(NetSample::cpu_s_per_gb).collect())
                .unwrap_or_default();
            let cpu_note = if cpu.is_empty() || args.aa {
                String::new()
            } else {
                format!(
                    "; vhost-user-net CPU {:.2} s/GB",
                    cpu.iter().sum::<f64>() / cpu.len() as f64
                )
            };
            report.notes.push(format!(
                "per boot, Mbit/s, {}: ours {}; peer {}{cpu_note}",
                w.title,
                per_round("ours"),
                per_round("peer")
            ));
        }
    }
    if args.rounds > 1 {
        for (i, w) in rows.iter().enumerate() {
            let per_round = |label: &'static str| -> String {
                samples
                    .get(&(i, label))
                    .map(|v| {
                        v.iter()
                            .map(|s| format!("{:.0}", s.iops))
                            .collect::<Vec<_>>()
                            .join(" / ")
                    })
                    .unwrap_or_default()
            };
            let mut note = format!(
                "per boot, ops/s, {}: ours {}; peer {}",
                w.title,
                per_round("ours"),
                per_round("peer")
            );
            if with_vhostkit {
                note.push_str(&format!("; vhostkit+ours {}", per_round("vhostkit+ours")));
            }
            report.notes.push(note);
        }
    }
    if !fs_rows.is_empty() {
        report.notes.push(format!(
            "fs rows: both daemons serve every QEMU guest boot: two vhost-user-fs-pci devices \
             (1 request queue each, tags {FS_TAG}-ours, {FS_TAG}-peer) mounted at /mnt/ours and \
             /mnt/peer; each row runs on both mounts back to back, the boot's own slot first, \
             then alternating by row (ABBA), so every boot gives a pair per row; both daemons \
             --cache {}, each sharing its own folder on {}; fio 3.33 on a {} MiB file of the \
             mount made on the host (pre-filled), libaio, direct=1 (the guest's page cache \
             bypassed: each I/O a FUSE request), 1 job, {} s time-based per row",
            args.fs_cache.as_str(),
            dir.path()
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            args.fs_file_mib,
            args.seconds
        ));
        if let Some(t) = &tarball {
            report.notes.push(format!(
                "fs row tar -x: busybox tar -x of a {:.1} MB tarball of {} ({} files, {:.1} MB \
                 in files) from the guest's RAM into a new folder of the mount, timed in the \
                 guest (/proc/uptime, 10 ms); ops/s = files/s, MB/s = the files' bytes/s, \
                 CPU s/Mop = the daemon's CPU s per million files; the host counts the files \
                 afterwards",
                t.data.len() as f64 / 1e6,
                args.fs_tree.display(),
                t.files,
                t.file_bytes as f64 / 1e6
            ));
        }
        for (i, w) in fs_rows.iter().enumerate() {
            let per_boot = |label: &'static str| -> String {
                fs_samples
                    .get(&(i, label))
                    .map(|v| {
                        v.iter()
                            .map(|s| format!("{:.0}", s.iops))
                            .collect::<Vec<_>>()
                            .join(" / ")
                    })
                    .unwrap_or_else(|| "SKIPPED".into())
            };
            let mut note = format!(
                "per boot, {}, {}: ours {}; peer {}",
                if w.fio.is_some() { "ops/s" } else { "files/s" },
                w.title,
                per_boot("ours"),
                per_boot("peer")
            );
            if w.fio.is_none() {
                let secs = |label: &'static str| -> String {
                    fs_samples
                        .get(&(i, label))
                        .map(|v| {
                            v.iter()
                                .map(|s| format!("{:.2}", s.ios as f64 / s.iops.max(1e-9)))
                                .collect::<Vec<_>>()
                                .join(" / ")
                        })
                        .unwrap_or_else(|| "SKIPPED".into())
                };
                note.push_str(&format!(
                    " (seconds: ours {}; peer {})",
                    secs("ours"),
                    secs("peer")
                ));
            }
            report.notes.push(note);
        }
    }
    let mean = |v: &[Sample]| -> Measurement {
        let n = v.len().max(1) as f64;
        let cpus: Vec<f64> = v.iter().filter_map(Sample::cpu_s_per_mop).collect();
        Measurement {
            ops_per_sec: v.iter().map(|s| s.iops).sum::<f64>() / n,
            mb_per_sec: v.iter().map(|s| s.mb_per_sec).sum::<f64>() / n,
            cpu_s_per_mop: (!cpus.is_empty()).then(|| cpus.iter().sum::<f64>() / cpus.len() as f64),
        }
    };
    for (i, w) in rows.iter().enumerate() {
        report
            .rows
            .push(row_of(w.title.to_string(), &samples, (i, "ours"), mean));
    }
    if with_vhostkit {
        for (i, w) in rows.iter().enumerate() {
            report.rows.push(row_of(
                format!("{} [vhostkit+ours vs QEMU+peer]", w.title),
                &samples,
                (i, "vhostkit+ours"),
                mean,
            ));
        }
    }

    for (i, w) in fs_rows.iter().enumerate() {
        let mut workload = match (w.fio, &tarball) {
            (None, Some(t)) => format!("virtiofs tar -x {} files [files/s]", t.files),
            _ => w.title.to_string(),
        };
        if fs.virtiofsd.is_none() {
            workload.push_str(" [peer SKIPPED]");
        }
        report
            .rows
            .push(row_of(workload, &fs_samples, (i, "ours"), mean));
    }

    let net_mean = |v: &[NetSample]| -> Measurement {
        let n = v.len().max(1) as f64;
        let mbit = v.iter().map(|s| s.mbit_per_sec).sum::<f64>() / n;
        Measurement {
            ops_per_sec: mbit,
            mb_per_sec: mbit / 8.0,
            cpu_s_per_mop: None,
        }
    };
    for (i, w) in net_rows.iter().enumerate() {
        report.rows.push(row_of(
            format!("iperf3 {} [Mbit/s]", w.title),
            &net_samples,
            (i, "ours"),
            net_mean,
        ));
    }

    report.emit_to(&args.output)?;
    Ok(())
}

fn select_rows(filters: &[String]) -> Result<Vec<&'static Workload>, String> {
    if filters.is_empty() {
        return Ok(WORKLOADS.iter().collect());
    }
    let rows: Vec<&Workload> = WORKLOADS
        .iter()
        .filter(|w| {
            filters.iter().any(|f| {
                let f = f.trim().to_lowercase();
                w.id.contains(&f) || w.title.to_lowercase().contains(&f)
            })
        })
        .collect();
    if rows.is_empty() {
        let ids: Vec<&str> = WORKLOADS.iter().map(|w| w.id).collect();
        return Err(format!(
            "--rows {} matches no row; rows: {}",
            filters.join(","),
            ids.join(", ")
        ));
    }
    Ok(rows)
}

/// The net rows to run and the line saying so (or why not).
fn net_decision(args: &Args) -> (Vec<&'static NetWorkload>, String) {
    if args.no_net {
        return (Vec::new(), "net rows: SKIPPED (--no-net)".into());
    }
    if args.fs_only {
        return (Vec::new(), "net rows: SKIPPED (--fs-only)".into());
    }
    let missing = netns::unavailable().or_else(|| {
        let iperf3 = Command::new("iperf3")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        iperf3
            .is_err()
            .then(|| "no iperf3 on the host (install iperf3)".to_string())
    });
    match missing {
        Some(why) => (Vec::new(), format!("net rows: SKIPPED ({why})")),
        None => (
            NET_WORKLOADS.iter().collect(),
            format!(
                "net rows: on (iperf3 TCP, {} s each: vhost-user-net vs QEMU's tap backend)",
                args.net_seconds
            ),
        ),
    }
}

/// The file system rows to run, the line saying so (or why not), and virtiofsd if
/// it is there.
struct FsDecision {
    rows: Vec<&'static FsWorkload>,
    line: String,
    virtiofsd: Option<PathBuf>,
}

fn fs_decision(args: &Args) -> FsDecision {
    let skipped = |why: &str| FsDecision {
        rows: Vec::new(),
        line: format!("fs rows: SKIPPED ({why})"),
        virtiofsd: None,
    };
    if args.no_fs {
        return skipped("--no-fs");
    }
    if args.net_only {
        return skipped("--net-only");
    }
    let bin = virtiofsd_bin();
    let virtiofsd = bin.is_file().then_some(bin.clone());
    let cache = args.fs_cache.as_str();
    let line = match &virtiofsd {
        Some(_) => format!(
            "fs rows: on (fio and tar -x on a virtiofs mount, cache {cache}: vhost-user-fs vs virtiofsd)"
        ),
        None if args.aa => {
            return skipped(&format!(
                "--aa needs virtiofsd, and {} does not exist: run scripts/build-fs-tools.sh",
                bin.display()
            ))
        }
        None => format!(
            "fs rows: ours only, cache {cache}; peer virtiofsd SKIPPED ({} does not exist: \
             run scripts/build-fs-tools.sh)",
            bin.display()
        ),
    };
    FsDecision {
        rows: FS_WORKLOADS.iter().collect(),
        line,
        virtiofsd,
    }
}

/// "virtiofsd 1.14.0" from `virtiofsd --version`.
fn virtiofsd_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

/// The report's title: what ran.
fn report_title(blk: bool, fs: bool, net: bool, with_vhostkit: bool) -> String {
    let mut parts = Vec::new();
    if blk {
        parts.push("fio on vhost-user-blk");
    }
    if fs {
        parts.push("fio and tar on virtio-fs");
    }
    if net {
        parts.push("iperf3 on virtio-net");
    }
    let what = match parts.as_slice() {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    };
    let how = if with_vhostkit {
        "Linux guest; QEMU virtio-*-pci, and our blk daemon also through vhostkit virtio-mmio: \
         rows vhostkit+ours"
    } else {
        "Linux guest, QEMU virtio-*-pci"
    };
    format!("In-guest {what} ({how})")
}

/// "QEMU 7.2.22" from `qemu-system-x86_64 --version`.
fn qemu_version() -> Option<String> {
    let out = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.lines().next()?.split_whitespace().nth(3)?.to_string();
    Some(format!("QEMU {version}"))
}

/// The guest's run.sh: one fio run per row, framed by markers the host watches to
/// sample the daemon's CPU time, then fio's JSON between section markers; then the
/// file system rows (fio's JSON; the tar row's seconds and file count); then the
/// net rows the same way (iperf3's JSON).
fn guest_script(
    rows: &[&Workload],
    seconds: u32,
    (fs_rows, fs_labels): (&[&FsWorkload], &[&str]),
    net_rows: &[&NetWorkload],
    net_seconds: u32,
) -> String {
    let mut s = format!("failed=0\n{COUNTERS_SH}");
    if !rows.is_empty() {
        s.push_str(&fio_script(rows, seconds));
    }
    if !fs_rows.is_empty() && !fs_labels.is_empty() {
        s.push_str(&fs_script(fs_rows, seconds, fs_labels));
    }
    if !net_rows.is_empty() {
        s.push_str(&format!(
            "ip link set lo up\n\
             if [ ! -e /sys/class/net/eth0 ]; then echo \"VHOSTKIT-RESULT error no eth0\"; exit 1; fi\n\
             ip link set eth0 up || exit 1\n\
             ip addr add {GUEST_IP}/24 dev eth0 || exit 1\n\
             echo \"VHOSTKIT-RESULT rx_queues $(ls -d /sys/class/net/eth0/queues/rx-* | wc -l)\"\n\
             ping -c 3 -W 5 {HOST_IP} >/dev/null 2>&1 || {{ echo \"VHOSTKIT-RESULT error no ping reply from {HOST_IP}\"; exit 1; }}\n\
             # Warm-up, not measured: loads iperf3's libraries, fills the ARP cache.\n\
             iperf3 -c {HOST_IP} -p {IPERF_PORT} -t 1 -i 0 >/dev/null 2>&1\n"
        ));
        for w in net_rows {
            s.push_str(&format!(
                "echo \"VHOSTKIT-ROW-BEGIN {id} {counters}\"\n\
                 iperf3 -c {HOST_IP} -p {IPERF_PORT} -t {net_seconds} -P {streams} {reverse}-i 0 -J >/tmp/{id}.json\n\
                 rc=$?\n\
                 echo \"VHOSTKIT-ROW-END {id} rc=$rc {counters}\"\n\
                 [ $rc = 0 ] || failed=1\n\
                 echo \"VHOSTKIT-BEGIN iperf-{id}\"; cat /tmp/{id}.json; echo \"VHOSTKIT-END iperf-{id}\"\n",
                id = w.id,
                counters = NET_COUNTERS,
                streams = w.streams,
                reverse = if w.reverse { "-R " } else { "" },
            ));
        }
    }
    s.push_str("exit $failed\n");
    s
}

/// Shell functions of the guest's run.sh that the row markers call: the
/// interrupts the guest has taken on its virtio devices so far (every
/// /proc/interrupts line that names one, summed over the CPUs; under INTx a line
/// shared with another device counts whole), and eth0's packets both ways.
const COUNTERS_SH: &str = "virtio_irqs() { awk '/virtio/ { for (i = 2; i <= NF; i++) { if ($i !~ /^[0-9]+$/) break; s += $i } } END { print s + 0 }' /proc/interrupts; }\n\
net_packets() { echo $(( $(cat /sys/class/net/eth0/statistics/rx_packets) + $(cat /sys/class/net/eth0/statistics/tx_packets) )); }\n";
/// What a row marker carries besides the row's id (read before the row starts
/// and after it ends, outside the measured interval).
const COUNTERS: &str = "irqs=$(virtio_irqs)";
/// The same for a net row: the packets too (a net row's requests).
const NET_COUNTERS: &str = "irqs=$(virtio_irqs) packets=$(net_packets)";

/// The fio part of the guest's run.sh.
fn fio_script(rows: &[&Workload], seconds: u32) -> String {
    let mut s = String::from(
        "dev=/dev/vda\n\
         if [ ! -b $dev ]; then echo \"VHOSTKIT-RESULT error no block device $dev\"; exit 1; fi\n\
         echo \"VHOSTKIT-RESULT mq_queues $(ls /sys/block/vda/mq | wc -l)\"\n\
         # Warm-up, not measured: loads fio's libraries and touches the I/O path.\n\
         fio --name=warmup --filename=$dev --ioengine=libaio --direct=1 --rw=randread --bs=4k \
         --iodepth=8 --time_based --runtime=1 --eta=never --output=/dev/null || exit 1\n",
    );
    for w in rows {
        s.push_str(&format!(
            "echo \"VHOSTKIT-ROW-BEGIN {id} {counters}\"\n\
             fio --name={id} --filename=$dev --ioengine=libaio --direct=1 --rw={rw} --bs={bs} \
             --iodepth={qd} --numjobs=1 --time_based --runtime={seconds} --norandommap \
             --randrepeat=0 --eta=never --output-format=json --output=/tmp/{id}.json\n\
             rc=$?\n\
             echo \"VHOSTKIT-ROW-END {id} rc=$rc {counters}\"\n\
             [ $rc = 0 ] || failed=1\n\
             echo \"VHOSTKIT-BEGIN fio-{id}\"; cat /tmp/{id}.json; echo \"VHOSTKIT-END fio-{id}\"\n",
            id = w.id,
            counters = COUNTERS,
            rw = w.rw,
            bs = w.bs,
            qd = w.iodepth,
        ));
    }
    s
}

/// The file system part of the guest's run.sh: mount each daemon's device
/// (`labels`: `ours`, `peer`), then each row on every mount back to back (which
/// goes first alternating by row, [`fs_row_order`]): fio on the mount's file, or
/// the tar extract; unmount. Row ids in the markers are `<row>.<label>`.
fn fs_script(rows: &[&FsWorkload], seconds: u32, labels: &[&str]) -> String {
    let mut s = String::new();
    for label in labels {
        let (tag, mnt) = (fs_tag(label), fs_mount(label));
        let file = format!("{mnt}/{FS_FILE}");
        s.push_str(&format!(
            "mkdir -p {mnt}\n\
             if ! mount -t virtiofs {tag} {mnt}; then echo \"VHOSTKIT-RESULT error mount -t virtiofs {tag} failed\"; exit 1; fi\n\
             if [ ! -f {file} ]; then echo \"VHOSTKIT-RESULT error no {file} on the mount\"; exit 1; fi\n"
        ));
        if rows.iter().any(|w| w.fio.is_some()) {
            s.push_str(&format!(
                "# Warm-up, not measured: the FUSE path and the file's host pages.\n\
                 fio --name=fswarmup --filename={file} --ioengine=libaio --direct=1 --rw=randread --bs=4k \
                 --iodepth=4 --time_based --runtime=1 --eta=never --output=/dev/null \
                 || {{ echo \"VHOSTKIT-RESULT error fio warm-up on {file} failed\"; exit 1; }}\n"
            ));
        }
    }
    for (i, w) in rows.iter().enumerate() {
        for label in fs_row_order(labels, i) {
            let mnt = fs_mount(label);
            let file = format!("{mnt}/{FS_FILE}");
            let id = format!("{}.{label}", w.id);
            match w.fio {
                Some((rw, bs, qd)) => s.push_str(&format!(
                    "echo \"VHOSTKIT-ROW-BEGIN {id} {COUNTERS}\"\n\
                     fio --name={id} --filename={file} --ioengine=libaio --direct=1 --rw={rw} --bs={bs} \
                     --iodepth={qd} --numjobs=1 --time_based --runtime={seconds} --norandommap \
                     --randrepeat=0 --eta=never --output-format=json --output=/tmp/{id}.json\n\
                     rc=$?\n\
                     echo \"VHOSTKIT-ROW-END {id} rc=$rc {COUNTERS}\"\n\
                     [ $rc = 0 ] || failed=1\n\
                     echo \"VHOSTKIT-BEGIN fio-{id}\"; cat /tmp/{id}.json; echo \"VHOSTKIT-END fio-{id}\"\n"
                )),
                None => s.push_str(&format!(
                    "mkdir {mnt}/{FS_TREE} || {{ echo \"VHOSTKIT-RESULT error mkdir {mnt}/{FS_TREE} failed\"; exit 1; }}\n\
                     echo \"VHOSTKIT-ROW-BEGIN {id} {COUNTERS}\"\n\
                     t0=$(cut -d' ' -f1 /proc/uptime)\n\
                     tar -xf /{FS_TARBALL} -C {mnt}/{FS_TREE}\n\
                     rc=$?\n\
                     t1=$(cut -d' ' -f1 /proc/uptime)\n\
                     echo \"VHOSTKIT-ROW-END {id} rc=$rc {COUNTERS}\"\n\
                     [ $rc = 0 ] || failed=1\n\
                     files=$(find {mnt}/{FS_TREE} -type f | wc -l)\n\
                     echo \"VHOSTKIT-BEGIN tar-{id}\"; echo \"rc=$rc seconds=$(awk \"BEGIN {{ print $t1 - $t0 }}\") files=$files\"; echo \"VHOSTKIT-END tar-{id}\"\n"
                )),
            }
        }
    }
    for label in labels {
        let mnt = fs_mount(label);
        s.push_str(&format!(
            "umount {mnt} || {{ echo \"VHOSTKIT-RESULT fs_umount {mnt} failed\"; failed=1; }}\n"
        ));
    }
    s
}

/// The tar row's result as the guest prints it: `rc=0 seconds=12.3 files=763`.
fn parse_tar(text: &str, tarball: &Tarball) -> Result<Sample, String> {
    let field = |key: &str| -> Option<&str> {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    match field("rc") {
        Some("0") => {}
        Some(rc) => return Err(format!("tar -x exited with {rc}")),
        None => return Err(format!("no tar result in {text:?}")),
    }
    let seconds: f64 = field("seconds")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no seconds in the tar result {text:?}"))?;
    let files: u64 = field("files")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no file count in the tar result {text:?}"))?;
    if files != tarball.files {
        return Err(format!(
            "the guest sees {files} files after tar -x, the tarball has {}",
            tarball.files
        ));
    }
    // /proc/uptime counts in 10 ms steps.
    let seconds = seconds.max(0.01);
    Ok(Sample {
        iops: files as f64 / seconds,
        mb_per_sec: tarball.file_bytes as f64 / seconds / 1e6,
        ios: files,
        cpu_seconds: None,
        counters: None,
    })
}

/// The tar row's tarball: a source tree, tarred once on the host.
struct Tarball {
    data: Vec<u8>,
    /// Regular files in it.
    files: u64,
    /// Their bytes.
    file_bytes: u64,
}

impl Tarball {
    /// Tars `tree` (as `<its name>/...`, owner root, sorted) into `path` with the
    /// host's tar, and reads it back.
    fn make(tree: &Path, path: &Path) -> Result<Tarball, String> {
        let (files, file_bytes) =
            count_files(tree).map_err(|e| format!("--fs-tree {}: {e}", tree.display()))?;
        if files == 0 {
            return Err(format!("--fs-tree {}: no files in it", tree.display()));
        }
        let parent = tree.parent().unwrap_or(Path::new("/"));
        let name = tree
            .file_name()
            .ok_or_else(|| format!("--fs-tree {}: needs a folder name", tree.display()))?;
        let out = Command::new("tar")
            .arg("-cf")
            .arg(path)
            .args(["--owner=0", "--group=0", "--numeric-owner", "--sort=name"])
            .arg("-C")
            .arg(parent)
            .arg(name)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run tar: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tar -cf {} {}: {}: {}",
                path.display(),
                tree.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let _ = std::fs::remove_file(path);
        Ok(Tarball {
            data,
            files,
            file_bytes,
        })
    }
}

/// Regular files under `dir` (symbolic links not followed) and their bytes.
fn count_files(dir: &Path) -> std::io::Result<(u64, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        if meta.is_dir() {
            let (f, b) = count_files(&entry.path())?;
            files += f;
            bytes += b;
        } else if meta.is_file() {
            files += 1;
            bytes += meta.len();
        }
    }
    Ok((files, bytes))
}

/// Creates an image of `mib` MiB filled with a non-zero pattern (reads then touch
/// real pages, not holes).
fn make_image(path: &Path, mib: u64) -> std::io::Result<()> {
    let mut chunk = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in chunk.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut f = File::create(path)?;
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    f.sync_all()
}

/// Our daemons' binaries, and the fs peer's.
struct Bins<'a> {
    blk: &'a Path,
    net: &'a Path,
    fs: &'a Path,
    /// virtiofsd, if built.
    virtiofsd: Option<&'a Path>,
}

/// What one boot runs.
struct BootPlan<'a> {
    rows: &'a [&'static Workload],
    fs_rows: &'a [&'static FsWorkload],
    /// The fs daemons in this boot (`ours`, `peer`), the first first.
    fs_labels: &'a [&'static str],
    net_rows: &'a [&'static NetWorkload],
    /// For the tar row.
    tarball: Option<&'a Tarball>,
    script: &'a str,
}

/// The samples of one boot: fio rows, net rows, and fs rows (row, daemon label,
/// sample).
type BootSamples = (
    Vec<Sample>,
    Vec<NetSample>,
    Vec<(usize, &'static str, Sample)>,
);

/// What the harness measured for one net row in one boot.
#[derive(Clone, Debug, Default)]
struct NetSample {
    mbit_per_sec: f64,
    bytes: u64,
    counters: Option<RowCounters>,
    /// vhost-user-net's CPU seconds while the row ran (ours only).
    cpu_seconds: Option<f64>,
}

impl NetSample {
    fn cpu_s_per_gb(&self) -> Option<f64> {
        let cpu = self.cpu_seconds?;
        (self.bytes > 0).then(|| cpu / (self.bytes as f64 / 1e9))
    }
}

/// The host end of the guest's network for one boot: a namespace holding the tap
/// (made by our daemon, or beforehand for QEMU's tap backend), its address and an
/// iperf3 server. Field order is drop order: processes first, the namespace last.
struct NetHost {
    server: std::process::Child,
    daemon: Option<DaemonProcess>,
    log_path: PathBuf,
    ns: NetNs,
}

impl Drop for NetHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        self.daemon.take();
    }
}

/// One of our daemons with guest-bench's settings for all of them.
fn ours_launch<A: DaemonArgs>(launch: Launch<A>, coalesce_us: Option<u64>) -> Launch<A> {
    match coalesce_us {
        Some(us) => launch.coalesce_us(us),
        None => launch,
    }
}

impl NetHost {
    /// Sets up the namespace `vkb<pid><tag>`: with `ours`, vhost-user-net started in
    /// it on `socket`; otherwise a multi-queue tap for QEMU's tap backend.
    fn start(
        dir: &TempDir,
        tag: &str,
        ours: Option<&Path>,
        coalesce_us: Option<u64>,
        socket: &Path,
    ) -> Result<(NetHost, NetDevice), String> {
        let pid = std::process::id();
        let ns = NetNs::create(&format!("vkb{pid}{tag}"))
            .map_err(|e| format!("cannot create a network namespace: {e}"))?;
        let tap = format!("vkb{}{}", pid % 1_000_000, &tag[..1]);
        let log_path = dir.join(&format!("{tag}-net.log"));
        let (daemon, dev) = match ours {
            Some(bin) => {
                let log = File::create(&log_path)
                    .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
                let daemon = NetArgs {
                    mac: Some(GUEST_MAC),
                    num_queue_pairs: Some(NET_QUEUE_PAIRS),
                    host_ip: Some(HostIp {
                        addr: HOST_IP.into(),
                        prefix: 24,
                    }),
                    ..NetArgs::new(&tap)
                };
                let mut cmd = ns.command(bin);
                cmd.args(ours_launch(Launch::on_socket(socket, daemon), coalesce_us).to_args())
                    .stdout(Stdio::null())
                    .stderr(Stdio::from(log));
                let daemon =
                    DaemonProcess::spawn("vhost-user-net", cmd, socket, Duration::from_secs(10))
                        .map_err(|e| {
                            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                            format!("{e}\n----- vhost-user-net log -----\n{log}")
                        })?;
                let dev = NetDevice::vhost_user(socket, NET_QUEUE_PAIRS).mac(GUEST_MAC.to_string());
                (Some(daemon), dev)
            }
            None => {
                ns.add_tap(&tap, NET_QUEUE_PAIRS > 1, &format!("{HOST_IP}/24"))
                    .map_err(|e| format!("cannot make the tap for QEMU: {e}"))?;
                (
                    None,
                    NetDevice::tap(&tap, NET_QUEUE_PAIRS).mac(GUEST_MAC.to_string()),
                )
            }
        };
        let server = ns
            .command("iperf3")
            .args([
                "-s",
                "-B",
                &HOST_IP.to_string(),
                "-p",
                &IPERF_PORT.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start iperf3 -s in the namespace: {e}"))?;
        Ok((
            NetHost {
                server,
                daemon,
                log_path,
                ns,
            },
            dev,
        ))
    }

    fn daemon_log(&self) -> String {
        if self.daemon.is_none() {
            return String::new();
        }
        std::fs::read_to_string(&self.log_path)
            .map(|t| format!("\n----- vhost-user-net log -----\n{t}"))
            .unwrap_or_default()
    }
}

/// Boots the guest once with `slot`'s daemons and returns one sample per fio row,
/// one per net row and one per fs row.
fn boot_once(
    args: &Args,
    image: &GuestImage,
    dir: &TempDir,
    slot: Slot,
    bins: &Bins<'_>,
    plan: &BootPlan<'_>,
) -> Result<BootSamples, String> {
    let BootPlan {
        rows,
        fs_rows,
        fs_labels,
        net_rows,
        tarball,
        script,
    } = *plan;
    let tag = match slot {
        Slot::Ours => "ours",
        Slot::Peer => "peer",
        Slot::Vhostkit => "vhostkit",
    };
    let disk = dir.join(&format!("{tag}.img"));
    let socket = dir.join(&format!("{tag}.sock"));
    let log_path = dir.join(&format!("{tag}.log"));
    let use_peer = slot == Slot::Peer || args.aa;
    let name = if use_peer {
        "qemu-storage-daemon"
    } else {
        "vhost-user-blk"
    };
    let daemon_log = || {
        std::fs::read_to_string(&log_path)
            .map(|t| format!("\n----- {name} log -----\n{t}"))
            .unwrap_or_default()
    };
    let mut blk_daemon = None;
    if !rows.is_empty() {
        make_image(&disk, args.image_mib)
            .map_err(|e| format!("cannot write {}: {e}", disk.display()))?;
        let mut cmd = if use_peer {
            qemu_storage_daemon_cmd(&disk, &socket, NUM_QUEUES, &args.peer_aio)
        } else {
            let daemon = BlkArgs {
                num_queues: Some(NUM_QUEUES),
                engine: Some(args.engine),
                ..BlkArgs::new(&disk)
            };
            ours_launch(Launch::on_socket(&socket, daemon), args.coalesce_us).command(bins.blk)
        };
        let log = File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        cmd.stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
        blk_daemon = Some(
            DaemonProcess::spawn(name, cmd, &socket, Duration::from_secs(10))
                .map_err(|e| format!("{e}{}", daemon_log()))?,
        );
    }
    let blk_pid = blk_daemon.as_ref().map(DaemonProcess::pid);
    let net_socket = dir.join(&format!("{tag}-net.sock"));
    let mut net = if net_rows.is_empty() {
        None
    } else {
        let ours = (!use_peer).then_some(bins.net);
        Some(NetHost::start(
            dir,
            tag,
            ours,
            args.coalesce_us,
            &net_socket,
        )?)
    };
    let net_pid = net
        .as_ref()
        .and_then(|(host, _)| host.daemon.as_ref().map(DaemonProcess::pid));
    // One fs daemon per label; in an A/A run virtiofsd serves both.
    let mut fs_hosts = Vec::new();
    if !fs_rows.is_empty() {
        for &label in fs_labels {
            let peer = label == "peer" || args.aa;
            fs_hosts.push((label, FsHost::start(args, dir, label, peer, bins)?));
        }
    }
    let fs_pid = |id: &str| {
        let label = id.rsplit_once('.')?.1;
        fs_hosts
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, h)| h.daemon.pid())
    };
    let fs_log = || fs_hosts.iter().map(|(_, h)| h.log()).collect::<String>();

    // Watch the console: sample the daemon's CPU time at each row's start and end,
    // and print each row's result as soon as its JSON has arrived.
    let mut cpu_at_begin: Option<f64> = None;
    let mut cpu: BTreeMap<String, f64> = BTreeMap::new();
    let mut json_lines: Option<(String, String)> = None;
    let mut parsed: BTreeMap<String, Result<Sample, String>> = BTreeMap::new();
    let mut net_parsed: BTreeMap<String, Result<NetSample, String>> = BTreeMap::new();
    let mut tar_parsed: BTreeMap<String, Result<Sample, String>> = BTreeMap::new();
    let pid_for = |id: &str| {
        if net_rows.iter().any(|w| w.id == id) {
            net_pid
        } else if fs_row_of(fs_rows, id).is_some() {
            fs_pid(id)
        } else {
            blk_pid
        }
    };
    // QEMU's pid, from its -pidfile (vhostkit has none: no VMM counters there).
    let pidfile = dir.join(&format!("{tag}-qemu.pid"));
    let _ = std::fs::remove_file(&pidfile);
    let vmm_pid = || -> Option<u32> { std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok() };
    let mut counters_at_begin: Option<RowCounters> = None;
    let mut row_counters: BTreeMap<String, RowCounters> = BTreeMap::new();
    let mut on_line = |line: &str| {
        if let Some(rest) = marker(line, "VHOSTKIT-ROW-BEGIN ") {
            let id = rest.split_whitespace().next().unwrap_or("");
            cpu_at_begin = pid_for(id).and_then(|pid| process_cpu_seconds(pid).ok());
            counters_at_begin = Some(RowCounters::now(rest, pid_for(id), vmm_pid()));
            let title = rows
                .iter()
                .find(|w| w.id == id)
                .map(|w| w.title)
                .map(str::to_string)
                .or_else(|| {
                    fs_row_of(fs_rows, id).map(|(w, label)| format!("{} [{label}]", w.title))
                })
                .or_else(|| {
                    net_rows
                        .iter()
                        .find(|w| w.id == id)
                        .map(|w| w.title.to_string())
                });
            eprint!("  {:<26} ", title.as_deref().unwrap_or(id));
        } else if let Some(rest) = marker(line, "VHOSTKIT-ROW-END ") {
            let id = rest.split_whitespace().next().unwrap_or("").to_string();
            if let Some(begin) = counters_at_begin.take() {
                let end = RowCounters::now(rest, pid_for(&id), vmm_pid());
                row_counters.insert(id.clone(), end.since(&begin));
            }
            if let (Some(begin), Some(pid)) = (cpu_at_begin.take(), pid_for(&id)) {
                if let Ok(end) = process_cpu_seconds(pid) {
                    cpu.insert(id, end - begin);
                }
            }
        } else if let Some(rest) = marker(line, "VHOSTKIT-BEGIN ") {
            json_lines = Some((rest.trim().to_string(), String::new()));
        } else if let Some(rest) = marker(line, "VHOSTKIT-END ") {
            let Some((section, text)) = json_lines.take() else {
                return;
            };
            if section != rest.trim() {
                return;
            }
            if let Some(id) = section.strip_prefix("fio-") {
                let mut sample = parse_fio(&text);
                if let Ok(s) = sample.as_mut() {
                    s.cpu_seconds = cpu.get(id).copied();
                    s.counters = row_counters.get(id).copied();
                    eprintln!(
                        "{:>9.0} IOPS {:>8.1} MB/s   daemon CPU {}",
                        s.iops,
                        s.mb_per_sec,
                        s.cpu_s_per_mop()
                            .map(|c| format!("{c:.2} s/Mop"))
                            .unwrap_or_else(|| "-".into())
                    );
                } else if let Err(e) = &sample {
                    eprintln!("failed: {e}");
                }
                parsed.insert(id.to_string(), sample);
            } else if let Some(id) = section.strip_prefix("iperf-") {
                let mut sample = parse_iperf(&text);
                if let Ok(s) = sample.as_mut() {
                    s.cpu_seconds = cpu.get(id).copied();
                    s.counters = row_counters.get(id).copied();
                    eprintln!(
                        "{:>9.0} Mbit/s   daemon CPU {}",
                        s.mbit_per_sec,
                        s.cpu_s_per_gb()
                            .map(|c| format!("{c:.2} s/GB"))
                            .unwrap_or_else(|| "- (inside QEMU)".into())
                    );
                } else if let Err(e) = &sample {
                    eprintln!("failed: {e}");
                }
                net_parsed.insert(id.to_string(), sample);
            } else if let Some(id) = section.strip_prefix("tar-") {
                let mut sample = match tarball {
                    Some(t) => parse_tar(&text, t),
                    None => Err("no tarball".to_string()),
                };
                if let Ok(s) = sample.as_mut() {
                    s.cpu_seconds = cpu.get(id).copied();
                    s.counters = row_counters.get(id).copied();
                    eprintln!(
                        "{:>9.0} files/s {:>5.1} MB/s in {:.2} s   daemon CPU {}",
                        s.iops,
                        s.mb_per_sec,
                        s.ios as f64 / s.iops,
                        s.cpu_s_per_mop()
                            .map(|c| format!("{c:.2} s/Mfile"))
                            .unwrap_or_else(|| "-".into())
                    );
                } else if let Err(e) = &sample {
                    eprintln!("failed: {e}");
                }
                tar_parsed.insert(id.to_string(), sample);
            }
        } else if let Some((_, text)) = json_lines.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    };
    let fs_fio_rows = fs_rows.iter().filter(|w| w.fio.is_some()).count() as u64;
    let fs_timeout = if fs_rows.is_empty() {
        0
    } else {
        // Per daemon: mount and warm-up; under TCG a tar extract of ~800 files
        // takes several seconds, of a big tree minutes.
        let per_daemon = 30
            + fs_fio_rows * (2 * args.seconds as u64 + 20)
            + if fs_rows.len() as u64 > fs_fio_rows {
                600
            } else {
                0
            };
        per_daemon * fs_labels.len() as u64
    };
    let timeout = Duration::from_secs(
        120 + rows.len() as u64 * (2 * args.seconds as u64 + 20)
            + net_rows.len() as u64 * (args.net_seconds as u64 + 15)
            + fs_timeout,
    );
    let mut guest = Guest::new(image, script)
        .vmm(slot.vmm())
        .timeout(timeout)
        .echo(args.verbose);
    if slot.vmm() == Vmm::Qemu {
        // The pid for the VMM's counters; thread names to tell the vCPU threads.
        guest = guest.qemu_args([
            "-pidfile",
            &pidfile.to_string_lossy(),
            "-name",
            "guest-bench,debug-threads=on",
        ]);
    }
    if !rows.is_empty() {
        guest = guest.blk(BlkDevice::new(&socket, NUM_QUEUES));
    }
    for (label, _) in &fs_hosts {
        guest = guest.fs(FsDevice::new(fs_socket(dir, label), fs_tag(label)));
    }
    if !fs_hosts.is_empty() {
        if let (Some(t), true) = (tarball, fs_rows.iter().any(|w| w.fio.is_none())) {
            guest = guest.file(FS_TARBALL, 0o644, t.data.clone());
        }
    }
    if let Some((host, dev)) = &net {
        // QEMU's tap backend finds the tap in the namespace; ours needs no
        // namespace, but both QEMUs start the same way.
        guest = guest.net(dev.clone()).netns(host.ns.name());
    }
    let net_log = || {
        net.as_ref()
            .map(|(host, _)| host.daemon_log())
            .unwrap_or_default()
    };
    let out = guest
        .run_with(&mut on_line)
        .map_err(|e| format!("{tag}: {e}{}{}{}", daemon_log(), net_log(), fs_log()))?;
    if let Some(daemon) = blk_daemon.as_mut() {
        if !daemon.is_running() {
            return Err(format!("{name} exited during the run{}", daemon_log()));
        }
    }
    let net_log_text = net_log();
    let net_alive = net
        .as_mut()
        .is_none_or(|(host, _)| host.daemon.as_mut().is_none_or(DaemonProcess::is_running));
    if !net_alive {
        return Err(format!(
            "vhost-user-net exited during the run{net_log_text}"
        ));
    }
    let fs_log_text = fs_log();
    for (_, host) in fs_hosts.iter_mut() {
        // virtiofsd exits when its one frontend hangs up; ours serves the next.
        if !host.peer && !host.daemon.is_running() {
            return Err(format!("vhost-user-fs exited during the run{fs_log_text}"));
        }
    }
    drop(blk_daemon);
    drop(net);
    let _ = std::fs::remove_file(&disk);
    // The trees the tar row extracted, as the host sees them.
    let host_tree_files: Vec<(&str, std::io::Result<u64>)> = fs_hosts
        .iter()
        .map(|(label, h)| {
            let files = count_files(&h.shared.join(FS_TREE)).map(|(files, _)| files);
            (*label, files)
        })
        .collect();
    drop(fs_hosts);
    if let Some(error) = out.result("error") {
        return Err(format!(
            "{tag}: guest: {error}\n{}{net_log_text}{fs_log_text}",
            out.console
        ));
    }
    let mut result = Vec::new();
    for w in rows {
        match parsed.remove(w.id) {
            Some(Ok(sample)) => result.push(sample),
            Some(Err(e)) => return Err(format!("{name}: {}: {e}\n{}", w.title, out.console)),
            None => {
                return Err(format!(
                    "{name}: {}: no fio result on the console\n{}",
                    w.title, out.console
                ))
            }
        }
    }
    let mut net_result = Vec::new();
    for w in net_rows {
        match net_parsed.remove(w.id) {
            Some(Ok(sample)) => net_result.push(sample),
            Some(Err(e)) => {
                return Err(format!(
                    "{tag} net: {}: {e}\n{}{net_log_text}",
                    w.title, out.console
                ))
            }
            None => {
                return Err(format!(
                    "{tag} net: {}: no iperf3 result on the console\n{}{net_log_text}",
                    w.title, out.console
                ))
            }
        }
    }
    let mut fs_result = Vec::new();
    for (i, w) in fs_rows.iter().enumerate() {
        for &label in fs_labels {
            let what = if w.fio.is_some() { "fio" } else { "tar" };
            let id = format!("{}.{label}", w.id);
            let sample = if w.fio.is_some() {
                parsed.remove(&id)
            } else {
                tar_parsed.remove(&id)
            };
            match sample {
                Some(Ok(sample)) => fs_result.push((i, label, sample)),
                Some(Err(e)) => {
                    return Err(format!(
                        "{tag} fs ({label}): {}: {e}\n{}{fs_log_text}",
                        w.title, out.console
                    ))
                }
                None => {
                    return Err(format!(
                        "{tag} fs ({label}): {}: no {what} result on the console\n{}{fs_log_text}",
                        w.title, out.console
                    ))
                }
            }
        }
    }
    if let (Some(t), true) = (tarball, fs_rows.iter().any(|w| w.fio.is_none())) {
        for (label, on_host) in host_tree_files {
            match on_host {
                Ok(n) if n == t.files => {}
                Ok(n) => {
                    return Err(format!(
                        "{tag} fs ({label}): after tar -x the shared folder holds {n} files, \
                         the tarball {}",
                        t.files
                    ))
                }
                Err(e) => {
                    return Err(format!(
                        "{tag} fs ({label}): the extracted tree on the host: {e}"
                    ))
                }
            }
        }
    }
    out.check_run_ok().map_err(|e| format!("{tag}: {e}"))?;
    eprintln!(
        "  (guest ran {:.1} s through {})",
        out.elapsed.as_secs_f64(),
        out.vmm
    );
    Ok((result, net_result, fs_result))
}

/// The fs row and daemon label of a marker id `<row>.<label>`.
fn fs_row_of<'i>(
    rows: &[&'static FsWorkload],
    id: &'i str,
) -> Option<(&'static FsWorkload, &'i str)> {
    let (row, label) = id.rsplit_once('.')?;
    let w = rows.iter().find(|w| w.id == row)?;
    Some((*w, label))
}

fn fs_socket(dir: &TempDir, tag: &str) -> PathBuf {
    dir.join(&format!("{tag}-fs.sock"))
}

/// The host end of one of the guest's virtio-fs devices for one boot: the shared
/// folder (with the fio file, pre-filled) and the daemon serving it; the folder is
/// removed when dropped, after the daemon. `tag`: `ours` or `peer` (the device's
/// label; in an A/A run virtiofsd serves `ours` too).
struct FsHost {
    daemon: DaemonProcess,
    shared: PathBuf,
    log_path: PathBuf,
    /// virtiofsd (else ours).
    peer: bool,
}

impl Drop for FsHost {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.shared);
    }
}

impl FsHost {
    fn start(
        args: &Args,
        dir: &TempDir,
        tag: &str,
        peer: bool,
        bins: &Bins<'_>,
    ) -> Result<FsHost, String> {
        let shared = dir.join(&format!("{tag}-fs"));
        let socket = fs_socket(dir, tag);
        let log_path = dir.join(&format!("{tag}-fs.log"));
        std::fs::create_dir_all(&shared)
            .map_err(|e| format!("cannot create {}: {e}", shared.display()))?;
        let file = shared.join(FS_FILE);
        make_image(&file, args.fs_file_mib)
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        let cache = args.fs_cache.as_str();
        let (name, mut cmd) = if peer {
            let bin = bins
                .virtiofsd
                .ok_or("virtiofsd not built (scripts/build-fs-tools.sh)")?;
            (
                "virtiofsd",
                virtiofsd_cmd_with(bin, &socket, &shared, cache),
            )
        } else {
            let daemon = FsArgs {
                cache: Some(args.fs_cache.ours()),
                ..FsArgs::tagged(&shared, fs_tag(tag))
            };
            let cmd =
                ours_launch(Launch::on_socket(&socket, daemon), args.coalesce_us).command(bins.fs);
            ("vhost-user-fs", cmd)
        };
        let log = File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        cmd.stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
        let daemon = spawn_fs_daemon(name, cmd, &socket).map_err(|e| {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            format!("{e}\n----- {name} log -----\n{log}")
        })?;
        Ok(FsHost {
            daemon,
            shared,
            log_path,
            peer,
        })
    }

    fn log(&self) -> String {
        let name = if self.peer {
            "virtiofsd"
        } else {
            "vhost-user-fs"
        };
        std::fs::read_to_string(&self.log_path)
            .map(|t| format!("\n----- {name} log -----\n{t}"))
            .unwrap_or_default()
    }
}

/// Receiver-side goodput and bytes of an iperf3 client's JSON (`-J`).
fn parse_iperf(text: &str) -> Result<NetSample, String> {
    let json: Value = serde_json::from_str(text).map_err(|e| format!("iperf3 JSON: {e}"))?;
    if let Some(error) = json["error"].as_str() {
        return Err(format!("iperf3: {error}"));
    }
    let received = &json["end"]["sum_received"];
    let bps = received["bits_per_second"]
        .as_f64()
        .ok_or("iperf3 JSON has no end.sum_received.bits_per_second")?;
    let bytes = received["bytes"].as_u64().unwrap_or(0);
    if bps <= 0.0 || bytes == 0 {
        return Err("iperf3 moved no data".into());
    }
    Ok(NetSample {
        mbit_per_sec: bps / 1e6,
        bytes,
        counters: None,
        cpu_seconds: None,
    })
}

fn marker<'l>(line: &'l str, mark: &str) -> Option<&'l str> {
    line.find(mark).map(|at| &line[at + mark.len()..])
}

/// IOPS, MB/s and request count of fio's JSON output (read + write).
fn parse_fio(text: &str) -> Result<Sample, String> {
    let json: Value = serde_json::from_str(text).map_err(|e| format!("fio JSON: {e}"))?;
    let job = &json["jobs"][0];
    match job["error"].as_i64() {
        Some(0) => {}
        Some(e) => return Err(format!("fio job error {e}")),
        None => return Err("fio JSON has no jobs[0].error".into()),
    }
    let mut sample = Sample::default();
    for dir in ["read", "write"] {
        let d = &job[dir];
        sample.iops += d["iops"].as_f64().unwrap_or(0.0);
        sample.mb_per_sec += d["bw_bytes"].as_f64().unwrap_or(0.0) / 1e6;
        sample.ios += d["total_ios"].as_u64().unwrap_or(0);
    }
    if sample.ios == 0 {
        return Err("fio did no I/O".into());
    }
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guest's counters come from the markers; the host's from /proc of the
    /// processes given (here this test process as both); differences never go
    /// below zero.
    #[test]
    fn row_counters_from_markers_and_proc() {
        let me = std::process::id();
        let begin = RowCounters::now("fio-x irqs=100 packets=7", Some(me), Some(me));
        assert_eq!((begin.guest_irqs, begin.packets), (Some(100), Some(7)));
        assert!(begin.backend.is_some() && begin.vmm.is_some());
        std::thread::sleep(Duration::from_millis(5));
        let end = RowCounters::now("fio-x rc=0 irqs=160 packets=9", Some(me), None);
        let d = end.since(&begin);
        assert_eq!((d.guest_irqs, d.packets), (Some(60), Some(2)));
        assert!(d.backend.unwrap().wakeups >= 1);
        assert_eq!(d.vmm, None, "no QEMU at the end: no VMM figures");
        let no_guest = RowCounters::now("fio-x", None, None);
        assert_eq!(no_guest, RowCounters::default());
        assert_eq!(begin.since(&end).guest_irqs, Some(0));
    }

    /// Costs are sums over the boots that measured them, per request of those
    /// boots: a boot without counters adds neither counts nor requests.
    #[test]
    fn costs_are_per_request_over_the_boots() {
        let boot = |irqs, writes, cpu| RowCounters {
            guest_irqs: Some(irqs),
            packets: None,
            backend: Some(ProcCounters {
                cpu_seconds: cpu,
                wakeups: 2 * irqs,
                preempted: 1,
                vcpu_writes: 0,
            }),
            vmm: Some(ProcCounters {
                vcpu_writes: writes,
                ..Default::default()
            }),
        };
        let c = costs_of(&[
            (1000, Some(boot(500, 250, 0.01))),
            (3000, Some(boot(1500, 750, 0.03))),
            (5000, None),
        ])
        .unwrap();
        assert_eq!(c.guest_irqs, Some(500.0));
        assert_eq!(c.kicks, Some(250.0));
        assert_eq!(c.backend_wakeups, Some(1000.0));
        assert_eq!(c.backend_preempted, Some(0.5));
        assert!((c.backend_cpu_us.unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(c.vmm_cpu_us, Some(0.0));
        assert_eq!(costs_of(&[(10, None)]), None);
        // A net row counts per packet; a sample without packets has no requests.
        let net = NetSample {
            mbit_per_sec: 1.0,
            bytes: 1,
            counters: Some(RowCounters {
                packets: Some(40),
                ..boot(20, 10, 0.0)
            }),
            cpu_seconds: None,
        };
        let (spread, costs) = spread_and_costs(&[net], None);
        assert_eq!(costs.unwrap().ours.guest_irqs, Some(500.0));
        assert_eq!(
            spread.unwrap().verdict,
            None,
            "one boot, no peer: no verdict"
        );
    }

    #[test]
    fn rows_filter() {
        assert_eq!(select_rows(&[]).unwrap().len(), 4);
        assert_eq!(select_rows(&["randread".into()]).unwrap().len(), 2);
        assert_eq!(select_rows(&["qd32".into()]).unwrap().len(), 2);
        assert_eq!(select_rows(&["128k seqread".into()]).unwrap().len(), 1);
        assert!(select_rows(&["nope".into()]).is_err());
    }

    #[test]
    fn vhostkit_rows_only_with_hardware_virtualization() {
        let (on, line) = vhostkit_decision(VhostkitMode::Auto, false, false);
        assert!(!on);
        assert_eq!(
            line,
            "vhostkit rows: SKIPPED (no hardware virtualization: Linux boots through vhostkit \
             only with vmx/svm)"
        );
        assert!(vhostkit_decision(VhostkitMode::Auto, false, true).0);
        assert!(vhostkit_decision(VhostkitMode::On, false, false).0);
        assert!(!vhostkit_decision(VhostkitMode::Off, false, true).0);
        assert!(!vhostkit_decision(VhostkitMode::Auto, true, true).0);
    }

    #[test]
    fn script_has_one_fio_per_row() {
        let rows = select_rows(&[]).unwrap();
        let s = guest_script(&rows, 3, (&[], &[]), &[], 3);
        assert_eq!(s.matches("VHOSTKIT-ROW-BEGIN").count(), 4);
        assert_eq!(s.matches("fio --name=").count(), 5, "4 rows and a warm-up");
        assert!(s.contains("--runtime=3"));
        assert!(s.contains("--rw=randwrite --bs=4k --iodepth=32"));
        assert!(!s.contains("iperf3"));
        assert!(s.ends_with("exit $failed\n"));
    }

    #[test]
    fn script_has_one_iperf3_per_net_row() {
        let net: Vec<&NetWorkload> = NET_WORKLOADS.iter().collect();
        let s = guest_script(&[], 3, (&[], &[]), &net, 2);
        assert!(!s.contains("fio"), "--net-only: no fio, no /dev/vda");
        assert_eq!(s.matches("VHOSTKIT-ROW-BEGIN tcp-").count(), 4);
        assert_eq!(s.matches("iperf3 -c").count(), 5, "4 rows and a warm-up");
        assert_eq!(s.matches(" -R ").count(), 2);
        assert!(s.contains("-t 2 -P 4 -R -i 0 -J >/tmp/tcp-h2g-p4.json"));
        assert!(s.contains(&format!("ip addr add {GUEST_IP}/24 dev eth0")));
        let both = guest_script(&select_rows(&[]).unwrap(), 3, (&[], &[]), &net, 2);
        assert_eq!(both.matches("VHOSTKIT-ROW-BEGIN").count(), 8);
        assert_eq!(both.matches("exit $failed").count(), 1);
    }

    #[test]
    fn parses_iperf3_json() {
        let text = r#"{"start":{},"end":{"sum_sent":{"bits_per_second":9e8,"bytes":1000},
            "sum_received":{"bits_per_second":8.5e8,"bytes":318750000}}}"#;
        let s = parse_iperf(text).unwrap();
        assert!((s.mbit_per_sec - 850.0).abs() < 1e-9);
        assert_eq!(s.bytes, 318_750_000);
        let s = NetSample {
            cpu_seconds: Some(0.5),
            ..s
        };
        assert!((s.cpu_s_per_gb().unwrap() - 0.5 / 0.31875).abs() < 1e-9);
        let err = parse_iperf(r#"{"error":"unable to connect to server"}"#).unwrap_err();
        assert!(err.contains("unable to connect"), "{err}");
        assert!(
            parse_iperf(r#"{"end":{"sum_received":{"bits_per_second":0,"bytes":0}}}"#).is_err()
        );
    }

    #[test]
    fn net_row_flags() {
        let args = Args::parse_from(["guest-bench", "--no-net"]);
        let (rows, line) = net_decision(&args);
        assert!(rows.is_empty());
        assert_eq!(line, "net rows: SKIPPED (--no-net)");
        assert!(Args::try_parse_from(["guest-bench", "--no-net", "--net-only"]).is_err());
        let args = Args::parse_from(["guest-bench", "--net-only", "--net-seconds", "2"]);
        assert!(args.net_only);
        assert_eq!(args.net_seconds, 2);
    }

    #[test]
    fn script_has_one_fio_per_fs_row_and_the_tar_extract() {
        let fs: Vec<&FsWorkload> = FS_WORKLOADS.iter().collect();
        let s = guest_script(&[], 3, (&fs, &["peer", "ours"]), &[], 3);
        assert!(!s.contains("/dev/vda"), "--fs-only: no block device");
        assert!(!s.contains("iperf3"));
        assert!(s.contains("mount -t virtiofs vkfs-ours /mnt/ours"));
        assert!(s.contains("mount -t virtiofs vkfs-peer /mnt/peer"));
        assert_eq!(s.matches("VHOSTKIT-ROW-BEGIN fs-").count(), 10);
        assert_eq!(
            s.matches("fio --name=").count(),
            10,
            "4 rows and a warm-up, twice"
        );
        assert!(s.contains(
            "--filename=/mnt/ours/fio.dat --ioengine=libaio --direct=1 --rw=write --bs=1m --iodepth=4"
        ));
        assert!(s.contains("--rw=randwrite --bs=4k --iodepth=16"));
        assert!(s.contains("tar -xf /src.tar -C /mnt/peer/tree"));
        assert!(s.contains("VHOSTKIT-BEGIN tar-fs-tar-x.ours"));
        assert!(s.contains("umount /mnt/ours"));
        assert!(s.ends_with("exit $failed\n"));
        // ABBA: the first label first on even rows, second on odd ones.
        let at = |id: &str| s.find(&format!("VHOSTKIT-ROW-BEGIN {id} ")).unwrap();
        assert!(at("fs-randread-4k-qd16.peer") < at("fs-randread-4k-qd16.ours"));
        assert!(at("fs-randwrite-4k-qd16.ours") < at("fs-randwrite-4k-qd16.peer"));
        assert!(at("fs-tar-x.peer") < at("fs-tar-x.ours"));
        let only_ours = guest_script(&[], 3, (&fs, &["ours"]), &[], 3);
        assert!(!only_ours.contains("/mnt/peer"));
        assert_eq!(only_ours.matches("VHOSTKIT-ROW-BEGIN fs-").count(), 5);
        let all = guest_script(
            &select_rows(&[]).unwrap(),
            3,
            (&fs, &["ours", "peer"]),
            &NET_WORKLOADS.iter().collect::<Vec<_>>(),
            2,
        );
        assert_eq!(all.matches("VHOSTKIT-ROW-BEGIN").count(), 18);
        let blk_at = all.find("/dev/vda").unwrap();
        let fs_at = all.find("/mnt/ours").unwrap();
        let net_at = all.find("iperf3 -c").unwrap();
        assert!(blk_at < fs_at && fs_at < net_at);
        assert_eq!(
            fs_row_of(&fs, "fs-tar-x.peer").map(|(w, l)| (w.id, l)),
            Some(("fs-tar-x", "peer"))
        );
        assert!(fs_row_of(&fs, "randread-4k-qd32").is_none());
    }

    #[test]
    fn parses_the_tar_result() {
        let t = Tarball {
            data: Vec::new(),
            files: 800,
            file_bytes: 8_000_000,
        };
        let s = parse_tar("rc=0 seconds=4 files=800\n", &t).unwrap();
        assert!((s.iops - 200.0).abs() < 1e-9);
        assert!((s.mb_per_sec - 2.0).abs() < 1e-9);
        assert_eq!(s.ios, 800);
        assert!(parse_tar("rc=2 seconds=4 files=800", &t)
            .unwrap_err()
            .contains("exited with 2"));
        assert!(parse_tar("rc=0 seconds=4 files=799", &t)
            .unwrap_err()
            .contains("799 files"));
        assert!(parse_tar("", &t).is_err());
    }

    #[test]
    fn tarball_of_a_tree_counts_its_files() {
        let dir = TempDir::new("guest-bench-tar").unwrap();
        let tree = dir.join("src");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("one.rs"), b"fn main() {}\n").unwrap();
        std::fs::write(tree.join("a/b/two.h"), vec![7u8; 5000]).unwrap();
        let t = Tarball::make(&tree, &dir.join("src.tar")).unwrap();
        assert_eq!((t.files, t.file_bytes), (2, 5013));
        assert!(t.data.len() > 5013 && t.data.len().is_multiple_of(512));
        assert!(Tarball::make(&dir.join("nope"), &dir.join("x.tar")).is_err());
    }

    #[test]
    fn fs_row_flags() {
        let args = Args::parse_from(["guest-bench", "--no-fs"]);
        let fs = fs_decision(&args);
        assert!(fs.rows.is_empty());
        assert_eq!(fs.line, "fs rows: SKIPPED (--no-fs)");
        let args = Args::parse_from(["guest-bench", "--net-only"]);
        assert!(fs_decision(&args).rows.is_empty());
        assert!(Args::try_parse_from(["guest-bench", "--no-fs", "--fs-only"]).is_err());
        assert!(Args::try_parse_from(["guest-bench", "--net-only", "--fs-only"]).is_err());
        let args = Args::parse_from(["guest-bench", "--fs-only", "--fs-cache", "never"]);
        assert_eq!(args.fs_cache.as_str(), "never");
        assert_eq!(fs_decision(&args).rows.len(), 5);
        assert!(Args::try_parse_from(["guest-bench", "--fs-cache", "metadata"]).is_err());
    }

    #[test]
    fn title_says_what_ran() {
        assert_eq!(
            report_title(true, true, true, false),
            "In-guest fio on vhost-user-blk, fio and tar on virtio-fs and iperf3 on virtio-net \
             (Linux guest, QEMU virtio-*-pci)"
        );
        assert_eq!(
            report_title(false, true, false, false),
            "In-guest fio and tar on virtio-fs (Linux guest, QEMU virtio-*-pci)"
        );
    }

    #[test]
    fn parses_fio_json() {
        let text = r#"{"jobs":[{"error":0,"read":{"iops":1000.5,"bw_bytes":4098048,"total_ios":5000},
            "write":{"iops":0,"bw_bytes":0,"total_ios":0}}]}"#;
        let s = parse_fio(text).unwrap();
        assert_eq!(s.ios, 5000);
        assert!((s.iops - 1000.5).abs() < 1e-9);
        assert!((s.mb_per_sec - 4.098048).abs() < 1e-9);
        assert!(parse_fio(r#"{"jobs":[{"error":5}]}"#).is_err());
    }
}
