//! The per-queue request loop: pops FUSE requests off one virtqueue, answers each
//! in place (the passthrough calls are synchronous), returns the chains and
//! notifies the guest. EVENT_IDX-safe: notifications are off while the queue is
//! drained and the queue is looked at again after they are back on.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost_user_backend::{VringState, VringT};
use vhostkit_common::guest_error;
use vhostkit_common::lifecycle::{GuestMemory, Vring};
use vhostkit_common::vring::{head_in_queue, poll_avail, queue_err, serve_until_idle};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};

use std::fs::File;
use std::os::fd::AsRawFd;

use vm_memory::GuestMemoryBackend;

use crate::fuse::{self, Errno, Reply, WriteIn, IN_HEADER_LEN, OUT_HEADER_LEN};
use crate::passthrough::{FileData, PassthroughFs};

/// Most iovecs handed to one preadv/pwritev (IOV_MAX).
const MAX_IOVECS: usize = 1024;

/// The guest buffers of one descriptor chain as host iovecs, the readable and the
/// writable ones apart, in chain order. READ and WRITE data moves between these
/// and the file with preadv/pwritev: no copy through a buffer of ours.
struct ChainBuffers {
    readable: Vec<libc::iovec>,
    writable: Vec<libc::iovec>,
}

impl ChainBuffers {
    fn new<C>(mem: &GuestMemoryMmap<()>, chain: C) -> Option<Self>
    where
        C: Iterator<Item = virtio_queue::desc::split::Descriptor>,
    {
        let mut buffers = ChainBuffers {
            readable: Vec::new(),
            writable: Vec::new(),
        };
        for desc in chain {
            let out = if desc.is_write_only() {
                &mut buffers.writable
            } else {
                &mut buffers.readable
            };
            for slice in mem.get_slices(desc.addr(), desc.len() as usize) {
                let slice = slice.ok()?;
                out.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
        }
        Some(buffers)
    }
}

/// The iovecs covering bytes `skip..skip + len` of `all` (at most MAX_IOVECS).
fn iovecs_at(all: &[libc::iovec], mut skip: usize, mut len: usize, out: &mut Vec<libc::iovec>) {
    out.clear();
    for iov in all {
        if len == 0 || out.len() == MAX_IOVECS {
            break;
        }
        if skip >= iov.iov_len {
            skip -= iov.iov_len;
            continue;
        }
        let take = (iov.iov_len - skip).min(len);
        out.push(libc::iovec {
            // SAFETY: `skip < iov_len`, so the pointer stays inside the buffer.
            iov_base: unsafe { iov.iov_base.cast::<u8>().add(skip) }.cast(),
            iov_len: take,
        });
        skip = 0;
        len -= take;
    }
}

/// Runs `op` (preadv or pwritev) over bytes `skip..skip + len` of `all` until all
/// of it moved or `op` moved nothing (end of file).
fn transfer(
    all: &[libc::iovec],
    skip: usize,
    len: usize,
    offset: i64,
    mut op: impl FnMut(&[libc::iovec], i64) -> isize,
) -> io::Result<usize> {
    let mut iovecs = Vec::new();
    let mut done = 0;
    while done < len {
        iovecs_at(all, skip + done, len - done, &mut iovecs);
        if iovecs.is_empty() {
            break;
        }
        let n = op(&iovecs, offset + done as i64);
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if done > 0 {
                break;
            }
            return Err(err);
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    Ok(done)
}

impl FileData for ChainBuffers {
    fn read_from(&mut self, file: &File, offset: i64, len: usize) -> io::Result<usize> {
        let fd = file.as_raw_fd();
        transfer(&self.writable, OUT_HEADER_LEN, len, offset, |iov, off| {
            // SAFETY: the iovecs point into guest memory that the caller's
            // mapping keeps alive for the whole request, and were checked to lie
            // inside it (get_slices); preadv writes only within them.
            unsafe { libc::preadv64(fd, iov.as_ptr(), iov.len() as i32, off) }
        })
    }

    fn write_to(&mut self, file: &File, offset: i64, len: usize) -> io::Result<usize> {
        let fd = file.as_raw_fd();
        let skip = IN_HEADER_LEN + std::mem::size_of::<WriteIn>();
        transfer(&self.readable, skip, len, offset, |iov, off| {
            // SAFETY: as in read_from; pwritev only reads the buffers.
            unsafe { libc::pwritev64(fd, iov.as_ptr(), iov.len() as i32, off) }
        })
    }
}

/// How long a queue worker busy-polls after its queue runs dry, adapted to the
/// guest the way KVM adapts halt polling: a kick that comes within `max` of the
/// worker going idle means a longer poll would have caught it (grow: 10 us, then
/// doubling, up to `max`); a kick after more than `max` means polling only burns
/// CPU for this guest (shrink to 0). So a guest that sends its next request at once
/// (a process doing file system calls back to back) is served without kicks or
/// wake-ups, and a slow or idle one costs no spinning.
#[derive(Debug)]
pub struct AdaptivePoll {
    max: Duration,
    current: Duration,
    idle_since: Option<Instant>,
}

impl AdaptivePoll {
    const START: Duration = Duration::from_micros(10);

    /// Polling of at most `max` (zero: never poll).
    pub fn new(max: Duration) -> Self {
        AdaptivePoll {
            max,
            current: Duration::ZERO,
            idle_since: None,
        }
    }

    /// A kick woke the worker at `now`: adapt to how long it was idle.
    pub fn woken(&mut self, now: Instant) {
        let Some(since) = self.idle_since.take() else {
            return;
        };
        if self.max.is_zero() {
            return;
        }
        if now.duration_since(since) <= self.max {
            self.current = (self.current * 2).clamp(Self::START, self.max);
        } else {
            self.current = Duration::ZERO;
        }
    }

    /// The worker goes to sleep at `now`, waiting for a kick.
    pub fn idle(&mut self, now: Instant) {
        self.idle_since = Some(now);
    }

    /// How long to poll now.
    pub fn current(&self) -> Duration {
        self.current
    }
}

/// Serves everything available on queue `index`, then watches the ring a while
/// longer (as `poll` has learnt) before the guest must kick again.
pub fn process_queue(
    fs: &PassthroughFs,
    vring: &Vring,
    memory: &GuestMemory,
    index: usize,
    poll: &mut AdaptivePoll,
) -> io::Result<()> {
    poll.woken(Instant::now());
    let mem: Arc<GuestMemoryMmap<()>> = memory.memory().into_inner();
    let mut state = vring.get_mut();
    let drain = |fs: &mut &PassthroughFs,
                 state: &mut VringState<GuestMemory>,
                 mem: &Arc<GuestMemoryMmap<()>>| {
        let queue = state.get_queue_mut();
        queue.disable_notification(&**mem).map_err(queue_err)?;
        loop {
            let chain = match queue.iter(&**mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => {
                    guest_error!("queue {index}: cannot read the available ring: {e}");
                    return Ok(false);
                }
            };
            let Some(chain) = chain else {
                return Ok(true);
            };
            let head = chain.head_index();
            if !head_in_queue(queue, head, "vhost-user-fs") {
                continue;
            }
            let used_len = serve_chain(fs, mem, chain, index);
            if let Err(e) = queue.add_used(&**mem, head, used_len) {
                guest_error!("queue {index}: cannot return request {head}: {e}");
            }
        }
    };
    let spin = poll.current();
    let poll_more =
        |_: &mut &PassthroughFs,
         state: &mut VringState<GuestMemory>,
         mem: &Arc<GuestMemoryMmap<()>>| { poll_avail(state.get_queue_mut(), mem, spin) };
    let result = serve_until_idle(&mut { fs }, &mut state, &mem, spin, drain, poll_more);
    poll.idle(Instant::now());
    result
}

/// Answers one request chain; returns the bytes written into it.
fn serve_chain(
    fs: &PassthroughFs,
    mem: &GuestMemoryMmap<()>,
    chain: DescriptorChain<&GuestMemoryMmap<()>>,
    index: usize,
) -> u32 {
    let head = chain.head_index();
    let Some(mut buffers) = ChainBuffers::new(mem, chain.clone()) else {
        guest_error!("queue {index}: request {head}: buffers outside guest memory");
        return 0;
    };
    let mut reader = match Reader::new(mem, chain.clone()) {
        Ok(r) => r,
        Err(e) => {
            guest_error!("queue {index}: request {head}: bad readable buffers: {e}");
            return 0;
        }
    };
    let mut writer = match Writer::new(mem, chain) {
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
        Ok(n) => n as u32,
        Err(e) => {
            guest_error!("queue {index}: request {head}: cannot write the reply: {e}");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_grows_for_a_quick_guest_and_stops_for_a_slow_one() {
        let max = Duration::from_micros(50);
        let mut poll = AdaptivePoll::new(max);
        let t = Instant::now();
        let us = Duration::from_micros;
        poll.woken(t);
        assert_eq!(poll.current(), Duration::ZERO, "nothing learnt yet");
        // Kicks 20 us after going idle: a poll would have caught them.
        let mut now = t;
        for wanted in [10, 20, 40, 50, 50] {
            poll.idle(now);
            now += us(20);
            poll.woken(now);
            assert_eq!(poll.current(), us(wanted));
        }
        // A kick 1 ms after: polling is wasted on this guest.
        poll.idle(now);
        now += us(1000);
        poll.woken(now);
        assert_eq!(poll.current(), Duration::ZERO);
        // --poll-us 0 never polls.
        let mut off = AdaptivePoll::new(Duration::ZERO);
        off.idle(t);
        off.woken(t);
        assert_eq!(off.current(), Duration::ZERO);
    }

    #[test]
    fn iovecs_cover_exactly_the_asked_bytes() {
        let mut a = [0u8; 10];
        let mut b = [0u8; 20];
        let all = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: a.len(),
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            },
        ];
        let mut out = Vec::new();
        iovecs_at(&all, 4, 10, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].iov_base.cast::<u8>(), out[0].iov_len),
            (a[4..].as_mut_ptr(), 6)
        );
        assert_eq!(
            (out[1].iov_base.cast::<u8>(), out[1].iov_len),
            (b.as_mut_ptr(), 4)
        );
        iovecs_at(&all, 12, 100, &mut out);
        assert_eq!((out.len(), out[0].iov_len), (1, 18));
        iovecs_at(&all, 30, 5, &mut out);
        assert!(out.is_empty());
        iovecs_at(&all, 0, 0, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn transfer_continues_after_short_transfers() {
        let mut buf = [0u8; 100];
        let all = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        // An op that moves at most 7 bytes per call, as a pipe or a signal might.
        let mut calls = Vec::new();
        let done = transfer(&all, 10, 50, 1000, |iov, offset| {
            calls.push((iov[0].iov_len, offset));
            iov[0].iov_len.min(7) as isize
        })
        .unwrap();
        assert_eq!(done, 50);
        assert_eq!(calls.len(), 8);
        assert_eq!(calls[1], (43, 1007));
        // End of file (0 bytes) stops early; an error after progress keeps the progress.
        assert_eq!(transfer(&all, 0, 50, 0, |_, _| 0).unwrap(), 0);
        let mut first = true;
        let n = transfer(&all, 0, 50, 0, |_, _| {
            if std::mem::take(&mut first) {
                5
            } else {
                // SAFETY: errno is this thread's; setting it is what a failing call does.
                unsafe { *libc::__errno_location() = libc::EIO };
                -1
            }
        })
        .unwrap();
        assert_eq!(n, 5);
    }
}
