//! fs-bench: our vhost-user-fs against virtiofsd, driven by the same user-space
//! vhost-user driver (no guest) sending FUSE requests, over the same shared folder
//! in tmpfs (so the disk is not what is measured), in one run.
//!
//! Rows: 4k reads and writes at random offsets of a file (256 MiB by default), 1M
//! reads and writes at sequential offsets of it (wrapping at its end), both on a
//! handle from FUSE OPEN; LOOKUP, GETATTR, CREATE (+ RELEASE of the new handle) and
//! UNLINK of 10,000 files; READDIRPLUS passes over a 10,000-entry folder (counted in
//! entries per second). Every row is measured `--repeats` times per backend,
//! alternating ours and virtiofsd, each time with a freshly started daemon (virtiofsd
//! serves one frontend and exits); the table shows the medians. The folder content
//! is set up on the host before each measurement, the same for both.
//!
//! The driver sends one request at a time per request queue (one driver thread per
//! queue, `--queues`), the header in a reused buffer and the data in buffers of its
//! own (no copy), and blocks on the call eventfd. CPU s/Mop: utime + stime of the
//! daemon process (all threads, /proc/PID/stat) over the measured interval, per
//! million operations.
//!
//! ```text
//! cargo build --release -p vhost-fs -p vhostkit-benches
//! VHOSTKIT_TOOLS_DIR=build/tools target/release/fs-bench --repeats 5 --json build/results/fs.json
//! target/release/fs-bench --quick --no-peer      # CI smoke run (seconds)
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::Parser;
use vhostkit_benches::report::{
    process_cpu_seconds, row_selected, Measurement, OutputArgs, Report, Row,
};
use vhostkit_benches::setup::{ours_bin, parse_size, RunDir};
use vhostkit_driver::fs::{body, opcode, reply, FsDevice, FsQueue, ReplyHeader};
use vhostkit_driver::{DriverConfig, GuestMem};
use vhostkit_tests::daemon::DaemonProcess;
use vhostkit_tests::fs::{spawn_fs_daemon, virtiofsd_cmd, FsTools};
use vhostkit_tests::launch::fs::FsArgs;
use vhostkit_tests::launch::{Launch, LogLevel};
use vhostkit_tests::Rng;

const LONG_ABOUT: &str = "\
Compare vhost-user-fs with virtiofsd through a user-space vhost-user driver sending \
FUSE requests (no guest), over one shared folder in --dir, which should be a tmpfs \
(default /dev/shm) so that the disk is not what is measured.

Build and run:
  cargo build --release -p vhost-fs -p vhostkit-benches
  VHOSTKIT_TOOLS_DIR=build/tools target/release/fs-bench --repeats 5 --json build/results/fs.json

virtiofsd: --virtiofsd PATH, else $VHOSTKIT_TOOLS_DIR/bin/virtiofsd (default \
build/tools/bin/virtiofsd, from scripts/build-fs-tools.sh); it runs with \
--sandbox none --cache auto, ours with its defaults (--cache auto).";

/// Compare vhost-user-fs with virtiofsd through a user-space driver.
#[derive(Parser, Debug)]
#[command(name = "fs-bench", about, long_about = LONG_ABOUT)]
struct Args {
    /// Measured seconds per read/write and readdirplus row, per backend, per repeat.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,

    /// Measurements per row and backend; the table shows the median.
    #[arg(long, default_value_t = 3)]
    repeats: usize,

    /// Files of the lookup, getattr, create and unlink rows and entries of the
    /// readdirplus folder.
    #[arg(long, default_value_t = 10_000)]
    files: usize,

    /// Size of the file of the read and write rows (suffix K, M or G).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    file_size: u64,

    /// Only rows whose name contains one of these comma-separated strings
    /// (e.g. "read,lookup").
    #[arg(long)]
    rows: Option<String>,

    #[command(flatten)]
    output: OutputArgs,

    /// Short run for a CI smoke test (0.2 s rows, one repeat, 300 files, 16 MiB file).
    #[arg(long)]
    quick: bool,

    /// Request queues, one driver thread each (both daemons get the same number if
    /// they offer it; the table notes say what each got).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    queues: u16,

    /// Virtqueue size the driver sets up.
    #[arg(long, default_value_t = 128)]
    queue_size: u16,

    /// Reply room of each READDIRPLUS request (Linux asks for one page).
    #[arg(long, default_value_t = 4096)]
    readdir_bytes: u32,

    /// Folder for the shared folder and sockets (a tmpfs, so the disk is not what
    /// is measured).
    #[arg(long, default_value = "/dev/shm")]
    dir: PathBuf,

    /// Our daemon's binary (default: vhost-user-fs next to this executable).
    #[arg(long, value_name = "PATH")]
    ours_bin: Option<PathBuf>,

    /// virtiofsd's binary (default: $VHOSTKIT_TOOLS_DIR/bin/virtiofsd, else
    /// build/tools/bin/virtiofsd).
    #[arg(long, value_name = "PATH")]
    virtiofsd: Option<PathBuf>,

    /// Measure our daemon only.
    #[arg(long)]
    no_peer: bool,

    /// Extra flags for our daemon, e.g. --ours-args="--poll-us 50" (split on spaces).
    #[arg(long, value_name = "FLAGS", allow_hyphen_values = true)]
    ours_args: Option<String>,

    /// Keep the run folder (shared folder, daemon logs) afterwards.
    #[arg(long)]
    keep: bool,

    /// List the row names and exit.
    #[arg(long)]
    list: bool,
}

/// What a row does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// READ or WRITE of `bs` bytes at random (4k-aligned) or sequential offsets.
    Data {
        write: bool,
        bs: u32,
        random: bool,
    },
    Lookup,
    Getattr,
    /// CREATE, then RELEASE of the handle it returned: one operation.
    Create,
    Unlink,
    /// Whole-folder passes of OPENDIR, READDIRPLUS until empty, RELEASEDIR; the
    /// operations counted are the entries returned.
    Readdirplus,
}

impl Kind {
    fn is_metadata(self) -> bool {
        !matches!(self, Kind::Data { .. })
    }

    /// Rows that run for `--seconds` (the others do their `--files` operations).
    fn timed(self) -> bool {
        matches!(self, Kind::Data { .. } | Kind::Readdirplus)
    }
}

#[derive(Clone, Debug)]
struct Workload {
    name: String,
    kind: Kind,
}

fn workloads(files: usize, file_size: u64) -> Vec<Workload> {
    let mib = file_size >> 20;
    let data = |name: &str, write, bs, random| Workload {
        name: format!("{name} ({mib} MiB file)"),
        kind: Kind::Data { write, bs, random },
    };
    let meta = |name: String, kind| Workload { name, kind };
    vec![
        data("4k read, random offsets", false, 4096, true),
        data("4k write, random offsets", true, 4096, true),
        data("1M read, sequential", false, 1 << 20, false),
        data("1M write, sequential", true, 1 << 20, false),
        meta(format!("lookup {files} files"), Kind::Lookup),
        meta(format!("getattr {files} files"), Kind::Getattr),
        meta(format!("create+release {files} files"), Kind::Create),
        meta(format!("unlink {files} files"), Kind::Unlink),
        meta(
            format!("readdirplus {files}-entry dir, entries/s"),
            Kind::Readdirplus,
        ),
    ]
}

/// The shared folder and where each row works in it.
struct Share {
    root: PathBuf,
    files: usize,
    file_size: u64,
}

const DATA_FILE: &str = "data.bin";
const META_DIR: &str = "meta";
const CREATE_DIR: &str = "create";
const UNLINK_DIR: &str = "unlink";

fn file_name(i: usize) -> String {
    format!("f{i:06}")
}

impl Share {
    /// Creates the data file (pseudo-random bytes, so reads do not hit holes) and the
    /// folder of `files` empty files the lookup, getattr and readdirplus rows use.
    fn create(root: PathBuf, files: usize, file_size: u64) -> std::io::Result<Share> {
        use std::io::Write;
        std::fs::create_dir_all(&root)?;
        let mut f = std::fs::File::create(root.join(DATA_FILE))?;
        let mut rng = Rng::new(0x5eed_f00d_1234_5678);
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..file_size >> 20 {
            for w in chunk.chunks_exact_mut(8) {
                w.copy_from_slice(&rng.next_u64().to_le_bytes());
            }
            f.write_all(&chunk)?;
        }
        fill_dir(&root.join(META_DIR), files)?;
        Ok(Share {
            root,
            files,
            file_size,
        })
    }

    /// Sets up what `kind` finds: an empty folder to create in, or a full one to
    /// unlink from.
    fn prepare(&self, kind: Kind) -> std::io::Result<()> {
        match kind {
            Kind::Create => {
                let dir = self.root.join(CREATE_DIR);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)?;
                }
                std::fs::create_dir(&dir)
            }
            Kind::Unlink => fill_dir(&self.root.join(UNLINK_DIR), self.files),
            _ => Ok(()),
        }
    }
}

/// Makes `dir` hold exactly the empty files f000000.. f{n-1}.
fn fill_dir(dir: &Path, n: usize) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir(dir)?;
    for i in 0..n {
        std::fs::File::create(dir.join(file_name(i)))?;
    }
    Ok(())
}

/// A backend as started for one measurement.
#[derive(Clone, Debug)]
enum Backend {
    /// Our binary and the extra flags it gets.
    Ours(PathBuf, Vec<String>),
    Virtiofsd(PathBuf),
}

impl Backend {
    fn label(&self) -> &'static str {
        match self {
            Backend::Ours(..) => "ours",
            Backend::Virtiofsd(_) => "virtiofsd",
        }
    }

    fn start(&self, dir: &Path, share: &Path, queues: u16) -> Result<DaemonProcess, String> {
        let socket = dir.join(format!("{}.sock", self.label()));
        let log = dir.join(format!("{}.log", self.label()));
        let mut cmd = match self {
            Backend::Ours(bin, extra) => {
                let daemon = FsArgs {
                    num_request_queues: Some(queues),
                    ..FsArgs::tagged(share, "ours")
                };
                Launch::on_socket(&socket, daemon)
                    .log_level(LogLevel::Warn)
                    .extra(extra)
                    .command(bin)
            }
            Backend::Virtiofsd(bin) => {
                let tools = FsTools {
                    dir: PathBuf::new(),
                    virtiofsd: bin.clone(),
                    pjdfstest: PathBuf::new(),
                    guest_cpio: PathBuf::new(),
                };
                virtiofsd_cmd(&tools, &socket, share)
            }
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdout(Stdio::null()).stderr(Stdio::from(log));
        spawn_fs_daemon(self.label(), cmd, &socket).map_err(|e| format!("{}: {e}", self.label()))
    }
}

/// INIT flags a Linux guest would send, less the caching ones only a kernel acts on
/// (no WRITEBACK_CACHE: writes go to the daemon as they are).
const INIT_FLAGS: u32 = 1 // ASYNC_READ
    | 1 << 3 // ATOMIC_O_TRUNC
    | 1 << 4 // EXPORT_SUPPORT
    | 1 << 5 // BIG_WRITES
    | 1 << 6 // DONT_MASK
    | 1 << 12 // AUTO_INVAL_DATA
    | 1 << 13 // DO_READDIRPLUS
    | 1 << 14 // READDIRPLUS_AUTO
    | 1 << 15 // ASYNC_DIO
    | 1 << 18 // PARALLEL_DIROPS
    | 1 << 22; // MAX_PAGES

/// Bytes of the reply buffer for replies without data.
const SMALL_REPLY: u32 = 4096;

/// One request queue with its buffers in guest memory.
struct Lane {
    q: FsQueue,
    mem: Arc<GuestMem>,
    /// WRITE data (`bs` bytes), if the row writes.
    payload: Option<(u64, u32)>,
    reply: (u64, u32),
}

impl Lane {
    fn call(
        &mut self,
        op: u32,
        nodeid: u64,
        body: &[u8],
        payload: bool,
    ) -> Result<ReplyHeader, String> {
        let payload: &[(u64, u32)] = match (payload, &self.payload) {
            (true, Some(p)) => std::slice::from_ref(p),
            _ => &[],
        };
        self.q
            .call_with(op, nodeid, body, payload, self.reply)
            .map_err(|e| format!("opcode {op}: {e}"))
    }

    /// A call that must succeed.
    fn ok(
        &mut self,
        op: u32,
        nodeid: u64,
        body: &[u8],
        what: &dyn Fn() -> String,
    ) -> Result<ReplyHeader, String> {
        let r = self.call(op, nodeid, body, false)?;
        if r.error != 0 {
            return Err(format!(
                "{}: {}",
                what(),
                std::io::Error::from_raw_os_error(-r.error)
            ));
        }
        Ok(r)
    }

    fn reply_body(&self, r: &ReplyHeader) -> Result<Vec<u8>, String> {
        self.mem
            .read_vec(
                self.reply.0 + 16,
                r.body_len().min(self.reply.1 - 16) as usize,
            )
            .map_err(|e| e.to_string())
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Result<u64, String> {
        let r = self.ok(opcode::LOOKUP, parent, &body::cstr(name), &|| {
            format!("LOOKUP {name}")
        })?;
        reply::entry_nodeid(&self.reply_body(&r)?)
            .ok_or_else(|| format!("LOOKUP {name}: short reply"))
    }

    fn open(&mut self, op: u32, nodeid: u64, flags: i32) -> Result<u64, String> {
        let r = self.ok(op, nodeid, &body::open(flags as u32), &|| {
            format!("OPEN {nodeid}")
        })?;
        reply::open_fh(&self.reply_body(&r)?, false).ok_or_else(|| "OPEN: short reply".to_string())
    }
}

/// What one driver thread does in the measured interval.
struct Job {
    kind: Kind,
    /// Node ids found in the set-up: the file (data rows), the folder (metadata
    /// rows), then per file of the getattr row.
    nodeid: u64,
    fh: u64,
    getattr_ids: Vec<u64>,
    /// The file indices of this thread (count rows).
    first: usize,
    count: usize,
    /// Data rows: offsets.
    rng: Rng,
    cursor: u64,
    file_size: u64,
    readdir_bytes: u32,
    entries_per_pass: u64,
    /// Files in the folder (the readdirplus row checks every pass lists them all).
    files: usize,
}

impl Job {
    /// Untimed set-up on the thread's own queue.
    fn setup(&mut self, lane: &mut Lane) -> Result<(), String> {
        match self.kind {
            Kind::Data { .. } => {
                self.nodeid = lane.lookup(1, DATA_FILE)?;
                self.fh = lane.open(opcode::OPEN, self.nodeid, libc::O_RDWR)?;
            }
            Kind::Lookup | Kind::Getattr | Kind::Readdirplus => {
                self.nodeid = lane.lookup(1, META_DIR)?;
                if self.kind == Kind::Getattr {
                    for i in self.first..self.first + self.count {
                        let id = lane.lookup(self.nodeid, &file_name(i))?;
                        self.getattr_ids.push(id);
                    }
                }
            }
            Kind::Create => self.nodeid = lane.lookup(1, CREATE_DIR)?,
            Kind::Unlink => self.nodeid = lane.lookup(1, UNLINK_DIR)?,
        }
        Ok(())
    }

    /// Runs the row's operations (until `deadline` for timed rows); returns how many.
    fn run(&mut self, lane: &mut Lane, deadline: Instant) -> Result<u64, String> {
        match self.kind {
            Kind::Data { write, bs, random } => {
                let blocks = self.file_size / u64::from(bs);
                let mut ops = 0u64;
                while Instant::now() < deadline {
                    let block = if random {
                        self.rng.next_u64() % blocks
                    } else {
                        let b = self.cursor;
                        self.cursor = (self.cursor + 1) % blocks;
                        b
                    };
                    let offset = block * u64::from(bs);
                    let r = if write {
                        lane.call(
                            opcode::WRITE,
                            self.nodeid,
                            &body::write_header(self.fh, offset, bs),
                            true,
                        )?
                    } else {
                        lane.call(
                            opcode::READ,
                            self.nodeid,
                            &body::read(self.fh, offset, bs),
                            false,
                        )?
                    };
                    let expected = if write { 8 } else { bs };
                    if r.error != 0 || r.body_len() != expected {
                        return Err(format!(
                            "{} at {offset}: error {}, {} reply bytes",
                            if write { "WRITE" } else { "READ" },
                            r.error,
                            r.body_len()
                        ));
                    }
                    if write {
                        let written = reply_u32(lane, 0)?;
                        if written != bs {
                            return Err(format!("WRITE at {offset}: {written} of {bs} bytes"));
                        }
                    }
                    ops += 1;
                }
                Ok(ops)
            }
            Kind::Lookup => {
                for i in self.first..self.first + self.count {
                    let name = file_name(i);
                    lane.ok(opcode::LOOKUP, self.nodeid, &body::cstr(&name), &|| {
                        format!("LOOKUP {name}")
                    })?;
                }
                Ok(self.count as u64)
            }
            Kind::Getattr => {
                for &id in &self.getattr_ids {
                    lane.ok(opcode::GETATTR, id, &body::getattr(), &|| {
                        format!("GETATTR {id}")
                    })?;
                }
                Ok(self.getattr_ids.len() as u64)
            }
            Kind::Create => {
                let flags = (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32;
                for i in self.first..self.first + self.count {
                    let name = file_name(i);
                    let r = lane.ok(
                        opcode::CREATE,
                        self.nodeid,
                        &body::create(flags, libc::S_IFREG | 0o644, 0o022, &name),
                        &|| format!("CREATE {name}"),
                    )?;
                    if (r.body_len() as usize) < reply::ENTRY_OUT_LEN + reply::OPEN_OUT_LEN {
                        return Err(format!("CREATE {name}: short reply"));
                    }
                    let nodeid = reply_u64(lane, 0)?;
                    let fh = reply_u64(lane, reply::ENTRY_OUT_LEN as u64)?;
                    lane.ok(opcode::RELEASE, nodeid, &body::release(fh), &|| {
                        format!("RELEASE {name}")
                    })?;
                }
                Ok(self.count as u64)
            }
            Kind::Unlink => {
                for i in self.first..self.first + self.count {
                    let name = file_name(i);
                    lane.ok(opcode::UNLINK, self.nodeid, &body::cstr(&name), &|| {
                        format!("UNLINK {name}")
                    })?;
                }
                Ok(self.count as u64)
            }
            Kind::Readdirplus => {
                let mut entries = 0u64;
                loop {
                    let n = self.readdir_pass(lane)?;
                    if n < self.files as u64 {
                        return Err(format!("READDIRPLUS: {n} entries of {} files", self.files));
                    }
                    if self.entries_per_pass == 0 {
                        self.entries_per_pass = n;
                    } else if n != self.entries_per_pass {
                        return Err(format!(
                            "READDIRPLUS: {n} entries, then {}",
                            self.entries_per_pass
                        ));
                    }
                    entries += n;
                    if Instant::now() >= deadline {
                        return Ok(entries);
                    }
                }
            }
        }
    }

    /// OPENDIR, READDIRPLUS until an empty reply, RELEASEDIR; returns the entries.
    fn readdir_pass(&mut self, lane: &mut Lane) -> Result<u64, String> {
        let dir = self.nodeid;
        let fh = lane.open(opcode::OPENDIR, dir, libc::O_RDONLY)?;
        let mut offset = 0u64;
        let mut entries = 0u64;
        loop {
            let r = lane.ok(
                opcode::READDIRPLUS,
                dir,
                &body::read(fh, offset, self.readdir_bytes),
                &|| format!("READDIRPLUS at {offset}"),
            )?;
            if r.body_len() == 0 {
                break;
            }
            let bytes = lane.reply_body(&r)?;
            let list = reply::dirents(&bytes, true).ok_or("READDIRPLUS: malformed reply")?;
            let last = list
                .last()
                .ok_or("READDIRPLUS: no entry in a non-empty reply")?;
            offset = last.off;
            entries += list.len() as u64;
        }
        lane.ok(opcode::RELEASEDIR, dir, &body::release(fh), &|| {
            "RELEASEDIR".into()
        })?;
        Ok(entries)
    }

    fn teardown(&mut self, lane: &mut Lane) -> Result<(), String> {
        if matches!(self.kind, Kind::Data { .. }) {
            lane.ok(
                opcode::RELEASE,
                self.nodeid,
                &body::release(self.fh),
                &|| "RELEASE".into(),
            )?;
        }
        Ok(())
    }
}

fn reply_u64(lane: &Lane, at: u64) -> Result<u64, String> {
    let mut b = [0u8; 8];
    lane.mem
        .read(lane.reply.0 + 16 + at, &mut b)
        .map_err(|e| e.to_string())?;
    Ok(u64::from_le_bytes(b))
}

fn reply_u32(lane: &Lane, at: u64) -> Result<u32, String> {
    let mut b = [0u8; 4];
    lane.mem
        .read(lane.reply.0 + 16 + at, &mut b)
        .map_err(|e| e.to_string())?;
    Ok(u32::from_le_bytes(b))
}

struct Settings {
    dir: PathBuf,
    seconds: f64,
    queues: u16,
    queue_size: u16,
    readdir_bytes: u32,
}

/// What one measurement saw besides the figures of the report.
struct Extra {
    queues: u16,
    seconds: f64,
    ops: u64,
}

/// One measurement of `w` on a freshly started `backend`.
fn measure(
    backend: &Backend,
    w: &Workload,
    share: &Share,
    s: &Settings,
) -> Result<(Measurement, Extra), String> {
    let label = backend.label();
    share
        .prepare(w.kind)
        .map_err(|e| format!("preparing {}: {e}", share.root.display()))?;
    let daemon = backend.start(&s.dir, &share.root, s.queues)?;
    let pid = daemon.pid();
    let (bs, reply_room) = match w.kind {
        Kind::Data { bs, write, .. } => (
            if write { bs } else { 0 },
            if write { SMALL_REPLY } else { bs + 16 },
        ),
        Kind::Readdirplus => (0, s.readdir_bytes + 16),
        _ => (0, SMALL_REPLY),
    };
    let per_queue = u64::from(bs) + u64::from(reply_room) + 8192;
    let mem_size = (per_queue * u64::from(s.queues) + (16 << 20)).next_multiple_of(1 << 20);
    let mut dev = FsDevice::connect(daemon.socket(), &DriverConfig::with_mem_size(mem_size))
        .map_err(|e| format!("{label}: connect: {e}"))?;
    // virtiofsd offers one request queue: use what the device has.
    let offered = u16::try_from(dev.driver.num_queues().saturating_sub(1)).unwrap_or(u16::MAX);
    let queues = s.queues.min(offered).max(1);
    let (_hiprio, requests) = dev
        .setup_queues(queues, s.queue_size)
        .map_err(|e| format!("{label}: queue set-up: {e}"))?;
    let mem = dev.driver.memory().clone();
    let mut lanes = Vec::new();
    for (i, q) in requests.into_iter().enumerate() {
        let payload = if bs > 0 {
            let addr = mem.alloc(u64::from(bs), 4096).map_err(|e| e.to_string())?;
            mem.fill(addr, u64::from(bs), 0x5a ^ i as u8)
                .map_err(|e| e.to_string())?;
            Some((addr, bs))
        } else {
            None
        };
        let reply = mem
            .alloc_zeroed(u64::from(reply_room), 4096)
            .map_err(|e| e.to_string())?;
        lanes.push(Lane {
            q,
            mem: mem.clone(),
            payload,
            reply: (reply, reply_room),
        });
    }
    let init = lanes[0].ok(
        opcode::INIT,
        0,
        &body::init(31, 1 << 17, INIT_FLAGS),
        &|| "INIT".into(),
    )?;
    if init.body_len() < 24 {
        return Err(format!("{label}: INIT reply of {} bytes", init.body_len()));
    }
    let max_write = reply_u32(&lanes[0], 20)?;
    if let Kind::Data {
        write: true, bs, ..
    } = w.kind
    {
        if max_write < bs {
            return Err(format!("{label}: max_write {max_write} < {bs}"));
        }
    }

    let measured = Duration::from_secs_f64(s.seconds);
    let warmup = if w.kind.timed() {
        Duration::from_secs_f64((s.seconds / 5.0).clamp(0.05, 0.3))
    } else {
        Duration::ZERO
    };
    let barrier = Arc::new(Barrier::new(lanes.len() + 1));
    let n = share.files;
    let nq = lanes.len();
    let mut handles = Vec::new();
    for (i, mut lane) in lanes.into_iter().enumerate() {
        let first = n * i / nq;
        let mut job = Job {
            kind: w.kind,
            nodeid: 0,
            fh: 0,
            getattr_ids: Vec::new(),
            first,
            count: n * (i + 1) / nq - first,
            rng: Rng::new(((i as u64 + 1) << 32) ^ u64::from(std::process::id())),
            cursor: share.file_size / (1 << 20) / nq as u64 * i as u64,
            file_size: share.file_size,
            readdir_bytes: s.readdir_bytes,
            entries_per_pass: 0,
            files: n,
        };
        let barrier = barrier.clone();
        handles.push(std::thread::spawn(move || {
            let mut result = job.setup(&mut lane);
            if result.is_ok() && !warmup.is_zero() {
                result = job.run(&mut lane, Instant::now() + warmup).map(|_| ());
            }
            barrier.wait();
            let run = match result {
                Ok(()) => job.run(&mut lane, Instant::now() + measured),
                Err(e) => Err(e),
            };
            barrier.wait();
            let ops = run?;
            job.teardown(&mut lane)?;
            Ok::<u64, String>(ops)
        }));
    }
    barrier.wait();
    let cpu0 = process_cpu_seconds(pid).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    barrier.wait();
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = process_cpu_seconds(pid).map_err(|e| e.to_string())?;
    let mut ops = 0u64;
    for h in handles {
        ops += h
            .join()
            .map_err(|_| "driver thread panicked".to_string())?
            .map_err(|e| format!("{label}: {e}"))?;
    }
    drop(dev);
    drop(daemon);
    if ops == 0 {
        return Err(format!("{label}: no operation completed"));
    }
    let bytes = match w.kind {
        Kind::Data { bs, .. } => f64::from(bs),
        _ => 0.0,
    };
    let ops_per_sec = ops as f64 / elapsed;
    Ok((
        Measurement {
            ops_per_sec,
            mb_per_sec: ops_per_sec * bytes / 1e6,
            cpu_s_per_mop: Some((cpu1 - cpu0) / (ops as f64 / 1e6)),
        },
        Extra {
            queues,
            seconds: elapsed,
            ops,
        },
    ))
}

fn progress(tag: &str, w: &Workload, backend: &Backend, rep: usize, m: &Measurement, x: &Extra) {
    eprintln!(
        "  {tag} {:<40} {:<9} rep {rep}: {:>9.0} ops/s {:>8.1} MB/s {:>6.2} CPU s/Mop  ({} ops in {:.2} s, {} queue{})",
        w.name,
        backend.label(),
        m.ops_per_sec,
        m.mb_per_sec,
        m.cpu_s_per_mop.unwrap_or(f64::NAN),
        x.ops,
        x.seconds,
        x.queues,
        if x.queues == 1 { "" } else { "s" },
    );
}

/// Clock ticks per second (the unit of /proc/PID/stat times).
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

fn default_virtiofsd() -> PathBuf {
    FsTools::default_dir().join("bin/virtiofsd")
}

fn virtiofsd_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

fn run(mut args: Args) -> Result<(), String> {
    if args.quick {
        args.seconds = 0.2;
        args.repeats = 1;
        args.files = args.files.min(300);
        args.file_size = 16 << 20;
    }
    if args.repeats == 0 || !args.seconds.is_finite() || args.seconds <= 0.0 || args.files == 0 {
        return Err("--repeats, --seconds and --files must be positive".into());
    }
    if args.readdir_bytes < 1024 {
        return Err("--readdir-bytes must be at least 1024".into());
    }
    let work: Vec<Workload> = workloads(args.files, args.file_size)
        .into_iter()
        .filter(|w| row_selected(args.rows.as_deref(), &w.name, &[]))
        .collect();
    if args.list {
        for w in &work {
            println!("{}", w.name);
        }
        return Ok(());
    }
    if work.is_empty() {
        return Err("--rows selects no row (see --list)".into());
    }

    let ours = Backend::Ours(
        ours_bin(args.ours_bin.as_deref(), "vhost-user-fs", "vhost-fs")?,
        args.ours_args
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect(),
    );
    let peer = if args.no_peer {
        None
    } else {
        let bin = args.virtiofsd.clone().unwrap_or_else(default_virtiofsd);
        if !bin.is_file() {
            return Err(format!(
                "{} not found: pass --virtiofsd PATH, set VHOSTKIT_TOOLS_DIR, run scripts/build-fs-tools.sh, or use --no-peer",
                bin.display()
            ));
        }
        Some(Backend::Virtiofsd(bin))
    };
    let peer_name = match &peer {
        Some(Backend::Virtiofsd(bin)) => {
            virtiofsd_version(bin).unwrap_or_else(|| "virtiofsd".into())
        }
        _ => "none (--no-peer)".into(),
    };

    let run_dir = RunDir::create(&args.dir, "fs-bench", args.keep)?;
    let dir = run_dir.path().to_path_buf();
    eprintln!(
        "fs-bench: creating {} MiB file and {} files in {}",
        args.file_size >> 20,
        args.files,
        dir.join("share").display()
    );
    let share = Share::create(dir.join("share"), args.files, args.file_size)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let settings = Settings {
        dir: dir.clone(),
        seconds: args.seconds,
        queues: args.queues,
        queue_size: args.queue_size,
        readdir_bytes: args.readdir_bytes,
    };

    let mut report = Report::new(
        "vhost-user-fs vs virtiofsd (user-space vhost-user driver sending FUSE requests, no guest)",
        "vhostkit vhost-user-fs",
        &peer_name,
    );
    report.peer_label = "virtiofsd".into();
    let mut queues_seen: Vec<(&'static str, u16)> = Vec::new();
    let total = work.len();
    for (n, w) in work.iter().enumerate() {
        let tag = format!("[{}/{total}]", n + 1);
        let mut ours_ms = Vec::new();
        let mut peer_ms = Vec::new();
        for rep in 1..=args.repeats {
            // Alternate which backend goes first, so drift hits both alike.
            let mut order: Vec<&Backend> = vec![&ours];
            if let Some(p) = &peer {
                if rep % 2 == 1 {
                    order.push(p);
                } else {
                    order.insert(0, p);
                }
            }
            for b in order {
                let (m, x) = measure(b, w, &share, &settings)?;
                progress(&tag, w, b, rep, &m, &x);
                if !queues_seen.contains(&(b.label(), x.queues)) {
                    queues_seen.push((b.label(), x.queues));
                }
                if matches!(b, Backend::Ours(..)) {
                    ours_ms.push(m);
                } else {
                    peer_ms.push(m);
                }
            }
        }
        report.rows.push(Row {
            workload: w.name.clone(),
            ours: Measurement::median_of(&ours_ms),
            peer: (!peer_ms.is_empty()).then(|| Measurement::median_of(&peer_ms)),
            spread: None,
            costs: None,
        });
    }

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let queues_note = queues_seen
        .iter()
        .map(|(b, q)| format!("{b} {q}"))
        .collect::<Vec<_>>()
        .join(", ");
    report.notes = vec![
        format!(
            "shared folder in {} (tmpfs), the same for both: a {} MiB file of random data, a folder of {} empty files; create/unlink folders set up on the host before each measurement",
            args.dir.display(),
            args.file_size >> 20,
            args.files
        ),
        "read/write rows: one OPENed handle (O_RDWR), 4k at random 4k-aligned offsets, 1M at sequential offsets wrapping at the end of the file".into(),
        format!(
            "metadata rows: {} operations each (create = CREATE + RELEASE of its handle); readdirplus: whole-folder passes (OPENDIR, READDIRPLUS of {} bytes until empty, RELEASEDIR), counting entries",
            args.files, args.readdir_bytes
        ),
        format!(
            "{} s per read/write/readdirplus row (after a short warm-up), median of {} repeats per backend, backends alternating, each daemon started fresh per measurement",
            args.seconds, args.repeats
        ),
        format!("driver: one request in flight per request queue, one thread per queue (request queues used: {queues_note}), queue size {}", args.queue_size),
        format!(
            "ours: {}; virtiofsd: --cache auto --sandbox none, other flags default",
            match args.ours_args.as_deref().map(str::trim) {
                Some(extra) if !extra.is_empty() => format!("default flags (--cache auto) plus {extra}"),
                _ => "default flags (--cache auto)".into(),
            }
        ),
        format!(
            "CPU s/Mop: utime+stime of the daemon process (all threads, /proc/PID/stat) over the measured interval, per million operations; in clock ticks of {} ms, so +-{:.1} s/Mop on the {}-operation rows",
            1000.0 / clock_ticks(),
            1e6 / clock_ticks() / args.files as f64,
            args.files
        ),
        "target: ours/virtiofsd >= 1.0 on every row, >= 1.3 on metadata rows".into(),
        format!("host: {cores} CPUs, shared with the driver threads"),
    ];

    report.emit_to(&args.output)?;
    let missed: Vec<String> = report
        .rows
        .iter()
        .zip(&work)
        .filter_map(|(r, w)| {
            let goal = if w.kind.is_metadata() { 1.3 } else { 1.0 };
            let ratio = r.ratio()?;
            (ratio < goal).then(|| format!("{} ({ratio:.2}x < {goal}x)", r.workload))
        })
        .collect();
    if !missed.is_empty() {
        eprintln!("fs-bench: below target: {}", missed.join("; "));
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("fs-bench: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_cli() {
        let rows = workloads(10_000, 256 << 20);
        assert_eq!(rows.len(), 9);
        assert_eq!(rows[0].name, "4k read, random offsets (256 MiB file)");
        assert!(rows.iter().any(|w| w.name == "lookup 10000 files"));
        assert_eq!(rows.iter().filter(|w| w.kind.is_metadata()).count(), 5);
        let a = Args::try_parse_from(["fs-bench", "--quick", "--queues", "2"]).unwrap();
        assert_eq!(a.queues, 2);
        assert!(Args::try_parse_from(["fs-bench", "--queues", "0"]).is_err());
    }
}
