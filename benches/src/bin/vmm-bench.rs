//! vmm-bench: launch latency of our VMM against QEMU on the same test guest.
//!
//! The hello test guest (vmm/guest/hello.S) is one ELF with two entries: vhostkit
//! enters it at the ELF entry in 64-bit mode, QEMU's `-kernel` through its PVH note.
//! Every round runs `vhostkit run --kernel hello.elf` and then QEMU (`-accel kvm`,
//! microvm with minimal devices, `-nodefaults`, serial on stdio) on the same file,
//! and measures the wall time from spawn to the guest's first serial line (stdout
//! read as it arrives) and to the process's exit. The table shows the medians.
//!
//! Lower time is better. The report's figure is ops/s, so each row shows launches
//! per second (1 / median time): ours/peer > 1 means vhostkit is faster, and the
//! target "ours at most half of QEMU's time" is ours/peer >= 2. The times in ms are
//! in the row names.
//!
//! A row without a peer times the blk test guest (a virtio-blk driver writing and
//! reading a sector) on our VMM with a vhost-user-blk daemon, spawn to exit (the
//! daemon is started before, outside the timing). QEMU cannot run that guest (it has
//! no PVH entry and expects vhostkit's virtio-mmio windows).
//!
//! Where the host has hardware virtualization (vmx/svm), one more row boots the
//! project's Linux guest image (Debian's bzImage and the busybox-only initramfs,
//! `scripts/build-guest-image.sh`) through both VMMs and times spawn to the first
//! `VHOSTKIT-INIT` line of its /init: vhostkit against QEMU q35 `-accel kvm` with
//! the same kernel, initrd and command line. Elsewhere (a software /dev/kvm such
//! as kvm_pvm cannot boot Linux in useful time) that row prints SKIPPED.
//!
//! ```text
//! cargo build --release -p vhostkit-vmm -p vhost-blk -p vhostkit-benches
//! target/release/vmm-bench --rounds 20 --json vmm.json --svg vmm.svg
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use vhostkit_benches::report::{Measurement, OutputArgs, Report, Row};
use vhostkit_tests::daemon::{workspace_bin, DaemonProcess};
use vhostkit_tests::guest::{hardware_kvm, GuestImage};
use vhostkit_tests::launch::blk::BlkArgs;
use vhostkit_tests::launch::{Launch, LogLevel};
use vhostkit_tests::TempDir;

const HELLO_LINE: &str = "vhostkit test guest: hello";
/// The first line the guest image's /init prints.
const INIT_MARK: &str = "VHOSTKIT-INIT";
/// The kernel command line of the Linux row, for both VMMs.
const LINUX_CMDLINE: &str = "console=ttyS0 quiet panic=-1";
const TIMEOUT: Duration = Duration::from_secs(60);

/// Time from launch to the first serial line and to exit: vhostkit against QEMU.
#[derive(Parser, Debug)]
#[command(name = "vmm-bench", about, long_about = None)]
struct Args {
    /// Launches per backend; the table shows the medians.
    #[arg(long, default_value_t = 20)]
    rounds: usize,

    /// The hello test guest ELF (default: the newest
    /// build/vhostkit-vmm-*/out/hello.elf next to this binary).
    #[arg(long, value_name = "PATH")]
    guest: Option<PathBuf>,

    /// The blk test guest ELF (default: blk.elf next to the hello guest).
    #[arg(long, value_name = "PATH")]
    blk_guest: Option<PathBuf>,

    /// Skip the blk guest row.
    #[arg(long)]
    no_blk: bool,

    /// Launches per VMM for the Linux row (only with hardware virtualization).
    #[arg(long, default_value_t = 5)]
    linux_rounds: usize,

    /// Skip the Linux row.
    #[arg(long)]
    no_linux: bool,

    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,

    /// QEMU machine type and options.
    #[arg(
        long,
        default_value = "microvm,x-option-roms=off,pit=off,pic=off,rtc=off"
    )]
    machine: String,

    /// QEMU CPU model (`host` and `max` abort on MSR 0x10a under kvm_pvm).
    #[arg(long, default_value = "host,-arch-capabilities")]
    cpu: String,

    /// Guest memory for both VMMs, in MiB.
    #[arg(long, default_value_t = 64)]
    memory_mib: u64,

    #[command(flatten)]
    output: OutputArgs,

    /// Short run for a CI smoke test (3 rounds).
    #[arg(long)]
    quick: bool,
}

/// One launch: spawn to the first line on stdout, spawn to exit.
struct Sample {
    first_line: Duration,
    exit: Duration,
}

fn main() {
    let args = Args::parse();
    if !Path::new("/dev/kvm").exists() {
        println!("SKIPPED: no /dev/kvm");
        return;
    }
    if let Err(e) = run(&args) {
        eprintln!("vmm-bench: {e}");
        std::process::exit(1);
    }
}

/// The newest `build/vhostkit-vmm-*/out/NAME` under the folder of our binaries.
fn built_guest(name: &str) -> Option<PathBuf> {
    let build = workspace_bin("build");
    std::fs::read_dir(build)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("vhostkit-vmm-"))
        .map(|e| e.path().join("out").join(name))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
}

fn run(args: &Args) -> Result<(), String> {
    let rounds = if args.quick { 3 } else { args.rounds.max(1) };
    let vhostkit = workspace_bin("vhostkit");
    if !vhostkit.exists() {
        return Err(format!(
            "{} not built (cargo build -p vhostkit-vmm)",
            vhostkit.display()
        ));
    }
    let guest = match &args.guest {
        Some(p) => p.clone(),
        None => built_guest("hello.elf").ok_or("hello.elf not found: pass --guest")?,
    };
    let qemu_version = qemu_version(&args.qemu);
    let memory = format!("{}M", args.memory_mib);
    let guest_s = guest.to_string_lossy().into_owned();

    let ours_cmd = || {
        let mut c = Command::new(&vhostkit);
        c.args(["run", "--kernel", &guest_s, "--memory", &memory])
            .args(["--log-level", "warn"]);
        c
    };
    let qemu_cmd = || {
        let mut c = Command::new(&args.qemu);
        c.args([
            "-accel",
            "kvm",
            "-cpu",
            &args.cpu,
            "-machine",
            &args.machine,
        ])
        .args(["-m", &memory, "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot", "-kernel", &guest_s])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        c
    };

    // Warm the page cache and check both work before timing anything.
    launch(ours_cmd(), &[0]).map_err(|e| format!("vhostkit: {e}"))?;
    if qemu_version.is_some() {
        launch(qemu_cmd(), &[0, 33]).map_err(|e| format!("QEMU: {e}"))?;
    }

    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let o = launch(ours_cmd(), &[0]).map_err(|e| format!("vhostkit: {e}"))?;
        eprint!(
            "round {}/{rounds}: vhostkit {:.2}/{:.2} ms",
            round + 1,
            ms(o.first_line),
            ms(o.exit)
        );
        ours.push(o);
        if qemu_version.is_some() {
            let q = launch(qemu_cmd(), &[0, 33]).map_err(|e| format!("QEMU: {e}"))?;
            eprint!(", QEMU {:.2}/{:.2} ms", ms(q.first_line), ms(q.exit));
            peer.push(q);
        }
        eprintln!(" (first line/exit)");
    }

    let peer_name = match &qemu_version {
        Some(v) => format!("QEMU {v} ({})", args.machine),
        None => format!("{} (not found)", args.qemu),
    };
    let mut report = Report::new(
        "vmm-bench: launch to first serial line and to exit, same test guest ELF",
        "vhostkit run",
        &peer_name,
    );
    report.notes = vec![
        "lower time is better; rows show launches/s = 1 / median time, so ours/peer > 1 means \
         vhostkit is faster (target: ours at most half of QEMU's time, ours/peer >= 2)"
            .into(),
        format!(
            "{rounds} rounds, alternating; guest {} ({} MiB); /dev/kvm here may be kvm_pvm",
            guest.display(),
            args.memory_mib
        ),
        format!(
            "QEMU: -accel kvm -cpu {} -machine {} -m {memory} -nodefaults -serial stdio \
             -no-reboot -kernel (PVH entry) -device isa-debug-exit",
            args.cpu, args.machine
        ),
    ];
    let medians = |s: &[Sample]| {
        (
            median(s.iter().map(|x| x.first_line).collect()),
            median(s.iter().map(|x| x.exit).collect()),
        )
    };
    let (of, oe) = medians(&ours);
    let peer_medians = (!peer.is_empty()).then(|| medians(&peer));
    for (what, o, p) in [
        ("first serial line", of, peer_medians.map(|m| m.0)),
        ("exit", oe, peer_medians.map(|m| m.1)),
    ] {
        let name = match p {
            Some(p) => format!(
                "hello: spawn to {what} (ours {:.2} ms, QEMU {:.2} ms)",
                ms(o),
                ms(p)
            ),
            None => format!("hello: spawn to {what} (ours {:.2} ms)", ms(o)),
        };
        report.rows.push(Row {
            workload: name,
            ours: per_second(o),
            peer: p.map(per_second),
            spread: None,
            costs: None,
        });
    }

    if !args.no_blk {
        match blk_row(args, &vhostkit, &guest, rounds)? {
            Some(row) => report.rows.push(row),
            None => report
                .notes
                .push("blk guest row skipped (vhost-user-blk or blk.elf not built)".into()),
        }
        match notification_row(args, &vhostkit, &guest)? {
            Some((row, notes)) => {
                report.rows.push(row);
                report.notes.extend(notes);
            }
            None => report
                .notes
                .push("wake-ups row skipped (vhost-user-blk or blk.elf not built)".into()),
        }
    }

    if !args.no_linux {
        let linux_rounds = if args.quick {
            2
        } else {
            args.linux_rounds.max(1)
        };
        match linux_row(args, &vhostkit, qemu_version.is_some(), linux_rounds)? {
            Ok(row) => report.rows.push(row),
            Err(skipped) => {
                println!("{skipped}");
                report.notes.push(skipped);
            }
        }
    }

    report.emit_to(&args.output)?;
    Ok(())
}

/// The Linux guest image booted through vhostkit and QEMU (q35, -accel kvm): spawn
/// to the first VHOSTKIT-INIT line. Ok(Err(line)): the row is skipped, and why.
fn linux_row(
    args: &Args,
    vhostkit: &Path,
    have_qemu: bool,
    rounds: usize,
) -> Result<Result<Row, String>, String> {
    const WHAT: &str = "Linux launch to init";
    if !hardware_kvm() {
        return Ok(Err(format!(
            "{WHAT}: SKIPPED (no hardware virtualization: Linux boots through vhostkit only \
             with vmx/svm; /dev/kvm here cannot boot a stock kernel in useful time)"
        )));
    }
    let image = match GuestImage::locate() {
        Ok(image) => image,
        Err(e) => return Ok(Err(format!("{WHAT}: SKIPPED ({e})"))),
    };
    let kernel = image.kernel_bzimage.to_string_lossy().into_owned();
    let initrd = image.initrd_mini.to_string_lossy().into_owned();
    let memory = "256M";
    let ours_cmd = || {
        let mut c = Command::new(vhostkit);
        c.args(["run", "--kernel", &kernel, "--initrd", &initrd])
            .args([
                "--cmdline",
                LINUX_CMDLINE,
                "--cpus",
                "1",
                "--memory",
                memory,
            ])
            .args(["--log-level", "warn"]);
        c
    };
    let qemu_cmd = || {
        let mut c = Command::new(&args.qemu);
        c.args(["-accel", "kvm", "-cpu", &args.cpu, "-machine", "q35"])
            .args(["-m", memory, "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-serial", "stdio", "-no-reboot"])
            .args([
                "-kernel",
                &kernel,
                "-initrd",
                &initrd,
                "-append",
                LINUX_CMDLINE,
            ]);
        c
    };
    // Warm the page cache, and check both boot, before timing.
    launch_until(ours_cmd(), &[0], Some(INIT_MARK))
        .map_err(|e| format!("vhostkit (Linux): {e}"))?;
    if have_qemu {
        launch_until(qemu_cmd(), &[0], Some(INIT_MARK))
            .map_err(|e| format!("QEMU (Linux): {e}"))?;
    }
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let o = launch_until(ours_cmd(), &[0], Some(INIT_MARK))
            .map_err(|e| format!("vhostkit (Linux): {e}"))?;
        eprint!(
            "linux round {}/{rounds}: vhostkit {:.1} ms to init",
            round + 1,
            ms(o.first_line)
        );
        ours.push(o.first_line);
        if have_qemu {
            let q = launch_until(qemu_cmd(), &[0], Some(INIT_MARK))
                .map_err(|e| format!("QEMU (Linux): {e}"))?;
            eprint!(", QEMU q35 {:.1} ms", ms(q.first_line));
            peer.push(q.first_line);
        }
        eprintln!();
    }
    let o = median(ours);
    let p = (!peer.is_empty()).then(|| median(peer));
    let workload = match p {
        Some(p) => format!(
            "{WHAT}: Linux {} bzImage + mini initramfs, spawn to first {INIT_MARK} \
             (ours {:.1} ms, QEMU q35 {:.1} ms)",
            image.kernel_release,
            ms(o),
            ms(p)
        ),
        None => format!(
            "{WHAT}: Linux {} bzImage + mini initramfs, spawn to first {INIT_MARK} (ours {:.1} ms)",
            image.kernel_release,
            ms(o)
        ),
    };
    Ok(Ok(Row {
        workload,
        ours: per_second(o),
        peer: p.map(per_second),
        spread: None,
        costs: None,
    }))
}

/// The blk guest on our VMM with a fresh vhost-user-blk daemon per round (started
/// outside the timing): spawn to exit. No peer.
fn blk_row(
    args: &Args,
    vhostkit: &Path,
    hello: &Path,
    rounds: usize,
) -> Result<Option<Row>, String> {
    let blk = match &args.blk_guest {
        Some(p) => p.clone(),
        None => hello.with_file_name("blk.elf"),
    };
    let daemon_bin = workspace_bin("vhost-user-blk");
    if !blk.exists() || !daemon_bin.exists() {
        return Ok(None);
    }
    let dir = TempDir::new("vmm-bench").map_err(|e| format!("temp dir: {e}"))?;
    let mut times = Vec::new();
    for round in 0..rounds {
        let image = dir.image(1 << 20).map_err(|e| format!("image: {e}"))?;
        let sock = dir.join("blk.sock");
        let cmd = Launch::on_socket(&sock, BlkArgs::new(&image))
            .log_level(LogLevel::Warn)
            .command(&daemon_bin);
        let mut daemon =
            DaemonProcess::spawn("vhost-user-blk", cmd, &sock, Duration::from_secs(10))
                .map_err(|e| format!("vhost-user-blk: {e}"))?;
        let mut c = Command::new(vhostkit);
        c.arg("run")
            .arg("--kernel")
            .arg(&blk)
            .arg("--disk")
            .arg(format!("socket={}", sock.display()))
            .args(["--memory", &format!("{}M", args.memory_mib)])
            .args(["--log-level", "warn"]);
        let s = launch(c, &[0]).map_err(|e| format!("vhostkit (blk guest): {e}"))?;
        eprintln!(
            "blk round {}/{rounds}: vhostkit {:.2} ms to exit",
            round + 1,
            ms(s.exit)
        );
        times.push(s.exit);
        let _ = daemon.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
        let _ = std::fs::remove_file(&sock);
    }
    let m = median(times);
    Ok(Some(Row {
        workload: format!(
            "blk guest + vhost-user-blk: spawn to exit (ours {:.2} ms)",
            ms(m)
        ),
        ours: per_second(m),
        peer: None,
        spread: None,
        costs: None,
    }))
}

/// The counts the VMM logs at exit (`vCPU exits: A port I/O, B MMIO, C other; virtio
/// notifications through the VMM: K kicks, L calls`).
#[derive(Debug, PartialEq)]
struct ExitCounts {
    port_io: u64,
    mmio: u64,
    other: u64,
    kicks: u64,
    calls: u64,
}

fn parse_exit_counts(log: &str) -> Option<ExitCounts> {
    let line = log.lines().find(|l| l.contains("vCPU exits: "))?;
    let nums: Vec<u64> = line[line.find("vCPU exits: ")?..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    match nums[..] {
        [port_io, mmio, other, kicks, calls] => Some(ExitCounts {
            port_io,
            mmio,
            other,
            kicks,
            calls,
        }),
        _ => None,
    }
}

/// Requests the blk guest makes for the wake-ups row (write+read pairs x 2).
const NOTIFY_PAIRS: u32 = 500;

/// The blk guest making 1,000 requests (`requests=500` pairs, each waited for by
/// interrupt) through our VMM and vhost-user-blk: requests per second, and from the
/// VMM's exit counters the VMM-thread wake-ups per 1,000 requests (kicks that reached
/// the VMM + calls it consumed; target 0: kicks are ioeventfds and calls irqfds
/// inside KVM) and the vCPU exits to user space per request.
fn notification_row(
    args: &Args,
    vhostkit: &Path,
    hello: &Path,
) -> Result<Option<(Row, Vec<String>)>, String> {
    let blk = match &args.blk_guest {
        Some(p) => p.clone(),
        None => hello.with_file_name("blk.elf"),
    };
    let daemon_bin = workspace_bin("vhost-user-blk");
    if !blk.exists() || !daemon_bin.exists() {
        return Ok(None);
    }
    let dir = TempDir::new("vmm-bench-notify").map_err(|e| format!("temp dir: {e}"))?;
    let image = dir.image(1 << 20).map_err(|e| format!("image: {e}"))?;
    let sock = dir.join("blk.sock");
    let cmd = Launch::on_socket(&sock, BlkArgs::new(&image))
        .log_level(LogLevel::Warn)
        .command(&daemon_bin);
    let mut daemon = DaemonProcess::spawn("vhost-user-blk", cmd, &sock, Duration::from_secs(10))
        .map_err(|e| format!("vhost-user-blk: {e}"))?;
    let start = Instant::now();
    let out = Command::new(vhostkit)
        .arg("run")
        .arg("--kernel")
        .arg(&blk)
        .arg("--disk")
        .arg(format!("socket={}", sock.display()))
        .args(["--memory", &format!("{}M", args.memory_mib)])
        .args(["--cmdline", &format!("requests={NOTIFY_PAIRS}")])
        .args(["--log-level", "info"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("vhostkit: {e}"))?;
    let elapsed = start.elapsed();
    let _ = daemon.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let requests = 2 * u64::from(NOTIFY_PAIRS);
    let done_line = format!("virtio-blk: {requests} requests, ");
    let interrupts: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix(done_line.as_str()))
        .and_then(|r| r.strip_suffix(" interrupts"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("blk guest did not finish: {stdout} {stderr}"))?;
    let c = parse_exit_counts(&stderr)
        .ok_or_else(|| format!("no exit counters in the VMM log: {stderr}"))?;
    let per_k = |n: u64| n as f64 * 1000.0 / requests as f64;
    let wakeups = c.kicks + c.calls;
    eprintln!(
        "wake-ups: {requests} requests in {:.1} ms, {interrupts} interrupts; {c:?}",
        ms(elapsed)
    );
    let notes = vec![
        format!(
            "VMM-thread wake-ups per 1,000 guest requests: {:.2} ({} kicks + {} calls through the VMM over {requests} requests; target 0: kicks go through ioeventfds, calls through irqfds)",
            per_k(wakeups),
            c.kicks,
            c.calls
        ),
        format!(
            "vCPU exits to user space per request: {:.2} MMIO (virtio-mmio's InterruptStatus read and InterruptACK write per interrupt, {interrupts} interrupts), {:.3} port I/O, {:.3} other",
            c.mmio as f64 / requests as f64,
            c.port_io as f64 / requests as f64,
            c.other as f64 / requests as f64
        ),
    ];
    let row = Row {
        workload: format!(
            "blk guest: {requests} requests, one at a time, by interrupt ({:.0} µs each incl. boot and guest code; wake-ups/1000 req: {:.2})",
            elapsed.as_secs_f64() * 1e6 / requests as f64,
            per_k(wakeups)
        ),
        ours: Measurement {
            ops_per_sec: requests as f64 / elapsed.as_secs_f64(),
            ..Default::default()
        },
        peer: None,
        spread: None,
        costs: None,
    };
    Ok(Some((row, notes)))
}

/// Spawns `cmd`, reads its stdout as it arrives and times the first line and the
/// exit; checks the exit code and, for the hello guest, the first line. QEMU ends
/// with 33 through isa-debug-exit (microvm) or 0 through an i8042 reset (q35, pc).
fn launch(cmd: Command, want_codes: &[i32]) -> Result<Sample, String> {
    launch_until(cmd, want_codes, None)
}

/// [`launch`], with `first_line` the time to the first output containing `marker`
/// (to the first line when `None`).
fn launch_until(
    mut cmd: Command,
    want_codes: &[i32],
    marker: Option<&'static str>,
) -> Result<Sample, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut first = None;
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            let from = text.len().saturating_sub(marker.map_or(0, str::len));
            text.extend_from_slice(&buf[..n]);
            let seen = match marker {
                None => buf[..n].contains(&b'\n'),
                // Only the new bytes (and a marker's length before them) can hold it.
                Some(m) => text[from..].windows(m.len()).any(|w| w == m.as_bytes()),
            };
            if first.is_none() && seen {
                first = Some(start.elapsed());
            }
        }
        (first, String::from_utf8_lossy(&text).into_owned())
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    // A watchdog kills a launch that hangs; the main thread blocks in wait() so
    // the exit is timed without polling.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let pid = child.id() as libc::pid_t;
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(TIMEOUT).is_err() {
            // SAFETY: kill() on our own child's pid (not yet reaped: the main
            // thread is still in wait()) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    let exit = start.elapsed();
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let (first, stdout) = reader.join().unwrap();
    let stderr = err_t.join().unwrap();
    if exit >= TIMEOUT {
        return Err(format!("did not end within {TIMEOUT:?}"));
    }
    if !status.code().is_some_and(|c| want_codes.contains(&c)) {
        return Err(format!(
            "exit status {status}, want one of {want_codes:?}; stdout {stdout:?}, stderr {stderr:?}"
        ));
    }
    let Some(first_line) = first else {
        return Err(match marker {
            Some(m) => {
                format!("no {m} on the serial console; stdout {stdout:?}, stderr {stderr:?}")
            }
            None => format!("no serial line; stderr {stderr:?}"),
        });
    };
    if stdout.starts_with("vhostkit test guest") && !stdout.starts_with(HELLO_LINE) {
        return Err(format!("unexpected first line: {stdout:?}"));
    }
    Ok(Sample { first_line, exit })
}

fn qemu_version(qemu: &str) -> Option<String> {
    let out = Command::new(qemu).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next()?;
    first
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .map(str::to_string)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn per_second(d: Duration) -> Measurement {
    Measurement {
        ops_per_sec: 1.0 / d.as_secs_f64().max(1e-9),
        mb_per_sec: 0.0,
        cpu_s_per_mop: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_counts_parse() {
        let log = "[2026-12-02T17:42:53Z INFO  vhostkit_vmm] vCPU exits: 12 port I/O, 4003 MMIO, 1 other; virtio notifications through the VMM: 0 kicks, 2 calls\n";
        assert_eq!(
            parse_exit_counts(log),
            Some(ExitCounts {
                port_io: 12,
                mmio: 4003,
                other: 1,
                kicks: 0,
                calls: 2
            })
        );
        assert_eq!(parse_exit_counts("nothing"), None);
    }

    #[test]
    fn median_of_odd_and_even() {
        let d = Duration::from_millis;
        assert_eq!(median(vec![d(3), d(1), d(2)]), d(2));
        assert_eq!(
            median(vec![d(4), d(1), d(2), d(3)]),
            Duration::from_micros(2500)
        );
    }
}
