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

use clap::Parser;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use vhostkit_benches::report::{process_cpu_seconds, Measurement, OutputArgs, Report, Row};
use vhostkit_tests::daemon::{
    qemu_storage_daemon_cmd, qemu_storage_daemon_version, workspace_bin, DaemonProcess,
};
use vhostkit_tests::guest::{
    hardware_kvm, vhostkit_bin, Accel, BlkDevice, Guest, GuestImage, NetDevice, Vmm,
};
use vhostkit_tests::netns::{self, NetNs};
use vhostkit_tests::TempDir;

const NUM_QUEUES: u16 = 2;
/// Queue pairs of the guest's network device, on both backends.
const NET_QUEUE_PAIRS: u16 = 2;
const GUEST_MAC: &str = "52:54:00:77:00:02";
const HOST_IP: &str = "10.77.0.1";
const GUEST_IP: &str = "10.77.0.2";
const IPERF_PORT: u16 = 5201;

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
    about = "fio and iperf3 inside a Linux guest (QEMU): our vhost-user-blk against qemu-storage-daemon, our vhost-user-net against QEMU's tap backend, side by side",
    after_help = "fio rows (--rows): randread-4k-qd32, randwrite-4k-qd32, randread-4k-qd1, seqread-128k-qd8.\n\
Net rows (--no-net, --net-only): iperf3 TCP guest->host and host->guest, 1 and 4 streams;\n\
their ops/s columns hold Mbit/s. Net rows need root, /dev/net/tun, ip and iperf3.\n\
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
    /// Only the net rows: no block device, no fio.
    #[arg(long)]
    net_only: bool,
    /// Seconds of iperf3 per net row and backend.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=600))]
    net_seconds: u32,
    /// Guest boots per backend; backends alternate (ours, peer, peer, ours, ...) and
    /// the table shows means.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Image size per backend, MiB (a file on /dev/shm, filled with data first).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(64..=16384))]
    image_mib: u64,
    /// I/O engine of our daemon (its --engine).
    #[arg(long, default_value = "io_uring")]
    engine: String,
    /// qemu-storage-daemon's aio mode (threads or io_uring; native needs O_DIRECT,
    /// which /dev/shm does not offer).
    #[arg(long, default_value = "io_uring")]
    peer_aio: String,
    /// A/A run: the peer in both columns, to see the run-to-run noise.
    #[arg(long)]
    aa: bool,
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
    let qemu = format!("QEMU q35 (vhost-user-blk-pci) under {accel}");
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
    let rows = if args.net_only {
        Vec::new()
    } else {
        select_rows(&args.rows)?
    };
    let (net_rows, net_line) = net_decision(args);
    let net_rows: Vec<&'static NetWorkload> = net_rows;
    if rows.is_empty() && net_rows.is_empty() {
        return Err(format!("nothing to run: {net_line}"));
    }
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let image = GuestImage::ensure().map_err(|e| e.to_string())?;
    let accel = Accel::detect();
    let ours_bin = workspace_bin("vhost-user-blk");
    let ours_net_bin = workspace_bin("vhost-user-net");
    for (bin, needed) in [
        (&ours_bin, !rows.is_empty()),
        (&ours_net_bin, !net_rows.is_empty()),
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
    let ours_name = ours_names.join(" / ");
    let peer_name = peer_names.join(" / ");
    let (with_vhostkit, vhostkit_line) = vhostkit_decision(args.vhostkit, args.aa, hardware_kvm());
    // The vhostkit slot runs the fio rows only (vhostkit's own --net is not part of
    // this comparison).
    let (with_vhostkit, vhostkit_line) = if with_vhostkit && rows.is_empty() {
        (false, "vhostkit rows: SKIPPED (--net-only)".to_string())
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

    eprintln!(
        "guest-bench: {} fio row(s) x {} s, {} net row(s) x {} s, {} round(s), guest under {accel}",
        rows.len(),
        args.seconds,
        net_rows.len(),
        args.net_seconds,
        args.rounds
    );
    eprintln!("  ours: {ours_name}\n  peer: {peer_name}");
    eprintln!("  {}", vmm_line(accel, with_vhostkit));
    println!("{vhostkit_line}");
    println!("{net_line}");

    let script = guest_script(&rows, args.seconds, &net_rows, args.net_seconds);
    let mut samples: BTreeMap<(usize, &'static str), Vec<Sample>> = BTreeMap::new();
    let mut net_samples: BTreeMap<(usize, &'static str), Vec<NetSample>> = BTreeMap::new();
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
            // The net rows run in QEMU boots only.
            let boot_net_rows: &[&'static NetWorkload] = if slot == Slot::Vhostkit {
                &[]
            } else {
                &net_rows
            };
            let boot_script = if slot == Slot::Vhostkit {
                guest_script(&rows, args.seconds, &[], args.net_seconds)
            } else {
                script.clone()
            };
            let bins = Bins {
                blk: &ours_bin,
                net: &ours_net_bin,
            };
            let (result, net_result) = boot_once(
                args,
                &image,
                &dir,
                slot,
                &bins,
                &rows,
                boot_net_rows,
                &boot_script,
            )?;
            for (i, sample) in result.into_iter().enumerate() {
                samples.entry((i, label)).or_default().push(sample);
            }
            for (i, sample) in net_result.into_iter().enumerate() {
                net_samples.entry((i, label)).or_default().push(sample);
            }
        }
    }

    let title = if rows.is_empty() {
        "In-guest iperf3 on virtio-net (Linux guest, QEMU virtio-net-pci): vhost-user-net vs QEMU's tap backend"
    } else if !net_rows.is_empty() {
        "In-guest fio on vhost-user-blk and iperf3 on virtio-net (Linux guest, QEMU virtio-*-pci)"
    } else if with_vhostkit {
        "In-guest fio on vhost-user-blk (Linux guest; QEMU vhost-user-blk-pci, and our daemon \
         also through vhostkit virtio-mmio: rows vhostkit+ours)"
    } else {
        "In-guest fio on vhost-user-blk (Linux guest, QEMU vhost-user-blk-pci)"
    };
    let mut report = Report::new(title, &ours_name, &peer_name);
    let accel_note = match accel {
        Accel::Tcg => "guest: QEMU TCG (this host has no vmx/svm). The emulated guest CPU bounds BOTH backends: \
                       compare the ratio, not the absolute figures",
        Accel::Kvm => "guest: QEMU with KVM (hardware virtualization)",
    };
    report.notes.push(accel_note.to_string());
    report.notes.push(vhostkit_line.clone());
    report.notes.push(net_line.clone());
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
        report.rows.push(Row {
            workload: w.title.to_string(),
            ours: mean(samples.get(&(i, "ours")).map(Vec::as_slice).unwrap_or(&[])),
            peer: samples.get(&(i, "peer")).map(|v| mean(v)),
        });
    }
    if with_vhostkit {
        for (i, w) in rows.iter().enumerate() {
            report.rows.push(Row {
                workload: format!("{} [vhostkit+ours vs QEMU+peer]", w.title),
                ours: mean(
                    samples
                        .get(&(i, "vhostkit+ours"))
                        .map(Vec::as_slice)
                        .unwrap_or(&[]),
                ),
                peer: samples.get(&(i, "peer")).map(|v| mean(v)),
            });
        }
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
        report.rows.push(Row {
            workload: format!("iperf3 {} [Mbit/s]", w.title),
            ours: net_mean(
                net_samples
                    .get(&(i, "ours"))
                    .map(Vec::as_slice)
                    .unwrap_or(&[]),
            ),
            peer: net_samples.get(&(i, "peer")).map(|v| net_mean(v)),
        });
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
/// net rows the same way (iperf3's JSON).
fn guest_script(
    rows: &[&Workload],
    seconds: u32,
    net_rows: &[&NetWorkload],
    net_seconds: u32,
) -> String {
    let mut s = String::from("failed=0\n");
    if !rows.is_empty() {
        s.push_str(&fio_script(rows, seconds));
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
                "echo \"VHOSTKIT-ROW-BEGIN {id}\"\n\
                 iperf3 -c {HOST_IP} -p {IPERF_PORT} -t {net_seconds} -P {streams} {reverse}-i 0 -J >/tmp/{id}.json\n\
                 rc=$?\n\
                 echo \"VHOSTKIT-ROW-END {id} rc=$rc\"\n\
                 [ $rc = 0 ] || failed=1\n\
                 echo \"VHOSTKIT-BEGIN iperf-{id}\"; cat /tmp/{id}.json; echo \"VHOSTKIT-END iperf-{id}\"\n",
                id = w.id,
                streams = w.streams,
                reverse = if w.reverse { "-R " } else { "" },
            ));
        }
    }
    s.push_str("exit $failed\n");
    s
}

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
            "echo \"VHOSTKIT-ROW-BEGIN {id}\"\n\
             fio --name={id} --filename=$dev --ioengine=libaio --direct=1 --rw={rw} --bs={bs} \
             --iodepth={qd} --numjobs=1 --time_based --runtime={seconds} --norandommap \
             --randrepeat=0 --eta=never --output-format=json --output=/tmp/{id}.json\n\
             rc=$?\n\
             echo \"VHOSTKIT-ROW-END {id} rc=$rc\"\n\
             [ $rc = 0 ] || failed=1\n\
             echo \"VHOSTKIT-BEGIN fio-{id}\"; cat /tmp/{id}.json; echo \"VHOSTKIT-END fio-{id}\"\n",
            id = w.id,
            rw = w.rw,
            bs = w.bs,
            qd = w.iodepth,
        ));
    }
    s
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

/// Our daemons' binaries.
struct Bins<'a> {
    blk: &'a Path,
    net: &'a Path,
}

/// What the harness measured for one net row in one boot.
#[derive(Clone, Debug, Default)]
struct NetSample {
    mbit_per_sec: f64,
    bytes: u64,
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

impl NetHost {
    /// Sets up the namespace `vkb<pid><tag>`: with `ours`, vhost-user-net started in
    /// it on `socket`; otherwise a multi-queue tap for QEMU's tap backend.
    fn start(
        dir: &TempDir,
        tag: &str,
        ours: Option<&Path>,
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
                let mut cmd = ns.command(bin);
                cmd.arg("--socket-path")
                    .arg(socket)
                    .args(["--tap", &tap, "--mac", GUEST_MAC])
                    .args(["--num-queue-pairs", &NET_QUEUE_PAIRS.to_string()])
                    .args(["--host-ip", &format!("{HOST_IP}/24")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::from(log));
                let daemon =
                    DaemonProcess::spawn("vhost-user-net", cmd, socket, Duration::from_secs(10))
                        .map_err(|e| {
                            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                            format!("{e}\n----- vhost-user-net log -----\n{log}")
                        })?;
                let dev = NetDevice::vhost_user(socket, NET_QUEUE_PAIRS).mac(GUEST_MAC);
                (Some(daemon), dev)
            }
            None => {
                ns.add_tap(&tap, NET_QUEUE_PAIRS > 1, &format!("{HOST_IP}/24"))
                    .map_err(|e| format!("cannot make the tap for QEMU: {e}"))?;
                (None, NetDevice::tap(&tap, NET_QUEUE_PAIRS).mac(GUEST_MAC))
            }
        };
        let server = ns
            .command("iperf3")
            .args(["-s", "-B", HOST_IP, "-p", &IPERF_PORT.to_string()])
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

/// Boots the guest once with `slot`'s daemons and returns one sample per fio row
/// and one per net row.
#[allow(clippy::too_many_arguments)]
fn boot_once(
    args: &Args,
    image: &GuestImage,
    dir: &TempDir,
    slot: Slot,
    bins: &Bins<'_>,
    rows: &[&'static Workload],
    net_rows: &[&'static NetWorkload],
    script: &str,
) -> Result<(Vec<Sample>, Vec<NetSample>), String> {
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
            let mut cmd = Command::new(bins.blk);
            cmd.arg("--socket-path")
                .arg(&socket)
                .arg("--path")
                .arg(&disk)
                .arg("--num-queues")
                .arg(NUM_QUEUES.to_string())
                .arg("--engine")
                .arg(&args.engine);
            cmd
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
        Some(NetHost::start(dir, tag, ours, &net_socket)?)
    };
    let net_pid = net
        .as_ref()
        .and_then(|(host, _)| host.daemon.as_ref().map(DaemonProcess::pid));

    // Watch the console: sample the daemon's CPU time at each row's start and end,
    // and print each row's result as soon as its JSON has arrived.
    let mut cpu_at_begin: Option<f64> = None;
    let mut cpu: BTreeMap<String, f64> = BTreeMap::new();
    let mut json_lines: Option<(String, String)> = None;
    let mut parsed: BTreeMap<String, Result<Sample, String>> = BTreeMap::new();
    let mut net_parsed: BTreeMap<String, Result<NetSample, String>> = BTreeMap::new();
    let pid_for = |id: &str| {
        if net_rows.iter().any(|w| w.id == id) {
            net_pid
        } else {
            blk_pid
        }
    };
    let mut on_line = |line: &str| {
        if let Some(rest) = marker(line, "VHOSTKIT-ROW-BEGIN ") {
            let id = rest.trim();
            cpu_at_begin = pid_for(id).and_then(|pid| process_cpu_seconds(pid).ok());
            let title = rows
                .iter()
                .find(|w| w.id == id)
                .map(|w| w.title)
                .or_else(|| net_rows.iter().find(|w| w.id == id).map(|w| w.title));
            eprint!("  {:<26} ", title.unwrap_or(id));
        } else if let Some(rest) = marker(line, "VHOSTKIT-ROW-END ") {
            let id = rest.split_whitespace().next().unwrap_or("").to_string();
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
            }
        } else if let Some((_, text)) = json_lines.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    };
    let timeout = Duration::from_secs(
        120 + rows.len() as u64 * (2 * args.seconds as u64 + 20)
            + net_rows.len() as u64 * (args.net_seconds as u64 + 15),
    );
    let mut guest = Guest::new(image, script)
        .vmm(slot.vmm())
        .timeout(timeout)
        .echo(args.verbose);
    if !rows.is_empty() {
        guest = guest.blk(BlkDevice::new(&socket, NUM_QUEUES));
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
        .map_err(|e| format!("{tag}: {e}{}{}", daemon_log(), net_log()))?;
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
    drop(blk_daemon);
    drop(net);
    let _ = std::fs::remove_file(&disk);
    if let Some(error) = out.result("error") {
        return Err(format!(
            "{tag}: guest: {error}\n{}{net_log_text}",
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
    out.check_run_ok().map_err(|e| format!("{tag}: {e}"))?;
    eprintln!(
        "  (guest ran {:.1} s through {})",
        out.elapsed.as_secs_f64(),
        out.vmm
    );
    Ok((result, net_result))
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
        let s = guest_script(&rows, 3, &[], 3);
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
        let s = guest_script(&[], 3, &net, 2);
        assert!(!s.contains("fio"), "--net-only: no fio, no /dev/vda");
        assert_eq!(s.matches("VHOSTKIT-ROW-BEGIN tcp-").count(), 4);
        assert_eq!(s.matches("iperf3 -c").count(), 5, "4 rows and a warm-up");
        assert_eq!(s.matches(" -R ").count(), 2);
        assert!(s.contains("-t 2 -P 4 -R -i 0 -J >/tmp/tcp-h2g-p4.json"));
        assert!(s.contains(&format!("ip addr add {GUEST_IP}/24 dev eth0")));
        let both = guest_script(&select_rows(&[]).unwrap(), 3, &net, 2);
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
