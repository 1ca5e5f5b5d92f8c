//! A hostile frontend: malformed descriptor chains, impossible requests, broken rings
//! and broken connections. The daemon must answer every request with a status or
//! drop it, touch no guest memory outside the request's own device-writable buffers
//! and the rings, log (rate-limited) what it dropped, and keep serving.
//!
//! What "drop" means here, from `worker.rs` (`QueueWorker::start`): a chain that
//! cannot be parsed (`request::ChainError`) is returned in the used ring with used
//! length 0 and no status written, and logged with one `guest_error!` line
//! ("dropping request N: ..."). A request that parses but cannot be served gets a
//! status byte (IOERR or UNSUPP) and used length 1.
//!
//! Each case runs against its own daemon (a child process, stderr captured to a file)
//! on a 1 MiB image holding a known pattern. Guest memory is filled with a canary
//! (0xA5) everywhere but the avail and used rings; after the hostile chain the whole
//! of guest memory is compared with a snapshot taken just before it, where only the
//! bytes the daemon is allowed to write may differ. Then a normal write and read on
//! the same queue must work and the daemon must still be running.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use std::io::Write;
use vhostkit_driver::blk::{
    BlkDevice, BlkQueue, BlkRequest, DiscardSegment, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use vhostkit_driver::virtq::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use vhostkit_driver::{DriverConfig, GuestMem, RawDesc, Used, VIRTIO_RING_F_EVENT_IDX};
use vhostkit_tests::daemon::DaemonProcess;
use vhostkit_tests::launch::blk::{BlkArgs, Engine};
use vhostkit_tests::launch::Launch;
use vhostkit_tests::{Rng, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-blk");
const TIMEOUT: Duration = Duration::from_secs(10);
const SECTOR: u64 = 512;
const IMAGE_BYTES: u64 = 1 << 20;
const SECTORS: u64 = IMAGE_BYTES / SECTOR;
const CANARY: u8 = 0xa5;
const QUEUE_SIZE: u16 = 16;
const MEM_BYTES: u64 = 2 << 20;
/// Where the normal I/O after each case writes (8 sectors from a random start).
const SCRATCH_SECTORS: std::ops::Range<u64> = 1024..1024 + 64 + 8;

const R: u16 = 0;
const W: u16 = DESC_F_WRITE;
const N: u16 = DESC_F_NEXT;
const I: u16 = DESC_F_INDIRECT;

fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDesc {
    RawDesc {
        addr,
        len,
        flags,
        next,
    }
}

/// The image's initial contents: every sector different, no zero runs.
fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64)
        .map(|o| ((o / SECTOR) as u8).wrapping_mul(37) ^ (o as u8) ^ 0x5c)
        .collect()
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

type Connection = (BlkDevice, BlkQueue);

/// Connects and sets up queue 0 in a helper thread; [`finish_connect`] waits for it.
fn start_connect(
    sock: &Path,
    cfg: DriverConfig,
    queue_size: u16,
    inflight: usize,
) -> mpsc::Receiver<vhostkit_driver::Result<Connection>> {
    let (tx, rx) = mpsc::channel();
    let sock = sock.to_path_buf();
    std::thread::spawn(move || {
        let result = BlkDevice::connect(&sock, &cfg).and_then(|mut dev| {
            let q = dev.setup_queues(1, queue_size, inflight)?.remove(0);
            Ok((dev, q))
        });
        let _ = tx.send(result);
    });
    rx
}

/// A daemon that no longer answers fails the test instead of hanging it.
fn finish_connect(rx: mpsc::Receiver<vhostkit_driver::Result<Connection>>) -> Connection {
    rx.recv_timeout(TIMEOUT)
        .expect("the daemon did not answer a new frontend in time")
        .expect("connect and set up queue 0")
}

/// What the daemon must do with the hostile chain.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Returned in the used ring with this length (0: dropped).
    Used(u32),
    /// Nothing in the used ring: checked by a FLUSH sent right after it, which must
    /// be the next (and only) used entry.
    NoUsed,
}

const DROPPED: Expect = Expect::Used(0);
const ANSWERED: Expect = Expect::Used(1);

struct Hostile {
    dir: TempDir,
    image: PathBuf,
    daemon: DaemonProcess,
    /// The connection (None: closed).
    dev: Option<BlkDevice>,
    cfg: DriverConfig,
    q: BlkQueue,
    mem: Arc<GuestMem>,
    readonly: bool,
    /// Areas the daemon writes (used ring) or the driver does (avail ring).
    rings: Vec<(u64, u64)>,
    /// Data buffer of the normal I/O after each case.
    scratch: u64,
    /// Header and status of the FLUSH that follows an `Expect::NoUsed` case.
    probe: u64,
    rng: Rng,
    /// Log lines already checked.
    log_seen: usize,
}

impl Hostile {
    fn new(name: &str, daemon: BlkArgs) -> Self {
        Self::with(name, daemon, QUEUE_SIZE, 4)
    }

    /// A daemon run with the options of `daemon` (its `path` and `queue_size` are
    /// the case's own: the image and `queue_size`), and a frontend with queue 0 of
    /// `queue_size` entries and room for `inflight` managed requests.
    fn with(name: &str, daemon: BlkArgs, queue_size: u16, inflight: usize) -> Self {
        Self::with_config(
            name,
            daemon,
            queue_size,
            inflight,
            Self::driver_config(true),
        )
    }

    fn with_config(
        name: &str,
        daemon: BlkArgs,
        queue_size: u16,
        inflight: usize,
        cfg: DriverConfig,
    ) -> Self {
        let dir = TempDir::new(name).unwrap();
        let image = dir.join("disk.img");
        std::fs::write(&image, pattern(0, IMAGE_BYTES as usize)).unwrap();
        let sock = dir.join("blk.sock");
        let daemon = BlkArgs {
            path: image.clone(),
            queue_size: Some(queue_size),
            ..daemon
        };
        let readonly = daemon.readonly;
        let mut cmd = Launch::on_socket(&sock, daemon).command(Path::new(BIN));
        cmd.env_remove("RUST_LOG")
            .stderr(Stdio::from(File::create(dir.join("daemon.log")).unwrap()));
        let daemon = DaemonProcess::spawn("vhost-user-blk", cmd, &sock, TIMEOUT).unwrap();
        let (dev, q) = finish_connect(start_connect(&sock, cfg.clone(), queue_size, inflight));
        let mem = dev.driver.memory().clone();
        let mut h = Hostile {
            dir,
            image,
            daemon,
            dev: Some(dev),
            cfg,
            q,
            mem,
            readonly,
            rings: Vec::new(),
            scratch: 0,
            probe: 0,
            rng: Rng::new(0x1234_5678_9abc_def1),
            log_seen: 0,
        };
        h.attached();
        // Whatever the start-up logged is not the cases' business.
        h.log_seen = h.log_lines().len();
        h
    }

    fn driver_config(event_idx: bool) -> DriverConfig {
        let mut cfg = DriverConfig {
            mem_size: MEM_BYTES,
            max_indirect: 8,
            ..DriverConfig::default()
        };
        if !event_idx {
            cfg.features &= !(1 << VIRTIO_RING_F_EVENT_IDX);
        }
        cfg
    }

    /// Takes note of a new frontend's memory and rings.
    fn attached(&mut self) {
        self.mem = self.q.queue().memory().clone();
        let a = self.q.queue().addrs();
        let l = self.q.queue().layout();
        self.rings = vec![(a.avail, l.avail_bytes()), (a.used, l.used_bytes())];
        self.scratch = self.mem.alloc(8192, 4096).unwrap();
        self.probe = self.mem.alloc(32, 16).unwrap();
        self.canary();
    }

    /// Closes the connection (whatever is in flight) and connects a new frontend,
    /// which must be served within [`TIMEOUT`].
    fn reconnect(&mut self, queue_size: u16, inflight: usize) {
        let sock = self.dir.join("blk.sock");
        let rx = start_connect(&sock, self.cfg.clone(), queue_size, inflight);
        // The daemon serves one frontend at a time: the new one waits for this.
        self.disconnect();
        let (dev, q) = finish_connect(rx);
        self.dev = Some(dev);
        self.q = q;
        self.attached();
    }

    /// Closes the connection, with whatever is in flight.
    fn disconnect(&mut self) {
        self.dev = None;
    }

    /// Fills all guest memory but the rings with the canary.
    fn canary(&self) {
        let mut ranges = self.rings.clone();
        ranges.sort_unstable();
        let mut at = self.mem.base();
        for (start, len) in ranges.into_iter().chain([(self.mem.end(), 0)]) {
            if start > at {
                self.mem.fill(at, start - at, CANARY).unwrap();
            }
            at = at.max(start + len);
        }
    }

    /// `len` bytes of guest memory (holding the canary).
    fn alloc(&self, len: u64) -> u64 {
        self.mem.alloc(len, 16).unwrap()
    }

    /// A 16-byte request header.
    fn header(&self, kind: u32, sector: u64) -> u64 {
        let at = self.alloc(16);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write(at, &h).unwrap();
        at
    }

    /// DISCARD / WRITE_ZEROES segments in guest memory.
    fn segments(&self, segs: &[(u64, u32, u32)]) -> (u64, u32) {
        let at = self.alloc(16 * segs.len() as u64);
        for (i, &(sector, n, flags)) in segs.iter().enumerate() {
            let s = DiscardSegment {
                sector,
                num_sectors: n,
                flags,
            };
            let mut b = [0u8; 16];
            b[0..8].copy_from_slice(&s.sector.to_le_bytes());
            b[8..12].copy_from_slice(&s.num_sectors.to_le_bytes());
            b[12..16].copy_from_slice(&s.flags.to_le_bytes());
            self.mem.write(at + 16 * i as u64, &b).unwrap();
        }
        (at, 16 * segs.len() as u32)
    }

    /// An indirect table holding `descs`; returns its address.
    fn table(&self, descs: &[RawDesc]) -> u64 {
        let at = self.alloc(16 * descs.len().max(1) as u64);
        for (i, desc) in descs.iter().enumerate() {
            desc.write_at(&self.mem, at + 16 * i as u64).unwrap();
        }
        at
    }

    fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("daemon.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Log lines written since the last call.
    fn new_log_lines(&mut self) -> Vec<String> {
        let lines = self.log_lines();
        let new = lines[self.log_seen.min(lines.len())..].to_vec();
        self.log_seen = lines.len();
        new
    }

    fn queue_size(&self) -> u16 {
        self.q.queue().size()
    }

    /// Reaps one used entry of the raw API, waiting at most `timeout`.
    fn wait_raw(&mut self, timeout: Duration) -> Option<Used> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(u) = self.q.queue_mut().pop_used() {
                return Some(u);
            }
            let now = Instant::now();
            if now >= deadline || !self.q.queue_mut().wait_used(deadline - now).unwrap() {
                return None;
            }
        }
    }

    /// Publishes `head` and kicks.
    fn push(&mut self, head: u16) {
        let q = self.q.queue_mut();
        q.push_avail(head);
        q.publish();
        q.kick().unwrap();
    }

    /// Submits the hostile chain `descs` (written into the descriptor table at their
    /// indexes) with head `head` and checks everything: the used entry, that guest
    /// memory changed by exactly `changes` (outside the rings), that the daemon logged
    /// exactly one ERROR line per entry of `errors` (each containing that text) and
    /// nothing else, and that the queue still serves normal I/O.
    #[track_caller]
    fn run(
        &mut self,
        descs: &[(u16, RawDesc)],
        head: u16,
        expect: Expect,
        changes: &[(u64, &[u8])],
        errors: &[&str],
    ) {
        let what = format!("chain {descs:x?} head {head}");
        for &(i, desc) in descs {
            self.q.queue_mut().write_desc(i, desc).unwrap();
        }
        // A FLUSH on the two last descriptors tells when an unanswered chain is past.
        let probe_head = self.queue_size() - 2;
        let mut changes = changes.to_vec();
        if let Expect::NoUsed = expect {
            assert!(descs.iter().all(|&(i, _)| i < probe_head));
            let hdr = self.probe;
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&VIRTIO_BLK_T_FLUSH.to_le_bytes());
            self.mem.write(hdr, &h).unwrap();
            let q = self.q.queue_mut();
            q.write_desc(probe_head, d(hdr, 16, R | N, probe_head + 1))
                .unwrap();
            q.write_desc(probe_head + 1, d(hdr + 16, 1, W, 0)).unwrap();
            changes.push((hdr + 16, &[VIRTIO_BLK_S_OK]));
        }
        let snapshot = self
            .mem
            .read_vec(self.mem.base(), MEM_BYTES as usize)
            .unwrap();
        let used_before = self.q.queue().used_idx();

        self.push(head);
        match expect {
            Expect::Used(len) => {
                let u = self
                    .wait_raw(TIMEOUT)
                    .unwrap_or_else(|| panic!("{what}: no used entry"));
                assert_eq!((u.id, u.len), (u32::from(head), len), "{what}: used entry");
            }
            Expect::NoUsed => {
                self.push(probe_head);
                let u = self
                    .wait_raw(TIMEOUT)
                    .unwrap_or_else(|| panic!("{what}: the FLUSH after it never completed"));
                assert_eq!(
                    (u.id, u.len),
                    (u32::from(probe_head), 1),
                    "{what}: the next used entry is the FLUSH's"
                );
            }
        }
        assert_eq!(
            self.q.queue().used_idx(),
            used_before.wrapping_add(1),
            "{what}: exactly one used entry"
        );
        self.check_memory(&what, &snapshot, &changes);
        self.check_serves(&what);
        self.check_log(&what, errors);
    }

    /// Guest memory now equals `snapshot` with `changes` applied, outside the rings.
    #[track_caller]
    fn check_memory(&self, what: &str, snapshot: &[u8], changes: &[(u64, &[u8])]) {
        let base = self.mem.base();
        let mut want = snapshot.to_vec();
        for &(addr, bytes) in changes {
            let at = (addr - base) as usize;
            want[at..at + bytes.len()].copy_from_slice(bytes);
        }
        let now = self.mem.read_vec(base, MEM_BYTES as usize).unwrap();
        let in_rings = |o: usize| {
            let a = base + o as u64;
            self.rings.iter().any(|&(s, l)| a >= s && a < s + l)
        };
        let bad: Vec<String> = (0..now.len())
            .filter(|&o| now[o] != want[o] && !in_rings(o))
            .take(8)
            .map(|o| {
                format!(
                    "{:#x}: {:#04x} (want {:#04x})",
                    base + o as u64,
                    now[o],
                    want[o]
                )
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{what}: guest memory changed where it must not: {}",
            bad.join(", ")
        );
    }

    /// A normal write and read on the same queue work, the daemon still runs.
    #[track_caller]
    fn check_serves(&mut self, what: &str) {
        let sector = SCRATCH_SECTORS.start + self.rng.next_u64() % 64;
        let buf = self.scratch;
        if !self.readonly {
            let data = self.rng.bytes(4096);
            self.mem.write(buf, &data).unwrap();
            let c = self
                .q
                .run(&BlkRequest::write(sector, &[(buf, 4096)]), TIMEOUT)
                .unwrap_or_else(|e| panic!("{what}: normal write afterwards: {e}"));
            assert_eq!(
                (c.status, c.used_len),
                (VIRTIO_BLK_S_OK, 1),
                "{what}: write"
            );
            self.mem.fill(buf, 4096, 0).unwrap();
            let c = self
                .q
                .run(
                    &BlkRequest::read(sector, &[(buf, 2048), (buf + 2048, 2048)]).indirect(true),
                    TIMEOUT,
                )
                .unwrap_or_else(|e| panic!("{what}: normal read afterwards: {e}"));
            assert_eq!(
                (c.status, c.used_len),
                (VIRTIO_BLK_S_OK, 4097),
                "{what}: read"
            );
            assert!(
                self.mem.read_vec(buf, 4096).unwrap() == data,
                "{what}: read back"
            );
        } else {
            // Read-only: a read of untouched sectors returns the image's pattern.
            let c = self
                .q
                .run(&BlkRequest::read(sector, &[(buf, 4096)]), TIMEOUT)
                .unwrap_or_else(|e| panic!("{what}: normal read afterwards: {e}"));
            assert_eq!(
                (c.status, c.used_len),
                (VIRTIO_BLK_S_OK, 4097),
                "{what}: read"
            );
            assert!(
                self.mem.read_vec(buf, 4096).unwrap() == pattern(sector * SECTOR, 4096),
                "{what}: read back"
            );
        }
        assert!(self.daemon.is_running(), "{what}: the daemon died");
        self.canary();
    }

    /// The lines logged since the last check are exactly one ERROR line per entry of
    /// `errors`, in order, each containing that text, and no WARN line (a request the
    /// daemon refuses must not reach the disk and fail there). (Lines of a request are written
    /// before the next request on the queue is served, so after `check_serves` all of
    /// them are in the file.)
    #[track_caller]
    fn check_log(&mut self, what: &str, errors: &[&str]) {
        let lines = self.new_log_lines();
        assert!(
            !lines.iter().any(|l| l.contains("panicked")),
            "{what}: the daemon panicked: {lines:#?}"
        );
        let warnings: Vec<&String> = lines.iter().filter(|l| l.contains(" WARN ")).collect();
        assert!(warnings.is_empty(), "{what}: warnings {warnings:#?}");
        let errs: Vec<&String> = lines.iter().filter(|l| l.contains(" ERROR ")).collect();
        assert_eq!(
            errs.len(),
            errors.len(),
            "{what}: ERROR lines {errs:#?}, want one for each of {errors:?}"
        );
        for (line, needle) in errs.iter().zip(errors) {
            assert!(
                line.contains(needle),
                "{what}: {line:?} should say {needle:?}"
            );
        }
    }

    fn outside(&self) -> u64 {
        self.mem.end()
    }
}

/// `[header R] [data W len] [status W]` at descriptors 0, 1, 2.
fn read_chain(hdr: u64, data: u64, len: u32, status: u64) -> Vec<(u16, RawDesc)> {
    vec![
        (0, d(hdr, 16, R | N, 1)),
        (1, d(data, len, W | N, 2)),
        (2, d(status, 1, W, 0)),
    ]
}

/// `[header R] [data R len] [status W]` at descriptors 0, 1, 2.
fn write_chain(hdr: u64, data: u64, len: u32, status: u64) -> Vec<(u16, RawDesc)> {
    vec![
        (0, d(hdr, 16, R | N, 1)),
        (1, d(data, len, R | N, 2)),
        (2, d(status, 1, W, 0)),
    ]
}

const IOERR: &[u8] = &[VIRTIO_BLK_S_IOERR];
const UNSUPP: &[u8] = &[VIRTIO_BLK_S_UNSUPP];
const OK: &[u8] = &[VIRTIO_BLK_S_OK];
const DROP_LOG: &str = "dropping request 0";

// ---- addresses outside guest memory ----------------------------------------------

#[test]
fn data_outside_guest_memory_is_ioerr() {
    let mut h = Hostile::new("data-outside", BlkArgs::default());
    let end = h.outside();
    let outside_log = "outside guest memory";
    let cases: &[(u32, u64, u32)] = &[
        (VIRTIO_BLK_T_IN, end, 4096),
        // Straddling the end: nothing of the part inside may be written.
        (VIRTIO_BLK_T_IN, end - 2048, 4096),
        (VIRTIO_BLK_T_IN, 0, 512),
        (VIRTIO_BLK_T_IN, u64::MAX - 1023, 4096),
        (VIRTIO_BLK_T_OUT, end, 4096),
        (VIRTIO_BLK_T_OUT, end - 512, 1024),
        (VIRTIO_BLK_T_OUT, u64::MAX - 511, 512),
    ];
    for &(kind, data, len) in cases {
        let hdr = h.header(kind, 8);
        let status = h.alloc(1);
        let chain = if kind == VIRTIO_BLK_T_IN {
            read_chain(hdr, data, len, status)
        } else {
            write_chain(hdr, data, len, status)
        };
        h.run(&chain, 0, ANSWERED, &[(status, IOERR)], &[outside_log]);
    }

    // The second of three data buffers outside: the first one stays untouched.
    let hdr = h.header(VIRTIO_BLK_T_IN, 0);
    let data = h.alloc(1024);
    let status = h.alloc(1);
    let chain = [
        (0, d(hdr, 16, R | N, 1)),
        (1, d(data, 512, W | N, 2)),
        (2, d(end + 4096, 512, W | N, 3)),
        (3, d(data + 512, 512, W | N, 4)),
        (4, d(status, 1, W, 0)),
    ];
    h.run(&chain, 0, ANSWERED, &[(status, IOERR)], &[outside_log]);
    // Same as one indirect chain.
    let hdr = h.header(VIRTIO_BLK_T_IN, 0);
    let descs: Vec<RawDesc> = chain.iter().map(|&(_, desc)| desc).collect();
    let table = h.table(&[
        RawDesc {
            addr: hdr,
            ..descs[0]
        },
        descs[1],
        descs[2],
        descs[3],
        descs[4],
    ]);
    h.run(
        &[(0, d(table, 5 * 16, I, 0))],
        0,
        ANSWERED,
        &[(status, IOERR)],
        &[outside_log],
    );

    // GET_ID into a buffer outside memory: IOERR.
    let hdr = h.header(VIRTIO_BLK_T_GET_ID, 0);
    let status = h.alloc(1);
    h.run(
        &read_chain(hdr, end, 20, status),
        0,
        ANSWERED,
        &[(status, IOERR)],
        &[],
    );
    // DISCARD and WRITE_ZEROES segments outside memory: IOERR, the disk untouched.
    for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        let hdr = h.header(kind, 0);
        let status = h.alloc(1);
        h.run(
            &write_chain(hdr, end, 16, status),
            0,
            ANSWERED,
            &[(status, IOERR)],
            &[],
        );
    }
    let file = read_file(&h.image);
    assert!(
        file[..1024 * 512] == pattern(0, 1024 * 512),
        "disk untouched"
    );
}

#[test]
fn header_outside_guest_memory_is_dropped() {
    let mut h = Hostile::new("header-outside", BlkArgs::default());
    let end = h.outside();
    for hdr in [end, end - 8, 0, u64::MAX - 7] {
        let data = h.alloc(512);
        let status = h.alloc(1);
        h.run(
            &read_chain(hdr, data, 512, status),
            0,
            DROPPED,
            &[],
            &[DROP_LOG],
        );
    }
}

#[test]
fn status_outside_guest_memory_is_dropped() {
    let mut h = Hostile::new("status-outside", BlkArgs::default());
    let end = h.outside();
    for (status, len) in [(end, 1), (0, 1), (u64::MAX, 1), (u64::MAX, 2), (end - 1, 2)] {
        let hdr = h.header(VIRTIO_BLK_T_IN, 0);
        let data = h.alloc(512);
        let chain = [
            (0, d(hdr, 16, R | N, 1)),
            (1, d(data, 512, W | N, 2)),
            (2, d(status, len, W, 0)),
        ];
        h.run(&chain, 0, DROPPED, &[], &[DROP_LOG]);
    }
}

#[test]
fn indirect_table_outside_guest_memory_is_dropped() {
    let mut h = Hostile::new("indirect-outside", BlkArgs::default());
    let end = h.outside();
    // Outside, straddling the end, zero-length, not a multiple of 16 bytes.
    let tables = [(end, 48), (end - 32, 48), (0, 48), (u64::MAX - 15, 48)];
    for (table, len) in tables {
        h.run(&[(0, d(table, len, I, 0))], 0, DROPPED, &[], &[DROP_LOG]);
    }
    // A valid table, but given with a bad length; then with the right one.
    for len in [0, 40, 47, 48] {
        let hdr = h.header(VIRTIO_BLK_T_IN, 0);
        let data = h.alloc(512);
        let status = h.alloc(1);
        let descs: Vec<RawDesc> = read_chain(hdr, data, 512, status)
            .iter()
            .map(|&(_, desc)| desc)
            .collect();
        let table = h.table(&descs);
        if len == 48 {
            let want = pattern(0, 512);
            h.run(
                &[(0, d(table, len, I, 0))],
                0,
                Expect::Used(513),
                &[(data, &want), (status, OK)],
                &[],
            );
        } else {
            h.run(&[(0, d(table, len, I, 0))], 0, DROPPED, &[], &[DROP_LOG]);
        }
    }
}

// ---- malformed chains --------------------------------------------------------------

#[test]
fn short_header_is_dropped() {
    let mut h = Hostile::new("short-header", BlkArgs::default());
    for len in [0, 8, 15] {
        let hdr = h.header(VIRTIO_BLK_T_IN, 0);
        let data = h.alloc(512);
        let status = h.alloc(1);
        let chain = [
            (0, d(hdr, len, R | N, 1)),
            (1, d(data, 512, W | N, 2)),
            (2, d(status, 1, W, 0)),
        ];
        h.run(&chain, 0, DROPPED, &[], &[DROP_LOG]);
    }
    // A FLUSH that is nothing but a status byte.
    let status = h.alloc(1);
    h.run(&[(0, d(status, 1, W, 0))], 0, DROPPED, &[], &[DROP_LOG]);
}

#[test]
fn device_writable_header_is_dropped() {
    let mut h = Hostile::new("writable-header", BlkArgs::default());
    let hdr = h.header(VIRTIO_BLK_T_IN, 0);
    let data = h.alloc(512);
    let status = h.alloc(1);
    let chain = [
        (0, d(hdr, 16, W | N, 1)),
        (1, d(data, 512, W | N, 2)),
        (2, d(status, 1, W, 0)),
    ];
    h.run(&chain, 0, DROPPED, &[], &[DROP_LOG]);
    let hdr = h.header(VIRTIO_BLK_T_FLUSH, 0);
    let chain = [(0, d(hdr, 16, W | N, 1)), (1, d(status, 1, W, 0))];
    h.run(&chain, 0, DROPPED, &[], &[DROP_LOG]);
}

#[test]
fn read_only_status_is_dropped() {
    let mut h = Hostile::new("readonly-status", BlkArgs::default());
    // A read: the read-only status follows the device-writable data.
    let hdr = h.header(VIRTIO_BLK_T_IN, 0);
    let data = h.alloc(512);
    let status = h.alloc(1);
    let chain = [
        (0, d(hdr, 16, R | N, 1)),
        (1, d(data, 512, W | N, 2)),
        (2, d(status, 1, R, 0)),
    ];
    h.run(&chain, 0, DROPPED, &[], &[DROP_LOG]);
    // A write and a FLUSH: then nothing at all is device-writable.
    let hdr = h.header(VIRTIO_BLK_T_OUT, 0);
    let chain = [
        (0, d(hdr, 16, R | N, 1)),
        (1, d(data, 512, R | N, 2)),
        (2, d(status, 1, R, 0)),
    ];
    h.run(&chain, 0, DROPPED, &[], &[DROP_LOG]);
    let hdr = h.header(VIRTIO_BLK_T_FLUSH, 0);
    let chain = [(0, d(hdr, 16, R | N, 1)), (1, d(status, 1, R, 0))];
    h.run(&chain, 0, DROPPED, &[], &[DROP_LOG]);
    let file = read_file(&h.image);
    assert!(file[..512] == pattern(0, 512), "the write was not done");
}

#[test]
fn missing_status_descriptor() {
    let mut h = Hostile::new("missing-status", BlkArgs::default());
    // A write or a FLUSH without a status: nothing device-writable, dropped.
    let hdr = h.header(VIRTIO_BLK_T_OUT, 0);
    let data = h.alloc(512);
    let chain = [(0, d(hdr, 16, R | N, 1)), (1, d(data, 512, R, 0))];
    h.run(&chain, 0, DROPPED, &[], &[DROP_LOG]);
    let hdr = h.header(VIRTIO_BLK_T_FLUSH, 0);
    h.run(&[(0, d(hdr, 16, R, 0))], 0, DROPPED, &[], &[DROP_LOG]);
    // A read without a status: with any layout, the last byte of the data buffer is
    // the status; the data is then 511 bytes, not whole sectors: IOERR there.
    let hdr = h.header(VIRTIO_BLK_T_IN, 0);
    let data = h.alloc(512);
    let chain = [(0, d(hdr, 16, R | N, 1)), (1, d(data, 512, W, 0))];
    h.run(&chain, 0, ANSWERED, &[(data + 511, IOERR)], &[]);
    let file = read_file(&h.image);
    assert!(file[..512] == pattern(0, 512), "the write was not done");
}

#[test]
fn data_length_not_a_sector_multiple_is_ioerr() {
    let mut h = Hostile::new("odd-length", BlkArgs::default());
    for (kind, len) in [
        (VIRTIO_BLK_T_IN, 100),
        (VIRTIO_BLK_T_IN, 513),
        (VIRTIO_BLK_T_IN, 4095),
        (VIRTIO_BLK_T_OUT, 511),
        (VIRTIO_BLK_T_OUT, 1000),
    ] {
        let hdr = h.header(kind, 4);
        let data = h.alloc(u64::from(len));
        let status = h.alloc(1);
        let chain = if kind == VIRTIO_BLK_T_IN {
            read_chain(hdr, data, len, status)
        } else {
            write_chain(hdr, data, len, status)
        };
        h.run(&chain, 0, ANSWERED, &[(status, IOERR)], &[]);
    }
    let file = read_file(&h.image);
    assert!(file[..8192] == pattern(0, 8192), "nothing written");
}

#[test]
fn sectors_past_the_end_or_overflowing_are_ioerr() {
    let mut h = Hostile::new("past-end", BlkArgs::default());
    let cases: &[(u64, u32)] = &[
        (SECTORS, 512),
        (SECTORS - 1, 1024),
        (SECTORS - 8, 8192),
        (SECTORS + 1_000_000, 512),
        // sector * 512 overflows u64.
        (u64::MAX / 256, 512),
        (u64::MAX, 512),
        (1 << 55, 512),
        // sector * 512 fits, + length overflows.
        (u64::MAX / 512, 4096),
    ];
    for &(sector, len) in cases {
        for kind in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT] {
            let hdr = h.header(kind, sector);
            let data = h.alloc(u64::from(len));
            let status = h.alloc(1);
            let chain = if kind == VIRTIO_BLK_T_IN {
                read_chain(hdr, data, len, status)
            } else {
                write_chain(hdr, data, len, status)
            };
            h.run(&chain, 0, ANSWERED, &[(status, IOERR)], &[]);
        }
    }
    // DISCARD / WRITE_ZEROES segments past the end or overflowing.
    let segs: &[(u64, u32, u32)] = &[
        (SECTORS, 1, 0),
        (SECTORS - 1, 2, 0),
        (u64::MAX / 256, 1, 0),
        (u64::MAX / 512, 8, 0),
        (0, u32::MAX, 0),
    ];
    for &seg in segs {
        for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
            let hdr = h.header(kind, 0);
            let (s, slen) = h.segments(&[seg]);
            let status = h.alloc(1);
            h.run(
                &write_chain(hdr, s, slen, status),
                0,
                ANSWERED,
                &[(status, IOERR)],
                &[],
            );
        }
    }
    let file = read_file(&h.image);
    assert_eq!(file.len() as u64, IMAGE_BYTES, "the image did not grow");
    assert_unchanged_but_scratch(&file);
}

/// The image still holds its pattern, except where `check_serves` writes.
#[track_caller]
fn assert_unchanged_but_scratch(file: &[u8]) {
    let (from, to) = (SCRATCH_SECTORS.start * SECTOR, SCRATCH_SECTORS.end * SECTOR);
    assert!(
        file[..from as usize] == pattern(0, from as usize),
        "image changed"
    );
    assert!(
        file[to as usize..] == pattern(to, (IMAGE_BYTES - to) as usize),
        "image changed"
    );
}

#[test]
fn request_ending_at_the_last_sector_is_ok() {
    let mut h = Hostile::new("last-sector", BlkArgs::default());
    // Read the last sector, then the last 8.
    for (sector, len) in [(SECTORS - 1, 512u32), (SECTORS - 8, 4096)] {
        let hdr = h.header(VIRTIO_BLK_T_IN, sector);
        let data = h.alloc(u64::from(len));
        let status = h.alloc(1);
        let want = pattern(sector * SECTOR, len as usize);
        h.run(
            &read_chain(hdr, data, len, status),
            0,
            Expect::Used(len + 1),
            &[(data, &want), (status, OK)],
            &[],
        );
    }
    // Write the last 8 sectors.
    let hdr = h.header(VIRTIO_BLK_T_OUT, SECTORS - 8);
    let data = h.alloc(4096);
    let new = vec![0x3c; 4096];
    h.mem.write(data, &new).unwrap();
    let status = h.alloc(1);
    h.run(
        &write_chain(hdr, data, 4096, status),
        0,
        ANSWERED,
        &[(status, OK)],
        &[],
    );
    let file = read_file(&h.image);
    assert_eq!(file.len() as u64, IMAGE_BYTES);
    assert!(
        file[(IMAGE_BYTES - 4096) as usize..] == new[..],
        "last sectors written"
    );
    // Zero the last sector.
    let hdr = h.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    let (s, slen) = h.segments(&[(SECTORS - 1, 1, 0)]);
    let status = h.alloc(1);
    h.run(
        &write_chain(hdr, s, slen, status),
        0,
        ANSWERED,
        &[(status, OK)],
        &[],
    );
    let file = read_file(&h.image);
    assert_eq!(file.len() as u64, IMAGE_BYTES);
    assert!(
        file[(IMAGE_BYTES - 512) as usize..] == [0; 512],
        "last sector zeroed"
    );
    assert!(file[(IMAGE_BYTES - 4096) as usize..(IMAGE_BYTES - 512) as usize] == new[..3584]);
}

// ---- loops, overlong chains, nested indirect --------------------------------------

#[test]
fn looping_direct_chain_is_dropped() {
    let mut h = Hostile::new("direct-loop", BlkArgs::default());
    let hdr = h.header(VIRTIO_BLK_T_IN, 0);
    let data = h.alloc(512);
    let status = h.alloc(1);
    // status -> data -> status -> ...: longer than the queue.
    let chain = [
        (0, d(hdr, 16, R | N, 1)),
        (1, d(data, 512, W | N, 2)),
        (2, d(status, 1, W | N, 1)),
    ];
    h.run(&chain, 0, DROPPED, &[], &[DROP_LOG]);
    // A descriptor pointing at itself.
    let hdr = h.header(VIRTIO_BLK_T_OUT, 0);
    h.run(&[(0, d(hdr, 16, R | N, 0))], 0, DROPPED, &[], &[DROP_LOG]);
    // A NEXT outside the table.
    let hdr = h.header(VIRTIO_BLK_T_FLUSH, 0);
    let chain = [(0, d(hdr, 16, R | N, QUEUE_SIZE)), (1, d(status, 1, W, 0))];
    h.run(&chain, 0, DROPPED, &[], &[DROP_LOG]);
    // The longest chain there can be, the whole table without a loop, is fine:
    // header + 14 data buffers + status.
    let hdr = h.header(VIRTIO_BLK_T_IN, 16);
    let data = h.alloc(14 * 512);
    let mut chain = vec![(0, d(hdr, 16, R | N, 1))];
    for i in 1..=14u16 {
        chain.push((i, d(data + 512 * u64::from(i - 1), 512, W | N, i + 1)));
    }
    chain.push((15, d(status, 1, W, 0)));
    let want = pattern(16 * SECTOR, 14 * 512);
    h.run(
        &chain,
        0,
        Expect::Used(14 * 512 + 1),
        &[(data, &want), (status, OK)],
        &[],
    );
}

#[test]
fn looping_indirect_table_is_dropped() {
    let mut h = Hostile::new("indirect-loop", BlkArgs::default());
    let cases: [&dyn Fn(u64, u64, u64) -> Vec<RawDesc>; 3] = [
        // Entry 2 leads back to entry 1.
        &|hdr, data, status| {
            vec![
                d(hdr, 16, R | N, 1),
                d(data, 512, W | N, 2),
                d(status, 1, W | N, 1),
                d(status, 1, W, 0),
            ]
        },
        // Entry 0 leads to itself.
        &|hdr, _, _| vec![d(hdr, 16, R | N, 0)],
        // The last entry leads outside the table.
        &|hdr, data, status| {
            vec![
                d(hdr, 16, R | N, 1),
                d(data, 512, W | N, 2),
                d(status, 1, W | N, 3),
            ]
        },
    ];
    for make in cases {
        let hdr = h.header(VIRTIO_BLK_T_IN, 0);
        let data = h.alloc(512);
        let status = h.alloc(1);
        let descs = make(hdr, data, status);
        let table = h.table(&descs);
        let len = 16 * descs.len() as u32;
        h.run(&[(0, d(table, len, I, 0))], 0, DROPPED, &[], &[DROP_LOG]);
    }
}

#[test]
fn nested_indirect_descriptor_is_dropped() {
    let mut h = Hostile::new("nested-indirect", BlkArgs::default());
    let hdr = h.header(VIRTIO_BLK_T_IN, 0);
    let data = h.alloc(512);
    let status = h.alloc(1);
    // An inner table that would be a valid request on its own.
    let inner = h.alloc(48);
    for (i, &(_, desc)) in read_chain(hdr, data, 512, status).iter().enumerate() {
        desc.write_at(&h.mem, inner + 16 * i as u64).unwrap();
    }
    // An outer table whose only entry is indirect.
    let outer = h.alloc(16);
    d(inner, 48, I, 0).write_at(&h.mem, outer).unwrap();
    h.run(&[(0, d(outer, 16, I, 0))], 0, DROPPED, &[], &[DROP_LOG]);
    // An outer table with the header, then an indirect entry for the rest.
    let hdr = h.header(VIRTIO_BLK_T_IN, 0);
    let inner2 = h.alloc(32);
    d(data, 512, W | N, 1).write_at(&h.mem, inner2).unwrap();
    d(status, 1, W, 0).write_at(&h.mem, inner2 + 16).unwrap();
    let outer2 = h.alloc(32);
    d(hdr, 16, R | N, 1).write_at(&h.mem, outer2).unwrap();
    d(inner2, 32, I, 0).write_at(&h.mem, outer2 + 16).unwrap();
    h.run(&[(0, d(outer2, 32, I, 0))], 0, DROPPED, &[], &[DROP_LOG]);
}

// ---- requests the disk refuses ----------------------------------------------------

#[test]
fn write_to_a_readonly_disk_is_ioerr() {
    let mut h = Hostile::new(
        "readonly",
        BlkArgs {
            readonly: true,
            ..BlkArgs::default()
        },
    );
    let hdr = h.header(VIRTIO_BLK_T_OUT, 0);
    let data = h.alloc(4096);
    h.mem.write(data, &[0x11; 4096]).unwrap();
    let status = h.alloc(1);
    h.run(
        &write_chain(hdr, data, 4096, status),
        0,
        ANSWERED,
        &[(status, IOERR)],
        &[],
    );
    for (kind, flags) in [
        (VIRTIO_BLK_T_DISCARD, 0),
        (VIRTIO_BLK_T_WRITE_ZEROES, 0),
        (VIRTIO_BLK_T_WRITE_ZEROES, 1),
    ] {
        let hdr = h.header(kind, 0);
        let (s, slen) = h.segments(&[(0, 8, flags)]);
        let status = h.alloc(1);
        h.run(
            &write_chain(hdr, s, slen, status),
            0,
            ANSWERED,
            &[(status, IOERR)],
            &[],
        );
    }
    // FLUSH is fine on a read-only disk.
    let hdr = h.header(VIRTIO_BLK_T_FLUSH, 0);
    let status = h.alloc(1);
    h.run(
        &[(0, d(hdr, 16, R | N, 1)), (1, d(status, 1, W, 0))],
        0,
        ANSWERED,
        &[(status, OK)],
        &[],
    );
    assert!(
        read_file(&h.image) == pattern(0, IMAGE_BYTES as usize),
        "image unchanged"
    );
}

#[test]
fn unknown_request_type_is_unsupp() {
    let mut h = Hostile::new("unknown-type", BlkArgs::default());
    // 2 (legacy SCSI), 10 (GET_LIFETIME), 14 (SECURE_ERASE), 77, u32::MAX.
    for kind in [2, 10, 14, 77, u32::MAX] {
        for writable in [true, false] {
            let hdr = h.header(kind, 0);
            let data = h.alloc(512);
            let status = h.alloc(1);
            let chain = if writable {
                read_chain(hdr, data, 512, status)
            } else {
                write_chain(hdr, data, 512, status)
            };
            h.run(&chain, 0, ANSWERED, &[(status, UNSUPP)], &[]);
        }
    }
    assert!(read_file(&h.image)[..512] == pattern(0, 512));
}

// ---- broken rings ------------------------------------------------------------------

#[test]
fn head_index_outside_the_queue_is_dropped() {
    let mut h = Hostile::new("bad-head", BlkArgs::default());
    // Nothing can go in the used ring for such a head (its id would be invalid too):
    // the daemon skips it, logs it once, and serves what follows.
    for head in [QUEUE_SIZE, QUEUE_SIZE + 1, 1000, u16::MAX] {
        let log = format!("dropping request {head}");
        h.run(&[], head, Expect::NoUsed, &[], &[&log]);
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `fields[0]` is field 3.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn avail_index_far_ahead(event_idx: bool) {
    let mut h = Hostile::with_config(
        &format!("avail-jump-{event_idx}"),
        BlkArgs::default(),
        QUEUE_SIZE,
        4,
        Hostile::driver_config(event_idx),
    );
    assert_eq!(h.q.queue().event_idx(), event_idx);
    let what = "avail index 1000 ahead";
    let good = h.q.queue().avail_idx();
    let used = h.q.queue().used_idx();
    let snapshot = h.mem.read_vec(h.mem.base(), MEM_BYTES as usize).unwrap();
    h.q.queue_mut().set_avail_idx(good.wrapping_add(1000));
    h.q.queue_mut().kick().unwrap();
    // The daemon must not spin on it: over half a second it uses little CPU.
    std::thread::sleep(Duration::from_millis(50));
    let before = cpu_ticks(h.daemon.pid());
    std::thread::sleep(Duration::from_millis(500));
    let spent = cpu_ticks(h.daemon.pid()) - before;
    assert!(
        spent <= 10,
        "{what}: the daemon used {spent} ticks of CPU in 500 ms"
    );
    assert_eq!(h.q.queue().used_idx(), used, "{what}: nothing returned");
    h.check_memory(what, &snapshot, &[]);
    assert!(h.daemon.is_running());
    // A second kick with the index still wrong is refused the same way.
    h.q.queue_mut().kick().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // Logged, but not over and over.
    let lines = h.new_log_lines();
    let errors = lines.iter().filter(|l| l.contains(" ERROR ")).count();
    assert!(
        (1..=4).contains(&errors),
        "{what}: {errors} ERROR lines: {lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains("panicked")));

    // Back to the right index: the queue serves again.
    h.q.queue_mut().set_avail_idx(good);
    h.check_serves(what);
    h.check_log(what, &[]);

    // Left wrong, then the frontend goes away: the next one is served.
    let good = h.q.queue().avail_idx();
    h.q.queue_mut()
        .set_avail_idx(good.wrapping_add(QUEUE_SIZE + 1));
    h.q.queue_mut().kick().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    h.reconnect(QUEUE_SIZE, 4);
    h.check_serves("a new frontend after the avail index went wrong");
}

#[test]
fn avail_index_far_ahead_event_idx() {
    avail_index_far_ahead(true);
}

/// Without EVENT_IDX the daemon must also clear VRING_USED_F_NO_NOTIFY again, or the
/// driver would never kick it after putting the index right.
#[test]
fn avail_index_far_ahead_no_event_idx() {
    avail_index_far_ahead(false);
}

// ---- broken connections ------------------------------------------------------------

/// Stops (SIGSTOP) or continues (SIGCONT) the daemon, and waits until it is so.
fn set_stopped(daemon: &mut DaemonProcess, stop: bool) {
    let pid = daemon.pid();
    let signal = if stop { libc::SIGSTOP } else { libc::SIGCONT };
    // SAFETY: kill() on our own child's pid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat[stat.rfind(')').unwrap() + 2..].chars().next();
        if (state == Some('T')) == stop {
            return;
        }
        assert!(Instant::now() < deadline, "daemon state {state:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn disconnect_mid_io(engine: Engine, direct: bool) {
    let daemon = BlkArgs {
        engine: Some(engine),
        // O_DIRECT I/O goes to the device, so it is still in flight in the kernel
        // (writing guest memory, for reads) when the frontend hangs up.
        direct,
        ..BlkArgs::default()
    };
    let mut h = Hostile::with(&format!("disconnect-{engine}-{direct}"), daemon, 128, 64);
    let mut rng = Rng::new(99);
    let mut unfinished = Vec::new();
    for round in 0..4 {
        // 64 requests of 8 KiB in flight (writes and reads, half of them indirect),
        // then the frontend hangs up without waiting for any of them.
        let buf = h.mem.alloc(64 * 8192, 4096).unwrap();
        h.mem.write(buf, &rng.bytes(64 * 8192)).unwrap();
        for i in 0..64u64 {
            let data = [(buf + i * 8192, 8192)];
            let sector = (i * 16) % (SECTORS - 16);
            let req = if i % 2 == 0 {
                BlkRequest::write(sector, &data)
            } else {
                BlkRequest::read(sector, &data)
            };
            h.q.add(&req.indirect(i % 4 < 2), i).unwrap();
        }
        let used = h.q.queue().used_idx();
        let (old_mem, old_used_idx) = (h.mem.clone(), h.q.queue().addrs().used + 2);
        // In even rounds the daemon is frozen until after the hang-up, so that none
        // of the 64 can be answered before it; odd rounds race freely.
        let freeze = round % 2 == 0;
        if freeze {
            set_stopped(&mut h.daemon, true);
        }
        h.q.submit().unwrap();
        h.disconnect();
        // How many the daemon had returned when the socket closed.
        let completed = old_mem
            .read_obj::<u16>(old_used_idx)
            .unwrap()
            .wrapping_sub(used);
        unfinished.push(64 - completed);
        if freeze {
            assert_eq!(completed, 0, "round {round}: the daemon was stopped");
            set_stopped(&mut h.daemon, false);
        }
        h.reconnect(128, 64);
        // The new frontend works, and its requests are not mixed up with the old ones.
        h.check_serves(&format!(
            "round {round}: new frontend after a disconnect mid-I/O"
        ));
        h.check_log(&format!("round {round}"), &[]);
    }
    eprintln!("{engine}: requests unfinished at each hang-up: {unfinished:?}");
    let text = std::fs::read_to_string(h.dir.join("daemon.log")).unwrap();
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn frontend_disconnecting_mid_io_io_uring() {
    disconnect_mid_io(Engine::IoUring, false);
}

#[test]
fn frontend_disconnecting_mid_io_io_uring_direct() {
    disconnect_mid_io(Engine::IoUring, true);
}

#[test]
fn frontend_disconnecting_mid_io_sync() {
    disconnect_mid_io(Engine::Sync, false);
}

/// A vhost-user message header: request, flags (version 1), payload size.
fn vu_header(request: u32, flags: u32, size: u32) -> Vec<u8> {
    [request, flags, size]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

#[test]
fn garbage_on_the_socket_then_a_new_frontend_works() {
    let mut h = Hostile::new("garbage", BlkArgs::default());
    h.disconnect();
    let mut rng = Rng::new(7);
    let mut with_payload = vu_header(5, 1, 0x28); // SET_MEM_TABLE, no fds
    with_payload.extend(rng.bytes(0x28));
    let mut features_then_junk = vu_header(1, 1, 0); // GET_FEATURES
    features_then_junk.extend(rng.bytes(100));
    let garbage: Vec<Vec<u8>> = vec![
        rng.bytes(4096),
        rng.bytes(3),
        vu_header(0xdead_beef, 1, 0),
        vu_header(1, 1, 0x1000),       // says a payload follows; none does
        vu_header(1, 1, u32::MAX),     // an absurd size
        vu_header(15, 0xffff_ffff, 8), // SET_VRING_BASE with bad flags, no payload
        with_payload,
        features_then_junk,
        Vec::new(), // connect and hang up at once
    ];
    let sock = h.dir.join("blk.sock");
    for (i, bytes) in garbage.iter().enumerate() {
        let mut s = UnixStream::connect(&sock).unwrap();
        // The daemon may have hung up already: write errors are fine.
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        // Wait (bounded) for the daemon to be done with this connection.
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut sink);
        assert!(h.daemon.is_running(), "garbage {i}: the daemon died");
    }
    h.reconnect(QUEUE_SIZE, 4);
    h.check_serves("a new frontend after garbage");
    let text = std::fs::read_to_string(h.dir.join("daemon.log")).unwrap();
    assert!(!text.contains("panicked"), "{text}");
    // Frontend 1 was DaemonProcess's probe, 2 the first driver; each garbage
    // connection was served as a frontend and ended, then the new driver came.
    let first = 3;
    for n in first..first + garbage.len() {
        assert!(
            text.contains(&format!("frontend {n} disconnected"))
                || text.contains(&format!("frontend {n} connection ended")),
            "garbage {}: connection {n} not served and ended:\n{text}",
            n - first
        );
    }
    let last = first + garbage.len();
    assert!(
        text.contains(&format!("frontend {last} connected")),
        "{text}"
    );
}

// ---- log flooding ------------------------------------------------------------------

#[test]
fn a_flood_of_bad_requests_logs_a_bounded_number_of_lines() {
    const BATCH: u16 = 250;
    let mut h = Hostile::with("flood", BlkArgs::default(), 256, 4);
    let started = Instant::now();
    // 1000 chains without a status (dropped), 1000 reads into memory that does not
    // exist (IOERR, logged) and 1000 heads outside the queue.
    let hdr = h.header(VIRTIO_BLK_T_IN, 0);
    let status = h.alloc(1);
    let table = h.table(&[
        d(hdr, 16, R | N, 1),
        d(h.outside(), 4096, W | N, 2),
        d(status, 1, W, 0),
    ]);
    for (kind, expect_len) in [(0, 0), (1, 1)] {
        for _ in 0..1000 / BATCH {
            for i in 0..BATCH {
                let desc = if kind == 0 {
                    d(hdr, 16, R, 0)
                } else {
                    d(table, 48, I, 0)
                };
                h.q.queue_mut().write_desc(i, desc).unwrap();
                h.q.queue_mut().push_avail(i);
            }
            h.q.queue_mut().publish();
            h.q.queue_mut().kick().unwrap();
            for i in 0..BATCH {
                let u = h.wait_raw(TIMEOUT).expect("a used entry");
                assert_eq!((u.id, u.len), (u32::from(i), expect_len), "flood {kind}");
            }
        }
    }
    for _ in 0..1000 / BATCH {
        for _ in 0..BATCH {
            h.q.queue_mut().push_avail(300);
        }
        h.q.queue_mut().publish();
        h.q.queue_mut().kick().unwrap();
        // The next request on the queue completes once they are all past.
        h.check_serves("flood of bad heads");
    }
    let elapsed = started.elapsed().as_secs();
    let lines = h.new_log_lines();
    assert!(!lines.iter().any(|l| l.contains("panicked")), "{lines:#?}");
    // Each call site lets 10 lines through at once and then one a second.
    let bound = 3 * (10 + elapsed as usize + 1);
    eprintln!(
        "3000 bad requests in {elapsed} s: {} log lines",
        lines.len()
    );
    assert!(
        lines.len() <= bound,
        "{} log lines for 3000 bad requests in {elapsed} s (at most {bound}): {:#?}",
        lines.len(),
        &lines[..lines.len().min(40)]
    );
    // After a quiet second the next bad request is logged again, with the count of
    // what was suppressed.
    std::thread::sleep(Duration::from_millis(1100));
    let hdr = h.header(VIRTIO_BLK_T_IN, 0);
    h.run(
        &[(0, d(hdr, 16, R, 0))],
        0,
        DROPPED,
        &[],
        &["similar lines suppressed"],
    );
}

/// A frontend (anyone who can reach the socket) flooding it: 300 connections, each
/// sending a message the vhost-user library refuses with an error line of its own
/// (SET_VRING_NUM with size 0), then hanging up. The library's lines and ours
/// (connected, ended) are each limited per call site: a few dozen lines, not 900.
#[test]
fn a_frontend_flooding_the_socket_logs_a_bounded_number_of_lines() {
    let mut h = Hostile::new("socket-flood", BlkArgs::default());
    h.disconnect();
    let sock = h.dir.join("blk.sock");
    let _ = h.new_log_lines();
    let started = Instant::now();
    const CONNECTIONS: usize = 300;
    for _ in 0..CONNECTIONS {
        let mut s = UnixStream::connect(&sock).unwrap();
        let mut msg = vu_header(3, 1, 0); // SET_OWNER
        msg.extend(vu_header(8, 1, 8)); // SET_VRING_NUM { index 0, num 0 }
        msg.extend([0u8; 8]);
        let _ = s.write_all(&msg);
        let _ = s.shutdown(std::net::Shutdown::Write);
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
    }
    h.reconnect(QUEUE_SIZE, 4);
    h.check_serves("a frontend after the flood");
    let elapsed = started.elapsed().as_secs() as usize;
    let lines = h.new_log_lines();
    let refused = lines.iter().filter(|l| l.contains("out of range")).count();
    eprintln!(
        "{CONNECTIONS} flooding connections in {elapsed} s: {} log lines, {refused} from the library",
        lines.len()
    );
    assert!(refused >= 1, "the library's line is there: {lines:#?}");
    // The library's call site: 10 at once, then one a second; ours (connected,
    // disconnected or ended): 30 at once each, then one a second.
    let bound = (10 + elapsed + 1) + 3 * (30 + elapsed + 1) + 4;
    assert!(
        lines.len() <= bound,
        "{} log lines (at most {bound}): {:#?}",
        lines.len(),
        &lines[..lines.len().min(40)]
    );
}
