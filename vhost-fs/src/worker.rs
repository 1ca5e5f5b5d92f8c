//! The per-queue request loop: pops FUSE requests off one virtqueue, answers each
//! in place (the passthrough calls are synchronous), returns the chains and
//! notifies the guest. EVENT_IDX-safe: notifications are off while the queue is
//! drained and the queue is looked at again after they are back on.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vhostkit_common::guest_error;
use vhostkit_common::lifecycle::{GuestMemory, Vring};
use vhostkit_common::queue::{ActiveQueue, Chain, IoVecError, IoVecs, QueueDevice, QueueServer};
use virtio_queue::{Reader, Writer};
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};

use crate::filesystem::FileData;
use crate::fuse::{self, Errno, Reply, WriteIn, IN_HEADER_LEN, OUT_HEADER_LEN};
use crate::server::FsServer;

/// The guest buffers of one descriptor chain, the readable and the writable ones
/// apart, in chain order. READ and WRITE data moves between these and the file
/// with preadv/pwritev: no copy through a buffer of ours.
struct ChainBuffers {
    readable: IoVecs,
    writable: IoVecs,
}

impl ChainBuffers {
    fn new(mem: &Arc<GuestMemoryMmap<()>>, chain: Chain<'_>) -> Result<Self, IoVecError> {
        let mut buffers = ChainBuffers {
            readable: IoVecs::default(),
            writable: IoVecs::default(),
        };
        for desc in chain {
            let list = if desc.is_write_only() {
                &mut buffers.writable
            } else {
                &mut buffers.readable
            };
            list.push_descriptor(mem, &desc)?;
        }
        Ok(buffers)
    }
}

impl FileData for ChainBuffers {
    fn read_from(&mut self, file: &File, offset: i64, len: usize) -> io::Result<usize> {
        self.writable
            .read_file_at(file.as_raw_fd(), OUT_HEADER_LEN, len, offset)
    }

    fn write_to(&mut self, file: &File, offset: i64, len: usize) -> io::Result<usize> {
        let skip = IN_HEADER_LEN + std::mem::size_of::<WriteIn>();
        self.readable
            .write_file_at(file.as_raw_fd(), skip, len, offset)
    }
}

/// One queue of the file system: every request is answered in place (the
/// passthrough calls are synchronous).
struct FsQueue<'a> {
    fs: &'a FsServer,
    index: usize,
}

impl QueueDevice for FsQueue<'_> {
    fn serve(&mut self, queue: &mut ActiveQueue<'_>, chain: Chain<'_>) {
        let head = chain.head_index();
        let used_len = serve_chain(self.fs, queue.memory(), chain, self.index);
        queue.complete(head, used_len);
    }
}

/// Serves everything available on queue `index`, then watches the ring a while
/// longer (as the queue's adaptive poller has learnt) before the guest must kick
/// again.
pub fn process_queue(
    fs: &FsServer,
    vring: &Vring,
    memory: &GuestMemory,
    index: usize,
    server: &mut QueueServer,
) -> io::Result<()> {
    let mem: Arc<GuestMemoryMmap<()>> = memory.memory().into_inner();
    server.serve(&mut FsQueue { fs, index }, vring, &mem)
}

/// Answers one request chain; returns the bytes written into it.
fn serve_chain(
    fs: &FsServer,
    mem: &Arc<GuestMemoryMmap<()>>,
    chain: Chain<'_>,
    index: usize,
) -> u32 {
    let head = chain.head_index();
    let mut buffers = match ChainBuffers::new(mem, chain.clone()) {
        Ok(buffers) => buffers,
        Err(e) => {
            guest_error!("queue {index}: request {head}: {e}");
            return 0;
        }
    };
    let mut reader = match Reader::new(&**mem, chain.clone()) {
        Ok(r) => r,
        Err(e) => {
            guest_error!("queue {index}: request {head}: bad readable buffers: {e}");
            return 0;
        }
    };
    let mut writer = match Writer::new(&**mem, chain) {
        Ok(w) => w,
        Err(e) => {
            guest_error!("queue {index}: request {head}: bad writable buffers: {e}");
            return 0;
        }
    };
    let available = reader.available_bytes();
    let room = writer.available_bytes();
    let (unique, reply) = match fuse::read_request(&mut reader, available) {
        Ok(request) => (
            request.header.unique,
            fs.handle_request(&request, room, &mut buffers),
        ),
        Err((Some(header), e)) => {
            guest_error!("queue {index}: request {head}: {e}");
            (header.unique, Reply::Err(Errno::EINVAL))
        }
        Err((None, e)) => {
            guest_error!("queue {index}: request {head} has no usable header: {e}");
            return 0;
        }
    };
    match fuse::write_reply(&mut writer, room, unique, &reply) {
        // At most the chain's writable bytes, which fit 32 bits.
        Ok(n) => u32::try_from(n).unwrap_or(u32::MAX),
        Err(e) => {
            guest_error!("queue {index}: request {head}: cannot write the reply: {e}");
            0
        }
    }
}

/// The queue handling of the file system in process, as vhost-user-backend's own
/// tests do it: a split ring in test memory, FUSE requests laid out as a guest
/// driver does, one kick through [`process_queue`], the replies read back from
/// the used ring and the guest's buffers. No socket, no daemon.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CachePolicy;
    use crate::fuse::{EntryOut, InHeader, InitIn, Opcode, OpenIn, OpenOut, OutHeader, ReadIn};
    use crate::passthrough::{FsOptions, PassthroughFs};
    use crate::server::Server;
    use vhost_user_backend::VringT;
    use vhostkit_common::queue::Poller;
    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryAtomic};
    use zerocopy::{FromBytes, IntoBytes};

    const SIZE: u16 = 16;
    const DESC: u64 = 0;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;
    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    struct Guest {
        memory: GuestMemory,
        mem: Arc<GuestMemoryMmap<()>>,
        vring: Vring,
        next_desc: u16,
        avail_idx: u16,
        /// Free guest memory from here on.
        next_buf: u64,
    }

    impl Guest {
        fn new() -> Self {
            let mmap = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
            let memory = GuestMemoryAtomic::new(mmap);
            let vring = Vring::new(memory.clone(), SIZE).unwrap();
            vring.set_queue_size(SIZE);
            vring.set_queue_info(DESC, AVAIL, USED).unwrap();
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            Guest {
                mem: memory.memory().into_inner(),
                memory,
                vring,
                next_desc: 0,
                avail_idx: 0,
                next_buf: 0x10000,
            }
        }

        fn buffer(&mut self, bytes: &[u8], len: usize) -> u64 {
            let at = self.next_buf;
            self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
            self.next_buf += (len as u64 + 0xfff) & !0xfff;
            at
        }

        /// Offers a request: `request` readable, then `reply_bufs` writable buffers
        /// of the given sizes; returns their guest addresses.
        fn offer(&mut self, request: &[u8], reply_bufs: &[usize]) -> Vec<u64> {
            let head = self.next_desc;
            let mut descs = vec![(self.buffer(request, request.len()), request.len(), 0)];
            for &len in reply_bufs {
                descs.push((self.buffer(&[], len), len, F_WRITE));
            }
            let n = descs.len();
            for (i, &(addr, len, flags)) in descs.iter().enumerate() {
                let index = self.next_desc;
                self.next_desc += 1;
                let next = if i + 1 < n { F_NEXT } else { 0 };
                let at = GuestAddress(DESC + 16 * u64::from(index));
                self.mem.write_obj(addr, at).unwrap();
                self.mem.write_obj(len as u32, at.unchecked_add(8)).unwrap();
                self.mem
                    .write_obj(flags | next, at.unchecked_add(12))
                    .unwrap();
                self.mem.write_obj(index + 1, at.unchecked_add(14)).unwrap();
            }
            let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % SIZE);
            self.mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.avail_idx += 1;
            self.mem
                .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
                .unwrap();
            descs[1..].iter().map(|d| d.0).collect()
        }

        /// Used element `i`: (head, length).
        fn used(&self, i: u16) -> (u32, u32) {
            let at = GuestAddress(USED + 4 + 8 * u64::from(i));
            (
                self.mem.read_obj(at).unwrap(),
                self.mem.read_obj(at.unchecked_add(4)).unwrap(),
            )
        }

        fn used_idx(&self) -> u16 {
            self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
        }

        fn read(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut buf = vec![0; len];
            self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            buf
        }
    }

    fn request(opcode: Opcode, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let header = InHeader {
            len: u32::try_from(IN_HEADER_LEN + body.len()).unwrap(),
            opcode: opcode as u32,
            unique,
            nodeid,
            ..Default::default()
        };
        [header.as_bytes(), body].concat()
    }

    #[test]
    fn a_kick_answers_every_request_in_place_and_reads_go_straight_into_guest_buffers() {
        let dir = std::env::temp_dir().join(format!("vhost-fs-worker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let contents: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.join("file"), &contents).unwrap();
        let options = FsOptions {
            readonly: false,
            xattr: false,
            cache: CachePolicy::Auto,
            announce_submounts: false,
            file_handles: false,
            allow_direct_io: false,
        };
        let fs = Server::new(PassthroughFs::new(&dir, options).unwrap());
        let mut queue = QueueServer::new("queue 1", Poller::off());
        let mut guest = Guest::new();

        let init = InitIn {
            major: 7,
            minor: 31,
            ..Default::default()
        };
        let init_reply = guest.offer(&request(Opcode::Init, 1, 0, init.as_bytes()), &[256]);
        let lookup_reply = guest.offer(&request(Opcode::Lookup, 2, 1, b"file\0"), &[256]);
        process_queue(&fs, &guest.vring, &guest.memory, 1, &mut queue).unwrap();
        assert_eq!(guest.used_idx(), 2, "both answered in one kick");
        let header = |addr| {
            OutHeader::read_from_prefix(&guest.read(addr, 16))
                .unwrap()
                .0
        };
        assert_eq!(
            (header(init_reply[0]).unique, header(init_reply[0]).error),
            (1, 0)
        );
        let lookup = header(lookup_reply[0]);
        assert_eq!((lookup.unique, lookup.error), (2, 0));
        assert_eq!(guest.used(1), (2, lookup.len));
        let entry_bytes = guest.read(lookup_reply[0] + OUT_HEADER_LEN as u64, 128);
        let entry = EntryOut::read_from_prefix(&entry_bytes).unwrap().0;
        assert_eq!(entry.attr.size, 9000);

        let open = OpenIn {
            flags: libc::O_RDONLY as u32,
            open_flags: 0,
        };
        let open_reply = guest.offer(
            &request(Opcode::Open, 3, entry.nodeid, open.as_bytes()),
            &[64],
        );
        process_queue(&fs, &guest.vring, &guest.memory, 1, &mut queue).unwrap();
        let fh = OpenOut::read_from_prefix(&guest.read(open_reply[0] + OUT_HEADER_LEN as u64, 16))
            .unwrap()
            .0
            .fh;
        // A READ of 8 KiB at 100 into three guest buffers: the header's and two for data.
        let read = ReadIn {
            fh,
            offset: 100,
            size: 8192,
            ..Default::default()
        };
        let bufs = guest.offer(
            &request(Opcode::Read, 4, entry.nodeid, read.as_bytes()),
            &[OUT_HEADER_LEN + 5000, 4000],
        );
        process_queue(&fs, &guest.vring, &guest.memory, 1, &mut queue).unwrap();
        assert_eq!(guest.used_idx(), 4);
        assert_eq!(
            guest.used(3).1,
            u32::try_from(OUT_HEADER_LEN + 8192).unwrap()
        );
        let mut data = guest.read(bufs[0] + OUT_HEADER_LEN as u64, 5000);
        data.extend(guest.read(bufs[1], 3192));
        assert_eq!(data, contents[100..8292]);
        assert_eq!(
            guest.read(bufs[1] + 3192, 8),
            [0; 8],
            "nothing past the read"
        );
        let stats = queue.stats();
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!((get(&stats.popped), get(&stats.completed)), (4, 4));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
