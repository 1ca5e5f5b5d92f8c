//! The virtio-mmio transport and its vhost-user frontend, in process: register
//! accesses go to the same `MmioTransport::read`/`write` handlers a vCPU's MMIO exit
//! calls, against a real `vhost-user-blk` daemon, with memfd guest memory made as the
//! VMM makes it. The test plays the guest driver, through registers only.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use vhostkit_tests::daemon::{workspace_bin, DaemonProcess};
use vhostkit_tests::launch::blk::BlkArgs;
use vhostkit_tests::launch::{Launch, LogLevel};
use vhostkit_tests::util::TempDir;
use vhostkit_vmm::memory::{self, GuestMemory};
use vhostkit_vmm::virtio::devices::{blk, fs, net, DeviceLayout, VhostUserDevice};
use vhostkit_vmm::virtio::mmio::*;
use vhostkit_vmm::virtio::vhost_user::Backend;
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: u64 = 4 << 20;
const IMAGE_SIZE: u64 = 1 << 20;
const QSIZE: u16 = 16;
const DESC: u64 = 0x10000;
const AVAIL: u64 = 0x11000;
const USED: u64 = 0x12000;
const HDR: u64 = 0x20000;
const DATA: u64 = 0x21000;
const STATUS_BYTE: u64 = 0x22000;

const VERSION_1: u64 = 1 << 32;

struct Setup {
    _dir: TempDir,
    _daemon: DaemonProcess,
    image: std::path::PathBuf,
    dev: MmioTransport,
    mem: Arc<GuestMemory>,
}

/// Starts the daemon and makes the device, or None (after printing SKIPPED) when the
/// daemon binary is not built.
fn setup(tag: &str) -> Option<Setup> {
    setup_with(tag, 1, |queues| blk::layout(queues, None, 256))
}

/// [`setup`] with a daemon of `queues` queues and the device config `config` makes
/// from the backend's queue count.
fn setup_with(tag: &str, queues: u16, config: impl Fn(u16) -> DeviceLayout) -> Option<Setup> {
    setup_with_queue_size(tag, queues, None, config)
}

/// [`setup_with`], the daemon given `--queue-size` if `queue_size` says.
fn setup_with_queue_size(
    tag: &str,
    queues: u16,
    queue_size: Option<u16>,
    config: impl Fn(u16) -> DeviceLayout,
) -> Option<Setup> {
    let bin = workspace_bin("vhost-user-blk");
    if !bin.exists() {
        vhostkit_tests::skip::skip(format_args!(
            "{} not built (run `cargo build --workspace --bins` first)",
            bin.display()
        ));
        return None;
    }
    let dir = TempDir::new(tag).unwrap();
    let image = dir.image(IMAGE_SIZE).unwrap();
    let sock = dir.join("blk.sock");
    let daemon = BlkArgs {
        num_queues: Some(queues),
        queue_size,
        ..BlkArgs::new(&image)
    };
    let cmd = Launch::on_socket(&sock, daemon)
        .log_level(LogLevel::Warn)
        .command(&bin);
    let daemon = DaemonProcess::spawn("vhost-user-blk", cmd, &sock, Duration::from_secs(10))
        .expect("vhost-user-blk starts");
    let mem = Arc::new(memory::create(MEM_SIZE).unwrap());
    let backend = Backend::connect(&sock).expect("vhost-user handshake");
    assert_eq!(backend.num_queues(), queues);
    let config = config(backend.num_queues());
    let device = VhostUserDevice::new(backend, config);
    let dev = MmioTransport::new(Box::new(device), mem.clone()).unwrap();
    Some(Setup {
        _dir: dir,
        _daemon: daemon,
        image,
        dev,
        mem,
    })
}

fn r32(dev: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w32(dev: &mut MmioTransport, off: u64, v: u32) {
    dev.write(off, &v.to_le_bytes());
}

fn w64(dev: &mut MmioTransport, low: u64, v: u64) {
    w32(dev, low, v as u32);
    w32(dev, low + 4, (v >> 32) as u32);
}

/// Waits up to 5 s for the call eventfd of queue 0 to be readable (not consuming it).
fn wait_call(dev: &MmioTransport) -> bool {
    let mut pfd = libc::pollfd {
        fd: dev.call_fd(0).unwrap().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, living across the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
    n == 1
}

/// The driver's init sequence up to DRIVER_OK with queue 0 of QSIZE entries; zeroes
/// the rings. Returns the acked features.
fn init(dev: &mut MmioTransport, mem: &GuestMemory) -> u64 {
    assert_eq!(r32(dev, MAGIC_VALUE), 0x7472_6976);
    assert_eq!(r32(dev, VERSION), 2);
    assert_eq!(r32(dev, DEVICE_ID), 2, "block device");
    w32(dev, STATUS, 0);
    w32(dev, STATUS, 1);
    w32(dev, STATUS, 1 | 2);
    w32(dev, DEVICE_FEATURES_SEL, 0);
    let low = r32(dev, DEVICE_FEATURES);
    w32(dev, DEVICE_FEATURES_SEL, 1);
    let high = r32(dev, DEVICE_FEATURES);
    let offered = u64::from(low) | u64::from(high) << 32;
    assert_ne!(offered & VERSION_1, 0, "VERSION_1 offered");
    assert_eq!(
        offered & (1 << 30),
        0,
        "vhost-user's PROTOCOL_FEATURES hidden"
    );
    w32(dev, DRIVER_FEATURES_SEL, 0);
    w32(dev, DRIVER_FEATURES, low);
    w32(dev, DRIVER_FEATURES_SEL, 1);
    w32(dev, DRIVER_FEATURES, high);
    w32(dev, STATUS, 1 | 2 | 8);
    assert_eq!(r32(dev, STATUS), 1 | 2 | 8, "FEATURES_OK accepted");
    mem.write_slice(&[0u8; 0x3000], GuestAddress(DESC)).unwrap();
    w32(dev, QUEUE_SEL, 0);
    assert_eq!(r32(dev, QUEUE_READY), 0);
    assert!(r32(dev, QUEUE_NUM_MAX) >= u32::from(QSIZE));
    w32(dev, QUEUE_NUM, u32::from(QSIZE));
    w64(dev, QUEUE_DESC_LOW, DESC);
    w64(dev, QUEUE_DRIVER_LOW, AVAIL);
    w64(dev, QUEUE_DEVICE_LOW, USED);
    w32(dev, QUEUE_READY, 1);
    assert_eq!(r32(dev, QUEUE_READY), 1);
    w32(dev, STATUS, 1 | 2 | 8 | 4);
    assert_eq!(r32(dev, STATUS), 1 | 2 | 8 | 4, "DRIVER_OK, no NEEDS_RESET");
    offered
}

fn capacity(dev: &mut MmioTransport) -> u64 {
    let mut b = [0u8; 8];
    dev.read(CONFIG, &mut b);
    let whole = u64::from_le_bytes(b);
    let split = u64::from(r32(dev, CONFIG)) | u64::from(r32(dev, CONFIG + 4)) << 32;
    assert_eq!(whole, split, "8-byte and two 4-byte config reads agree");
    whole
}

/// One driver-side request: `n` is how many were completed before (the ring
/// index). Returns the status byte.
fn request(s: &mut Setup, n: u16, kind: u32, sector: u64, data: &mut [u8; 512]) -> u8 {
    let (dev, mem) = (&mut s.dev, &s.mem);
    let mut hdr = [0u8; 16];
    hdr[..4].copy_from_slice(&kind.to_le_bytes());
    hdr[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
    mem.write_slice(&[0xff], GuestAddress(STATUS_BYTE)).unwrap();
    let write_flag: u16 = if kind == 0 { 2 } else { 0 };
    if kind == 1 {
        mem.write_slice(data, GuestAddress(DATA)).unwrap();
    } else {
        mem.write_slice(&[0u8; 512], GuestAddress(DATA)).unwrap();
    }
    // Three descriptors: header, data, status (1 = NEXT, 2 = WRITE).
    let descs: [(u64, u32, u16); 3] = [
        (HDR, 16, 1),
        (DATA, 512, 1 | write_flag),
        (STATUS_BYTE, 1, 2),
    ];
    for (i, (addr, len, flags)) in descs.iter().enumerate() {
        let d = DESC + 16 * i as u64;
        mem.write_obj(*addr, GuestAddress(d)).unwrap();
        mem.write_obj(*len, GuestAddress(d + 8)).unwrap();
        mem.write_obj(*flags, GuestAddress(d + 12)).unwrap();
        mem.write_obj(i as u16 + 1, GuestAddress(d + 14)).unwrap();
    }
    // used_event (EVENT_IDX): interrupt us for the next used entry.
    mem.write_obj(n, GuestAddress(AVAIL + 4 + 2 * u64::from(QSIZE)))
        .unwrap();
    mem.write_obj(0u16, GuestAddress(AVAIL + 4 + 2 * u64::from(n % QSIZE)))
        .unwrap();
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    mem.write_obj(n.wrapping_add(1), GuestAddress(AVAIL + 2))
        .unwrap();
    w32(dev, QUEUE_NOTIFY, 0);
    assert!(wait_call(dev), "interrupt within 5 s");
    assert_eq!(r32(dev, INTERRUPT_STATUS) & INT_VRING, INT_VRING);
    w32(dev, INTERRUPT_ACK, INT_VRING);
    assert_eq!(r32(dev, INTERRUPT_STATUS), 0, "acked");
    let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
    assert_eq!(used_idx, n.wrapping_add(1), "one used entry");
    let slot = USED + 4 + 8 * u64::from(n % QSIZE);
    let id: u32 = mem.read_obj(GuestAddress(slot)).unwrap();
    let len: u32 = mem.read_obj(GuestAddress(slot + 4)).unwrap();
    assert_eq!(id, 0, "head descriptor");
    let status: u8 = mem.read_obj(GuestAddress(STATUS_BYTE)).unwrap();
    if kind == 0 && status == 0 {
        assert_eq!(len, 513, "data and status written");
        mem.read_slice(data, GuestAddress(DATA)).unwrap();
    }
    status
}

fn pattern(seed: u8) -> [u8; 512] {
    std::array::from_fn(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
}

#[test]
fn blk_io_through_registers_and_reset() {
    let Some(mut s) = setup("mmio-blk") else {
        return;
    };
    let offered = init(&mut s.dev, &s.mem);
    assert_eq!(s.dev.device_features(), offered);
    assert_eq!(capacity(&mut s.dev), IMAGE_SIZE / 512);

    let mut out = pattern(3);
    assert_eq!(request(&mut s, 0, 1, 5, &mut out), 0, "write OK");
    let mut on_disk = [0u8; 512];
    std::fs::File::open(&s.image)
        .unwrap()
        .read_exact_at(&mut on_disk, 5 * 512)
        .unwrap();
    assert_eq!(on_disk, out, "the sector reached the image");
    let mut back = [0u8; 512];
    assert_eq!(request(&mut s, 1, 0, 5, &mut back), 0, "read OK");
    assert_eq!(back, out);

    // Reset: the backend rings stop; registers go back to their initial values.
    w32(&mut s.dev, STATUS, 0);
    assert_eq!(r32(&mut s.dev, STATUS), 0);
    assert_eq!(r32(&mut s.dev, QUEUE_READY), 0);
    assert_eq!(r32(&mut s.dev, INTERRUPT_STATUS), 0);
    // A kick after reset goes nowhere (and is refused, not a panic).
    w32(&mut s.dev, QUEUE_NOTIFY, 0);
    // The backend stopped the ring: a request made available in the old ring and a
    // stale kick on the eventfd (as a KVM ioeventfd would send) are not served.
    s.mem.write_obj(3u16, GuestAddress(AVAIL + 2)).unwrap();
    s.dev.kick_fd(0).unwrap().write(1).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let used_idx: u16 = s.mem.read_obj(GuestAddress(USED + 2)).unwrap();
    assert_eq!(used_idx, 2, "stopped ring not served after reset");
    let _ = s.dev.kick_fd(0).unwrap().read();

    // Re-initialise on the same connection; rings start again at index 0.
    init(&mut s.dev, &s.mem);
    let mut out2 = pattern(99);
    assert_eq!(request(&mut s, 0, 1, 7, &mut out2), 0);
    let mut back = [0u8; 512];
    assert_eq!(request(&mut s, 1, 0, 5, &mut back), 0);
    assert_eq!(back, out, "data of the first session still there");
    assert_eq!(request(&mut s, 2, 0, 7, &mut back), 0);
    assert_eq!(back, out2);
    // Out of range sector: the device answers IOERR (1), the transport carries it.
    assert_eq!(request(&mut s, 3, 0, IMAGE_SIZE / 512, &mut back), 1);
}

#[test]
fn hostile_register_values_are_refused() {
    let Some(mut s) = setup("mmio-hostile") else {
        return;
    };
    let dev = &mut s.dev;
    // Odd-sized and unaligned register accesses: zeros, no effect.
    let mut two = [0xaau8; 2];
    dev.read(MAGIC_VALUE, &mut two);
    assert_eq!(two, [0, 0]);
    let mut four = [0xaau8; 4];
    dev.read(MAGIC_VALUE + 2, &mut four);
    assert_eq!(four, [0; 4]);
    dev.write(STATUS, &[1]);
    dev.write(STATUS + 1, &1u32.to_le_bytes());
    assert_eq!(r32(dev, STATUS), 0);
    let mut eight = [0u8; 8];
    dev.read(STATUS, &mut eight);
    // Unknown and write-only registers.
    assert_eq!(r32(dev, 0x200 - 0x100 + 0x0c0), 0);
    assert_eq!(r32(dev, QUEUE_NOTIFY), 0);
    w32(dev, MAGIC_VALUE, 0);
    assert_eq!(r32(dev, MAGIC_VALUE), 0x7472_6976);

    // Queue set-up before FEATURES_OK is refused.
    w32(dev, QUEUE_NUM, 8);
    w32(dev, QUEUE_READY, 1);
    assert_eq!(r32(dev, QUEUE_READY), 0);

    // Features not offered, or no VERSION_1: FEATURES_OK refused.
    w32(dev, STATUS, 1);
    w32(dev, STATUS, 3);
    w32(dev, DRIVER_FEATURES_SEL, 1);
    w32(dev, DRIVER_FEATURES, 1 << 31); // bit 63
    w32(dev, STATUS, 3 | 8);
    assert_eq!(r32(dev, STATUS), 3, "unoffered bit: no FEATURES_OK");
    w32(dev, DRIVER_FEATURES, 0);
    w32(dev, STATUS, 3 | 8);
    assert_eq!(r32(dev, STATUS), 3, "no VERSION_1: no FEATURES_OK");
    w32(dev, DRIVER_FEATURES_SEL, 7);
    w32(dev, DRIVER_FEATURES, u32::MAX);
    w32(dev, DRIVER_FEATURES_SEL, 1);
    w32(dev, DRIVER_FEATURES, 1); // VERSION_1
    w32(dev, STATUS, 3 | 8);
    assert_eq!(r32(dev, STATUS), 3 | 8);
    // Clearing bits other than by a write of 0 is refused; DRIVER_OK too early too.
    w32(dev, STATUS, 8);
    assert_eq!(r32(dev, STATUS), 3 | 8);
    // Features are frozen after FEATURES_OK.
    w32(dev, DRIVER_FEATURES, 0);

    // QueueSel out of range.
    w32(dev, QUEUE_SEL, 1000);
    assert_eq!(r32(dev, QUEUE_NUM_MAX), 0);
    w32(dev, QUEUE_NUM, 8);
    w64(dev, QUEUE_DESC_LOW, DESC);
    w32(dev, QUEUE_READY, 1);
    assert_eq!(r32(dev, QUEUE_READY), 0);
    w32(dev, QUEUE_SEL, 0);

    // Queue sizes: not a power of two, zero, above the maximum; then ready without a
    // size is refused.
    let max = r32(dev, QUEUE_NUM_MAX);
    for bad in [3, 0, max * 2, u32::MAX] {
        w32(dev, QUEUE_NUM, bad);
    }
    w64(dev, QUEUE_DESC_LOW, DESC);
    w64(dev, QUEUE_DRIVER_LOW, AVAIL);
    w64(dev, QUEUE_DEVICE_LOW, USED);
    w32(dev, QUEUE_READY, 1);
    assert_eq!(r32(dev, QUEUE_READY), 0, "no valid QueueNum yet");
    w32(dev, QUEUE_NUM, u32::from(QSIZE));

    // Ring addresses outside guest memory, straddling its end, unaligned, wrapping.
    for (reg, addr) in [
        (QUEUE_DESC_LOW, 1u64 << 40),
        (QUEUE_DESC_LOW, MEM_SIZE - 16),
        (QUEUE_DESC_LOW, DESC + 8),
        (QUEUE_DRIVER_LOW, AVAIL + 1),
        (QUEUE_DEVICE_LOW, USED + 2),
        (QUEUE_DEVICE_LOW, u64::MAX - 3),
    ] {
        w64(dev, QUEUE_DESC_LOW, DESC);
        w64(dev, QUEUE_DRIVER_LOW, AVAIL);
        w64(dev, QUEUE_DEVICE_LOW, USED);
        w64(dev, reg, addr);
        w32(dev, QUEUE_READY, 1);
        assert_eq!(r32(dev, QUEUE_READY), 0, "ring at {addr:#x} refused");
    }

    // Config space: beyond its size, odd sizes, unaligned: zeros.
    let mut b4 = [0xaau8; 4];
    dev.read(CONFIG + 60, &mut b4);
    assert_eq!(b4, [0; 4]);
    let mut b3 = [0xaau8; 3];
    dev.read(CONFIG, &mut b3);
    assert_eq!(b3, [0; 3]);
    dev.read(CONFIG + 2, &mut b4);
    assert_eq!(b4, [0; 4]);
    dev.read(u64::MAX - 1, &mut [0u8; 2]);
    dev.write(CONFIG + 0x1000, &[1, 2, 3, 4]);
    // A write to read-only config (capacity) is ignored by the backend.
    dev.write(CONFIG, &[1, 2, 3, 4]);

    // Kicks for queues out of range or not running.
    w32(dev, QUEUE_NOTIFY, 0);
    w32(dev, QUEUE_NOTIFY, 77);

    // After all that the device still works: a clean init and one request.
    init(&mut s.dev, &s.mem);
    assert_eq!(capacity(&mut s.dev), IMAGE_SIZE / 512);
    w32(&mut s.dev, QUEUE_NOTIFY, 77);
    w32(&mut s.dev, QUEUE_READY, 0); // running queue: refused
    assert_eq!(r32(&mut s.dev, QUEUE_READY), 1);
    w64(&mut s.dev, QUEUE_DESC_LOW, 1 << 40); // ready queue: refused
    let mut out = pattern(1);
    assert_eq!(request(&mut s, 0, 1, 0, &mut out), 0);
}

#[test]
fn kvm_ioeventfds_and_irqfds() {
    let Some(mut s) = setup("mmio-kvm") else {
        return;
    };
    let Ok((_kvm, vm)) = vhostkit_vmm::vm::create() else {
        vhostkit_tests::skip::skip(format_args!("no usable /dev/kvm"));
        return;
    };
    let base = 0xd000_0000;
    s.dev.register_ioeventfds(&vm, base).unwrap();
    // KVM holds the registration: the same one again is refused (EEXIST).
    assert!(s.dev.register_ioeventfds(&vm, base).is_err());
    // The irqchip the irqfds need.
    vhostkit_vmm::vm::create_irqchip(&vm).unwrap();
    s.dev.register_irqfds(&vm, 5).unwrap();
    // With irqfds the VMM never sees calls: InterruptStatus reports "used buffer"
    // while the device is live, and only then.
    assert_eq!(r32(&mut s.dev, INTERRUPT_STATUS), 0);
    init(&mut s.dev, &s.mem);
    assert_eq!(r32(&mut s.dev, INTERRUPT_STATUS), INT_VRING);
    w32(&mut s.dev, STATUS, 0);
    assert_eq!(r32(&mut s.dev, INTERRUPT_STATUS), 0);
}

fn offered_features(dev: &mut MmioTransport) -> u64 {
    w32(dev, DEVICE_FEATURES_SEL, 0);
    let low = r32(dev, DEVICE_FEATURES);
    w32(dev, DEVICE_FEATURES_SEL, 1);
    u64::from(low) | u64::from(r32(dev, DEVICE_FEATURES)) << 32
}

fn queue_num_max(dev: &mut MmioTransport, q: u32) -> u32 {
    w32(dev, QUEUE_SEL, q);
    r32(dev, QUEUE_NUM_MAX)
}

fn config_u16(dev: &mut MmioTransport, off: u64) -> u16 {
    let mut b = [0u8; 2];
    dev.read(CONFIG + off, &mut b);
    u16::from_le_bytes(b)
}

#[test]
fn num_queues_caps_the_backends_queues() {
    const BLK_F_MQ: u64 = 1 << 12;
    // All four of the daemon's queues.
    let Some(mut s) = setup_with("vmm-mq4", 4, |q| blk::layout(q, None, 256)) else {
        return;
    };
    assert_eq!(s.dev.num_queues(), 4);
    assert_ne!(offered_features(&mut s.dev) & BLK_F_MQ, 0, "MQ offered");
    assert_eq!(config_u16(&mut s.dev, 34), 4, "config num_queues");
    assert_ne!(queue_num_max(&mut s.dev, 3), 0);
    assert_eq!(queue_num_max(&mut s.dev, 4), 0, "no fifth queue");
    drop(s);

    // num-queues=2 of four: the guest sees two, and the config says two.
    let Some(mut s) = setup_with("vmm-mq2", 4, |q| blk::layout(q, Some(2), 256)) else {
        return;
    };
    assert_eq!(s.dev.num_queues(), 2);
    assert_eq!(
        config_u16(&mut s.dev, 34),
        2,
        "config num_queues overridden"
    );
    // The 4-byte read that covers the field sees the override too.
    let mut b = [0u8; 4];
    s.dev.read(CONFIG + 32, &mut b);
    assert_eq!(u16::from_le_bytes([b[2], b[3]]), 2);
    assert_ne!(queue_num_max(&mut s.dev, 1), 0);
    assert_eq!(queue_num_max(&mut s.dev, 2), 0, "queue 2 hidden");
    drop(s);

    // One queue: MQ is not offered at all.
    let Some(mut s) = setup_with("vmm-mq1", 4, |q| blk::layout(q, Some(1), 256)) else {
        return;
    };
    assert_eq!(offered_features(&mut s.dev) & BLK_F_MQ, 0, "MQ hidden");
    // Asking for more than the backend has gives the backend's count.
    let c = blk::layout(4, Some(9), 256);
    assert_eq!(c.num_queues, 4);
}

#[test]
fn vmm_held_config_spaces_for_net_and_fs() {
    // The transport part of net and fs devices (their own daemons are tested in
    // their issues): config space held by the VMM, queue layout, feature bits.
    let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    let Some(mut s) = setup_with("vmm-netcfg", 4, |q| net::layout(q, mac, None, 256)) else {
        return;
    };
    assert_eq!(r32(&mut s.dev, DEVICE_ID), 1, "network device");
    let mut got = [0u8; 6];
    for (i, b) in got.iter_mut().enumerate() {
        let mut one = [0u8; 1];
        s.dev.read(CONFIG + i as u64, &mut one);
        *b = one[0];
    }
    assert_eq!(got, mac);
    assert_eq!(config_u16(&mut s.dev, 6), 1, "status: link up");
    assert_eq!(config_u16(&mut s.dev, 8), 2, "max_virtqueue_pairs");
    let f = offered_features(&mut s.dev);
    assert_ne!(f & (1 << 5), 0, "MAC offered by the VMM");
    assert_ne!(f & (1 << 16), 0, "STATUS offered by the VMM");
    // Guest writes to the VMM's config are refused; the MAC stays.
    s.dev.write(CONFIG, &[0xffu8]);
    let mut one = [0u8; 1];
    s.dev.read(CONFIG, &mut one);
    assert_eq!(one[0], 0x52);
    // Past the end: refused, reads as zero.
    assert_eq!(config_u16(&mut s.dev, 12), 0);
    drop(s);

    let Some(mut s) = setup_with("vmm-fscfg", 4, |q| fs::layout(q, "share", None, 1024)) else {
        return;
    };
    assert_eq!(r32(&mut s.dev, DEVICE_ID), 26, "filesystem device");
    let mut tag = [0u8; 8];
    s.dev.read(CONFIG, &mut tag);
    assert_eq!(&tag, b"share\0\0\0");
    assert_eq!(
        r32(&mut s.dev, CONFIG + 36),
        3,
        "num_request_queues: the backend's queues after hiprio"
    );
    assert_eq!(s.dev.num_queues(), 4);
    assert_eq!(fs::layout(4, "t", Some(1), 1024).num_queues, 2);
}

#[test]
fn a_backend_that_never_answers_times_out() {
    use vhostkit_vmm::virtio::vhost_user::{BackendError, CONTROL_TIMEOUT};
    let dir = TempDir::new("vmm-mute").unwrap();
    let sock = dir.join("mute.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // Accepts and then reads nothing and answers nothing.
    let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let start = std::time::Instant::now();
    let e = Backend::connect(&sock).expect_err("no answer must fail");
    let waited = start.elapsed();
    assert!(
        matches!(e, BackendError::Timeout("GET_FEATURES", _)),
        "{e:?}"
    );
    assert!(
        waited >= CONTROL_TIMEOUT && waited < CONTROL_TIMEOUT * 3,
        "{waited:?}"
    );
    drop(held.join());
}

/// A backend that takes queues of at most 16 entries (`--queue-size 16`), and the
/// VMM told so (`--disk socket=S,queue-size=16`): QueueNumMax says 16, and a driver
/// that sets up the largest queue offered (as Linux's virtio_mmio does) gets a
/// working device. Offering more than the backend takes (the fixed 256 of before)
/// fails activation: the backend refuses SET_VRING_NUM.
#[test]
fn queue_num_max_is_what_the_backend_takes() {
    use clap::Parser;
    use vhostkit_vmm::config::{Cli, Command as VmmCommand, RunConfig};
    let kernel = std::env::current_exe().unwrap();
    let cli = Cli::try_parse_from([
        "vhostkit",
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--disk",
        "socket=/s.sock,queue-size=16",
    ])
    .unwrap();
    let VmmCommand::Run(run) = cli.command;
    let c = RunConfig::try_from(run).unwrap();
    let queue_size = c.devices[0].queue_size;
    assert_eq!(queue_size, QSIZE);
    let Some(mut s) = setup_with_queue_size("vmm-qsize", 1, Some(16), |q| {
        blk::layout(q, None, queue_size)
    }) else {
        return;
    };
    w32(&mut s.dev, QUEUE_SEL, 0);
    assert_eq!(r32(&mut s.dev, QUEUE_NUM_MAX), u32::from(QSIZE));
    init(&mut s.dev, &s.mem);
    let mut out = pattern(5);
    assert_eq!(request(&mut s, 0, 1, 9, &mut out), 0, "write OK");
}
