//! The per-queue worker: pops requests off one virtqueue, hands reads, writes and
//! flushes to the queue's I/O engine without waiting for them, and completes them
//! (status byte, used ring, guest notification) as the engine reports them done.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost_user_backend::{VringState, VringT};
use vhostkit_common::lifecycle::{GuestMemory, Vring};
use vhostkit_common::vring::{queue_err, serve_until_idle, signal_if_needed};
use vhostkit_common::{guest_debug, guest_error, guest_warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryMmap};

use crate::disk::Disk;
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
    iovecs: Vec<libc::iovec>,
    /// Bytes the engine must move for the request to succeed.
    expected: usize,
    /// Used length to report on success: data written into the guest plus status.
    used_len: u32,
    /// Keeps the guest memory mapped while the kernel may still access it.
    memory: Option<Arc<GuestMemoryMmap<()>>>,
}

// SAFETY: the raw pointers in `iovecs` point into guest memory that `memory` keeps
// mapped; a Slot is only ever used by the one worker thread that owns it at a time
// (the worker sits behind a Mutex).
unsafe impl Send for Slot {}

pub struct QueueWorker {
    index: usize,
    device: Arc<DeviceState>,
    engine: Box<dyn IoEngine>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    completions: Vec<Completion>,
    poll: Duration,
    memory: Option<GuestMemory>,
    vring: Option<Vring>,
}

impl QueueWorker {
    pub fn new(
        index: usize,
        device: Arc<DeviceState>,
        engine: Box<dyn IoEngine>,
        queue_size: usize,
        poll: Duration,
    ) -> Self {
        QueueWorker {
            index,
            device,
            engine,
            slots: (0..queue_size).map(|_| Slot::default()).collect(),
            free: (0..queue_size).rev().collect(),
            completions: Vec::with_capacity(queue_size),
            poll,
            memory: None,
            vring: None,
        }
    }

    pub fn set_memory(&mut self, memory: GuestMemory) {
        self.memory = Some(memory);
    }

    pub fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        self.engine.completion_fd()
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
            guest_error!("queue {}: kicked before a memory table was set", self.index);
            return Ok(());
        };
        let mut state = vring.get_mut();
        let poll = self.poll;
        serve_until_idle(
            self,
            &mut state,
            &mem,
            poll,
            Self::drain_avail,
            Self::poll_avail,
        )
    }

    /// Spins for up to the poll time waiting for new requests, completing and
    /// signalling in-flight ones meanwhile. True if a request arrived.
    fn poll_avail(
        &mut self,
        state: &mut VringState<GuestMemory>,
        mem: &Arc<GuestMemoryMmap<()>>,
    ) -> io::Result<bool> {
        let deadline = Instant::now() + self.poll;
        while Instant::now() < deadline {
            if self.engine.in_flight() > 0 {
                self.complete_ready(state.get_queue_mut(), mem);
                signal_if_needed(state, mem);
            }
            let queue = state.get_queue_mut();
            let avail = queue
                .avail_idx(&**mem, std::sync::atomic::Ordering::Acquire)
                .map_err(queue_err)?;
            if avail.0 != queue.next_avail() {
                return Ok(true);
            }
            std::hint::spin_loop();
        }
        Ok(false)
    }

    /// The engine's completion eventfd fired.
    pub fn handle_completions(&mut self, vring: &Vring) -> io::Result<()> {
        let Some(mem) = self.current_memory() else {
            return Ok(());
        };
        let mut state = vring.get_mut();
        self.complete_ready(state.get_queue_mut(), &mem);
        signal_if_needed(&mut state, &mem);
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
        while self.engine.in_flight() > 0 {
            if let Err(e) = self.engine.wait() {
                guest_warn!(
                    "queue {}: waiting for in-flight I/O failed: {e}",
                    self.index
                );
                break;
            }
            self.complete_ready(state.get_queue_mut(), &mem);
        }
        signal_if_needed(&mut state, &mem);
    }

    /// Starts every available request. Returns false if the avail ring cannot be
    /// read (its index is invalid).
    fn drain_avail(
        &mut self,
        state: &mut VringState<GuestMemory>,
        mem: &Arc<GuestMemoryMmap<()>>,
    ) -> io::Result<bool> {
        loop {
            let queue = state.get_queue_mut();
            queue.disable_notification(&**mem).map_err(queue_err)?;
            let mut popped = 0;
            let mut readable = true;
            loop {
                if self.free.is_empty() {
                    // Every slot is in flight (a guest cannot legitimately get here:
                    // slots match the queue size). Make room before taking more.
                    self.engine.commit()?;
                    self.engine.wait()?;
                    self.complete_ready(queue, mem);
                    if self.free.is_empty() {
                        break;
                    }
                }
                let chain = match queue.iter(&**mem) {
                    Ok(mut avail) => avail.next(),
                    Err(e) => {
                        guest_error!("queue {}: cannot read the available ring: {e}", self.index);
                        readable = false;
                        None
                    }
                };
                let Some(chain) = chain else {
                    break;
                };
                popped += 1;
                let head = chain.head_index();
                let slot_index = self.free.pop().unwrap_or_default();
                self.start(slot_index, head, chain, queue, mem);
            }
            self.engine.commit()?;
            // Reads from the page cache often finish during the submit itself.
            self.complete_ready(queue, mem);
            if popped == 0 || !readable {
                return Ok(readable);
            }
        }
    }

    fn start<C>(
        &mut self,
        slot_index: usize,
        head: u16,
        chain: C,
        queue: &mut Queue,
        mem: &Arc<GuestMemoryMmap<()>>,
    ) where
        C: Iterator<Item = virtio_queue::desc::split::Descriptor>,
    {
        let index = self.index;
        if head >= queue.size() {
            // Nothing can go in the used ring for it (the id would be invalid too).
            guest_error!(
                "queue {index}: dropping request {head}: head index outside the queue of {} entries",
                queue.size()
            );
            self.free.push(slot_index);
            return;
        }
        let slot = &mut self.slots[slot_index];
        if let Err(e) = slot.request.parse(&**mem, head, chain) {
            guest_error!("queue {index}: dropping request {head}: {e}");
            self.free.push(slot_index);
            if let Err(e) = queue.add_used(&**mem, head, 0) {
                guest_error!("queue {index}: cannot return request {head}: {e}");
            }
            return;
        }
        let action = slot.request.action(&self.device.limits);
        let op = match action {
            Action::Fail(status) => {
                guest_debug!(
                    "queue {index}: request {head} {:?} refused with status {status}",
                    slot.request.kind
                );
                return self.finish(slot_index, status, 1, queue, mem);
            }
            Action::GetId => {
                let written = write_spans(&**mem, &slot.request.writable, &self.device.serial);
                return match written {
                    Ok(n) => self.finish(slot_index, STATUS_OK, n as u32 + 1, queue, mem),
                    Err(_) => self.finish(slot_index, STATUS_IOERR, 1, queue, mem),
                };
            }
            Action::Segments {
                write_zeroes,
                count,
            } => {
                let status = self.run_segments(slot_index, write_zeroes, count, mem);
                return self.finish(slot_index, status, 1, queue, mem);
            }
            Action::Flush => {
                slot.expected = 0;
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
                if let Err(addr) = spans_to_iovecs(&**mem, spans, &mut slot.iovecs) {
                    guest_error!(
                        "queue {index}: request {head}: data at {:#x} outside guest memory",
                        addr.0
                    );
                    return self.finish(slot_index, STATUS_IOERR, 1, queue, mem);
                }
                slot.expected = len as usize;
                slot.used_len = if read { len as u32 + 1 } else { 1 };
                if read {
                    IoOp::Read {
                        offset,
                        iovecs: &slot.iovecs,
                    }
                } else {
                    let sync = !self.device.writeback.load(Ordering::Relaxed);
                    IoOp::Write {
                        offset,
                        iovecs: &slot.iovecs,
                        sync,
                    }
                }
            }
        };
        slot.memory = Some(mem.clone());
        // SAFETY: the iovecs live in the slot and point into guest memory that
        // `slot.memory` keeps mapped; the slot is not reused until this tag's
        // completion is reaped, and the engine waits for in-flight work on drop.
        let submitted = unsafe { self.engine.submit(slot_index as u64, op) };
        if let Err(e) = submitted {
            guest_warn!("queue {index}: submitting request {head} failed: {e}");
            self.finish(slot_index, STATUS_IOERR, 1, queue, mem);
        }
    }

    fn run_segments(
        &self,
        slot_index: usize,
        write_zeroes: bool,
        count: u32,
        mem: &Arc<GuestMemoryMmap<()>>,
    ) -> u8 {
        let request = &self.slots[slot_index].request;
        let disk = &self.device.disk;
        for i in 0..count {
            let (offset, len, unmap) =
                match request.segment(&**mem, i, write_zeroes, &self.device.limits) {
                    Ok(segment) => segment,
                    Err(status) => return status,
                };
            let result = if write_zeroes {
                disk.write_zeroes(offset, len, unmap)
            } else {
                disk.discard(offset, len)
            };
            if let Err(e) = result {
                // Discard is advisory; a backing that cannot punch holes still
                // answers a failed discard with IOERR so the guest knows.
                guest_warn!(
                    "queue {}: {} at {offset}+{len} failed: {e}",
                    self.index,
                    if write_zeroes {
                        "write-zeroes"
                    } else {
                        "discard"
                    }
                );
                return STATUS_IOERR;
            }
        }
        STATUS_OK
    }

    fn complete_ready(&mut self, queue: &mut Queue, mem: &Arc<GuestMemoryMmap<()>>) {
        self.engine.reap(&mut self.completions);
        let mut completions = std::mem::take(&mut self.completions);
        for (tag, result) in completions.drain(..) {
            let slot_index = tag as usize;
            let Some(slot) = self.slots.get_mut(slot_index) else {
                guest_warn!("queue {}: completion for unknown tag {tag}", self.index);
                continue;
            };
            let (status, used_len) = match result {
                Ok(n) if n == slot.expected => (STATUS_OK, slot.used_len),
                Ok(n) => {
                    guest_warn!(
                        "queue {}: short transfer of request {}: {n} of {} bytes",
                        self.index,
                        slot.request.head,
                        slot.expected
                    );
                    (STATUS_IOERR, 1)
                }
                Err(e) => {
                    guest_warn!(
                        "queue {}: request {} failed: {e}",
                        self.index,
                        slot.request.head
                    );
                    (STATUS_IOERR, 1)
                }
            };
            self.finish(slot_index, status, used_len, queue, mem);
        }
        self.completions = completions;
    }

    /// Writes the status, returns the chain to the guest and frees the slot.
    fn finish(
        &mut self,
        slot_index: usize,
        status: u8,
        used_len: u32,
        queue: &mut Queue,
        mem: &Arc<GuestMemoryMmap<()>>,
    ) {
        let slot = &mut self.slots[slot_index];
        slot.memory = None;
        let head = slot.request.head;
        let used_len = if let Err(e) = mem.write_obj(status, slot.request.status) {
            guest_error!(
                "queue {}: cannot write status of request {head}: {e}",
                self.index
            );
            0
        } else {
            used_len
        };
        if let Err(e) = queue.add_used(&**mem, head, used_len) {
            guest_error!("queue {}: cannot return request {head}: {e}", self.index);
        }
        self.free.push(slot_index);
    }
}
