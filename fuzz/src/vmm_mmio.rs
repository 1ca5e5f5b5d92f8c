//! Target `vmm_mmio`: the VMM's virtio-mmio register handlers
//! ([`MmioTransport::read`] and [`MmioTransport::write`], what a vCPU's MMIO exit calls)
//! driven by a sequence of register accesses, against a real vhost-user-blk
//! daemon (the vhost-blk library's `run`) served from a thread of this process on
//! a 1 MiB image, as `vmm/tests/virtio_mmio.rs` does with the daemon binary. Status
//! changes, queue set-up and config accesses therefore reach the daemon as
//! vhost-user messages (and its answers come back), as in the VMM.
//!
//! Made once per process: the daemon (2 queues, sync engine), 256 KiB of guest
//! memory (a memfd, as the VMM makes it) and the connection. Each input starts
//! with a device reset (status 0: started queues are stopped on the daemon) and
//! zeroed guest memory; the device is made again, on a new connection, when the
//! input asks for another kind or after the backend failed (DEVICE_NEEDS_RESET).
//!
//! Input layout:
//!
//! | bytes | field                                                              |
//! |-------|--------------------------------------------------------------------|
//! | 1     | device, bits 0-1: virtio-blk (config from the daemon), virtio-blk showing 1 of the daemon's 2 queues, virtio-net (config held by the VMM), virtio-fs (config held by the VMM) |
//!
//! then up to 512 accesses of 7 bytes each:
//!
//! | bytes | field                                                              |
//! |-------|--------------------------------------------------------------------|
//! | 1     | bit 0: write (else read); bits 1-2: size 4, 1, 2 or 8 bytes          |
//! | 2     | offset in the device's 4 KiB window (low 12 bits)                   |
//! | 4     | the value written (an 8-byte write repeats it)                      |

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use vhostkit_common::lifecycle::StopHandle;
use vhostkit_launch::blk::{BlkArgs, Engine};
use vhostkit_launch::{DaemonArgs, Launch, LogLevel};
use vhostkit_vmm::memory::{self, GuestMemory};
use vhostkit_vmm::virtio::devices::{blk, fs, net, DeviceLayout, VhostUserDevice};
use vhostkit_vmm::virtio::mmio::{MmioTransport, MMIO_WINDOW, STATUS};
use vhostkit_vmm::virtio::vhost_user::Backend;
use vm_memory::{Bytes, GuestAddress};

use crate::input::Input;

/// Guest memory size.
pub const MEM_SIZE: u64 = 256 << 10;
/// Image size of the daemon's disk.
pub const IMAGE_SIZE: u64 = 1 << 20;
/// Queues of the daemon.
pub const DAEMON_QUEUES: u16 = 2;
/// Most accesses taken from one input.
pub const MAX_ACCESSES: usize = 512;
/// DEVICE_NEEDS_RESET in the status register.
const S_NEEDS_RESET: u32 = 0x40;

struct State {
    socket: PathBuf,
    mem: Arc<GuestMemory>,
    device: Option<(u8, MmioTransport)>,
    connections: u32,
    _stop: StopHandle,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

pub fn run(data: &[u8]) {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let state = guard.get_or_insert_with(State::new);
    state.run(data);
}

/// QueueNumMax offered: the daemon's default `--queue-size`.
const QUEUE_SIZE: u16 = 256;

fn device_layout(kind: u8, backend_queues: u16) -> DeviceLayout {
    match kind {
        0 => blk::layout(backend_queues, None, QUEUE_SIZE),
        1 => blk::layout(backend_queues, Some(1), QUEUE_SIZE),
        2 => net::layout(
            backend_queues,
            [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            None,
            QUEUE_SIZE,
        ),
        _ => fs::layout(backend_queues, "fuzz", None, QUEUE_SIZE),
    }
}

impl State {
    fn new() -> Self {
        let dir = crate::scratch::fresh("vmm_mmio");
        let image = dir.join("disk.img");
        let file = std::fs::File::create(&image).expect("create the image");
        file.set_len(IMAGE_SIZE).expect("size the image");
        let socket = dir.join("blk.sock");
        let daemon = BlkArgs {
            num_queues: Some(DAEMON_QUEUES),
            engine: Some(Engine::Sync),
            ..BlkArgs::new(&image)
        };
        let launch = Launch::on_socket(&socket, daemon).log_level(LogLevel::Off);
        let argv = std::iter::once(BlkArgs::PROGRAM.into()).chain(launch.to_args());
        let args = vhost_blk::Args::try_parse_from(argv).expect("daemon arguments");
        let config = vhost_blk::BlkConfig::try_from(args).expect("daemon config");
        let stop = StopHandle::new().expect("stop handle");
        let daemon_stop = stop.clone();
        std::thread::Builder::new()
            .name("vhost-user-blk".into())
            .spawn(move || {
                // Start-up here drops this thread's capabilities: only this thread's.
                let served =
                    vhost_blk::start(config).and_then(|p| vhost_blk::serve(p, &daemon_stop));
                if let Err(e) = served {
                    panic!("the in-process vhost-user-blk daemon stopped: {e}");
                }
            })
            .expect("daemon thread");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "the daemon did not listen");
            std::thread::sleep(Duration::from_millis(1));
        }
        State {
            socket,
            mem: Arc::new(memory::create(MEM_SIZE).expect("guest memory")),
            device: None,
            connections: 0,
            _stop: stop,
        }
    }

    /// The device of `kind`, made again on a new connection if needed.
    fn device(&mut self, kind: u8) -> &mut MmioTransport {
        let reuse = matches!(&self.device, Some((k, dev)) if *k == kind && dev.status() & S_NEEDS_RESET == 0);
        if !reuse {
            // Close the old connection first: the daemon serves one at a time.
            self.device = None;
            let backend = Backend::connect(&self.socket)
                .unwrap_or_else(|e| panic!("vhost-user handshake with the daemon: {e}"));
            self.connections += 1;
            let layout = device_layout(kind, backend.num_queues());
            let device = VhostUserDevice::new(backend, layout);
            let dev = MmioTransport::new(Box::new(device), self.mem.clone()).expect("device");
            self.device = Some((kind, dev));
        }
        match &mut self.device {
            Some((_, dev)) => dev,
            None => unreachable!("made above"),
        }
    }

    fn run(&mut self, data: &[u8]) {
        let mut input = Input::new(data);
        let kind = input.u8() & 3;
        let mem = self.mem.clone();
        let dev = self.device(kind);
        dev.write(STATUS, &0u32.to_le_bytes());
        // The daemon has no queue running now: guest memory can be cleared.
        static ZERO: [u8; 64 << 10] = [0; 64 << 10];
        for at in (0..MEM_SIZE).step_by(ZERO.len()) {
            mem.write_slice(&ZERO, GuestAddress(at))
                .expect("clear guest memory");
        }
        for _ in 0..MAX_ACCESSES {
            if input.is_empty() {
                break;
            }
            let op = input.u8();
            let offset = u64::from(input.u16()) % MMIO_WINDOW;
            let value = input.u32();
            let size = [4, 1, 2, 8][usize::from((op >> 1) & 3)];
            let bytes = (u64::from(value) | u64::from(value) << 32).to_le_bytes();
            if op & 1 != 0 {
                dev.write(offset, &bytes[..size]);
            } else {
                let mut buf = [0xffu8; 8];
                dev.read(offset, &mut buf[..size]);
            }
        }
    }
}
