//! A user-space vhost-user driver (frontend), so that tests and benchmarks can drive
//! any vhost-user backend (ours, qemu-storage-daemon) without booting a guest.
//!
//! The driver plays the part a VMM plays for a real guest: it owns "guest memory",
//! negotiates features over the vhost-user socket, lays out split virtqueues in that
//! memory and then places buffers on them, kicks the backend and reaps completions.
//!
//! # Layers
//!
//! - [`GuestMem`] ([`memory`]): a memfd mapped `MAP_SHARED` through vm-memory at a
//!   chosen guest physical base, with bounds-checked reads and writes and a small
//!   first-fit allocator ([`GuestMem::alloc`], [`GuestMem::free`]) that carves ring
//!   and buffer areas out of it. Addresses are guest physical addresses (GPAs).
//! - [`Driver`] ([`device`]): one vhost-user connection, a
//!   [`vhostkit_frontend::Connection`] (the frontend the VMM uses too) with the
//!   driver's memory and queue policy around it. [`Driver::connect`] runs the
//!   handshake (GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM, SET_OWNER,
//!   SET_FEATURES, SET_MEM_TABLE) with the feature masks of a [`DriverConfig`];
//!   [`Driver::setup_queue`] sends SET_VRING_NUM/ADDR/BASE/CALL/KICK and
//!   SET_VRING_ENABLE for one queue and returns its [`Queue`] (the enable goes
//!   elsewhere, e.g. before SET_FEATURES as QEMU's one-pair virtio-net sends it, per
//!   [`DriverConfig::ring_enable`]: [`RingEnable`]); [`Driver::get_config`]
//!   reads device config space. Every control request runs under
//!   [`DriverConfig::timeout`] (a watchdog shuts the socket down when a backend does
//!   not answer, e.g. qemu-storage-daemon to a second frontend);
//!   [`Driver::request`] runs requests of a test's own on the raw `Frontend` under the
//!   same timeout. Dropping the `Driver` closes the socket, also with requests in
//!   flight; the [`Queue`]s and memory stay valid (they hold the memory mapping).
//! - [`Queue`] ([`virtq`]): the driver side of one split virtqueue. The managed API
//!   tracks free descriptors: [`Queue::add`] places a chain of [`Buf`]s as direct
//!   descriptors or as one indirect table, [`Queue::publish`] makes everything added
//!   since the last call visible with one avail-index store and tells whether the
//!   backend wants a kick (honouring `VIRTIO_RING_F_EVENT_IDX` and
//!   `VRING_USED_F_NO_NOTIFY`), [`Queue::submit`] publishes and kicks,
//!   [`Queue::pop_used`] reaps completions and [`Queue::wait_used`] blocks on the call
//!   eventfd with a timeout. A `Queue` is `Send`: one thread per queue is the
//!   intended use.
//!   The raw API ([`Queue::write_desc`], [`Queue::push_avail`],
//!   [`Queue::set_avail_idx`], [`Queue::read_used`], [`RawDesc::write_at`]) writes
//!   whatever a hostile test wants: any address, length, flags and next index, loops,
//!   indirect tables pointing anywhere, any head index.
//! - [`net`]: virtio-net frames, receive buffers and control commands on top of
//!   `Queue`s ([`net::NetQueuePair`], [`net::CtrlQueue`]) and the config space.
//! - [`fs`]: virtio-fs (FUSE) requests on the hiprio and request queues
//!   ([`fs::FsDevice`], [`fs::FsQueue`]) and the config space; request bodies
//!   ([`fs::body`]) and reply fields ([`fs::reply`]) of the common operations.
//! - [`blk`]: virtio-blk requests on top of a `Queue` ([`blk::BlkQueue`]) and the
//!   config space ([`blk::BlkConfig`]).
//!
//! # Example
//!
//! ```no_run
//! use vhostkit_driver::{blk, DriverConfig};
//! use std::time::Duration;
//!
//! # fn main() -> vhostkit_driver::Result<()> {
//! let mut dev = blk::BlkDevice::connect("/tmp/blk.sock", &DriverConfig::default())?;
//! println!("capacity {} sectors", dev.config.capacity);
//! let mut queues = dev.setup_queues(1, 256, 64)?;
//! let q = &mut queues[0];
//! let buf = dev.driver.memory().alloc(4096, 4096)?;
//! let done = q.run(&blk::BlkRequest::read(0, &[(buf, 4096)]), Duration::from_secs(5))?;
//! assert_eq!(done.status, blk::VIRTIO_BLK_S_OK);
//! # Ok(()) }
//! ```

use std::io;

pub mod blk;
pub mod device;
pub mod fs;
pub mod memory;
pub mod net;
pub mod virtq;

pub use device::{Driver, DriverConfig, RingEnable};
pub use memory::{Allocator, GuestMem};
pub use virtq::{Buf, Queue, QueueStats, RawDesc, RingAddrs, RingLayout, Used};

/// Generic feature bits, re-exported so users need not depend on virtio-bindings.
pub use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
pub use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Errors of the driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the guest memory file")]
    Memfd(#[source] io::Error),
    #[error("cannot map guest memory")]
    MapMemory(#[source] vm_memory::mmap::FromRangesError),
    #[error("invalid guest memory size {0:#x} (must be a non-zero multiple of 4 KiB)")]
    MemorySize(u64),
    #[error("guest memory exhausted: {wanted:#x} bytes wanted")]
    OutOfMemory { wanted: u64 },
    #[error("guest address range {addr:#x}+{len:#x} is outside guest memory")]
    BadAddress { addr: u64, len: u64 },
    /// A vhost-user request failed, timed out, or the connection could not be made.
    #[error(transparent)]
    Frontend(#[from] vhostkit_frontend::Error),
    #[error("queue index {index} out of range (the backend has {count} queues)")]
    BadQueueIndex { index: u16, count: u64 },
    #[error("invalid queue size {0} (must be a power of two, 1..=32768)")]
    BadQueueSize(u16),
    #[error("cannot create or use an eventfd")]
    EventFd(#[source] io::Error),
    #[error("waiting on the call eventfd failed")]
    Poll(#[source] io::Error),
    #[error("queue full: {wanted} descriptors wanted, {free} free")]
    QueueFull { wanted: usize, free: usize },
    #[error("a chain needs at least one buffer")]
    EmptyChain,
    #[error("chain of {len} buffers exceeds the limit of {max}")]
    ChainTooLong { len: usize, max: usize },
    #[error("descriptor index {0} outside the descriptor table")]
    BadDescIndex(u16),
    #[error("timed out waiting for the backend")]
    Timeout,
    #[error("the backend returned {got} config bytes, {wanted} wanted")]
    ConfigSize { got: usize, wanted: usize },
    #[error("no free request slot (all {0} in flight)")]
    NoFreeSlot(usize),
    #[error("the backend completed an unknown descriptor chain {0}")]
    UnknownUsedId(u32),
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
}

/// Result of the driver.
pub type Result<T> = std::result::Result<T, Error>;

/// A device config space as GET_CONFIG returned it, with little-endian field access
/// by offset: what each device's config parser (net, blk, fs...) reads its fields
/// through, once the length is checked.
#[derive(Clone, Copy, Debug)]
pub struct ConfigBytes<'a>(&'a [u8]);

impl<'a> ConfigBytes<'a> {
    /// `b`, which must hold at least `size` bytes (the fields the parser reads).
    pub fn new(b: &'a [u8], size: u32) -> Result<Self> {
        if b.len() < size as usize {
            return Err(Error::ConfigSize {
                got: b.len(),
                wanted: size as usize,
            });
        }
        Ok(ConfigBytes(b))
    }

    pub fn u8_at(&self, o: usize) -> u8 {
        self.0[o]
    }

    pub fn u16_at(&self, o: usize) -> u16 {
        u16::from_le_bytes(self.array_at(o))
    }

    pub fn u32_at(&self, o: usize) -> u32 {
        u32::from_le_bytes(self.array_at(o))
    }

    pub fn u64_at(&self, o: usize) -> u64 {
        u64::from_le_bytes(self.array_at(o))
    }

    /// `N` bytes at `o` (a MAC address, a tag).
    pub fn array_at<const N: usize>(&self, o: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.0[o..o + N]);
        a
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Timeout => io::Error::new(io::ErrorKind::TimedOut, e),
            other => io::Error::other(other),
        }
    }
}
