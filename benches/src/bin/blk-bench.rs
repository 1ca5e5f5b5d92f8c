//! blk-bench: our vhost-user-blk against qemu-storage-daemon's vhost-user-blk export,
//! driven by the same user-space vhost-user driver (no guest), on the same image in
//! tmpfs, in one run.
//!
//! Every workload row is measured `--repeats` times per backend, alternating ours and
//! the peer, each time with a freshly started daemon; the table shows the medians. A
//! second row set runs our daemon with `--engine null` (requests complete without
//! touching the image): the transport ceiling, with no peer.
//!
//! The driver keeps QD requests in flight per queue (one driver thread per queue),
//! refills as completions arrive, publishes a batch with one avail-index store and
//! kicks once, uses EVENT_IDX, and blocks on the call eventfd instead of spinning.
//!
//! ```text
//! cargo build --release -p vhost-blk -p vhostkit-benches
//! target/release/blk-bench --seconds 3 --repeats 3 --json blk.json --svg blk.svg
//! target/release/blk-bench --quick            # CI smoke run
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::Parser;
use vhostkit_benches::report::{
    process_cpu_seconds, row_selected, Measurement, OutputArgs, Report, Row,
};
use vhostkit_benches::setup::{ours_bin, parse_size, RunDir};
use vhostkit_driver::blk::{BlkDevice, BlkQueue, BlkRequest, SECTOR_SIZE, VIRTIO_BLK_S_OK};
use vhostkit_driver::{DriverConfig, VIRTIO_RING_F_EVENT_IDX};
use vhostkit_tests::daemon::{qemu_storage_daemon_cmd, qemu_storage_daemon_version, DaemonProcess};
use vhostkit_tests::launch::blk::{BlkArgs, Engine};
use vhostkit_tests::launch::{Launch, LogLevel};
use vhostkit_tests::Rng;

/// Compare vhost-user-blk with qemu-storage-daemon through a user-space driver.
#[derive(Parser, Debug)]
#[command(name = "blk-bench", about, long_about = None)]
struct Args {
    /// Image size (suffix K, M or G); the image lives in --dir (tmpfs).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    image_size: u64,

    /// Measured seconds per row, per backend, per repeat.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,

    /// Measurements per row and backend; the table shows the median.
    #[arg(long, default_value_t = 3)]
    repeats: usize,

    /// Only rows whose name contains one of these comma-separated strings
    /// (e.g. "randread,QD32"); "null" selects the null-engine rows.
    #[arg(long)]
    rows: Option<String>,

    #[command(flatten)]
    output: OutputArgs,

    /// Short run for a CI smoke test (0.3 s rows, one repeat, 64 MiB image).
    #[arg(long)]
    quick: bool,

    /// Virtqueue size the driver sets up.
    #[arg(long, default_value_t = 256)]
    queue_size: u16,

    /// I/O engine of our daemon for the comparison rows.
    #[arg(long, value_enum, default_value_t = Engine::IoUring)]
    engine: Engine,

    /// qemu-storage-daemon aio mode; io_uring falls back to threads if refused.
    #[arg(long, default_value = "io_uring", value_parser = ["io_uring", "threads", "native"])]
    qsd_aio: String,

    /// Skip the null-engine rows.
    #[arg(long)]
    no_null: bool,

    /// Folder for the image and sockets (tmpfs, so the disk is not what is measured).
    #[arg(long, default_value = "/dev/shm")]
    dir: PathBuf,

    /// Our daemon's binary (default: vhost-user-blk next to this executable).
    #[arg(long, value_name = "PATH")]
    ours_bin: Option<PathBuf>,

    /// Busy-poll the used ring this many microseconds before blocking on the call
    /// eventfd (0: block at once; spinning steals CPU from the daemon on small hosts).
    #[arg(long, default_value_t = 0)]
    spin_us: u64,

    /// List the row names and exit.
    #[arg(long)]
    list: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pattern {
    RandRead,
    RandWrite,
    SeqRead,
}

#[derive(Clone, Debug)]
struct Workload {
    name: String,
    pattern: Pattern,
    bs: u32,
    qd: usize,
    queues: u16,
}

fn workloads() -> Vec<Workload> {
    let mut v = Vec::new();
    for (pattern, pname) in [
        (Pattern::RandRead, "randread"),
        (Pattern::RandWrite, "randwrite"),
    ] {
        for queues in [1u16, 2] {
            for qd in [1usize, 32] {
                v.push(Workload {
                    name: format!("4k {pname} QD{qd} {queues}q"),
                    pattern,
                    bs: 4096,
                    qd,
                    queues,
                });
            }
        }
    }
    v.push(Workload {
        name: "128k seqread QD8 1q".into(),
        pattern: Pattern::SeqRead,
        bs: 128 << 10,
        qd: 8,
        queues: 1,
    });
    v
}

/// A backend as started for one measurement.
#[derive(Clone, Debug)]
enum Backend {
    Ours { bin: PathBuf, engine: Engine },
    Qsd { aio: String },
}

impl Backend {
    fn label(&self) -> String {
        match self {
            Backend::Ours { engine, .. } => format!("ours/{engine}"),
            Backend::Qsd { aio } => format!("qsd/{aio}"),
        }
    }

    fn start(
        &self,
        image: &Path,
        dir: &Path,
        queues: u16,
        qsize: u16,
    ) -> Result<DaemonProcess, String> {
        let socket = dir.join(match self {
            Backend::Ours { .. } => "ours.sock",
            Backend::Qsd { .. } => "qsd.sock",
        });
        let (name, cmd) = match self {
            Backend::Ours { bin, engine } => {
                let daemon = BlkArgs {
                    num_queues: Some(queues),
                    queue_size: Some(qsize),
                    engine: Some(*engine),
                    ..BlkArgs::new(image)
                };
                let cmd = Launch::on_socket(&socket, daemon)
                    .log_level(LogLevel::Warn)
                    .command(bin);
                ("vhost-user-blk", cmd)
            }
            Backend::Qsd { aio } => (
                "qemu-storage-daemon",
                qemu_storage_daemon_cmd(image, &socket, queues, aio),
            ),
        };
        DaemonProcess::spawn(name, cmd, &socket, Duration::from_secs(10))
            .map_err(|e| format!("{}: {e}", self.label()))
    }
}

/// Picks the sector of each next request of one driver thread.
struct Offsets {
    pattern: Pattern,
    rng: Rng,
    blocks: u64,
    sectors_per_block: u64,
    cursor: u64,
}

impl Offsets {
    fn next(&mut self) -> u64 {
        let block = match self.pattern {
            Pattern::RandRead | Pattern::RandWrite => self.rng.next_u64() % self.blocks,
            Pattern::SeqRead => {
                let b = self.cursor;
                self.cursor = (self.cursor + 1) % self.blocks;
                b
            }
        };
        block * self.sectors_per_block
    }
}

struct Worker {
    q: BlkQueue,
    bufs: Vec<u64>,
    free: Vec<u64>,
    offsets: Offsets,
    write: bool,
    bs: u32,
    spin: Duration,
    ops: u64,
    errors: u64,
}

const WAIT: Duration = Duration::from_secs(10);

impl Worker {
    /// Keeps every buffer in flight until `deadline`; returns completions seen.
    fn run_until(&mut self, deadline: Instant) -> Result<u64, String> {
        let start_ops = self.ops;
        loop {
            let mut got = 0;
            while let Some(c) = self.q.pop().map_err(|e| e.to_string())? {
                if c.status != VIRTIO_BLK_S_OK {
                    self.errors += 1;
                }
                self.ops += 1;
                got += 1;
                self.free.push(c.token);
            }
            if Instant::now() >= deadline {
                return Ok(self.ops - start_ops);
            }
            if !self.free.is_empty() {
                while let Some(tok) = self.free.pop() {
                    let data = [(self.bufs[tok as usize], self.bs)];
                    let sector = self.offsets.next();
                    let req = if self.write {
                        BlkRequest::write(sector, &data)
                    } else {
                        BlkRequest::read(sector, &data)
                    };
                    self.q.add(&req, tok).map_err(|e| e.to_string())?;
                }
                self.q.submit().map_err(|e| e.to_string())?;
            }
            if got == 0 && !self.spin_for_used() && !self.q.wait(WAIT).map_err(|e| e.to_string())? {
                return Err(format!("no completion within {WAIT:?}"));
            }
        }
    }

    fn spin_for_used(&self) -> bool {
        if self.spin.is_zero() {
            return false;
        }
        let until = Instant::now() + self.spin;
        while Instant::now() < until {
            if self.q.queue().has_used() {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    /// Waits for every request in flight.
    fn drain(&mut self) -> Result<(), String> {
        while self.q.in_flight() > 0 {
            while let Some(c) = self.q.pop().map_err(|e| e.to_string())? {
                self.free.push(c.token);
            }
            if self.q.in_flight() > 0 && !self.q.wait(WAIT).map_err(|e| e.to_string())? {
                return Err("requests did not complete while draining".into());
            }
        }
        Ok(())
    }
}

struct Settings {
    image: PathBuf,
    image_size: u64,
    dir: PathBuf,
    seconds: f64,
    queue_size: u16,
    spin: Duration,
}

/// One measurement of `w` on a freshly started `backend`.
/// What one measurement saw besides the figures of the report.
struct Extra {
    event_idx: bool,
    /// CPU seconds of this process (the driver threads) per million requests.
    driver_cpu_s_per_mop: f64,
    /// Kicks and call-eventfd sleeps per request in the measured interval.
    kicks_per_op: f64,
    sleeps_per_op: f64,
}

fn measure(backend: &Backend, w: &Workload, s: &Settings) -> Result<(Measurement, Extra), String> {
    let daemon = backend.start(&s.image, &s.dir, 2, s.queue_size)?;
    let pid = daemon.pid();
    let mem_size = (u64::from(w.bs) * w.qd as u64 * u64::from(w.queues) + (16 << 20))
        .next_multiple_of(1 << 20);
    let mut dev = BlkDevice::connect(daemon.socket(), &DriverConfig::with_mem_size(mem_size))
        .map_err(|e| format!("{}: connect: {e}", backend.label()))?;
    let event_idx = dev.driver.has_feature(VIRTIO_RING_F_EVENT_IDX);
    let capacity = dev.config.capacity * SECTOR_SIZE;
    if capacity < s.image_size {
        return Err(format!(
            "{}: capacity {capacity} < image {}",
            backend.label(),
            s.image_size
        ));
    }
    let queues = dev
        .setup_queues(w.queues, s.queue_size, w.qd)
        .map_err(|e| format!("{}: queue set-up: {e}", backend.label()))?;
    let mem = dev.driver.memory().clone();

    let measured = Duration::from_secs_f64(s.seconds);
    let warmup = Duration::from_secs_f64((s.seconds / 5.0).clamp(0.05, 0.5));
    let barrier = Arc::new(Barrier::new(usize::from(w.queues) + 1));
    let mut handles = Vec::new();
    for (i, q) in queues.into_iter().enumerate() {
        let mut bufs = Vec::with_capacity(w.qd);
        for _ in 0..w.qd {
            let b = mem
                .alloc(u64::from(w.bs), 4096)
                .map_err(|e| e.to_string())?;
            mem.fill(b, u64::from(w.bs), 0x3c ^ i as u8)
                .map_err(|e| e.to_string())?;
            bufs.push(b);
        }
        let blocks = s.image_size / u64::from(w.bs);
        let mut worker = Worker {
            q,
            free: (0..w.qd as u64).rev().collect(),
            bufs,
            offsets: Offsets {
                pattern: w.pattern,
                rng: Rng::new(((i as u64 + 1) << 32) ^ u64::from(std::process::id())),
                blocks,
                sectors_per_block: u64::from(w.bs) / SECTOR_SIZE,
                cursor: blocks / u64::from(w.queues) * i as u64,
            },
            write: w.pattern == Pattern::RandWrite,
            bs: w.bs,
            spin: s.spin,
            ops: 0,
            errors: 0,
        };
        let barrier = barrier.clone();
        handles.push(std::thread::spawn(move || {
            let warm = worker.run_until(Instant::now() + warmup);
            barrier.wait();
            let st0 = worker.q.queue().stats();
            let run = match warm {
                Ok(_) => worker.run_until(Instant::now() + measured),
                Err(e) => Err(e),
            };
            let st1 = worker.q.queue().stats();
            barrier.wait();
            let drained = worker.drain();
            let ops = run?;
            drained?;
            Ok::<(u64, u64, u64, u64), String>((
                ops,
                worker.errors,
                st1.kicks - st0.kicks,
                st1.sleeps - st0.sleeps,
            ))
        }));
    }
    let me = std::process::id();
    barrier.wait();
    let cpu0 = process_cpu_seconds(pid).map_err(|e| e.to_string())?;
    let own0 = process_cpu_seconds(me).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    barrier.wait();
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = process_cpu_seconds(pid).map_err(|e| e.to_string())?;
    let own1 = process_cpu_seconds(me).map_err(|e| e.to_string())?;
    let mut ops = 0u64;
    let mut errors = 0u64;
    let mut kicks = 0u64;
    let mut sleeps = 0u64;
    for h in handles {
        let (o, e, k, z) = h
            .join()
            .map_err(|_| "driver thread panicked".to_string())??;
        ops += o;
        errors += e;
        kicks += k;
        sleeps += z;
    }
    drop(dev);
    drop(daemon);
    if errors > 0 {
        return Err(format!("{}: {errors} requests failed", backend.label()));
    }
    if ops == 0 {
        return Err(format!("{}: no request completed", backend.label()));
    }
    let ops_per_sec = ops as f64 / elapsed;
    Ok((
        Measurement {
            ops_per_sec,
            mb_per_sec: ops_per_sec * f64::from(w.bs) / 1e6,
            cpu_s_per_mop: Some((cpu1 - cpu0) / (ops as f64 / 1e6)),
        },
        Extra {
            event_idx,
            driver_cpu_s_per_mop: (own1 - own0) / (ops as f64 / 1e6),
            kicks_per_op: kicks as f64 / ops as f64,
            sleeps_per_op: sleeps as f64 / ops as f64,
        },
    ))
}

fn progress(tag: &str, w: &Workload, backend: &Backend, rep: usize, m: &Measurement, x: &Extra) {
    eprintln!(
        "  {tag} {:<22} {:<16} rep {rep}: {:>9.0} ops/s {:>8.1} MB/s {:>6.2} CPU s/Mop  (driver {:.2} CPU s/Mop, {:.2} kicks, {:.2} sleeps per op)",
        w.name,
        backend.label(),
        m.ops_per_sec,
        m.mb_per_sec,
        m.cpu_s_per_mop.unwrap_or(f64::NAN),
        x.driver_cpu_s_per_mop,
        x.kicks_per_op,
        x.sleeps_per_op,
    );
}

/// Creates the image filled with pseudo-random bytes (so reads do not hit holes).
fn make_image(path: &Path, size: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let mut rng = Rng::new(0x1234_5678_9abc_def1);
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..size / chunk.len() as u64 {
        for w in chunk.chunks_exact_mut(8) {
            w.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        f.write_all(&chunk)?;
    }
    f.sync_all()
}

fn selected(filter: &Option<String>, name: &str) -> bool {
    row_selected(filter.as_deref(), name, &[])
}

fn run(mut args: Args) -> Result<(), String> {
    if args.quick {
        args.seconds = 0.3;
        args.repeats = 1;
        args.image_size = 64 << 20;
    }
    if args.repeats == 0 || !args.seconds.is_finite() || args.seconds <= 0.0 {
        return Err("--repeats and --seconds must be positive".into());
    }
    let null_name = |w: &Workload| format!("{} [ours null engine]", w.name);
    let work: Vec<Workload> = workloads()
        .into_iter()
        .filter(|w| selected(&args.rows, &w.name))
        .collect();
    let null_work: Vec<Workload> = if args.no_null {
        Vec::new()
    } else {
        workloads()
            .into_iter()
            .filter(|w| selected(&args.rows, &null_name(w)))
            .collect()
    };
    if args.list {
        for w in &work {
            println!("{}", w.name);
        }
        for w in &null_work {
            println!("{}", null_name(w));
        }
        return Ok(());
    }
    if work.is_empty() && null_work.is_empty() {
        return Err("--rows selects no row (see --list)".into());
    }

    let bin = ours_bin(args.ours_bin.as_deref(), "vhost-user-blk", "vhost-blk")?;
    let run_dir = RunDir::create(&args.dir, "blk-bench", false)?;
    let dir = run_dir.path().to_path_buf();
    let image = dir.join("disk.img");
    eprintln!(
        "blk-bench: creating {} MiB image {}",
        args.image_size >> 20,
        image.display()
    );
    make_image(&image, args.image_size).map_err(|e| format!("{}: {e}", image.display()))?;

    let settings = Settings {
        image: image.clone(),
        image_size: args.image_size,
        dir: dir.clone(),
        seconds: args.seconds,
        queue_size: args.queue_size,
        spin: Duration::from_micros(args.spin_us),
    };
    let ours = Backend::Ours {
        bin: bin.clone(),
        engine: args.engine,
    };
    let ours_null = Backend::Ours {
        bin,
        engine: Engine::Null,
    };

    // qemu-storage-daemon: the requested aio mode, or threads if it refuses it.
    let mut peer = Backend::Qsd {
        aio: args.qsd_aio.clone(),
    };
    let mut qsd_note = format!("qemu-storage-daemon aio={}", args.qsd_aio);
    if !work.is_empty() {
        if let Err(e) = peer.start(&image, &dir, 2, args.queue_size) {
            eprintln!("blk-bench: {e}; falling back to aio=threads");
            qsd_note = format!(
                "qemu-storage-daemon aio=threads (aio={} refused)",
                args.qsd_aio
            );
            peer = Backend::Qsd {
                aio: "threads".into(),
            };
        }
    }
    let peer_name = qemu_storage_daemon_version().unwrap_or_else(|| "qemu-storage-daemon".into());

    let mut report = Report::new(
        "vhost-user-blk vs qemu-storage-daemon (user-space vhost-user driver, no guest)",
        &format!("vhostkit vhost-user-blk --engine {}", args.engine),
        &peer_name,
    );
    let total = work.len() + null_work.len();
    let mut event_idx_seen = true;
    let mut n = 0;
    for w in &work {
        n += 1;
        let tag = format!("[{n}/{total}]");
        let mut ours_ms = Vec::new();
        let mut peer_ms = Vec::new();
        for rep in 1..=args.repeats {
            // Alternate which backend goes first, so drift hits both alike.
            let order: [&Backend; 2] = if rep % 2 == 1 {
                [&ours, &peer]
            } else {
                [&peer, &ours]
            };
            for b in order {
                let (m, x) = measure(b, w, &settings)?;
                event_idx_seen &= x.event_idx;
                progress(&tag, w, b, rep, &m, &x);
                if matches!(b, Backend::Ours { .. }) {
                    ours_ms.push(m);
                } else {
                    peer_ms.push(m);
                }
            }
        }
        report.rows.push(Row {
            workload: w.name.clone(),
            ours: Measurement::median_of(&ours_ms),
            peer: Some(Measurement::median_of(&peer_ms)),
            spread: None,
            costs: None,
        });
    }
    for w in &null_work {
        n += 1;
        let tag = format!("[{n}/{total}]");
        let mut ms = Vec::new();
        for rep in 1..=args.repeats {
            let (m, x) = measure(&ours_null, w, &settings)?;
            event_idx_seen &= x.event_idx;
            progress(&tag, w, &ours_null, rep, &m, &x);
            ms.push(m);
        }
        report.rows.push(Row {
            workload: null_name(w),
            ours: Measurement::median_of(&ms),
            peer: None,
            spread: None,
            costs: None,
        });
    }

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    report.notes = vec![
        format!(
            "image: {} MiB of random data in {} (tmpfs), shared by both backends; one daemon at a time, started fresh per measurement",
            args.image_size >> 20,
            args.dir.display()
        ),
        format!("peer: {qsd_note}, cache.direct=off; ours: --engine {} (null rows: --engine null)", args.engine),
        format!(
            "{} s measured per row (after a short warm-up), median of {} repeats per backend, backends alternating",
            args.seconds, args.repeats
        ),
        format!(
            "driver: queue size {}, one thread per queue, QD requests kept in flight, batched publish + one kick, EVENT_IDX {}, blocks on the call eventfd{}",
            args.queue_size,
            if event_idx_seen { "on" } else { "off for some backend" },
            if args.spin_us > 0 { format!(" after spinning {} us", args.spin_us) } else { String::new() }
        ),
        "CPU s/Mop: utime+stime of the daemon process (all threads) over the measured interval, per million requests".into(),
        format!("host: {cores} CPUs, shared with the driver threads"),
        "QD1 and 1-queue rows largely measure eventfd wake-up latency across CPUs (kick and call), which is high in a VM; --spin-us trades driver CPU for it".into(),
    ];

    report.emit_to(&args.output)?;
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("blk-bench: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_filter_and_median() {
        assert!(selected(&None, "4k randread QD1 1q"));
        let f = Some("QD32, seq".to_string());
        assert!(selected(&f, "4k randwrite QD32 2q"));
        assert!(selected(&f, "128k seqread QD8 1q"));
        assert!(!selected(&f, "4k randread QD1 1q"));
        assert_eq!(workloads().len(), 9);
    }

    #[test]
    fn cli_parses() {
        let a = Args::try_parse_from(["blk-bench", "--quick", "--rows", "randread"]).unwrap();
        assert!(a.quick);
        assert!(Args::try_parse_from(["blk-bench", "--engine", "bogus"]).is_err());
    }
}
