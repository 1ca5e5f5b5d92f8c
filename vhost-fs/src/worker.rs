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
