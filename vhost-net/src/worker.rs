//! The per-queue-pair worker (transmit: guest to tap; receive: tap to guest) and
//! the control-queue worker. Frames move with one writev or readv between guest
//! buffers and the tap, never through a copy of our own.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vhost_user_backend::VringT;
use vhostkit_common::lifecycle::{GuestMemory, Vring};
use vhostkit_common::vring::{head_in_queue, poll_avail, serve_until_idle, signal_if_needed};
use vhostkit_common::{guest_debug, guest_error, guest_info, guest_warn};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend, GuestMemoryMmap,
};

use crate::ctrl::{self, Command, CommandError, ACK_ERR, ACK_OK};
use crate::net::{check_tx, TxError, MAX_IOVECS, MAX_TX_LEN, NUM_BUFFERS_OFFSET, VNET_HDR_LEN};
use crate::tap::Tap;

type Mem = Arc<GuestMemoryMmap<()>>;

/// What the workers of one connection share.
pub struct DeviceState {
    pub tap: Arc<Tap>,
    pub max_pairs: u16,
    /// Queue pairs the guest asked for on the control queue (1 until it does).
    pub active_pairs: AtomicU16,
    /// The guest acked CTRL_VQ, so the control queue says which pairs are in use.
    /// Otherwise (QEMU keeps the control queue to itself) a pair is in use while
    /// its receive queue is enabled.
    pub ctrl_in_charge: AtomicBool,
    /// Header bytes before every frame: 12, or 10 for a legacy guest.
    pub hdr_len: std::sync::atomic::AtomicUsize,
    /// MRG_RXBUF acked: a received frame may fill several buffers.
    pub mergeable_rx: AtomicBool,
    /// The longest frame the tap can hand the guest: 64 KiB and headers with
    /// segmentation offloads on, else the MTU and headers. Receive buffers are
    /// gathered for this much before each read.
    pub rx_frame_max: std::sync::atomic::AtomicUsize,
}

/// A receive chain taken for the frame being read.
struct RxChain {
    head: u16,
    capacity: usize,
    /// The chain's first descriptor (where the header, and `num_buffers`, go).
    first: (GuestAddress, usize),
}

/// How a receive attempt ended.
enum RxOutcome {
    /// A frame went to the guest (or was dropped); try the next.
    Progress,
    /// The tap has nothing more to read.
    TapEmpty,
    /// The guest has no (usable) receive buffers.
    NoBuffers,
    /// A frame is held (`PairWorker::pending`) until the guest posts enough
    /// receive buffers for it (MRG_RXBUF).
    WaitForBuffers,
    /// The available ring cannot be read (an impossible index).
    RingBroken,
}

pub struct PairWorker {
    pair: usize,
    device: Arc<DeviceState>,
    tap_fd: RawFd,
    poll: Duration,
    memory: Option<GuestMemory>,
    iovecs: Vec<libc::iovec>,
    rx_chains: Vec<RxChain>,
    /// One byte after the guest's buffers in every read: a frame that reaches it
    /// did not fit (the tap gives no other sign of truncation).
    overflow: Box<[u8; 1]>,
    /// A frame (vnet header included) read from the tap while the guest's receive
    /// buffers held less than a largest frame, and too long for them: delivered
    /// first once the guest has posted enough.
    pending: Option<HeldFrame>,
}

/// A frame held for the guest's receive buffers, with the header size it was read
/// with: a frame whose header size is not the guest's current one (features acked
/// again while it waited) is dropped, not delivered.
struct HeldFrame {
    frame: Vec<u8>,
    hdr_len: usize,
}

// SAFETY: the raw pointers in `iovecs` are scratch, only valid (and only used)
// during one call that also holds the guest memory they point into; the worker
// sits behind a Mutex, so one thread uses it at a time.
unsafe impl Send for PairWorker {}

impl PairWorker {
    pub fn new(pair: usize, device: Arc<DeviceState>, poll: Duration) -> Self {
        let tap_fd = device.tap.queue_fd(pair).unwrap_or(-1);
        PairWorker {
            pair,
            device,
            tap_fd,
            poll,
            memory: None,
            iovecs: Vec::with_capacity(MAX_IOVECS),
            rx_chains: Vec::new(),
            overflow: Box::new([0]),
            pending: None,
        }
    }

    /// Drops a frame held back for the guest's receive buffers: it belongs to the
    /// driver that posted the ring, with that driver's header size. Called when the
    /// receive ring is stopped (GET_VRING_BASE: a driver reset, a reboot) and when
    /// features are negotiated again.
    pub fn drop_held_frame(&mut self) {
        if let Some(HeldFrame { frame, .. }) = self.pending.take() {
            guest_debug!(
                "pair {}: dropping a held {}-byte frame: the rings were reset",
                self.pair,
                frame.len()
            );
        }
    }

    pub fn set_memory(&mut self, memory: GuestMemory) {
        self.memory = Some(memory);
    }

    pub fn tap_fd(&self) -> RawFd {
        self.tap_fd
    }

    fn current_memory(&self) -> Option<Mem> {
        self.memory.as_ref().map(|m| m.memory().into_inner())
    }

    fn hdr_len(&self) -> usize {
        self.device.hdr_len.load(Ordering::Relaxed)
    }

    // ---- transmit -----------------------------------------------------------------

    /// The guest kicked the transmit queue: send everything available to the tap.
    pub fn handle_tx(&mut self, vring: &Vring) -> io::Result<()> {
        let Some(mem) = self.current_memory() else {
            guest_error!(
                "pair {}: tx kicked before a memory table was set",
                self.pair
            );
            return Ok(());
        };
        let mut state = vring.get_mut();
        let poll = self.poll;
        serve_until_idle(
            self,
            &mut state,
            &mem,
            poll,
            |w, state, mem| Ok(w.drain_tx(state.get_queue_mut(), mem)),
            |_, state, mem| poll_avail(state.get_queue_mut(), mem, poll),
        )
    }

    /// Sends every available chain; false if the avail ring cannot be read.
    fn drain_tx(&mut self, queue: &mut Queue, mem: &Mem) -> bool {
        if let Err(e) = queue.disable_notification(&**mem) {
            guest_error!("pair {}: cannot disable tx notifications: {e}", self.pair);
        }
        loop {
            let chain = match queue.iter(&**mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => {
                    guest_error!("pair {}: cannot read the tx available ring: {e}", self.pair);
                    return false;
                }
            };
            let Some(chain) = chain else {
                return true;
            };
            let head = chain.head_index();
            if !head_in_queue(queue, head, "vhost-user-net tx") {
                continue;
            }
            if let Err(e) = self.transmit(chain, mem) {
                guest_error!("pair {}: dropping tx chain {head}: {e}", self.pair);
            }
            // Always hand the chain back, sent or not, so the guest can reuse it.
            if let Err(e) = queue.add_used(&**mem, head, 0) {
                guest_error!("pair {}: cannot return tx chain {head}: {e}", self.pair);
            }
        }
    }

    fn transmit<C>(&mut self, chain: C, mem: &Mem) -> Result<(), TxDrop>
    where
        C: Iterator<Item = Descriptor>,
    {
        tx_iovecs(chain, &**mem, self.hdr_len(), &mut self.iovecs)?;
        // SAFETY: the iovecs point into guest memory that `mem` keeps mapped for the
        // whole call; writev only reads them.
        let n = unsafe {
            libc::writev(
                self.tap_fd,
                self.iovecs.as_ptr(),
                self.iovecs.len() as libc::c_int,
            )
        };
        if n < 0 {
            return Err(TxDrop::Tap(io::Error::last_os_error()));
        }
        Ok(())
    }

    // ---- receive ------------------------------------------------------------------

    /// The tap has frames, or the guest added receive buffers: move frames until
    /// either runs out. The tap fd is watched edge-triggered, so when the guest has
    /// no buffers we simply stop reading it and wait for the guest's kick (with
    /// notifications on) instead of being woken for a tap that stays readable.
    pub fn handle_rx(&mut self, vring: &Vring) -> io::Result<()> {
        let Some(mem) = self.current_memory() else {
            return Ok(());
        };
        let mut state = vring.get_mut();
        let usable = state.get_queue().ready() && state.is_enabled();
        if !self.device.ctrl_in_charge.load(Ordering::Relaxed) {
            // Without the control queue, an enabled receive queue is what says the
            // guest uses this pair; steer frames away from pairs it does not.
            if let Err(e) = self.device.tap.set_queue_attached(self.pair, usable) {
                guest_error!("pair {}: {e}", self.pair);
            }
        }
        if !usable {
            return Ok(());
        }
        let mut received = 0u32;
        if let Err(e) = state.get_queue_mut().disable_notification(&*mem) {
            guest_error!("pair {}: cannot disable rx notifications: {e}", self.pair);
        }
        loop {
            match self.receive_frame(state.get_queue_mut(), &mem) {
                RxOutcome::Progress => {
                    received += 1;
                    // Let the guest start on a batch while we read more.
                    if received.is_multiple_of(64) {
                        signal_if_needed(&mut state, &mem);
                    }
                }
                RxOutcome::TapEmpty => break,
                RxOutcome::RingBroken => {
                    // Nothing to take until the guest fixes its ring and kicks.
                    let _ = state.get_queue_mut().enable_notification(&*mem);
                    break;
                }
                RxOutcome::WaitForBuffers => {
                    // Ask for a kick when the guest posts buffers beyond the ones it
                    // has (the event index goes past them), then look once more in
                    // case they came meanwhile.
                    let queue = state.get_queue_mut();
                    let rewound = queue.next_avail();
                    let end = queue
                        .avail_idx(&*mem, Ordering::Acquire)
                        .map_or(rewound, |end| end.0);
                    queue.set_next_avail(end);
                    let more = queue.enable_notification(&*mem);
                    queue.set_next_avail(rewound);
                    match more {
                        Ok(true) => {
                            let _ = queue.disable_notification(&*mem);
                            continue;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            guest_error!("pair {}: cannot enable rx notifications: {e}", self.pair)
                        }
                    }
                    break;
                }
                RxOutcome::NoBuffers => {
                    // Ask for a kick when buffers come, then look once more in case
                    // they came meanwhile.
                    match state.get_queue_mut().enable_notification(&*mem) {
                        Ok(true) => {
                            let _ = state.get_queue_mut().disable_notification(&*mem);
                            continue;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            guest_error!("pair {}: cannot enable rx notifications: {e}", self.pair)
                        }
                    }
                    break;
                }
            }
        }
        signal_if_needed(&mut state, &mem);
        Ok(())
    }

    /// Takes receive chains for one frame (one chain, or with MRG_RXBUF as many as
    /// a largest frame needs), reads one frame into them and returns the ones used.
    fn receive_frame(&mut self, queue: &mut Queue, mem: &Mem) -> RxOutcome {
        let mergeable = self.device.mergeable_rx.load(Ordering::Relaxed);
        let hdr_len = self.hdr_len();
        if self
            .pending
            .as_ref()
            .is_some_and(|held| held.hdr_len != hdr_len)
        {
            self.drop_held_frame();
        }
        let pending_len = self.pending.as_ref().map(|held| held.frame.len());
        let wanted =
            pending_len.unwrap_or(hdr_len + self.device.rx_frame_max.load(Ordering::Relaxed));
        self.iovecs.clear();
        self.rx_chains.clear();
        let mut capacity = 0usize;
        let mut ring_dry = false;
        while capacity < wanted && (mergeable || self.rx_chains.is_empty()) {
            let chain = match queue.iter(&**mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => {
                    guest_error!("pair {}: cannot read the rx available ring: {e}", self.pair);
                    self.give_back_chains(queue);
                    return RxOutcome::RingBroken;
                }
            };
            let Some(chain) = chain else {
                ring_dry = true;
                break;
            };
            let head = chain.head_index();
            if !head_in_queue(queue, head, "vhost-user-net rx") {
                continue;
            }
            let iov_start = self.iovecs.len();
            match collect_rx_chain(chain, &**mem, hdr_len, &mut self.iovecs) {
                Ok((chain_capacity, first)) => {
                    capacity += chain_capacity;
                    self.rx_chains.push(RxChain {
                        head,
                        capacity: chain_capacity,
                        first,
                    });
                }
                Err(e) => {
                    self.iovecs.truncate(iov_start);
                    if !self.rx_chains.is_empty() {
                        // Put it back and deal with it first next time, so the chains
                        // we give back below stay the last ones taken.
                        queue.go_to_previous_position();
                        break;
                    }
                    guest_error!(
                        "pair {}: returning unusable rx chain {head}: {e}",
                        self.pair
                    );
                    if let Err(e) = queue.add_used(&**mem, head, 0) {
                        guest_error!("pair {}: cannot return rx chain {head}: {e}", self.pair);
                    }
                }
            }
        }
        if self.rx_chains.is_empty() {
            return match self.pending {
                Some(_) => RxOutcome::WaitForBuffers,
                None => RxOutcome::NoBuffers,
            };
        }
        if let Some(HeldFrame { frame, .. }) = self.pending.take() {
            if capacity < frame.len() {
                if self.rx_chains.len() >= usize::from(queue.size()) {
                    // The whole ring cannot hold it: no more buffers can come.
                    guest_error!(
                        "pair {}: dropping a received frame of {} bytes: the whole receive ring holds {capacity}",
                        self.pair,
                        frame.len()
                    );
                    self.give_back_chains(queue);
                    return RxOutcome::Progress;
                }
                self.pending = Some(HeldFrame { frame, hdr_len });
                self.give_back_chains(queue);
                return RxOutcome::WaitForBuffers;
            }
            self.copy_to_chains(&frame);
            return self.complete_frame(queue, mem, frame.len(), hdr_len);
        }
        if mergeable && ring_dry && capacity < wanted {
            // The guest has not posted room for a largest frame yet. Read the next
            // frame aside: it goes out now if it fits, or waits for more buffers
            // instead of being dropped.
            let mut frame = vec![0u8; wanted];
            // SAFETY: the buffer is ours, `wanted` bytes long; read writes at most that.
            let n = unsafe { libc::read(self.tap_fd, frame.as_mut_ptr().cast(), frame.len()) };
            if n < 0 {
                let err = io::Error::last_os_error();
                self.give_back_chains(queue);
                if err.kind() != io::ErrorKind::WouldBlock {
                    guest_debug!("pair {}: reading the tap failed: {err}", self.pair);
                }
                return RxOutcome::TapEmpty;
            }
            frame.truncate(n as usize);
            if frame.len() > capacity {
                self.pending = Some(HeldFrame { frame, hdr_len });
                self.give_back_chains(queue);
                return RxOutcome::WaitForBuffers;
            }
            self.copy_to_chains(&frame);
            return self.complete_frame(queue, mem, frame.len(), hdr_len);
        }
        self.iovecs.push(libc::iovec {
            iov_base: self.overflow.as_mut_ptr().cast(),
            iov_len: self.overflow.len(),
        });
        // SAFETY: the iovecs point into guest memory that `mem` keeps mapped for the
        // whole call, in device-writable buffers the guest gave us, and into
        // `self.overflow`; readv writes at most their total length.
        let n = unsafe {
            libc::readv(
                self.tap_fd,
                self.iovecs.as_ptr(),
                self.iovecs.len() as libc::c_int,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            self.give_back_chains(queue);
            if err.kind() != io::ErrorKind::WouldBlock {
                guest_debug!("pair {}: reading the tap failed: {err}", self.pair);
            }
            return RxOutcome::TapEmpty;
        }
        let n = n as usize;
        if n > capacity {
            // The frame reached the overflow byte: it did not fit. Keep the
            // buffers for the next frame.
            guest_error!(
                "pair {}: dropping a received frame of over {capacity} bytes: the guest's receive buffers hold {capacity}{}",
                self.pair,
                if mergeable { "" } else { " (no MRG_RXBUF)" }
            );
            self.give_back_chains(queue);
            return RxOutcome::Progress;
        }
        self.complete_frame(queue, mem, n, hdr_len)
    }

    /// Copies `frame` into the buffers of the chains taken (`self.iovecs`, which
    /// hold at least `frame.len()` bytes).
    fn copy_to_chains(&mut self, frame: &[u8]) {
        let mut done = 0;
        for iov in &self.iovecs {
            if done == frame.len() {
                break;
            }
            let len = iov.iov_len.min(frame.len() - done);
            // SAFETY: the iovec points into a device-writable guest buffer that
            // `mem` (held by our caller) keeps mapped, at least `iov_len` bytes long;
            // the source is `frame`, a host buffer that does not overlap it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    frame[done..].as_ptr(),
                    iov.iov_base.cast::<u8>(),
                    len,
                )
            };
            done += len;
        }
    }

    /// A frame of `n` bytes is in the chains taken: hands back the ones it filled
    /// (with num_buffers set) and puts the unused rest back on the ring.
    fn complete_frame(
        &mut self,
        queue: &mut Queue,
        mem: &Mem,
        n: usize,
        hdr_len: usize,
    ) -> RxOutcome {
        // Hand back the chains the frame filled, and the unused rest to the ring
        // (they were the last ones taken).
        let used = chains_filled(n, self.rx_chains.iter().map(|c| c.capacity));
        for _ in used..self.rx_chains.len() {
            queue.go_to_previous_position();
        }
        if hdr_len == VNET_HDR_LEN {
            // The tap leaves num_buffers alone; it is ours to fill (1 without
            // MRG_RXBUF, as the spec asks).
            let num_buffers = (used as u16).to_le_bytes();
            if let Err(e) = write_in_span(
                &**mem,
                self.rx_chains[0].first,
                NUM_BUFFERS_OFFSET,
                &num_buffers,
            ) {
                guest_error!("pair {}: cannot write num_buffers: {e}", self.pair);
            }
        }
        let mut left = n;
        for chain in &self.rx_chains[..used] {
            let len = left.min(chain.capacity);
            left -= len;
            if let Err(e) = queue.add_used(&**mem, chain.head, len as u32) {
                guest_error!(
                    "pair {}: cannot return rx chain {}: {e}",
                    self.pair,
                    chain.head
                );
            }
        }
        RxOutcome::Progress
    }

    /// Puts every chain taken for the current frame back on the available ring.
    fn give_back_chains(&mut self, queue: &mut Queue) {
        for _ in 0..self.rx_chains.len() {
            queue.go_to_previous_position();
        }
        self.rx_chains.clear();
    }
}

/// Why a transmit chain was dropped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TxDrop {
    #[error("{0}")]
    Shape(TxError),
    #[error("buffer at {:#x} outside guest memory", .0 .0)]
    OutsideMemory(GuestAddress),
    #[error("the tap refused the frame")]
    Tap(#[source] io::Error),
}

/// Why a receive chain cannot take frames.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RxChainError {
    #[error("device-readable descriptor in a receive chain")]
    ReadableDescriptor,
    #[error("buffer at {:#x} outside guest memory", .0 .0)]
    OutsideMemory(GuestAddress),
    #[error("first buffer of {0} bytes cannot hold the virtio-net header")]
    NoRoomForHeader(usize),
    #[error("more than {MAX_IOVECS} descriptors")]
    TooManyDescriptors,
}

/// Maps a transmit chain (virtio-net header of `hdr_len` bytes, then the frame) to
/// the iovecs of one writev into `iovecs`, checking its shape as it goes; returns
/// its length.
pub(crate) fn tx_iovecs<C, M>(
    chain: C,
    mem: &M,
    hdr_len: usize,
    iovecs: &mut Vec<libc::iovec>,
) -> Result<usize, TxDrop>
where
    C: Iterator<Item = Descriptor>,
    M: GuestMemoryBackend + ?Sized,
{
    iovecs.clear();
    let mut total = 0usize;
    let mut descriptors = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return Err(TxDrop::Shape(TxError::WritableDescriptor));
        }
        descriptors += 1;
        total = total.saturating_add(desc.len() as usize);
        // Check as we go, so a huge chain is refused before it is all mapped.
        if descriptors > MAX_IOVECS {
            return Err(TxDrop::Shape(TxError::TooManyDescriptors(descriptors)));
        }
        if total > MAX_TX_LEN {
            return Err(TxDrop::Shape(TxError::TooLong(total)));
        }
        push_iovecs(mem, desc.addr(), desc.len() as usize, iovecs)
            .map_err(TxDrop::OutsideMemory)?;
        if iovecs.len() > MAX_IOVECS {
            return Err(TxDrop::Shape(TxError::TooManyDescriptors(descriptors)));
        }
    }
    check_tx(total, descriptors, hdr_len).map_err(TxDrop::Shape)?;
    Ok(total)
}

/// How many chains, of these capacities in order, a frame of `len` bytes fills.
fn chains_filled(len: usize, capacities: impl Iterator<Item = usize>) -> usize {
    let mut left = len;
    let mut used = 0;
    for capacity in capacities {
        if left == 0 {
            break;
        }
        left -= left.min(capacity);
        used += 1;
    }
    used.max(1)
}

/// Maps a receive chain's buffers to iovecs (appended to `iovecs`); returns its
/// capacity and its first descriptor.
pub(crate) fn collect_rx_chain<C, M>(
    chain: C,
    mem: &M,
    hdr_len: usize,
    iovecs: &mut Vec<libc::iovec>,
) -> Result<(usize, (GuestAddress, usize)), RxChainError>
where
    C: Iterator<Item = Descriptor>,
    M: GuestMemoryBackend + ?Sized,
{
    let mut capacity = 0usize;
    let mut first = None;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(RxChainError::ReadableDescriptor);
        }
        let len = desc.len() as usize;
        first.get_or_insert((desc.addr(), len));
        push_iovecs(mem, desc.addr(), len, iovecs).map_err(RxChainError::OutsideMemory)?;
        // One iovec stays free for the overflow byte.
        if iovecs.len() >= MAX_IOVECS {
            return Err(RxChainError::TooManyDescriptors);
        }
        capacity += len;
    }
    // The header goes whole into the first buffer: the driver reads it from there
    // (with MRG_RXBUF each buffer is at least a header long).
    match first {
        Some((addr, len)) if len >= hdr_len => Ok((capacity, (addr, len))),
        Some((_, len)) => Err(RxChainError::NoRoomForHeader(len)),
        None => Err(RxChainError::NoRoomForHeader(0)),
    }
}

/// Appends the host iovecs of guest range `addr..addr+len` (split where guest
/// memory regions split).
fn push_iovecs<M: GuestMemoryBackend + ?Sized>(
    mem: &M,
    addr: GuestAddress,
    len: usize,
    iovecs: &mut Vec<libc::iovec>,
) -> Result<(), GuestAddress> {
    for slice in mem.get_slices(addr, len) {
        let slice = slice.map_err(|_| addr)?;
        iovecs.push(libc::iovec {
            iov_base: slice.ptr_guard_mut().as_ptr().cast(),
            iov_len: slice.len(),
        });
    }
    Ok(())
}

/// Writes `bytes` at `offset` into the buffer `span` (already checked to hold it).
fn write_in_span<M: GuestMemoryBackend + ?Sized>(
    mem: &M,
    span: (GuestAddress, usize),
    offset: usize,
    bytes: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let addr = span
        .0
        .checked_add(offset as u64)
        .ok_or(vm_memory::GuestMemoryError::InvalidGuestAddress(span.0))?;
    mem.write_slice(bytes, addr)
}

// ---- control queue ------------------------------------------------------------------

/// Serves the control queue: decodes commands (see [`ctrl`]) and applies them.
pub struct ControlWorker {
    device: Arc<DeviceState>,
    memory: Option<GuestMemory>,
}

impl ControlWorker {
    pub fn new(device: Arc<DeviceState>) -> Self {
        ControlWorker {
            device,
            memory: None,
        }
    }

    pub fn set_memory(&mut self, memory: GuestMemory) {
        self.memory = Some(memory);
    }

    pub fn handle_kick(&mut self, vring: &Vring) -> io::Result<()> {
        let Some(mem) = self.memory.as_ref().map(|m| m.memory().into_inner()) else {
            guest_error!("control queue kicked before a memory table was set");
            return Ok(());
        };
        let mut state = vring.get_mut();
        // The control queue is quiet: no busy-polling.
        serve_until_idle(
            self,
            &mut state,
            &mem,
            Duration::ZERO,
            |w, state, mem| Ok(w.drain_ctrl(state.get_queue_mut(), mem)),
            |_, _, _| Ok(false),
        )
    }

    /// Runs every available command chain; false if the avail ring cannot be read.
    fn drain_ctrl(&mut self, queue: &mut Queue, mem: &Mem) -> bool {
        let _ = queue.disable_notification(&**mem);
        loop {
            let chain = match queue.iter(&**mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => {
                    guest_error!("cannot read the control available ring: {e}");
                    return false;
                }
            };
            let Some(chain) = chain else {
                return true;
            };
            let head = chain.head_index();
            if !head_in_queue(queue, head, "vhost-user-net control") {
                continue;
            }
            let used_len = self.run_command(chain, mem);
            if let Err(e) = queue.add_used(&**mem, head, used_len) {
                guest_error!("cannot return control chain {head}: {e}");
            }
        }
    }

    /// Runs one command chain; returns the used length (1 with the ack written).
    fn run_command(
        &mut self,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap<()>>,
        mem: &Mem,
    ) -> u32 {
        let head = chain.head_index();
        let mut writer = match chain.clone().writer(&**mem) {
            Ok(w) => w,
            Err(e) => {
                guest_error!("control chain {head}: unusable ack buffer: {e}");
                return 0;
            }
        };
        let ack = match self.decode(chain, mem) {
            Ok(command) => self.apply(command),
            Err(e) => {
                guest_error!("control chain {head}: {e}");
                ACK_ERR
            }
        };
        if writer.available_bytes() == 0 {
            guest_error!("control chain {head}: {}", CommandError::NoAck);
            return 0;
        }
        match writer.write_obj(ack) {
            Ok(()) => 1,
            Err(e) => {
                guest_error!("control chain {head}: cannot write the ack: {e}");
                0
            }
        }
    }

    fn decode(
        &self,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap<()>>,
        mem: &Mem,
    ) -> Result<Command, String> {
        let mut reader = chain.reader(&**mem).map_err(|e| e.to_string())?;
        let len = reader.available_bytes();
        if len > ctrl::MAX_COMMAND_LEN {
            return Err(CommandError::TooLong.to_string());
        }
        let mut bytes = vec![0u8; len];
        io::Read::read_exact(&mut reader, &mut bytes).map_err(|e| e.to_string())?;
        ctrl::parse(&bytes, self.device.max_pairs).map_err(|e| e.to_string())
    }

    fn apply(&mut self, command: Command) -> u8 {
        match command {
            Command::SetQueuePairs(pairs) => {
                if let Err(e) = self.device.tap.set_active_queues(usize::from(pairs)) {
                    guest_warn!("{e}");
                    return ACK_ERR;
                }
                self.device.active_pairs.store(pairs, Ordering::Relaxed);
                guest_info!("guest uses {pairs} queue pair(s)");
                ACK_OK
            }
            other => {
                guest_debug!("control command acknowledged: {other:?}");
                ACK_OK
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_fill_chains_in_order() {
        let caps = || [1536usize, 1536, 1536, 1536].into_iter();
        assert_eq!(
            chains_filled(0, caps()),
            1,
            "an empty read still uses one buffer"
        );
        assert_eq!(chains_filled(72, caps()), 1);
        assert_eq!(chains_filled(1536, caps()), 1);
        assert_eq!(chains_filled(1537, caps()), 2);
        assert_eq!(chains_filled(4012, caps()), 3);
    }

    #[test]
    fn rx_chain_shapes() {
        use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
        let mem: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let w = VRING_DESC_F_WRITE as u16;
        let mut iovecs = Vec::new();
        let ok = [Descriptor::new(0x1000, 1536, w, 0)];
        let (cap, first) = collect_rx_chain(ok.into_iter(), &mem, 12, &mut iovecs).unwrap();
        assert_eq!((cap, first), (1536, (GuestAddress(0x1000), 1536)));
        assert_eq!(iovecs.len(), 1);
        let readable = [Descriptor::new(0x1000, 1536, 0, 0)];
        assert!(matches!(
            collect_rx_chain(readable.into_iter(), &mem, 12, &mut iovecs),
            Err(RxChainError::ReadableDescriptor)
        ));
        let tiny = [
            Descriptor::new(0x1000, 8, w, 0),
            Descriptor::new(0x2000, 1536, w, 0),
        ];
        assert!(matches!(
            collect_rx_chain(tiny.into_iter(), &mem, 12, &mut iovecs),
            Err(RxChainError::NoRoomForHeader(8))
        ));
        let outside = [Descriptor::new(0xf000, 0x2000, w, 0)];
        assert!(matches!(
            collect_rx_chain(outside.into_iter(), &mem, 12, &mut iovecs),
            Err(RxChainError::OutsideMemory(_))
        ));
    }
}
