//! The per-queue worker: pops requests off one virtqueue, hands reads, writes,
//! flushes and the ranges of discards and write-zeroes to the queue's I/O engine
//! without waiting for them, and completes them (status byte, used ring, guest
//! notification) as the engine reports them done.
//!
//! A request may take several engine operations, one after the other under the
//! same tag: a read or write the kernel moved only part of (a transfer over 2 GiB
//! is cut at 2 GiB - 4 KiB per system call) continues where it stopped, and a
//! discard or write-zeroes runs its segments in turn. Nothing a request does waits
//! in the worker thread, so a large one never holds the queue (nor the vring lock
//! that GET_VRING_BASE and SET_MEM_TABLE wait for) while it runs.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vhost_user_backend::VringT;
use vhostkit_common::lifecycle::{GuestMemory, Vring};
use vhostkit_common::queue::{
    ActiveQueue, Chain, Coalescer, IoVecs, Poller, QueueDevice, QueueServer,
};
use vhostkit_common::{guest_debug, guest_error, guest_warn};
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryMmap};

use crate::disk::{Disk, SegmentOp, PUNCH_HOLE, ZERO_RANGE};
use crate::engine::{Completion, IoEngine, IoOp};
use crate::request::{
    spans_to_iovecs, write_spans, Action, Limits, Request, ID_BYTES, STATUS_IOERR, STATUS_OK,
};

/// What all queues of one device (one connection) share.
pub struct DeviceState {
    pub disk: Arc<Disk>,
    pub limits: Limits,
    pub serial: [u8; ID_BYTES],
    /// Write-back cache on (the default); off means every write is write-through.
    /// The guest toggles it through the `writeback` config field (CONFIG_WCE).
    pub writeback: AtomicBool,
}

/// One request on its way through the engine.
#[derive(Default)]
struct Slot {
    request: Request,
    /// The data buffers still to move (advanced past what a short transfer
    /// moved). They hold the guest memory mapped while the kernel may access it.
    data: IoVecs,
    /// The ranges of a discard or write-zeroes, checked when the request started.
    segments: Vec<Segment>,
    progress: Progress,
    /// Used length to report on success: data written into the guest plus status.
    used_len: u32,
}

/// A checked discard or write-zeroes range, in bytes.
#[derive(Clone, Copy, Debug)]
struct Segment {
    offset: u64,
    len: u64,
    unmap: bool,
}

/// The engine operation a slot has in flight, and how far its request got.
#[derive(Clone, Copy, Debug, Default)]
enum Progress {
    #[default]
    Idle,
    /// A read or write of `total` bytes at `offset`, `done` of them moved.
    Transfer {
        write: bool,
        sync: bool,
        offset: u64,
        total: usize,
        done: usize,
    },
    Flush,
    /// Segment `index` of a discard or write-zeroes, done as `op`.
    Segment {
        write_zeroes: bool,
        index: usize,
        op: SegmentOp,
    },
}

/// The used length of a read of `len` bytes: the data and the status byte. A used
/// length is 32 bits: a request of 4 GiB or more reports the most it can, never a
/// wrapped (small) number.
pub fn read_used_len(len: u64) -> u32 {
    u32::try_from(len.saturating_add(1)).unwrap_or(u32::MAX)
}

/// One queue of the disk: its server and its requests.
pub struct QueueWorker {
    queue: QueueServer,
    requests: Requests,
    memory: Option<GuestMemory>,
    vring: Option<Vring>,
}

/// The requests of one queue, in slots, on their way through the queue's engine.
struct Requests {
    index: usize,
    device: Arc<DeviceState>,
    engine: Box<dyn IoEngine>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    completions: Vec<Completion>,
}

impl QueueWorker {
    pub fn new(
        index: usize,
        device: Arc<DeviceState>,
        engine: Box<dyn IoEngine>,
        queue_size: usize,
        poll: Duration,
        coalesce: Duration,
    ) -> Self {
        QueueWorker {
            queue: QueueServer::new(format!("queue {index}"), Poller::adaptive(poll))
                .with_coalescing(Coalescer::adaptive(coalesce)),
            requests: Requests {
                index,
                device,
                engine,
                slots: (0..queue_size).map(|_| Slot::default()).collect(),
                free: (0..queue_size).rev().collect(),
                completions: Vec::with_capacity(queue_size),
            },
            memory: None,
            vring: None,
        }
    }

    /// The engine, for the next connection (this worker keeps a null engine). Call
    /// it after [`Self::drain`]: nothing is in flight then.
    pub fn take_engine(&mut self) -> Box<dyn IoEngine> {
        self.memory = None;
        self.vring = None;
        std::mem::replace(
            &mut self.requests.engine,
            Box::new(crate::engine::SyncEngine::null()),
        )
    }

    pub fn set_memory(&mut self, memory: GuestMemory) {
        self.memory = Some(memory);
    }

    pub fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        self.requests.engine.completion_fd()
    }

    fn current_memory(&self) -> Option<Arc<GuestMemoryMmap<()>>> {
        self.memory.as_ref().map(|m| m.memory().into_inner())
    }

    /// The guest kicked the queue (or it was just enabled): serve what is available.
    pub fn handle_kick(&mut self, vring: &Vring) -> io::Result<()> {
        if self.vring.is_none() {
            self.vring = Some(vring.clone());
        }
        let Some(mem) = self.current_memory() else {
            guest_error!(
                "queue {}: kicked before a memory table was set",
                self.requests.index
            );
            return Ok(());
        };
        self.queue.serve(&mut self.requests, vring, &mem)
    }

    /// The engine's completion eventfd fired.
    pub fn handle_completions(&mut self, vring: &Vring) -> io::Result<()> {
        let Some(mem) = self.current_memory() else {
            return Ok(());
        };
        let mut state = vring.get_mut();
        let mut queue = self.queue.activate(&mut state, &mem);
        self.requests.complete_ready(&mut queue);
        queue.signal();
        Ok(())
    }

    /// Waits for everything in flight and completes it (GET_VRING_BASE, shutdown).
    pub fn drain(&mut self) {
        let Some(vring) = self.vring.clone() else {
            return;
        };
        let Some(mem) = self.current_memory() else {
            return;
        };
        let mut state = vring.get_mut();
        let mut queue = self.queue.activate(&mut state, &mem);
        let requests = &mut self.requests;
        while requests.engine.in_flight() > 0 {
            if let Err(e) = requests.engine.wait() {
                guest_warn!(
                    "queue {}: waiting for in-flight I/O failed: {e}",
                    requests.index
                );
                break;
            }
            requests.complete_ready(&mut queue);
        }
        queue.signal();
    }
}

impl QueueDevice for Requests {
    fn serve(&mut self, queue: &mut ActiveQueue<'_>, chain: Chain<'_>) {
        // has_room made sure a slot is free.
        let Some(slot_index) = self.free.pop() else {
            return;
        };
        let head = chain.head_index();
        self.start(slot_index, head, chain, queue);
    }

    fn has_room(&mut self, queue: &mut ActiveQueue<'_>) -> io::Result<bool> {
        if self.free.is_empty() {
            // Every slot is in flight (a guest cannot legitimately get here: slots
            // match the queue size). Make room before taking more.
            self.engine.commit()?;
            self.engine.wait()?;
            self.complete_ready(queue);
        }
        Ok(!self.free.is_empty())
    }

    fn end_batch(&mut self, queue: &mut ActiveQueue<'_>) -> io::Result<()> {
        self.engine.commit()?;
        // Reads from the page cache often finish during the submit itself.
        self.complete_ready(queue);
        Ok(())
    }

    fn poll_completions(&mut self, queue: &mut ActiveQueue<'_>) {
        if self.engine.in_flight() > 0 {
            self.complete_ready(queue);
        }
    }
}

impl Requests {
    fn start(
        &mut self,
        slot_index: usize,
        head: u16,
        chain: Chain<'_>,
        queue: &mut ActiveQueue<'_>,
    ) {
        let index = self.index;
        let mem = queue.memory();
        let slot = &mut self.slots[slot_index];
        if let Err(e) = slot.request.parse(&**mem, head, chain) {
            guest_error!("queue {index}: dropping request {head}: {e}");
            self.free.push(slot_index);
            queue.complete(head, 0);
            return;
        }
        let action = slot.request.action(&self.device.limits);
        let op = match action {
            Action::Fail(status) => {
                guest_debug!(
                    "queue {index}: request {head} {:?} refused with status {status}",
                    slot.request.kind
                );
                return self.finish(slot_index, status, 1, queue);
            }
            Action::GetId => {
                let written = write_spans(&**mem, &slot.request.writable, &self.device.serial);
                return match written {
                    // At most ID_BYTES were written: fits 32 bits.
                    Ok(n) => {
                        let used_len = u32::try_from(n).map_or(1, |n| n + 1);
                        self.finish(slot_index, STATUS_OK, used_len, queue)
                    }
                    Err(_) => self.finish(slot_index, STATUS_IOERR, 1, queue),
                };
            }
            Action::Segments {
                write_zeroes,
                count,
            } => {
                // Check every range before any is touched.
                slot.segments.clear();
                for i in 0..count {
                    match slot
                        .request
                        .segment(&**mem, i, write_zeroes, &self.device.limits)
                    {
                        Ok((offset, len, unmap)) => {
                            slot.segments.push(Segment { offset, len, unmap })
                        }
                        Err(status) => return self.finish(slot_index, status, 1, queue),
                    }
                }
                slot.used_len = 1;
                return self.start_segment(slot_index, write_zeroes, 0, None, queue);
            }
            Action::Flush => {
                slot.progress = Progress::Flush;
                slot.used_len = 1;
                IoOp::Flush
            }
            Action::Read { offset, len } | Action::Write { offset, len } => {
                let read = matches!(action, Action::Read { .. });
                let spans = if read {
                    &slot.request.writable
                } else {
                    &slot.request.readable
                };
                if let Err(e) = spans_to_iovecs(mem, spans, &mut slot.data) {
                    guest_error!("queue {index}: request {head}: data {e}");
                    return self.finish(slot_index, STATUS_IOERR, 1, queue);
                }
                let sync = !read && !self.device.writeback.load(Ordering::Relaxed);
                slot.progress = Progress::Transfer {
                    write: !read,
                    sync,
                    offset,
                    // A request is at most 32 segments of 16 MiB (action checked it).
                    total: usize::try_from(len).unwrap_or(usize::MAX),
                    done: 0,
                };
                slot.used_len = if read { read_used_len(len) } else { 1 };
                if read {
                    IoOp::Read {
                        offset,
                        iovecs: slot.data.as_slice(),
                    }
                } else {
                    IoOp::Write {
                        offset,
                        iovecs: slot.data.as_slice(),
                        sync,
                    }
                }
            }
        };
        // SAFETY: the iovecs live in the slot and point into guest memory that the
        // list keeps mapped (IoVecs' contract); the slot is not reused until this
        // tag's completion is reaped, and the engine waits for in-flight work on drop.
        let submitted = unsafe { self.engine.submit(slot_index as u64, op) };
        if let Err(e) = submitted {
            guest_warn!("queue {index}: submitting request {head} failed: {e}");
            self.finish(slot_index, STATUS_IOERR, 1, queue);
        }
    }

    /// Starts segment `index` of the discard or write-zeroes in `slot_index` (with
    /// fallocate `mode`, or how the disk does it: a fallocate, or on a block device
    /// a BLKDISCARD the engine runs off this thread); finishes the request once
    /// every segment is done.
    fn start_segment(
        &mut self,
        slot_index: usize,
        write_zeroes: bool,
        index: usize,
        mode: Option<i32>,
        queue: &mut ActiveQueue<'_>,
    ) {
        let Some(&segment) = self.slots[slot_index].segments.get(index) else {
            return self.finish(slot_index, STATUS_OK, 1, queue);
        };
        let op = mode
            .map(SegmentOp::Fallocate)
            .unwrap_or_else(|| self.device.disk.segment_op(write_zeroes, segment.unmap));
        self.slots[slot_index].progress = Progress::Segment {
            write_zeroes,
            index,
            op,
        };
        let io = match op {
            SegmentOp::Fallocate(mode) => IoOp::Fallocate {
                mode,
                offset: segment.offset,
                len: segment.len,
            },
            SegmentOp::Discard => IoOp::Discard {
                offset: segment.offset,
                len: segment.len,
            },
        };
        // SAFETY: a fallocate or a discard touches no guest memory.
        if let Err(e) = unsafe { self.engine.submit(slot_index as u64, io) } {
            guest_warn!("queue {}: submitting a segment failed: {e}", self.index);
            self.finish(slot_index, STATUS_IOERR, 1, queue);
        }
    }

    fn complete_ready(&mut self, queue: &mut ActiveQueue<'_>) {
        // A completion may start the request's next operation, which an engine that
        // runs operations at once (sync) completes straight away: reap until dry.
        loop {
            self.engine.reap(&mut self.completions);
            if self.completions.is_empty() {
                break;
            }
            let mut completions = std::mem::take(&mut self.completions);
            for (tag, result) in completions.drain(..) {
                // Out of range (checked next) if it does not fit.
                let slot_index = usize::try_from(tag).unwrap_or(usize::MAX);
                if slot_index >= self.slots.len() {
                    guest_warn!("queue {}: completion for unknown tag {tag}", self.index);
                    continue;
                }
                self.completed(slot_index, result, queue);
            }
            self.completions = completions;
        }
        // Start what the completions queued.
        if let Err(e) = self.engine.commit() {
            guest_warn!("queue {}: starting queued I/O failed: {e}", self.index);
        }
    }

    /// The engine finished the operation of `slot_index`: continue the request
    /// (the rest of a short transfer, its next segment) or finish it.
    fn completed(
        &mut self,
        slot_index: usize,
        result: io::Result<usize>,
        queue: &mut ActiveQueue<'_>,
    ) {
        let head = self.slots[slot_index].request.head;
        let index = self.index;
        match (self.slots[slot_index].progress, result) {
            (
                Progress::Transfer {
                    write,
                    sync,
                    offset,
                    total,
                    done,
                },
                Ok(n),
            ) => {
                let done = done.saturating_add(n);
                if done == total {
                    let used_len = self.slots[slot_index].used_len;
                    return self.finish(slot_index, STATUS_OK, used_len, queue);
                }
                if n == 0 || done > total {
                    guest_warn!(
                        "queue {index}: short transfer of request {head}: {done} of {total} bytes"
                    );
                    return self.finish(slot_index, STATUS_IOERR, 1, queue);
                }
                // The kernel moved part of it: go on from there.
                let slot = &mut self.slots[slot_index];
                slot.data.advance(n);
                slot.progress = Progress::Transfer {
                    write,
                    sync,
                    offset,
                    total,
                    done,
                };
                let at = offset + done as u64;
                let op = if write {
                    IoOp::Write {
                        offset: at,
                        iovecs: slot.data.as_slice(),
                        sync,
                    }
                } else {
                    IoOp::Read {
                        offset: at,
                        iovecs: slot.data.as_slice(),
                    }
                };
                // SAFETY: as in start: the iovecs live in the slot and point into
                // guest memory that the list keeps mapped until the tag's
                // completion is reaped.
                if let Err(e) = unsafe { self.engine.submit(slot_index as u64, op) } {
                    guest_warn!("queue {index}: continuing request {head} failed: {e}");
                    self.finish(slot_index, STATUS_IOERR, 1, queue);
                }
            }
            (Progress::Flush, Ok(_)) => self.finish(slot_index, STATUS_OK, 1, queue),
            (
                Progress::Segment {
                    write_zeroes,
                    index: segment,
                    ..
                },
                Ok(_),
            ) => self.start_segment(slot_index, write_zeroes, segment + 1, None, queue),
            (
                Progress::Segment {
                    write_zeroes: true,
                    index: segment,
                    op: SegmentOp::Fallocate(ZERO_RANGE),
                },
                Err(e),
            ) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                // tmpfs and others lack ZERO_RANGE: a hole reads back as zeroes too.
                self.start_segment(slot_index, true, segment, Some(PUNCH_HOLE), queue);
            }
            (Progress::Idle, _) => {
                guest_warn!("queue {index}: completion for idle slot {slot_index}");
            }
            (progress, Err(e)) => {
                guest_warn!("queue {index}: request {head} ({progress:?}) failed: {e}");
                self.finish(slot_index, STATUS_IOERR, 1, queue);
            }
        }
    }

    /// Writes the status, returns the chain to the guest and frees the slot.
    fn finish(
        &mut self,
        slot_index: usize,
        status: u8,
        used_len: u32,
        queue: &mut ActiveQueue<'_>,
    ) {
        let slot = &mut self.slots[slot_index];
        slot.data.clear();
        slot.progress = Progress::Idle;
        let head = slot.request.head;
        let used_len = if let Err(e) = queue.memory().write_obj(status, slot.request.status) {
            guest_error!(
                "queue {}: cannot write status of request {head}: {e}",
                self.index
            );
            0
        } else {
            used_len
        };
        queue.complete(head, used_len);
        self.free.push(slot_index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vm_memory::{Address, GuestAddress, GuestMemoryAtomic};

    #[test]
    fn used_lengths_saturate() {
        assert_eq!(read_used_len(4096), 4097);
        assert_eq!(read_used_len(u64::from(u32::MAX) - 1), u32::MAX);
        assert_eq!(read_used_len(u64::from(u32::MAX)), u32::MAX);
        assert_eq!(read_used_len(5 << 30), u32::MAX);
    }

    /// An engine that completes reads at once and holds every fallocate until the
    /// test lets it go: a discard or write-zeroes that takes long.
    #[derive(Default)]
    struct SlowRanges {
        state: Arc<Mutex<SlowState>>,
    }

    #[derive(Default)]
    struct SlowState {
        held: Vec<u64>,
        done: Vec<Completion>,
        released: bool,
    }

    impl IoEngine for SlowRanges {
        unsafe fn submit(&mut self, tag: u64, op: IoOp<'_>) -> io::Result<()> {
            let mut state = self.state.lock().unwrap();
            match op {
                IoOp::Fallocate { .. } if !state.released => state.held.push(tag),
                IoOp::Read { iovecs, .. } | IoOp::Write { iovecs, .. } => {
                    let len = iovecs.iter().map(|v| v.iov_len).sum();
                    state.done.push((tag, Ok(len)));
                }
                _ => state.done.push((tag, Ok(0))),
            }
            Ok(())
        }
        fn commit(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn reap(&mut self, out: &mut Vec<Completion>) {
            out.append(&mut self.state.lock().unwrap().done);
        }
        fn wait(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn in_flight(&self) -> usize {
            let state = self.state.lock().unwrap();
            state.held.len() + state.done.len()
        }
        fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
            None
        }
    }

    const DESC: u64 = 0x0;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;

    fn desc(mem: &GuestMemoryMmap<()>, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(DESC + 16 * i);
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, at.unchecked_add(8)).unwrap();
        mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        mem.write_obj(next, at.unchecked_add(14)).unwrap();
    }

    /// A write-zeroes whose range the engine takes long over does not hold the
    /// queue: the kick handler returns at once (releasing the vring), a read behind
    /// it completes first, and the write-zeroes completes when the engine is done.
    #[test]
    fn a_long_write_zeroes_does_not_hold_the_queue() {
        let path = std::env::temp_dir().join(format!("vhostkit-worker-{}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let disk = Arc::new(Disk::open(&path, false, false).unwrap());
        let device = Arc::new(DeviceState {
            disk: disk.clone(),
            limits: Limits {
                disk_size: disk.size,
                readonly: false,
                max_discard_sectors: 1 << 15,
                max_discard_seg: 32,
                max_write_zeroes_sectors: 1 << 15,
                max_write_zeroes_seg: 32,
            },
            serial: [0; ID_BYTES],
            writeback: AtomicBool::new(true),
        });
        let engine = SlowRanges::default();
        let state = engine.state.clone();
        let mut worker = QueueWorker::new(
            0,
            device,
            Box::new(engine),
            16,
            Duration::ZERO,
            Duration::ZERO,
        );
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let atomic = GuestMemoryAtomic::new(mem.clone());
        worker.set_memory(atomic.clone());
        let vring = Vring::new(atomic, 16).unwrap();
        vring.set_queue_size(16);
        vring.set_queue_info(DESC, AVAIL, USED).unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        // Head 0: WRITE_ZEROES of 8 sectors; head 3: a 512-byte read.
        let (n, w) = (1u16, 2u16); // VRING_DESC_F_NEXT, VRING_DESC_F_WRITE
        mem.write_obj(13u32, GuestAddress(0x10000)).unwrap();
        mem.write_obj([0u64, 8], GuestAddress(0x10100)).unwrap();
        desc(&mem, 0, 0x10000, 16, n, 1);
        desc(&mem, 1, 0x10100, 16, n, 2);
        desc(&mem, 2, 0x10200, 1, w, 0);
        mem.write_obj(0u32, GuestAddress(0x11000)).unwrap();
        desc(&mem, 3, 0x11000, 16, n, 4);
        desc(&mem, 4, 0x12000, 512, w | n, 5);
        desc(&mem, 5, 0x11100, 1, w, 0);
        mem.write_obj([0u16, 3], GuestAddress(AVAIL + 4)).unwrap();
        mem.write_obj(2u16, GuestAddress(AVAIL + 2)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(0x10200)).unwrap();

        worker.handle_kick(&vring).unwrap();
        let used_idx =
            |mem: &GuestMemoryMmap<()>| mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap();
        assert_eq!(
            state.lock().unwrap().held.len(),
            1,
            "the range went to the engine"
        );
        assert_eq!(used_idx(&mem), 1, "the read behind it completed");
        assert_eq!(mem.read_obj::<u32>(GuestAddress(USED + 4)).unwrap(), 3);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x10200)).unwrap(),
            0xff,
            "no status yet"
        );
        // The vring is free meanwhile (what GET_VRING_BASE and SET_MEM_TABLE take).
        drop(vring.get_mut());

        let tag = {
            let mut s = state.lock().unwrap();
            s.released = true;
            s.held.pop().unwrap()
        };
        state.lock().unwrap().done.push((tag, Ok(0)));
        worker.handle_completions(&vring).unwrap();
        assert_eq!(used_idx(&mem), 2);
        assert_eq!(mem.read_obj::<u32>(GuestAddress(USED + 12)).unwrap(), 0);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x10200)).unwrap(),
            STATUS_OK
        );
        std::fs::remove_file(path).unwrap();
    }
}
