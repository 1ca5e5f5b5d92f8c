//! A small guest memory and one split virtqueue laid out from fuzz input, for the
//! targets that pop descriptor chains the way a device worker does.
//!
//! Guest memory has three regions: [0, 0x8000) and [0x8000, 0x10000), adjacent (a
//! buffer crossing 0x8000 maps to two host iovecs), and [0x20000, 0x21000) after a
//! hole; the hole and everything past 0x21000 are outside guest memory.
//!
//! The queue: descriptor table at [`DESC`], available ring at [`AVAIL`], used ring
//! at [`USED`], written with virtio-queue's mock helpers (`DescriptorTable`,
//! `AvailRing`); the rest of the input is guest memory from [`DATA`] on, where the
//! descriptors point (headers, data, indirect tables).
//!
//! Input layout (little-endian; missing bytes are zeros):
//!
//! | bytes      | field                                                          |
//! |------------|----------------------------------------------------------------|
//! | 1          | queue size: `1 << (b % 7)`, 1 to 64                            |
//! | 1          | options, for the target (bit 7: EVENT_IDX on)                  |
//! | 2          | available ring `flags` (bit 0: NO_INTERRUPT)                   |
//! | 2          | available ring `idx`: how many chains the driver offers        |
//! | 2          | `used_event` (after the available ring; read with EVENT_IDX)   |
//! | 16 * size  | descriptor table: `struct virtq_desc` (addr u64, len u32, flags u16, next u16) |
//! | 2 * size   | available ring entries: head indexes                           |
//! | rest       | guest memory from [`DATA`]: the first 0xf000 bytes in the two adjacent regions, the next 0x1000 in the third |

use std::cell::RefCell;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::{AvailRing, DescriptorTable};
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

use crate::input::Input;

/// Guest memory regions: (start, length).
pub const REGIONS: [(u64, usize); 3] = [(0, 0x8000), (0x8000, 0x8000), (0x20000, 0x1000)];
/// Descriptor table, available ring and used ring of the queue (64 entries at most
/// fit without overlapping).
pub const DESC: u64 = 0x0;
pub const AVAIL: u64 = 0x400;
pub const USED: u64 = 0x500;
/// Where the input's free-form guest memory starts.
pub const DATA: u64 = 0x1000;
/// Options bit: EVENT_IDX negotiated.
pub const OPT_EVENT_IDX: u8 = 0x80;

/// Largest queue size (`1 << 6`).
pub const MAX_QUEUE_SIZE: u16 = 64;

/// The guest memory of one thread's runs (made once, cleared per input).
pub struct Guest {
    pub mem: std::sync::Arc<GuestMemoryMmap<()>>,
    /// Host address ranges of the regions, for checking iovecs.
    host: Vec<(usize, usize)>,
}

thread_local! {
    static GUEST: RefCell<Option<Guest>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's guest memory, cleared.
pub fn with_guest<R>(f: impl FnOnce(&Guest) -> R) -> R {
    GUEST.with(|cell| {
        let mut slot = cell.borrow_mut();
        let guest = slot.get_or_insert_with(Guest::new);
        guest.clear();
        f(guest)
    })
}

impl Guest {
    fn new() -> Self {
        let ranges: Vec<(GuestAddress, usize)> = REGIONS
            .iter()
            .map(|&(start, len)| (GuestAddress(start), len))
            .collect();
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).expect("guest memory");
        let host = mem
            .iter()
            .map(|r| {
                let start = r
                    .get_host_address(MemoryRegionAddress(0))
                    .expect("host address") as usize;
                (start, start + r.len() as usize)
            })
            .collect();
        Guest {
            mem: std::sync::Arc::new(mem),
            host,
        }
    }

    fn clear(&self) {
        static ZERO: [u8; 0x8000] = [0; 0x8000];
        for &(start, len) in &REGIONS {
            self.mem
                .write_slice(&ZERO[..len], GuestAddress(start))
                .expect("clear guest memory");
        }
    }

    /// Lays out the queue and guest memory from `input` (see the module docs);
    /// returns the queue, ready as a device sees it after activation, and the
    /// options byte.
    pub fn load(&self, input: &mut Input<'_>) -> (Queue, u8) {
        let size = 1u16 << (input.u8() % 7);
        let options = input.u8();
        let avail_flags = input.u16();
        let avail_idx = input.u16();
        let used_event = input.u16();
        let table = DescriptorTable::new(&*self.mem, GuestAddress(DESC), size);
        for i in 0..size {
            let (addr, len, flags, next) = (input.u64(), input.u32(), input.u16(), input.u16());
            let desc = Descriptor::new(addr, len, flags, next);
            table
                .store(i, RawDescriptor::from(desc))
                .expect("descriptor inside the table");
        }
        let avail = AvailRing::new(&*self.mem, GuestAddress(AVAIL), size);
        for i in 0..size {
            avail
                .ring()
                .ref_at(usize::from(i))
                .expect("entry inside the ring")
                .store(input.u16());
        }
        avail.idx().store(avail_idx);
        let write = |value: u16, at: u64| {
            self.mem
                .write_obj(value, GuestAddress(at))
                .expect("ring field inside guest memory")
        };
        write(avail_flags, AVAIL);
        write(used_event, AVAIL + 4 + 2 * u64::from(size));
        self.write_data(input.rest());

        let mut queue = Queue::new(MAX_QUEUE_SIZE).expect("queue");
        queue.set_size(size);
        queue.set_desc_table_address(Some(DESC as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        queue.set_used_ring_address(Some(USED as u32), Some(0));
        queue.set_event_idx(options & OPT_EVENT_IDX != 0);
        queue.set_ready(true);
        assert!(
            queue.is_valid(&*self.mem),
            "the queue set-up itself is valid"
        );
        (queue, options)
    }

    fn write_data(&self, data: &[u8]) {
        let low_room = (REGIONS[1].0 + REGIONS[1].1 as u64 - DATA) as usize;
        let (low, high) = data.split_at(data.len().min(low_room));
        self.mem
            .write_slice(low, GuestAddress(DATA))
            .expect("data inside the low regions");
        let high = &high[..high.len().min(REGIONS[2].1)];
        self.mem
            .write_slice(high, GuestAddress(REGIONS[2].0))
            .expect("data inside the high region");
    }

    /// Asserts that every iovec lies inside one region of guest memory; returns
    /// their total length.
    pub fn check_iovecs(&self, iovecs: &[libc::iovec]) -> usize {
        let mut total = 0usize;
        for iov in iovecs {
            let start = iov.iov_base as usize;
            let end = start.checked_add(iov.iov_len).expect("iovec end overflows");
            assert!(
                self.host.iter().any(|&(s, e)| s <= start && end <= e),
                "iovec {start:#x}+{:#x} outside guest memory",
                iov.iov_len
            );
            total += iov.iov_len;
        }
        total
    }

    /// The bytes the iovecs cover, as a writev would send them (checked first).
    pub fn gather(&self, iovecs: &[libc::iovec]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.check_iovecs(iovecs));
        for iov in iovecs {
            // SAFETY: check_iovecs asserted that the range lies inside a region of
            // `self.mem`, which stays mapped while `self` lives; guest memory is
            // plain bytes, read only here.
            let bytes =
                unsafe { std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len) };
            out.extend_from_slice(bytes);
        }
        out
    }

    /// Fills the iovecs with `byte`, as a readv would (checked first).
    pub fn scatter(&self, iovecs: &[libc::iovec], byte: u8) {
        self.check_iovecs(iovecs);
        for iov in iovecs {
            // SAFETY: check_iovecs asserted that the range lies inside a region of
            // `self.mem`, mapped read-write while `self` lives; nothing else holds
            // a reference into guest memory during the call.
            unsafe { std::ptr::write_bytes(iov.iov_base as *mut u8, byte, iov.iov_len) };
        }
    }
}
