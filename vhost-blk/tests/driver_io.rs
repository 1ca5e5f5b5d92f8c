//! Functional tests of the daemon through the user-space vhost-user driver: config
//! space and features, reads and writes (direct and indirect chains, many segments,
//! many requests in flight on two queues at once) with both the io_uring and the sync
//! engine, FLUSH, GET_ID, DISCARD and WRITE_ZEROES, the null engine, and that
//! acknowledged data survives a SIGKILL of the daemon.
//!
//! Each test runs its own daemon (a child process) on an image in its own temporary
//! folder, and checks what the driver reads against the image file itself.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhostkit_driver::blk::{
    self, BlkCompletion, BlkDevice, BlkQueue, BlkRequest, DiscardSegment, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vhostkit_driver::{DriverConfig, GuestMem};
use vhostkit_tests::daemon::DaemonProcess;
use vhostkit_tests::launch::blk::{BlkArgs, Engine};
use vhostkit_tests::launch::{Launch, SeccompAction};
use vhostkit_tests::{Rng, TempDir};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-blk");
const TIMEOUT: Duration = Duration::from_secs(10);
const SECTOR: u64 = 512;
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const PROTOCOL_FEATURES_BIT: u32 = 30;

/// A daemon run with `daemon` listening on `dir/blk.sock`, its stderr in `dir/<log>`.
fn spawn_daemon(dir: &TempDir, log: &str, daemon: BlkArgs) -> DaemonProcess {
    spawn_confined(dir, log, daemon, None)
}

/// The same with `--seccomp seccomp` (`None`: the daemon's default).
fn spawn_confined(
    dir: &TempDir,
    log: &str,
    daemon: BlkArgs,
    seccomp: Option<SeccompAction>,
) -> DaemonProcess {
    let sock = dir.join("blk.sock");
    let mut launch = Launch::on_socket(&sock, daemon);
    launch.common.seccomp = seccomp;
    let mut cmd = launch.command(Path::new(BIN));
    cmd.env_remove("RUST_LOG")
        .stderr(Stdio::from(File::create(dir.join(log)).unwrap()));
    DaemonProcess::spawn("vhost-user-blk", cmd, &sock, TIMEOUT).unwrap()
}

fn connect(dir: &TempDir, mem_size: u64) -> BlkDevice {
    let cfg = DriverConfig {
        mem_size,
        max_indirect: 256,
        ..DriverConfig::default()
    };
    BlkDevice::connect(dir.join("blk.sock"), &cfg).unwrap()
}

/// Waits until the daemon's log holds `needle` and returns the log.
fn wait_for_log(dir: &TempDir, log: &str, needle: &str) -> String {
    vhostkit_tests::wait_for_log(&dir.join(log), needle, TIMEOUT)
}

fn read_file(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

/// Position of the first differing byte, for readable failures.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or(if a.len() == b.len() {
            None
        } else {
            Some(a.len().min(b.len()))
        })
}

#[track_caller]
fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if let Some(i) = first_difference(got, want) {
        panic!(
            "{what}: first difference at byte {i} of {} (got {:?}, want {:?})",
            want.len(),
            got.get(i),
            want.get(i)
        );
    }
}

#[track_caller]
fn assert_ok(c: BlkCompletion, used_len: u32, what: &str) {
    assert_eq!(
        (c.status, c.used_len),
        (VIRTIO_BLK_S_OK, used_len),
        "{what}: status and used length"
    );
}

/// Splits `len` bytes into `pieces` non-empty pieces of arbitrary (not
/// sector-multiple) lengths and lays them out in guest memory from `buf` with a
/// 13-byte gap between them, so that no piece is aligned. Returns the descriptors.
fn scatter(rng: &mut Rng, buf: u64, len: u32, pieces: usize) -> Vec<(u64, u32)> {
    let pieces = pieces.clamp(1, len as usize);
    let mut cuts = std::collections::BTreeSet::from([0, len]);
    while cuts.len() < pieces + 1 {
        cuts.insert(rng.range(1, u64::from(len) - 1) as u32);
    }
    let cuts: Vec<u32> = cuts.into_iter().collect();
    let mut out = Vec::new();
    let mut at = buf;
    for w in cuts.windows(2) {
        let n = w[1] - w[0];
        out.push((at, n));
        at += u64::from(n) + 13;
    }
    out
}

fn write_pieces(mem: &GuestMem, pieces: &[(u64, u32)], data: &[u8]) {
    let mut done = 0;
    for &(addr, len) in pieces {
        mem.write(addr, &data[done..done + len as usize]).unwrap();
        done += len as usize;
    }
    assert_eq!(done, data.len());
}

fn read_pieces(mem: &GuestMem, pieces: &[(u64, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(addr, len) in pieces {
        out.extend(mem.read_vec(addr, len as usize).unwrap());
    }
    out
}

/// Room for `len` bytes scattered by [`scatter`] into at most `pieces` pieces.
fn scatter_room(len: u64, pieces: u64) -> u64 {
    len + 13 * pieces + 64
}

// ---- config space and features ---------------------------------------------------

#[test]
fn config_space_and_offered_features() {
    let dir = TempDir::new("driver-io-config").unwrap();
    let image = dir.image(8 << 20).unwrap();
    let daemon = BlkArgs {
        num_queues: Some(2),
        queue_size: Some(128),
        ..BlkArgs::new(&image)
    };
    let _daemon = spawn_daemon(&dir, "daemon.log", daemon);
    let dev = connect(&dir, 1 << 20);

    let bit = |b: u32| 1u64 << b;
    let want = bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_RING_F_EVENT_IDX)
        | bit(VIRTIO_RING_F_INDIRECT_DESC)
        | bit(VIRTIO_BLK_F_BLK_SIZE)
        | bit(VIRTIO_BLK_F_SEG_MAX)
        | bit(VIRTIO_BLK_F_FLUSH)
        | bit(VIRTIO_BLK_F_DISCARD)
        | bit(VIRTIO_BLK_F_WRITE_ZEROES)
        | bit(VIRTIO_BLK_F_MQ)
        | bit(VIRTIO_BLK_F_CONFIG_WCE)
        | bit(VIRTIO_BLK_F_TOPOLOGY)
        | bit(PROTOCOL_FEATURES_BIT);
    let offered = dev.driver.offered_features();
    assert_eq!(
        offered,
        want,
        "offered {offered:#x}, want {want:#x} (extra {:#x}, missing {:#x})",
        offered & !want,
        want & !offered
    );
    assert_eq!(offered & bit(VIRTIO_BLK_F_RO), 0, "RO without --readonly");
    // The driver acks all of it.
    assert_eq!(dev.driver.features(), want);
    assert_eq!(dev.driver.num_queues(), 2, "GET_QUEUE_NUM");

    let c = dev.config;
    assert_eq!(c.capacity, (8 << 20) / SECTOR);
    assert_eq!(c.size_max, 0);
    assert_eq!(c.seg_max, 128 - 2, "queue size minus header and status");
    assert_eq!(c.blk_size, 512);
    assert_eq!(c.physical_block_exp, 3, "4 KiB physical blocks on a file");
    assert_eq!(c.alignment_offset, 0);
    assert_eq!(c.min_io_size, 1);
    assert_eq!(c.writeback, 1, "write-back cache on by default");
    assert_eq!(c.num_queues, 2);
    // The daemon's limits: 32 segments of at most 16 MiB each.
    let max_sectors = 1 << 15;
    assert_eq!(c.max_discard_sectors, max_sectors);
    assert_eq!(c.max_discard_seg, 32);
    assert_eq!(c.discard_sector_alignment, 8);
    assert_eq!(c.max_write_zeroes_sectors, max_sectors);
    assert_eq!(c.max_write_zeroes_seg, 32);
    assert_eq!(c.write_zeroes_may_unmap, 1);
}

#[test]
fn readonly_disk_offers_ro_and_no_discard() {
    let dir = TempDir::new("driver-io-config-ro").unwrap();
    let image = dir.image(1 << 20).unwrap();
    let daemon = BlkArgs {
        readonly: true,
        ..BlkArgs::new(&image)
    };
    let _daemon = spawn_daemon(&dir, "daemon.log", daemon);
    let dev = connect(&dir, 1 << 20);
    let offered = dev.driver.offered_features();
    let bit = |b: u32| 1u64 << b;
    assert_ne!(offered & bit(VIRTIO_BLK_F_RO), 0, "RO with --readonly");
    assert_eq!(offered & bit(VIRTIO_BLK_F_DISCARD), 0);
    assert_eq!(offered & bit(VIRTIO_BLK_F_WRITE_ZEROES), 0);
    for b in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_MQ,
    ] {
        assert_ne!(offered & bit(b), 0, "feature bit {b}");
    }
    assert_eq!(dev.config.capacity, (1 << 20) / SECTOR);
    // One queue per host CPU unless --num-queues says otherwise.
    assert_eq!(
        dev.config.num_queues,
        vhost_blk::config::default_num_queues()
    );
}

// ---- reads and writes --------------------------------------------------------------

/// Deterministic reads and writes on queue 0: direct and indirect chains, one and many
/// segments, up to the SEG_MAX the device announces.
fn chains_and_segments(dev: &BlkDevice, q: &mut BlkQueue, image: &Path, first: u64) {
    let mem = dev.driver.memory().clone();
    let mut rng = Rng::new(1);
    let seg_max = dev.config.seg_max as usize;
    let wbuf = mem.alloc(scatter_room(256 << 10, 256), 4096).unwrap();
    let rbuf = mem.alloc(scatter_room(256 << 10, 256), 4096).unwrap();
    // (sector, bytes, pieces, write indirect, read indirect)
    let cases: &[(u64, u32, usize, bool, bool)] = &[
        (0, 4096, 1, false, false),
        (8, 4096, 1, true, true),
        (17, 512, 1, false, true),
        (100, 64 << 10, 5, true, false),
        (300, 7 * 512, 7, false, false),
        // As many data segments as SEG_MAX allows, direct and indirect: the chain
        // then fills the whole queue (header + seg_max + status).
        (1000, (seg_max * 512) as u32, seg_max, false, false),
        (2000, (seg_max * 1024) as u32, seg_max, true, true),
        (4000, 256 << 10, 3, true, false),
    ];
    for (i, &(sector, len, pieces, w_ind, r_ind)) in cases.iter().enumerate() {
        let sector = first + sector;
        let data = rng.bytes(len as usize);
        let wp = scatter(&mut rng, wbuf, len, pieces);
        assert_eq!(wp.len(), pieces.min(len as usize), "case {i}: pieces");
        write_pieces(&mem, &wp, &data);
        let c = q
            .run(&BlkRequest::write(sector, &wp).indirect(w_ind), TIMEOUT)
            .unwrap();
        assert_ok(c, 1, &format!("case {i}: write"));

        let rp = scatter(&mut rng, rbuf, len, pieces);
        for &(a, l) in &rp {
            mem.fill(a, u64::from(l), 0x5a).unwrap();
        }
        let c = q
            .run(&BlkRequest::read(sector, &rp).indirect(r_ind), TIMEOUT)
            .unwrap();
        assert_ok(c, len + 1, &format!("case {i}: read"));
        assert_same(
            &format!("case {i}: read back"),
            &read_pieces(&mem, &rp),
            &data,
        );
        assert_same(
            &format!("case {i}: image file"),
            &read_file(image, sector * SECTOR, len as usize),
            &data,
        );
    }
    mem.free(wbuf);
    mem.free(rbuf);
}

const LANES: usize = 32;
const LANE_SECTORS: u64 = 128;
const LANE_BYTES: u64 = LANE_SECTORS * SECTOR;
const OPS_PER_LANE: usize = 100;

#[derive(Clone, Copy)]
enum Op {
    Write,
    Read,
}

struct Lane {
    /// Expected contents of the lane's sectors.
    shadow: Vec<u8>,
    wbuf: u64,
    rbuf: u64,
    op: Op,
    offset: u64,
    len: u32,
    pieces: Vec<(u64, u32)>,
    pending: Vec<u8>,
    done: usize,
}

/// One thread per queue: keeps `LANES` requests in flight, each lane of the queue's
/// region with at most one, so results are predictable; random reads and writes with
/// random segmentation, half of them indirect. Returns the region's final contents.
fn hammer_queue(mut q: BlkQueue, mem: Arc<GuestMem>, first_sector: u64, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let room = scatter_room(LANE_BYTES, 64);
    let mut lanes: Vec<Lane> = (0..LANES)
        .map(|_| Lane {
            shadow: vec![0; LANE_BYTES as usize],
            wbuf: mem.alloc(room, 4096).unwrap(),
            rbuf: mem.alloc(room, 4096).unwrap(),
            op: Op::Write,
            offset: 0,
            len: 0,
            pieces: Vec::new(),
            pending: Vec::new(),
            done: 0,
        })
        .collect();

    let issue = |q: &mut BlkQueue, rng: &mut Rng, lane: &mut Lane, index: usize| {
        let start = rng.range(0, LANE_SECTORS - 1);
        let sectors = rng.range(1, (LANE_SECTORS - start).min(64));
        lane.offset = start * SECTOR;
        lane.len = (sectors * SECTOR) as u32;
        let indirect = rng.next_u64().is_multiple_of(2);
        // Direct chains: at most 8 descriptors each, so 32 of them fit a 256-entry
        // queue; indirect ones take one descriptor whatever their length.
        let max_pieces = if indirect { 60 } else { 6 };
        let pieces = rng.range(1, max_pieces) as usize;
        lane.op = if lane.done == 0 || rng.next_u64().is_multiple_of(2) {
            Op::Write
        } else {
            Op::Read
        };
        let sector = first_sector + index as u64 * LANE_SECTORS + start;
        match lane.op {
            Op::Write => {
                lane.pending = rng.bytes(lane.len as usize);
                lane.pieces = scatter(rng, lane.wbuf, lane.len, pieces);
                write_pieces(&mem, &lane.pieces, &lane.pending);
                q.add(
                    &BlkRequest::write(sector, &lane.pieces).indirect(indirect),
                    index as u64,
                )
                .unwrap();
            }
            Op::Read => {
                lane.pieces = scatter(rng, lane.rbuf, lane.len, pieces);
                mem.fill(lane.rbuf, room, 0x5a).unwrap();
                q.add(
                    &BlkRequest::read(sector, &lane.pieces).indirect(indirect),
                    index as u64,
                )
                .unwrap();
            }
        }
    };

    for (i, lane) in lanes.iter_mut().enumerate() {
        issue(&mut q, &mut rng, lane, i);
    }
    q.submit().unwrap();
    let mut finished = 0;
    let mut max_in_flight = q.in_flight();
    while finished < LANES {
        let mut reaped = 0;
        while let Some(c) = q.pop().unwrap() {
            reaped += 1;
            let i = c.token as usize;
            let lane = &mut lanes[i];
            let range = lane.offset as usize..lane.offset as usize + lane.len as usize;
            match lane.op {
                Op::Write => {
                    assert_ok(c, 1, &format!("queue {} lane {i} write", q.queue().index()));
                    lane.shadow[range].copy_from_slice(&lane.pending);
                }
                Op::Read => {
                    assert_ok(
                        c,
                        lane.len + 1,
                        &format!("queue {} lane {i} read", q.queue().index()),
                    );
                    assert_same(
                        &format!("queue {} lane {i} read back", q.queue().index()),
                        &read_pieces(&mem, &lane.pieces),
                        &lane.shadow[range],
                    );
                }
            }
            lane.done += 1;
            if lane.done < OPS_PER_LANE {
                issue(&mut q, &mut rng, lane, i);
            } else {
                finished += 1;
            }
        }
        max_in_flight = max_in_flight.max(q.in_flight());
        q.submit().unwrap();
        if reaped == 0 && finished < LANES {
            assert!(
                q.wait(TIMEOUT).unwrap(),
                "queue {}: no completion",
                q.queue().index()
            );
        }
    }
    assert_eq!(
        max_in_flight, LANES,
        "the queue really had {LANES} in flight"
    );
    lanes.into_iter().flat_map(|l| l.shadow).collect()
}

fn read_write_suite(engine: Engine, seccomp: Option<SeccompAction>) {
    let dir = TempDir::new(&format!("rw-{engine}")).unwrap();
    let region = LANES as u64 * LANE_BYTES;
    let image = dir.image(2 * region + (4 << 20)).unwrap();
    let daemon = BlkArgs {
        engine: Some(engine),
        num_queues: Some(2),
        queue_size: Some(256),
        ..BlkArgs::new(&image)
    };
    let _daemon = spawn_confined(&dir, "daemon.log", daemon, seccomp);
    wait_for_log(&dir, "daemon.log", &format!("engine {engine}"));
    let mut dev = connect(&dir, 48 << 20);
    let mut queues = dev.setup_queues(2, 256, LANES).unwrap();

    // The deterministic cases use the last 4 MiB; the lanes the two regions before.
    chains_and_segments(&dev, &mut queues[0], &image, 2 * region / SECTOR);

    let mem = dev.driver.memory().clone();
    let started = Instant::now();
    let threads: Vec<_> = queues
        .into_iter()
        .enumerate()
        .map(|(i, q)| {
            let mem = mem.clone();
            std::thread::spawn(move || {
                hammer_queue(q, mem, i as u64 * region / SECTOR, 7 + i as u64)
            })
        })
        .collect();
    let results: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    eprintln!(
        "{engine}: {} requests on 2 queues in {:?}",
        2 * LANES * OPS_PER_LANE,
        started.elapsed()
    );
    // What the driver last wrote is what the file holds.
    for (i, want) in results.iter().enumerate() {
        let got = read_file(&image, i as u64 * region, region as usize);
        assert_same(&format!("image region of queue {i}"), &got, want);
    }
}

#[test]
fn read_write_io_uring() {
    read_write_suite(Engine::IoUring, None);
}

#[test]
fn read_write_sync() {
    read_write_suite(Engine::Sync, None);
}

// ---- FLUSH, GET_ID, DISCARD, WRITE_ZEROES ----------------------------------------

/// Writes `data` at `sector` through the driver.
fn write_at(q: &mut BlkQueue, mem: &GuestMem, buf: u64, sector: u64, data: &[u8]) {
    mem.write(buf, data).unwrap();
    let c = q
        .run(
            &BlkRequest::write(sector, &[(buf, data.len() as u32)]),
            TIMEOUT,
        )
        .unwrap();
    assert_ok(c, 1, &format!("write at sector {sector}"));
}

/// Reads `len` bytes at `sector` through the driver.
fn read_at(q: &mut BlkQueue, mem: &GuestMem, buf: u64, sector: u64, len: u32) -> Vec<u8> {
    mem.fill(buf, u64::from(len), 0x5a).unwrap();
    let c = q
        .run(&BlkRequest::read(sector, &[(buf, len)]), TIMEOUT)
        .unwrap();
    assert_ok(c, len + 1, &format!("read at sector {sector}"));
    mem.read_vec(buf, len as usize).unwrap()
}

fn flush_get_id_discard_write_zeroes(engine: Engine, seccomp: Option<SeccompAction>) {
    let dir = TempDir::new(&format!("cmds-{engine}")).unwrap();
    let image = dir.image(4 << 20).unwrap();
    let serial = "vhostkit-serial-01";
    let daemon = BlkArgs {
        engine: Some(engine),
        serial: Some(serial.into()),
        ..BlkArgs::new(&image)
    };
    let _daemon = spawn_confined(&dir, "daemon.log", daemon, seccomp);
    wait_for_log(&dir, "daemon.log", &format!("engine {engine}"));
    let mut dev = connect(&dir, 4 << 20);
    let mut q = dev.setup_queues(1, 64, 4).unwrap().remove(0);
    let mem = dev.driver.memory().clone();

    // FLUSH: OK, nothing but the status written.
    let c = q.run(&BlkRequest::flush(), TIMEOUT).unwrap();
    assert_ok(c, 1, "flush");
    let c = q.run(&BlkRequest::flush().indirect(true), TIMEOUT).unwrap();
    assert_ok(c, 1, "indirect flush");

    // GET_ID into a 32-byte buffer: exactly 20 bytes written, NUL-padded.
    let idbuf = mem.alloc(32, 8).unwrap();
    for indirect in [false, true] {
        mem.fill(idbuf, 32, 0xa5).unwrap();
        let c = q
            .run(
                &BlkRequest::get_id(&[(idbuf, 32)]).indirect(indirect),
                TIMEOUT,
            )
            .unwrap();
        assert_ok(c, 20 + 1, "get_id");
        let mut want = [0u8; 20];
        want[..serial.len()].copy_from_slice(serial.as_bytes());
        let got = mem.read_vec(idbuf, 32).unwrap();
        assert_eq!(&got[..20], &want, "serial, NUL-padded to 20 bytes");
        assert_eq!(&got[20..], &[0xa5; 12], "nothing written past 20 bytes");
    }

    // DISCARD and WRITE_ZEROES, with and without UNMAP, one and several segments,
    // aligned and not: the ranges read back as zeroes, nothing around them changes.
    let mut rng = Rng::new(3);
    let buf = mem.alloc(256 << 10, 4096).unwrap();
    let area = 512u64; // 256 KiB at sector 512
    let area_len = 256 << 10;
    let zeroing: &[(u32, &[DiscardSegment])] = &[
        (VIRTIO_BLK_T_DISCARD, &[seg(520, 8, 0)]),
        (VIRTIO_BLK_T_DISCARD, &[seg(540, 3, 0), seg(601, 17, 0)]),
        (VIRTIO_BLK_T_WRITE_ZEROES, &[seg(650, 16, 0)]),
        (VIRTIO_BLK_T_WRITE_ZEROES, &[seg(701, 1, 0), seg(710, 5, 0)]),
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[seg(720, 16, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)],
        ),
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            &[
                seg(750, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
                seg(761, 9, 0),
            ],
        ),
    ];
    for (i, &(kind, segments)) in zeroing.iter().enumerate() {
        let mut want = rng.bytes(area_len);
        write_at(&mut q, &mem, buf, area, &want);
        let req = if kind == VIRTIO_BLK_T_DISCARD {
            BlkRequest::discard(segments)
        } else {
            BlkRequest::write_zeroes(segments)
        };
        let c = q.run(&req.indirect(i % 2 == 1), TIMEOUT).unwrap();
        assert_ok(c, 1, &format!("case {i}: discard/write-zeroes"));
        for s in segments {
            let from = ((s.sector - area) * SECTOR) as usize;
            want[from..from + s.num_sectors as usize * SECTOR as usize].fill(0);
        }
        let got = read_at(&mut q, &mem, buf, area, area_len as u32);
        assert_same(&format!("case {i}: read back"), &got, &want);
        assert_same(
            &format!("case {i}: image file"),
            &read_file(&image, area * SECTOR, area_len),
            &want,
        );
    }
}

fn seg(sector: u64, num_sectors: u32, flags: u32) -> DiscardSegment {
    DiscardSegment {
        sector,
        num_sectors,
        flags,
    }
}

#[test]
fn flush_get_id_discard_write_zeroes_io_uring() {
    flush_get_id_discard_write_zeroes(Engine::IoUring, None);
}

#[test]
fn flush_get_id_discard_write_zeroes_sync() {
    flush_get_id_discard_write_zeroes(Engine::Sync, None);
}

// ---- the null engine ---------------------------------------------------------------

#[test]
fn null_engine_completes_without_touching_the_file() {
    let dir = TempDir::new("driver-io-null").unwrap();
    let image = dir.image(1 << 20).unwrap();
    let before = read_file(&image, 0, 1 << 20);
    let daemon = BlkArgs {
        engine: Some(Engine::Null),
        ..BlkArgs::new(&image)
    };
    let _daemon = spawn_daemon(&dir, "daemon.log", daemon);
    wait_for_log(&dir, "daemon.log", "engine null");
    let mut dev = connect(&dir, 1 << 20);
    let mut q = dev.setup_queues(1, 64, 8).unwrap().remove(0);
    let mem = dev.driver.memory().clone();
    let mut rng = Rng::new(5);
    let buf = mem.alloc(64 << 10, 4096).unwrap();
    for (i, sector) in [0u64, 8, 100, 2047].into_iter().enumerate() {
        let data = rng.bytes(if sector == 2047 { 512 } else { 16 << 10 });
        mem.write(buf, &data).unwrap();
        let len = data.len() as u32;
        let c = q
            .run(
                &BlkRequest::write(sector, &[(buf, len)]).indirect(i % 2 == 0),
                TIMEOUT,
            )
            .unwrap();
        assert_ok(c, 1, "null write");
        // A read completes OK and leaves the buffer alone.
        mem.fill(buf, u64::from(len), 0xa5).unwrap();
        let c = q
            .run(&BlkRequest::read(sector, &[(buf, len)]), TIMEOUT)
            .unwrap();
        assert_ok(c, len + 1, "null read");
        assert_eq!(
            mem.read_vec(buf, len as usize).unwrap(),
            vec![0xa5; len as usize]
        );
    }
    assert_ok(
        q.run(&BlkRequest::flush(), TIMEOUT).unwrap(),
        1,
        "null flush",
    );
    // Bounds are still checked before the engine.
    let c = q
        .run(&BlkRequest::read(2048, &[(buf, 512)]), TIMEOUT)
        .unwrap();
    assert_eq!(c.status, blk::VIRTIO_BLK_S_IOERR, "read past the end");
    assert_same("image file", &read_file(&image, 0, 1 << 20), &before);
}

// ---- acknowledged data survives a crash ------------------------------------------

fn no_lost_acknowledged_data(engine: Engine) {
    let dir = TempDir::new(&format!("crash-{engine}")).unwrap();
    let image = dir.image(8 << 20).unwrap();
    let args = BlkArgs {
        engine: Some(engine),
        ..BlkArgs::new(&image)
    };
    let mut daemon = spawn_daemon(&dir, "daemon1.log", args.clone());
    let mut rng = Rng::new(11);
    let data = rng.bytes(2 << 20);
    {
        let mut dev = connect(&dir, 8 << 20);
        let mut q = dev.setup_queues(1, 128, 32).unwrap().remove(0);
        let mem = dev.driver.memory().clone();
        let buf = mem.alloc(2 << 20, 4096).unwrap();
        mem.write(buf, &data).unwrap();
        // 32 writes of 64 KiB in flight at once, then a FLUSH once they are acked.
        let chunks: Vec<[(u64, u32); 1]> = (0..32u64)
            .map(|i| [(buf + i * (64 << 10), 64 << 10)])
            .collect();
        let reqs: Vec<BlkRequest> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| BlkRequest::write(1000 + i as u64 * 128, c))
            .collect();
        for c in q.run_all(&reqs, TIMEOUT).unwrap() {
            assert_ok(c, 1, "write");
        }
        assert_ok(q.run(&BlkRequest::flush(), TIMEOUT).unwrap(), 1, "flush");
        // The daemon dies with the frontend still connected.
        let status = daemon
            .signal_and_wait(libc::SIGKILL, TIMEOUT)
            .unwrap()
            .expect("SIGKILL ends the daemon");
        assert!(!status.success());
    }
    let _daemon = spawn_daemon(&dir, "daemon2.log", args);
    let mut dev = connect(&dir, 8 << 20);
    let mut q = dev.setup_queues(1, 128, 4).unwrap().remove(0);
    let mem = dev.driver.memory().clone();
    let buf = mem.alloc(2 << 20, 4096).unwrap();
    let got = read_at(&mut q, &mem, buf, 1000, 2 << 20);
    assert_same("read back after restart", &got, &data);
    assert_same(
        "image file after restart",
        &read_file(&image, 1000 * SECTOR, 2 << 20),
        &data,
    );
}

#[test]
fn no_lost_acknowledged_data_io_uring() {
    no_lost_acknowledged_data(Engine::IoUring);
}

#[test]
fn no_lost_acknowledged_data_sync() {
    no_lost_acknowledged_data(Engine::Sync);
}

/// CONFIG_WCE: the guest turns the write cache off (write-through) and on again
/// through the `writeback` config byte; nothing else in config space is writable.
#[test]
fn guest_switches_the_write_cache_through_config_space() {
    use vhost::vhost_user::message::VhostUserConfigFlags;
    use vhost::vhost_user::VhostUserFrontend;
    const WRITEBACK: u32 = 32;

    let dir = TempDir::new("driver-io-wce").unwrap();
    let image = dir.image(1 << 20).unwrap();
    let _daemon = spawn_daemon(&dir, "daemon.log", BlkArgs::new(&image));
    let mut dev = connect(&dir, 1 << 20);
    let writeback = |dev: &mut BlkDevice| dev.driver.get_config(WRITEBACK, 1).unwrap()[0];
    assert_eq!(writeback(&mut dev), 1);

    dev.driver
        .frontend()
        .set_config(WRITEBACK, VhostUserConfigFlags::WRITABLE, &[0])
        .unwrap();
    assert_eq!(writeback(&mut dev), 0);
    wait_for_log(&dir, "daemon.log", "write cache to write-through");

    // Writes still go through (now with RWF_DSYNC) and land in the file.
    let mut queues = dev.setup_queues(1, 64, 8).unwrap();
    let mem = dev.driver.memory().clone();
    let buf = mem.alloc(4096, 4096).unwrap();
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    write_at(&mut queues[0], &mem, buf, 8, &data);
    assert_same(
        "write-through data in the file",
        &read_file(&image, 8 * SECTOR, 4096),
        &data,
    );

    dev.driver
        .frontend()
        .set_config(WRITEBACK, VhostUserConfigFlags::WRITABLE, &[1])
        .unwrap();
    assert_eq!(writeback(&mut dev), 1);
    wait_for_log(&dir, "daemon.log", "write cache to write-back");

    // Capacity (offset 0) is not the guest's to change: the write is ignored and
    // logged, as QEMU's virtio-blk does, and the connection stays up.
    let before = dev.driver.get_config(0, 8).unwrap();
    dev.driver
        .frontend()
        .set_config(0, VhostUserConfigFlags::WRITABLE, &[0xff; 8])
        .unwrap();
    assert_eq!(dev.driver.get_config(0, 8).unwrap(), before);
    wait_for_log(&dir, "daemon.log", "SET_CONFIG ignored: offset 0 length 8");
    assert_eq!(read_at(&mut queues[0], &mem, buf, 8, 4096), data);
}

/// With O_DIRECT on a disk-backed file, io_uring completions arrive after the
/// submit returns (from the block layer), so every request is completed through the
/// completion eventfd waking the queue's worker out of epoll. One request at a time
/// makes each completion depend on that wake-up.
#[test]
fn direct_io_completions_wake_the_worker() {
    // The temp folder is on the root filesystem here (ext4); tmpfs has no O_DIRECT.
    let dir = TempDir::new("driver-io-direct").unwrap();
    let image = dir.image(4 << 20).unwrap();
    let probe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&image);
    if let Err(e) = probe {
        vhostkit_tests::skip::skip(format_args!(
            "{} does not support O_DIRECT ({e})",
            dir.path().display()
        ));
        return;
    }
    let daemon = BlkArgs {
        direct: true,
        ..BlkArgs::new(&image)
    };
    let _daemon = spawn_daemon(&dir, "daemon.log", daemon);
    let mut dev = connect(&dir, 1 << 20);
    let mut queues = dev.setup_queues(1, 64, 8).unwrap();
    let mem = dev.driver.memory().clone();
    let buf = mem.alloc(4096, 4096).unwrap();
    let mut rng = Rng::new(7);
    for i in 0..200u64 {
        let sector = rng.range(0, (4 << 20) / SECTOR - 8) & !7;
        let data: Vec<u8> = (0..4096).map(|_| rng.next_u64() as u8).collect();
        write_at(&mut queues[0], &mem, buf, sector, &data);
        let back = read_at(&mut queues[0], &mem, buf, sector, 4096);
        assert_same(&format!("round {i}, sector {sector}"), &back, &data);
    }
}

/// `--poll-us`: after serving a request the worker keeps watching the ring, with
/// guest notifications still off, so requests sent within the window need no kick
/// (and wake no thread). The poll adapts (10 us, doubling while kicks come within
/// the limit), so the first requests teach it; after that a driver sending every
/// 5 ms is served without kicks. Without it every request after an idle moment is
/// kicked.
#[test]
fn polling_spares_the_driver_its_kicks() {
    const REQUESTS: u64 = 40;
    for (poll_us, polling) in [(0, false), (500_000, true)] {
        let dir = TempDir::new(&format!("driver-io-poll-{poll_us}")).unwrap();
        let image = dir.image(1 << 20).unwrap();
        let daemon = BlkArgs {
            poll_us: Some(poll_us),
            ..BlkArgs::new(&image)
        };
        let _daemon = spawn_daemon(&dir, "daemon.log", daemon);
        let mut dev = connect(&dir, 1 << 20);
        let mut queues = dev.setup_queues(1, 64, 8).unwrap();
        let mem = dev.driver.memory().clone();
        let buf = mem.alloc(4096, 4096).unwrap();
        let data = vec![0x3c; 4096];
        let mut kicks_while_learning = 0;
        for i in 0..REQUESTS {
            if i == REQUESTS / 2 {
                kicks_while_learning = queues[0].queue().stats().kicks;
            }
            write_at(&mut queues[0], &mem, buf, i * 8, &data);
            // Long enough for an idle worker to have re-enabled notifications,
            // well inside the polling worker's limit.
            std::thread::sleep(Duration::from_millis(5));
        }
        let kicks = queues[0].queue().stats().kicks;
        if polling {
            // 5 ms takes 10 doublings from 10 us.
            assert!(
                kicks - kicks_while_learning <= 2,
                "{kicks} kicks for {REQUESTS} requests, {kicks_while_learning} in the first half"
            );
        } else {
            assert_eq!(kicks, REQUESTS, "one kick per request without polling");
        }
        assert_same(
            "polled writes in the file",
            &read_file(&image, (REQUESTS - 1) * 8 * SECTOR, 4096),
            &data,
        );
    }
}

/// A loop device over a file, detached on drop.
struct LoopDevice(PathBuf);

impl LoopDevice {
    fn attach(backing: &Path) -> Result<Self, String> {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(backing)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(LoopDevice(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim(),
        )))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// Backing on a block device: its size and block sizes come from ioctls, DISCARD is
/// BLKDISCARD and WRITE_ZEROES is BLKZEROOUT; data lands on the device (here a loop
/// device, so in its backing file).
#[test]
fn block_device_backing() {
    block_device_backing_with(None);
}

fn block_device_backing_with(seccomp: Option<SeccompAction>) {
    let dir = TempDir::new("driver-io-blockdev").unwrap();
    let backing = dir.image(16 << 20).unwrap();
    let device = match LoopDevice::attach(&backing) {
        Ok(device) => device,
        Err(e) => {
            vhostkit_tests::skip::skip(format_args!(
                "cannot attach a loop device ({e}); needs root and loop support"
            ));
            return;
        }
    };
    let daemon = BlkArgs {
        engine: Some(Engine::IoUring),
        ..BlkArgs::new(&device.0)
    };
    let _daemon = spawn_confined(&dir, "daemon.log", daemon, seccomp);
    let log = wait_for_log(&dir, "daemon.log", "serving");
    assert!(log.contains("16777216 bytes"), "{log}");
    let mut dev = connect(&dir, 1 << 20);
    assert_eq!(dev.config.capacity, (16 << 20) / SECTOR);
    assert_eq!(dev.config.blk_size, 512);
    let mut queues = dev.setup_queues(1, 64, 8).unwrap();
    let q = &mut queues[0];
    let mem = dev.driver.memory().clone();
    let buf = mem.alloc(8192, 4096).unwrap();
    let mut rng = Rng::new(11);
    let data = rng.bytes(8192);
    for sector in [0u64, 64, 1024] {
        write_at(q, &mem, buf, sector, &data);
    }
    assert_eq!(read_at(q, &mem, buf, 64, 8192), data);
    let c = q.run(&BlkRequest::flush(), TIMEOUT).unwrap();
    assert_ok(c, 1, "flush");
    assert_same(
        "device data in the backing file",
        &read_file(&backing, 64 * SECTOR, 8192),
        &data,
    );

    let c = q
        .run(&BlkRequest::discard(&[seg(0, 16, 0)]), TIMEOUT)
        .unwrap();
    assert_ok(c, 1, "BLKDISCARD");
    let c = q
        .run(&BlkRequest::write_zeroes(&[seg(64, 16, 0)]), TIMEOUT)
        .unwrap();
    assert_ok(c, 1, "BLKZEROOUT");
    let zeroes = vec![0u8; 8192];
    assert_eq!(read_at(q, &mem, buf, 0, 8192), zeroes, "discarded range");
    assert_eq!(read_at(q, &mem, buf, 64, 8192), zeroes, "zeroed range");
    assert_eq!(read_at(q, &mem, buf, 1024, 8192), data, "untouched range");
}

/// A read of 2.25 GiB (9 buffers of 256 MiB, all the same guest memory)
/// completes with the whole length moved through either engine: the io_uring
/// engine continues a transfer the kernel cut short (a read system call moves at
/// most 2 GiB - 4 KiB). A chain of 4 GiB or more is one the spec forbids ("longer
/// than 2^32 bytes"): it is dropped, and the queue goes on.
fn read_of_4_gib_and_more(engine: Engine) {
    let dir = TempDir::new(&format!("huge-read-{engine}")).unwrap();
    const BUF: u32 = 256 << 20;
    let image = dir.image(17 * u64::from(BUF) + (1 << 20)).unwrap();
    let daemon = BlkArgs {
        engine: Some(engine),
        ..BlkArgs::new(&image)
    };
    let _daemon = spawn_daemon(&dir, "daemon.log", daemon);
    let mut dev = connect(&dir, u64::from(BUF) + (16 << 20));
    let mut q = dev.setup_queues(1, 64, 4).unwrap().remove(0);
    let mem = dev.driver.memory().clone();
    let buf = mem.alloc(u64::from(BUF), 4096).unwrap();
    let log = || std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    let data: Vec<(u64, u32)> = (0..9).map(|_| (buf, BUF)).collect();
    let total = 9 * u64::from(BUF);
    let c = q
        .run(&BlkRequest::read(0, &data), Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        (c.status, c.used_len),
        (VIRTIO_BLK_S_OK, total as u32 + 1),
        "{engine}: a {total}-byte read: {}",
        log()
    );
    let data: Vec<(u64, u32)> = (0..17).map(|_| (buf, BUF)).collect();
    let c = q
        .run(&BlkRequest::read(0, &data), Duration::from_secs(60))
        .unwrap();
    assert_eq!(c.used_len, 0, "{engine}: a chain over 4 GiB is dropped");
    assert!(log().contains("dropping request"), "{}", log());
    let c = q
        .run(&BlkRequest::read(0, &[(buf, 4096)]), TIMEOUT)
        .unwrap();
    assert_ok(c, 4097, "the queue goes on");
}

#[test]
fn read_of_4_gib_and_more_io_uring() {
    read_of_4_gib_and_more(Engine::IoUring);
}

#[test]
fn read_of_4_gib_and_more_sync() {
    read_of_4_gib_and_more(Engine::Sync);
}

/// Discard and write-zeroes ranges are limited to 16 MiB each (what the config
/// space says): one of the largest size works, a larger one (such as the 4 GiB the
/// daemon once allowed) is refused at once with IOERR and the disk is untouched.
#[test]
fn discard_and_write_zeroes_ranges_are_bounded() {
    let dir = TempDir::new("bounded-discard").unwrap();
    let image = dir.image(6 << 30).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .write_all_at(&[0x5a; 4096], 0)
        .unwrap();
    let _daemon = spawn_daemon(&dir, "daemon.log", BlkArgs::new(&image));
    let mut dev = connect(&dir, 4 << 20);
    let mut q = dev.setup_queues(1, 64, 4).unwrap().remove(0);
    let max = 1u32 << 15;
    for (kind, flags) in [
        (VIRTIO_BLK_T_DISCARD, 0),
        (VIRTIO_BLK_T_WRITE_ZEROES, 0),
        (
            VIRTIO_BLK_T_WRITE_ZEROES,
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
        ),
    ] {
        fn zeroing(kind: u32, segments: &[DiscardSegment]) -> BlkRequest<'_> {
            if kind == VIRTIO_BLK_T_DISCARD {
                BlkRequest::discard(segments)
            } else {
                BlkRequest::write_zeroes(segments)
            }
        }
        for too_big in [max + 1, (u32::MAX >> 9) - 1] {
            let segments = [seg(0, too_big, flags)];
            let c = q.run(&zeroing(kind, &segments), TIMEOUT).unwrap();
            assert_eq!(
                (c.status, c.used_len),
                (blk::VIRTIO_BLK_S_IOERR, 1),
                "type {kind} of {too_big} sectors"
            );
            assert_eq!(read_file(&image, 0, 4096), vec![0x5a; 4096], "untouched");
        }
        let segments = [seg(8, max, flags)];
        let c = q.run(&zeroing(kind, &segments), TIMEOUT).unwrap();
        assert_ok(c, 1, &format!("type {kind} of {max} sectors"));
    }
}

/// `--seccomp kill`: every request type, both engines, a block device, many
/// requests on two queues, all served with the filter on (a call outside the list
/// would kill the daemon and time the test out).
#[test]
fn seccomp_kill_serves_every_request_type() {
    let kill = Some(SeccompAction::Kill);
    for engine in [Engine::IoUring, Engine::Sync] {
        flush_get_id_discard_write_zeroes(engine, kill);
        read_write_suite(engine, kill);
    }
    block_device_backing_with(kill);
}

/// With `--seccomp kill` every thread carries the filter, the daemon holds no
/// capability once the image is open, a reconnect works, and SIGTERM still ends
/// it cleanly (exit 0, socket removed).
#[test]
fn confined_daemon_runs_without_capabilities_and_stops_cleanly() {
    let dir = TempDir::new("confined").unwrap();
    let image = dir.image(1 << 20).unwrap();
    let mut daemon = spawn_confined(
        &dir,
        "daemon.log",
        BlkArgs::new(&image),
        Some(SeccompAction::Kill),
    );
    let pid = daemon.pid();
    for round in 0..2 {
        let mut dev = connect(&dir, 1 << 20);
        let mut q = dev.setup_queues(1, 64, 4).unwrap().remove(0);
        let mem = dev.driver.memory().clone();
        let buf = mem.alloc(4096, 4096).unwrap();
        write_at(&mut q, &mem, buf, 8, &[round as u8 + 1; 4096]);
        assert_eq!(
            read_at(&mut q, &mem, buf, 8, 4096),
            vec![round as u8 + 1; 4096]
        );
        let mut threads = 0;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
        {
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            assert!(status.contains("Seccomp:\t2"), "{status}");
            threads += 1;
        }
        assert!(
            threads > 2,
            "main, signal and the queue's threads: {threads}"
        );
    }
    // Every thread, the signal thread included (it starts after the drop).
    for (effective, permitted, bounding) in vhostkit_common::caps::sets_of_threads(pid).unwrap() {
        assert_eq!(
            (effective, permitted, bounding),
            (0, 0, 0),
            "capabilities dropped"
        );
    }
    let status = daemon
        .signal_and_wait(libc::SIGTERM, TIMEOUT)
        .unwrap()
        .expect("the daemon stops on SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(!dir.join("blk.sock").exists(), "the socket is removed");
}

/// Log lines a guest causes per request are rate-limited per call site: 200
/// write-cache toggles (SET_CONFIG), 200 writes to a read-only field, and 200 reads
/// that fail on the host (the image cut short under the daemon: short reads) give
/// each a burst of lines, not 200.
#[test]
fn per_request_log_lines_are_rate_limited() {
    use vhost::vhost_user::message::VhostUserConfigFlags;
    use vhost::vhost_user::VhostUserFrontend;
    let dir = TempDir::new("driver-io-logflood").unwrap();
    let image = dir.image(1 << 20).unwrap();
    let daemon = BlkArgs {
        engine: Some(Engine::Sync),
        ..BlkArgs::new(&image)
    };
    let _daemon = spawn_daemon(&dir, "daemon.log", daemon);
    let mut dev = connect(&dir, 1 << 20);
    let started = Instant::now();
    for i in 0..200u8 {
        dev.driver
            .frontend()
            .set_config(32, VhostUserConfigFlags::WRITABLE, &[i % 2])
            .unwrap();
        dev.driver
            .frontend()
            .set_config(0, VhostUserConfigFlags::WRITABLE, &[0xff; 8])
            .unwrap();
    }
    let mut q = dev.setup_queues(1, 64, 8).unwrap().remove(0);
    let mem = dev.driver.memory().clone();
    let buf = mem.alloc(4096, 4096).unwrap();
    // The host cuts the image to half: reads of the second half come up short.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(512 << 10)
        .unwrap();
    for _ in 0..200 {
        let c = q
            .run(&BlkRequest::read(1536, &[(buf, 4096)]), TIMEOUT)
            .unwrap();
        assert_eq!(c.status, blk::VIRTIO_BLK_S_IOERR);
    }
    let elapsed = started.elapsed().as_secs() as usize;
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    let bound = 10 + elapsed + 1;
    for needle in ["write cache to", "SET_CONFIG ignored", "short transfer"] {
        let n = count(needle);
        assert!(
            (1..=bound).contains(&n),
            "{n} lines of {needle:?} (at most {bound})"
        );
    }
    // After a quiet second the next one is logged, with the count of the others.
    std::thread::sleep(Duration::from_millis(1100));
    dev.driver
        .frontend()
        .set_config(0, VhostUserConfigFlags::WRITABLE, &[0xff; 8])
        .unwrap();
    let log = wait_for_log(&dir, "daemon.log", "similar lines suppressed");
    assert!(log.contains("SET_CONFIG ignored"), "{log}");
}

/// A frontend that connects again and again costs the daemon no descriptors: the
/// per-connection ones (exit events of the worker threads, which
/// vhost-user-backend leaves open, the memory table, the rings' eventfds) all go
/// with the connection.
#[test]
fn reconnecting_frontends_leak_no_descriptors() {
    let dir = TempDir::new("driver-io-fdleak").unwrap();
    let image = dir.image(1 << 20).unwrap();
    let args = BlkArgs {
        num_queues: Some(4),
        ..BlkArgs::new(&image)
    };
    let daemon = spawn_daemon(&dir, "daemon.log", args);
    let open_fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
            .unwrap()
            .count()
    };
    let mut counts = Vec::new();
    for round in 0..40u32 {
        // The daemon serves one frontend at a time: this one is accepted once the
        // last one's connection is over. Count while it is set up (the same state
        // every round).
        let mut dev = connect(&dir, 4 << 20);
        let mut q = dev.setup_queues(4, 64, 4).unwrap().remove(0);
        let mem = dev.driver.memory().clone();
        let buf = mem.alloc(4096, 4096).unwrap();
        write_at(&mut q, &mem, buf, 8, &[round as u8; 4096]);
        counts.push(open_fds());
    }
    assert!(
        counts[39] <= counts[9],
        "descriptors grow with connections: after 10 {}, after 40 {}",
        counts[9],
        counts[39]
    );
}
