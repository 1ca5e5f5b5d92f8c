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

use clap::Parser;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use vhostkit_benches::report::{process_cpu_seconds, Measurement, Report, Row};
use vhostkit_tests::daemon::{
    qemu_storage_daemon_cmd, qemu_storage_daemon_version, workspace_bin, DaemonProcess,
};
use vhostkit_tests::guest::{hardware_kvm, vhostkit_bin, Accel, BlkDevice, Guest, GuestImage, Vmm};
use vhostkit_tests::TempDir;

const NUM_QUEUES: u16 = 2;

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
    about = "fio inside a Linux guest (QEMU, vhost-user-blk-pci) on our vhost-user-blk and on qemu-storage-daemon, side by side",
    after_help = "Rows: randread-4k-qd32, randwrite-4k-qd32, randread-4k-qd1, seqread-128k-qd8.\n\
Needs the guest image (scripts/build-guest-image.sh, run automatically) and the\n\
daemons built (cargo build --release --workspace --bins)."
)]
struct Args {
    /// Seconds of fio per row and backend (time-based).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=600))]
    seconds: u32,
    /// Rows to run: comma-separated names or parts of names (e.g. "randread" or "qd32").
    #[arg(long, value_delimiter = ',')]
    rows: Vec<String>,
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
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG bar chart of ours/peer.
    #[arg(long)]
    svg: Option<PathBuf>,
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
    let rows = select_rows(&args.rows)?;
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let image = GuestImage::ensure().map_err(|e| e.to_string())?;
    let accel = Accel::detect();
    let ours_bin = workspace_bin("vhost-user-blk");
    if !args.aa && !ours_bin.is_file() {
        return Err(format!(
            "{} not found: build it first (cargo build --release --workspace --bins)",
            ours_bin.display()
        ));
    }
    let peer_version = qemu_storage_daemon_version()
        .ok_or("qemu-storage-daemon not found (install qemu-system-common)")?;
    let ours_name = if args.aa {
        format!("{peer_version} (A/A)")
    } else {
        format!("vhost-user-blk --engine {}", args.engine)
    };
    let peer_name = format!("{peer_version} (aio={}, cache.direct=off)", args.peer_aio);
    let (with_vhostkit, vhostkit_line) = vhostkit_decision(args.vhostkit, args.aa, hardware_kvm());
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
        "guest-bench: {} row(s) x {} s, {} round(s), guest under {accel}",
        rows.len(),
        args.seconds,
        args.rounds
    );
    eprintln!("  ours: {ours_name}\n  peer: {peer_name}");
    eprintln!("  {}", vmm_line(accel, with_vhostkit));
    println!("{vhostkit_line}");

    let script = guest_script(&rows, args.seconds);
    let mut samples: BTreeMap<(usize, &'static str), Vec<Sample>> = BTreeMap::new();
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
            let result = boot_once(args, &image, &dir, slot, &ours_bin, &rows, &script)?;
            for (i, sample) in result.into_iter().enumerate() {
                samples.entry((i, label)).or_default().push(sample);
            }
        }
    }

    let title = if with_vhostkit {
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
    if with_vhostkit {
        report.notes.push(format!(
            "rows vhostkit+ours: our daemon, the guest booted through vhostkit (KVM, bzImage, \
             virtio-mmio from ACPI, 2 vCPU, 512 MiB), against the peer under QEMU; vhostkit {}",
            vhostkit_bin().display()
        ));
    }
    report.notes.push(format!(
        "Linux {} on q35, 2 vCPU, 512 MiB shared memfd memory; vhost-user-blk-pci with {NUM_QUEUES} queues",
        image.kernel_release
    ));
    report.notes.push(format!(
        "fio 3.33 in the guest: libaio, direct=1, 1 job, {} s time-based per row; image: {} MiB file on {} per backend, pre-filled",
        args.seconds,
        args.image_mib,
        dir.path().parent().map(|p| p.display().to_string()).unwrap_or_default()
    ));
    report.notes.push(format!(
        "{} guest boot(s) per backend, backends alternating; figures are means. CPU s/Mop: the daemon's \
         user+sys CPU seconds (/proc/PID/stat) per million requests while the row ran",
        args.rounds
    ));
    report.notes.push(format!(
        "host: {host_cpus} CPU(s), shared by QEMU's vCPU threads and the daemon"
    ));
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

    report.emit(args.json.as_deref(), args.svg.as_deref())?;
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

/// The guest's run.sh: one fio run per row, framed by markers the host watches to
/// sample the daemon's CPU time, then fio's JSON between section markers.
fn guest_script(rows: &[&Workload], seconds: u32) -> String {
    let mut s = String::from(
        "dev=/dev/vda\n\
         if [ ! -b $dev ]; then echo \"VHOSTKIT-RESULT error no block device $dev\"; exit 1; fi\n\
         echo \"VHOSTKIT-RESULT mq_queues $(ls /sys/block/vda/mq | wc -l)\"\n\
         # Warm-up, not measured: loads fio's libraries and touches the I/O path.\n\
         fio --name=warmup --filename=$dev --ioengine=libaio --direct=1 --rw=randread --bs=4k \
         --iodepth=8 --time_based --runtime=1 --eta=never --output=/dev/null || exit 1\n\
         failed=0\n",
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
    s.push_str("exit $failed\n");
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

/// Boots the guest once with `slot`'s daemon and returns one sample per row.
fn boot_once(
    args: &Args,
    image: &GuestImage,
    dir: &TempDir,
    slot: Slot,
    ours_bin: &Path,
    rows: &[&'static Workload],
    script: &str,
) -> Result<Vec<Sample>, String> {
    let tag = match slot {
        Slot::Ours => "ours",
        Slot::Peer => "peer",
        Slot::Vhostkit => "vhostkit",
    };
    let disk = dir.join(&format!("{tag}.img"));
    let socket = dir.join(&format!("{tag}.sock"));
    let log_path = dir.join(&format!("{tag}.log"));
    make_image(&disk, args.image_mib)
        .map_err(|e| format!("cannot write {}: {e}", disk.display()))?;
    let use_peer = slot == Slot::Peer || args.aa;
    let (name, mut cmd) = if use_peer {
        (
            "qemu-storage-daemon",
            qemu_storage_daemon_cmd(&disk, &socket, NUM_QUEUES, &args.peer_aio),
        )
    } else {
        let mut cmd = Command::new(ours_bin);
        cmd.arg("--socket-path")
            .arg(&socket)
            .arg("--path")
            .arg(&disk)
            .arg("--num-queues")
            .arg(NUM_QUEUES.to_string())
            .arg("--engine")
            .arg(&args.engine);
        ("vhost-user-blk", cmd)
    };
    let log = File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    cmd.stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
    let daemon_log = || {
        std::fs::read_to_string(&log_path)
            .map(|t| format!("\n----- {name} log -----\n{t}"))
            .unwrap_or_default()
    };
    let mut daemon = DaemonProcess::spawn(name, cmd, &socket, Duration::from_secs(10))
        .map_err(|e| format!("{e}{}", daemon_log()))?;
    let pid = daemon.pid();

    // Watch the console: sample the daemon's CPU time at each row's start and end,
    // and print each row's result as soon as its JSON has arrived.
    let mut cpu_at_begin: Option<f64> = None;
    let mut cpu: BTreeMap<String, f64> = BTreeMap::new();
    let mut json_lines: Option<(String, String)> = None;
    let mut parsed: BTreeMap<String, Result<Sample, String>> = BTreeMap::new();
    let mut on_line = |line: &str| {
        if let Some(rest) = marker(line, "VHOSTKIT-ROW-BEGIN ") {
            cpu_at_begin = process_cpu_seconds(pid).ok();
            let title = rows.iter().find(|w| w.id == rest.trim()).map(|w| w.title);
            eprint!("  {:<18} ", title.unwrap_or(rest.trim()));
        } else if let Some(rest) = marker(line, "VHOSTKIT-ROW-END ") {
            let id = rest.split_whitespace().next().unwrap_or("").to_string();
            if let (Some(begin), Ok(end)) = (cpu_at_begin.take(), process_cpu_seconds(pid)) {
                cpu.insert(id, end - begin);
            }
        } else if let Some(rest) = marker(line, "VHOSTKIT-BEGIN fio-") {
            json_lines = Some((rest.trim().to_string(), String::new()));
        } else if let Some(rest) = marker(line, "VHOSTKIT-END fio-") {
            if let Some((id, text)) = json_lines.take() {
                if id == rest.trim() {
                    let mut sample = parse_fio(&text);
                    if let Ok(s) = sample.as_mut() {
                        s.cpu_seconds = cpu.get(&id).copied();
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
                    parsed.insert(id, sample);
                }
            }
        } else if let Some((_, text)) = json_lines.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    };
    let timeout = Duration::from_secs(120 + rows.len() as u64 * (2 * args.seconds as u64 + 20));
    let out = Guest::new(image, script)
        .vmm(slot.vmm())
        .blk(BlkDevice::new(&socket, NUM_QUEUES))
        .timeout(timeout)
        .echo(args.verbose)
        .run_with(&mut on_line)
        .map_err(|e| format!("{name}: {e}{}", daemon_log()))?;
    if !daemon.is_running() {
        return Err(format!("{name} exited during the run{}", daemon_log()));
    }
    drop(daemon);
    let _ = std::fs::remove_file(&disk);
    if let Some(error) = out.result("error") {
        return Err(format!("{name}: guest: {error}\n{}", out.console));
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
    out.check_run_ok().map_err(|e| format!("{name}: {e}"))?;
    eprintln!(
        "  (guest ran {:.1} s through {})",
        out.elapsed.as_secs_f64(),
        out.vmm
    );
    Ok(result)
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
        let s = guest_script(&rows, 3);
        assert_eq!(s.matches("VHOSTKIT-ROW-BEGIN").count(), 4);
        assert_eq!(s.matches("fio --name=").count(), 5, "4 rows and a warm-up");
        assert!(s.contains("--runtime=3"));
        assert!(s.contains("--rw=randwrite --bs=4k --iodepth=32"));
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
