//! The user-space vhost-user driver against qemu-storage-daemon's vhost-user-blk
//! export (and, when built, our vhost-user-blk), end to end: negotiation, config space, writes and reads with direct and
//! indirect chains at queue depth > 1 on two queues (one thread each), GET_ID, FLUSH,
//! WRITE_ZEROES, a canary check of guest memory, disconnect with requests in flight,
//! and reconnecting to the same daemon.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vhostkit_driver::blk::{
    BlkDevice, BlkQueue, BlkRequest, DiscardSegment, SECTOR_SIZE, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_OK,
};
use vhostkit_driver::{
    DriverConfig, GuestMem, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
};
use vhostkit_tests::daemon::{qemu_storage_daemon_cmd, workspace_bin, DaemonProcess};
use vhostkit_tests::launch::blk::BlkArgs;
use vhostkit_tests::launch::{Launch, LogLevel};
use vhostkit_tests::TempDir;

const IMAGE_SIZE: u64 = 64 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);
const CANARY: u8 = 0x5a;

fn have_qsd() -> bool {
    std::process::Command::new("qemu-storage-daemon")
        .arg("--version")
        .output()
        .is_ok()
}

fn start_qsd(dir: &Path, queues: u16) -> DaemonProcess {
    let image = dir.join("disk.img");
    if !image.exists() {
        let f = std::fs::File::create(&image).expect("create image");
        f.set_len(IMAGE_SIZE).expect("size image");
    }
    let socket = dir.join("qsd.sock");
    let cmd = qemu_storage_daemon_cmd(&image, &socket, queues, "io_uring");
    DaemonProcess::spawn("qemu-storage-daemon", cmd, &socket, Duration::from_secs(10))
        .expect("start qemu-storage-daemon")
}

/// The byte pattern of sector `s` written by `round`.
fn pattern(s: u64, round: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (s as u8).wrapping_mul(31) ^ (i as u8).wrapping_add(round) ^ (i >> 8) as u8)
        .collect()
}

/// On `q`, writes 16 requests of 8 sectors (4 KiB) starting at `first_sector`, at
/// queue depth 16, alternating direct / indirect chains and one / two data buffers,
/// then reads them back the same way into fresh buffers and compares.
fn write_read_verify(q: &mut BlkQueue, mem: &GuestMem, first_sector: u64, round: u8) {
    const N: usize = 16;
    const LEN: u32 = 4096;
    let wbufs: Vec<u64> = (0..N)
        .map(|_| mem.alloc(LEN.into(), 512).unwrap())
        .collect();
    let rbufs: Vec<u64> = (0..N)
        .map(|_| mem.alloc(LEN.into(), 512).unwrap())
        .collect();
    let sector = |i: usize| first_sector + (i as u64) * (u64::from(LEN) / SECTOR_SIZE);
    for (i, &b) in wbufs.iter().enumerate() {
        mem.write(b, &pattern(sector(i), round, LEN as usize))
            .unwrap();
    }
    for &b in &rbufs {
        mem.fill(b, LEN.into(), CANARY).unwrap();
    }
    // Data as one 4 KiB buffer, or as two 2 KiB halves.
    let segs = |b: u64, i: usize| -> Vec<(u64, u32)> {
        if i % 4 < 2 {
            vec![(b, LEN)]
        } else {
            vec![(b, LEN / 2), (b + u64::from(LEN / 2), LEN / 2)]
        }
    };
    let wdata: Vec<Vec<(u64, u32)>> = wbufs.iter().enumerate().map(|(i, &b)| segs(b, i)).collect();
    let writes: Vec<BlkRequest> = wdata
        .iter()
        .enumerate()
        .map(|(i, d)| BlkRequest::write(sector(i), d).indirect(i % 2 == 1))
        .collect();
    let done = q.run_all(&writes, TIMEOUT).expect("writes complete");
    assert_eq!(done.len(), N);
    for c in &done {
        assert_eq!(c.status, VIRTIO_BLK_S_OK, "write {c:?}");
    }
    assert_eq!(q.in_flight(), 0);
    assert_eq!(q.queue().free_descs(), usize::from(q.queue().size()));

    let rdata: Vec<Vec<(u64, u32)>> = rbufs
        .iter()
        .enumerate()
        .map(|(i, &b)| segs(b, i + 1))
        .collect();
    let reads: Vec<BlkRequest> = rdata
        .iter()
        .enumerate()
        .map(|(i, d)| BlkRequest::read(sector(i), d).indirect(i % 2 == 0))
        .collect();
    let done = q.run_all(&reads, TIMEOUT).expect("reads complete");
    for (i, c) in done.iter().enumerate() {
        assert_eq!(c.status, VIRTIO_BLK_S_OK, "read {c:?}");
        // Data plus the status byte.
        assert_eq!(c.used_len, LEN + 1, "read {i} used len");
        let got = mem.read_vec(rbufs[i], LEN as usize).unwrap();
        assert!(
            got == pattern(sector(i), round, LEN as usize),
            "queue {} sector {} read back differs",
            q.queue().index(),
            sector(i)
        );
    }
}

#[test]
fn driver_against_qemu_storage_daemon() {
    if !have_qsd() {
        eprintln!("qemu-storage-daemon not installed; skipping");
        return;
    }
    let dir = TempDir::new("driver-qsd").unwrap();
    let qsd = start_qsd(dir.path(), 2);
    exercise(qsd, true);
}

/// The same session against our own daemon, if it has been built
/// (`cargo build -p vhost-blk`).
/// Our vhost-user-blk on a fresh 64 MiB image in `dir`, if it has been built
/// (`cargo build -p vhost-blk`).
fn start_ours(dir: &Path, queues: u16) -> Option<DaemonProcess> {
    let bin = workspace_bin("vhost-user-blk");
    if !bin.exists() {
        eprintln!("{} not built; skipping", bin.display());
        return None;
    }
    let image = dir.join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(IMAGE_SIZE))
        .expect("create image");
    let socket = dir.join("ours.sock");
    let daemon = BlkArgs {
        num_queues: Some(queues),
        ..BlkArgs::new(&image)
    };
    let cmd = Launch::on_socket(&socket, daemon)
        .log_level(LogLevel::Warn)
        .command(&bin);
    Some(
        DaemonProcess::spawn("vhost-user-blk", cmd, &socket, Duration::from_secs(10))
            .expect("start vhost-user-blk"),
    )
}

/// The same session against our own daemon, if it has been built.
#[test]
fn driver_against_vhost_user_blk() {
    let dir = TempDir::new("driver-ours").unwrap();
    if let Some(daemon) = start_ours(dir.path(), 2) {
        exercise(daemon, false);
    }
}

/// One full session on a backend serving a 64 MiB image with 2 queues, then a
/// disconnect mid-I/O and a second session.
fn exercise(mut daemon: DaemonProcess, expect_single_frontend: bool) {
    let mut dev = BlkDevice::connect(daemon.socket(), &DriverConfig::default()).expect("connect");
    let d = &dev.driver;
    assert!(d.has_feature(VIRTIO_F_VERSION_1));
    assert!(d.has_feature(VIRTIO_RING_F_EVENT_IDX));
    assert!(d.has_feature(VIRTIO_RING_F_INDIRECT_DESC));
    assert!(
        d.num_queues() >= 2,
        "the backend offers {} queues",
        d.num_queues()
    );
    assert_eq!(dev.config.capacity, IMAGE_SIZE / SECTOR_SIZE);
    assert_eq!(dev.config.num_queues, 2);
    assert!(dev.config.blk_size >= 512);
    assert!(dev.config.seg_max >= 2, "seg_max {}", dev.config.seg_max);

    // A second frontend while the first is connected: qsd accepts the connection
    // but serves one frontend at a time, so it does not answer; the driver's socket
    // timeout turns that into an error instead of a hang.
    let second = BlkDevice::connect(
        daemon.socket(),
        &DriverConfig {
            timeout: Some(Duration::from_millis(500)),
            ..DriverConfig::default()
        },
    );
    eprintln!(
        "second frontend while the first is connected: {}",
        match &second {
            Ok(_) => "served".to_string(),
            Err(e) => format!("refused ({e})"),
        }
    );
    if expect_single_frontend {
        assert!(second.is_err());
    }
    drop(second);

    let mem = dev.driver.memory().clone();
    // Canary over all of guest memory that the allocator has not handed out yet:
    // every request buffer and ring comes from there, and afterwards nothing outside
    // them may have changed.
    let canary_start = mem.alloc(4096, 4096).unwrap();
    mem.free(canary_start);
    mem.fill(canary_start, mem.end() - canary_start, CANARY)
        .unwrap();

    let queues = dev.setup_queues(2, 128, 32).expect("set up queues");
    // One thread per queue, both with 16 requests in flight at once.
    let handles: Vec<_> = queues
        .into_iter()
        .enumerate()
        .map(|(i, mut q)| {
            let mem = mem.clone();
            std::thread::spawn(move || {
                let base = 4096 + 2048 * i as u64;
                write_read_verify(&mut q, &mem, base, 1);
                write_read_verify(&mut q, &mem, base, 2);
                q
            })
        })
        .collect();
    let mut queues: Vec<BlkQueue> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let stats = queues[0].queue().stats();
    assert!(stats.kicks >= 1 && stats.completed == 64, "{stats:?}");

    // GET_ID.
    let id = mem.alloc(VIRTIO_BLK_ID_BYTES.into(), 8).unwrap();
    mem.fill(id, VIRTIO_BLK_ID_BYTES.into(), 0).unwrap();
    let c = queues[0]
        .run(&BlkRequest::get_id(&[(id, VIRTIO_BLK_ID_BYTES)]), TIMEOUT)
        .unwrap();
    assert_eq!(c.status, VIRTIO_BLK_S_OK);
    let id_bytes = mem.read_vec(id, VIRTIO_BLK_ID_BYTES as usize).unwrap();
    let id_str: String = id_bytes
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    assert!(!id_str.is_empty(), "GET_ID returned {id_bytes:?}");
    eprintln!("GET_ID: {id_str:?}");

    // FLUSH.
    assert!(dev.driver.has_feature(VIRTIO_BLK_F_FLUSH));
    let c = queues[1]
        .run(&BlkRequest::flush().indirect(true), TIMEOUT)
        .unwrap();
    assert_eq!(c.status, VIRTIO_BLK_S_OK);

    // WRITE_ZEROES over the second half of queue 0's area, then read it back.
    if dev.driver.has_feature(VIRTIO_BLK_F_WRITE_ZEROES) {
        let seg = [DiscardSegment {
            sector: 4096 + 64,
            num_sectors: 64,
            flags: 0,
        }];
        let c = queues[0]
            .run(&BlkRequest::write_zeroes(&seg), TIMEOUT)
            .unwrap();
        assert_eq!(c.status, VIRTIO_BLK_S_OK);
        let buf = mem.alloc(64 * 512, 4096).unwrap();
        mem.fill(buf, 64 * 512, 0xee).unwrap();
        let c = queues[0]
            .run(&BlkRequest::read(4096 + 64, &[(buf, 64 * 512)]), TIMEOUT)
            .unwrap();
        assert_eq!(c.status, VIRTIO_BLK_S_OK);
        assert!(mem.read_vec(buf, 64 * 512).unwrap().iter().all(|&b| b == 0));
    }

    // Canary: everything past the allocations must be untouched.
    let tail = mem.alloc(4096, 4096).unwrap();
    mem.free(tail);
    let rest = mem.read_vec(tail, (mem.end() - tail) as usize).unwrap();
    assert!(
        rest.iter().all(|&b| b == CANARY),
        "memory past the buffers changed"
    );

    // Drop the connection with requests in flight.
    let big = mem.alloc(1 << 20, 4096).unwrap();
    for i in 0..16u64 {
        let data = [(big + (i % 16) * 65536, 65536u32)];
        queues[0].add(&BlkRequest::read(i * 128, &data), i).unwrap();
        queues[1]
            .add(&BlkRequest::write(i * 128 + 8192, &data), i)
            .unwrap();
    }
    queues[0].submit().unwrap();
    queues[1].submit().unwrap();
    drop(dev);
    drop(queues);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        daemon.is_running(),
        "the daemon died after a disconnect mid-I/O"
    );

    // The daemon listens again: a second session sees the first session's data.
    let mut dev2 = BlkDevice::connect(daemon.socket(), &DriverConfig::default())
        .expect("reconnect after disconnect");
    let mut q = dev2.setup_queues(1, 64, 8).unwrap().remove(0);
    let mem2: Arc<GuestMem> = dev2.driver.memory().clone();
    let buf = mem2.alloc(4096, 4096).unwrap();
    let c = q
        .run(&BlkRequest::read(4096, &[(buf, 4096)]), TIMEOUT)
        .unwrap();
    assert_eq!(c.status, VIRTIO_BLK_S_OK);
    assert_eq!(mem2.read_vec(buf, 4096).unwrap(), pattern(4096, 2, 4096));
    drop(dev2);
    assert!(daemon.is_running());
}

/// A hostile chain placed with the raw API.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// The data buffer lies past the end of guest memory.
    OutsideMemory,
    /// The (device-readable) data descriptor's `next` points back at the header: an
    /// endless chain.
    DirectLoop,
    /// An indirect table whose last (device-readable) entry chains back to its first.
    IndirectLoop,
}

/// Places `kind` with the raw API on queue 0 of a fresh connection, with guest
/// memory filled with a canary, and checks that the backend wrote nothing but the
/// status byte, survives, and serves a good request on the next connection.
fn hostile_session(daemon: &mut DaemonProcess, kind: Hostile) {
    use vhostkit_driver::virtq::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
    use vhostkit_driver::RawDesc;

    // Small memory: the canary is checked byte by byte.
    let cfg = DriverConfig::with_mem_size(4 << 20);
    let mut dev = BlkDevice::connect(daemon.socket(), &cfg).expect("connect");
    let mut q = dev.driver.setup_queue(0, 16).expect("queue");
    let mem = dev.driver.memory().clone();
    let hdr = mem.alloc(16, 16).unwrap();
    let status = mem.alloc(1, 1).unwrap();
    let data = mem.alloc(4096, 4096).unwrap();
    let table = mem.alloc(64, 16).unwrap();
    let tail = mem.alloc(4096, 4096).unwrap();
    mem.free(tail);
    // Canary everywhere except the rings (below `hdr`) and the header.
    mem.fill(hdr + 16, mem.end() - hdr - 16, CANARY).unwrap();
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&vhostkit_driver::blk::VIRTIO_BLK_T_IN.to_le_bytes());
    mem.write(hdr, &h).unwrap();

    let d_hdr = |next| RawDesc {
        addr: hdr,
        len: 16,
        flags: DESC_F_NEXT,
        next,
    };
    let d_status = RawDesc {
        addr: status,
        len: 1,
        flags: DESC_F_WRITE,
        next: 0,
    };
    match kind {
        Hostile::OutsideMemory => {
            q.write_desc(0, d_hdr(1)).unwrap();
            let outside = RawDesc {
                addr: mem.end() + 0x10_0000,
                len: 4096,
                flags: DESC_F_WRITE | DESC_F_NEXT,
                next: 2,
            };
            q.write_desc(1, outside).unwrap();
            q.write_desc(2, d_status).unwrap();
        }
        Hostile::DirectLoop => {
            q.write_desc(0, d_hdr(1)).unwrap();
            let looping = RawDesc {
                addr: data,
                len: 512,
                flags: DESC_F_NEXT,
                next: 0,
            };
            q.write_desc(1, looping).unwrap();
        }
        Hostile::IndirectLoop => {
            d_hdr(1).write_at(&mem, table).unwrap();
            RawDesc {
                addr: data,
                len: 512,
                flags: DESC_F_NEXT,
                next: 0,
            }
            .write_at(&mem, table + 16)
            .unwrap();
            q.write_desc(
                0,
                RawDesc {
                    addr: table,
                    len: 32,
                    flags: DESC_F_INDIRECT,
                    next: 0,
                },
            )
            .unwrap();
        }
    }
    q.push_avail(0);
    q.submit().unwrap();
    let outcome = if q.wait_used(Duration::from_secs(1)).unwrap() {
        let used = q.pop_used().unwrap();
        let st = mem.read_vec(status, 1).unwrap()[0];
        format!("completed id {} len {} status {st:#x}", used.id, used.len)
    } else {
        "no completion".to_string()
    };
    eprintln!("{kind:?}: {outcome}");
    // Nothing but the status byte may have changed (a looping chain's data buffer
    // may have been written before the loop was noticed, so it is left out, as is
    // the indirect table we wrote ourselves).
    let after = mem
        .read_vec(hdr + 16, (mem.end() - hdr - 16) as usize)
        .unwrap();
    for (i, &b) in after.iter().enumerate() {
        let addr = hdr + 16 + i as u64;
        if addr == status
            || (data..data + 4096).contains(&addr)
            || (table..table + 64).contains(&addr)
        {
            continue;
        }
        assert_eq!(b, CANARY, "{kind:?}: guest memory at {addr:#x} changed");
    }
    drop(q);
    drop(dev);
    std::thread::sleep(Duration::from_millis(50));
    assert!(daemon.is_running(), "{kind:?}: the daemon died");

    // A good request on a new connection.
    let mut dev = BlkDevice::connect(daemon.socket(), &cfg).expect("reconnect");
    let mut q = dev.setup_queues(1, 16, 4).unwrap().remove(0);
    let buf = dev.driver.memory().alloc(4096, 4096).unwrap();
    let c = q
        .run(&BlkRequest::read(0, &[(buf, 4096)]), TIMEOUT)
        .unwrap();
    assert_eq!(c.status, VIRTIO_BLK_S_OK, "{kind:?}: good request after");
}

#[test]
fn raw_hostile_chains_against_qemu_storage_daemon() {
    if !have_qsd() {
        return;
    }
    let dir = TempDir::new("driver-qsd-raw").unwrap();
    let mut qsd = start_qsd(dir.path(), 1);
    for kind in [
        Hostile::OutsideMemory,
        Hostile::DirectLoop,
        Hostile::IndirectLoop,
    ] {
        hostile_session(&mut qsd, kind);
    }
}

#[test]
fn raw_hostile_chains_against_vhost_user_blk() {
    let dir = TempDir::new("driver-ours-raw").unwrap();
    if let Some(mut daemon) = start_ours(dir.path(), 1) {
        for kind in [
            Hostile::OutsideMemory,
            Hostile::DirectLoop,
            Hostile::IndirectLoop,
        ] {
            hostile_session(&mut daemon, kind);
        }
    }
}
