//! The per-queue-pair worker (transmit: guest to tap; receive: tap to guest) and
//! the control-queue worker, on the common queue layer. Frames move with one
//! writev or readv between guest buffers and the tap, never through a copy of our
//! own.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vhost_user_backend::VringT;
use vhostkit_common::lifecycle::{GuestMemory, Vring};
use vhostkit_common::queue::{
    ActiveQueue, Chain, Coalescer, IoVecError, IoVecs, Poller, QueueDevice, QueueServer,
    RingUnreadable,
};
use vhostkit_common::{guest_debug, guest_error, guest_info, guest_warn};
use virtio_queue::desc::split::Descriptor;
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

impl DeviceState {
    fn hdr_len(&self) -> usize {
        self.hdr_len.load(Ordering::Relaxed)
    }
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
    /// A frame is held (`Receiver::pending`) until the guest posts enough
    /// receive buffers for it (MRG_RXBUF).
    WaitForBuffers,
    /// The available ring cannot be read (an impossible index).
    RingBroken,
}

/// One queue pair: its two queue servers and what each direction keeps.
pub struct PairWorker {
    memory: Option<GuestMemory>,
    tx_queue: QueueServer,
    rx_queue: QueueServer,
    tx: Transmitter,
    rx: Receiver,
}

/// The transmit side of a pair: guest chains to tap frames.
struct Transmitter {
    pair: usize,
    device: Arc<DeviceState>,
    tap_fd: RawFd,
    iovecs: IoVecs,
}

/// The receive side of a pair: tap frames to guest chains.
struct Receiver {
    pair: usize,
    device: Arc<DeviceState>,
    tap_fd: RawFd,
    iovecs: IoVecs,
    chains: Vec<RxChain>,
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

impl PairWorker {
    pub fn new(pair: usize, device: Arc<DeviceState>, poll: Duration, coalesce: Duration) -> Self {
        let tap_fd = device.tap.queue_fd(pair).unwrap_or(-1);
        PairWorker {
            memory: None,
            tx_queue: QueueServer::new(format!("pair {pair} tx"), Poller::adaptive(poll))
                .with_coalescing(Coalescer::adaptive(coalesce)),
            rx_queue: QueueServer::new(format!("pair {pair} rx"), Poller::off()),
            tx: Transmitter {
                pair,
                device: device.clone(),
                tap_fd,
                iovecs: IoVecs::with_capacity(MAX_IOVECS),
            },
            rx: Receiver {
                pair,
                device,
                tap_fd,
                iovecs: IoVecs::with_capacity(MAX_IOVECS),
                chains: Vec::new(),
                pending: None,
            },
        }
    }

    /// Drops a frame held back for the guest's receive buffers: it belongs to the
    /// driver that posted the ring, with that driver's header size. Called when the
    /// receive ring is stopped (GET_VRING_BASE: a driver reset, a reboot) and when
    /// features are negotiated again.
    pub fn drop_held_frame(&mut self) {
        self.rx.drop_held_frame();
    }

    pub fn set_memory(&mut self, memory: GuestMemory) {
        self.memory = Some(memory);
    }

    pub fn tap_fd(&self) -> RawFd {
        self.tx.tap_fd
    }

    fn current_memory(&self) -> Option<Mem> {
        self.memory.as_ref().map(|m| m.memory().into_inner())
    }

    // ---- transmit -----------------------------------------------------------------

    /// The guest kicked the transmit queue: send everything available to the tap.
    /// `rx_vring`, the pair's receive queue, takes the frames that come for the
    /// guest while the transmit signal is held (see [`TxRound`]).
    pub fn handle_tx(&mut self, vring: &Vring, rx_vring: Option<&Vring>) -> io::Result<()> {
        let Some(mem) = self.current_memory() else {
            guest_error!(
                "pair {}: tx kicked before a memory table was set",
                self.tx.pair
            );
            return Ok(());
        };
        let mut round = TxRound {
            tx: &mut self.tx,
            rx: &mut self.rx,
            rx_queue: &mut self.rx_queue,
            rx_vring,
            mem: &mem,
        };
        self.tx_queue.serve(&mut round, vring, &mem)
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
        let mut queue = self.rx_queue.activate(&mut state, &mem);
        self.rx.serve(&mut queue);
        Ok(())
    }
}

impl QueueDevice for Transmitter {
    fn serve(&mut self, queue: &mut ActiveQueue<'_>, chain: Chain<'_>) {
        let head = chain.head_index();
        if let Err(e) = self.transmit(chain, queue.memory()) {
            guest_error!("pair {}: dropping tx chain {head}: {e}", self.pair);
        }
        // Always hand the chain back, sent or not, so the guest can reuse it.
        queue.complete(head, 0);
    }
}

/// One serving of the transmit queue, with the pair's receive side: this thread
/// serves both, so while the transmit signal is held the receive queue must not
/// wait.
struct TxRound<'a> {
    tx: &'a mut Transmitter,
    rx: &'a mut Receiver,
    rx_queue: &'a mut QueueServer,
    rx_vring: Option<&'a Vring>,
    mem: &'a Mem,
}

impl QueueDevice for TxRound<'_> {
    fn serve(&mut self, queue: &mut ActiveQueue<'_>, chain: Chain<'_>) {
        self.tx.serve(queue, chain);
    }

    /// A hold of the transmit signal waits on the tap. Frames that come for the
    /// guest meanwhile (often the ACKs of the very stream being sent) are
    /// delivered at once, and the hold goes on: the guest's answer to them is
    /// more to send, which then needs no kick.
    fn hold_window(&mut self, window: Duration) -> bool {
        if !tap_readable_within(self.tx.tap_fd, window) {
            return true;
        }
        let Some(rx_vring) = self.rx_vring else {
            return false;
        };
        // Lock order: transmit, then receive; nothing takes them the other way.
        let mut state = rx_vring.get_mut();
        let mut queue = self.rx_queue.activate(&mut state, self.mem);
        self.rx.serve(&mut queue);
        true
    }
}

/// Whether `tap_fd` has a frame to read, waiting up to `timeout` for one.
fn tap_readable_within(tap_fd: RawFd, timeout: Duration) -> bool {
    Coalescer::precise_timers();
    let mut fds = [libc::pollfd {
        fd: tap_fd,
        events: libc::POLLIN,
        revents: 0,
    }];
    let ts = libc::timespec {
        tv_sec: 0,
        // A coalescing window is at most 1 ms (--coalesce-us).
        tv_nsec: libc::c_long::try_from(timeout.as_nanos().min(999_999_999)).unwrap_or(0),
    };
    // SAFETY: `fds` is one valid pollfd and `ts` a valid timespec, both living
    // across the call; no signal mask is passed.
    let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 1, &ts, std::ptr::null()) };
    n > 0 && fds[0].revents & libc::POLLIN != 0
}

impl Transmitter {
    fn transmit(&mut self, chain: Chain<'_>, mem: &Mem) -> Result<(), TxDrop> {
        tx_iovecs(chain, mem, self.device.hdr_len(), &mut self.iovecs)?;
        let sent = self.iovecs.writev(self.tap_fd).map_err(TxDrop::Tap);
        self.iovecs.clear();
        sent.map(|_| ())
    }
}

impl Receiver {
    fn drop_held_frame(&mut self) {
        if let Some(HeldFrame { frame, .. }) = self.pending.take() {
            guest_debug!(
                "pair {}: dropping a held {}-byte frame: the rings were reset",
                self.pair,
                frame.len()
            );
        }
    }

    fn serve(&mut self, queue: &mut ActiveQueue<'_>) {
        let usable = queue.usable();
        if !self.device.ctrl_in_charge.load(Ordering::Relaxed) {
            // Without the control queue, an enabled receive queue is what says the
            // guest uses this pair; steer frames away from pairs it does not.
            if let Err(e) = self.device.tap.set_queue_attached(self.pair, usable) {
                guest_error!("pair {}: {e}", self.pair);
            }
        }
        if !usable {
            return;
        }
        let mut received = 0u32;
        queue.disable_notifications();
        loop {
            match self.receive_frame(queue) {
                RxOutcome::Progress => {
                    received += 1;
                    // Let the guest start on a batch while we read more.
                    if received.is_multiple_of(64) {
                        queue.signal();
                    }
                }
                RxOutcome::TapEmpty => break,
                RxOutcome::RingBroken => {
                    // Nothing to take until the guest fixes its ring and kicks.
                    queue.enable_notifications();
                    break;
                }
                RxOutcome::WaitForBuffers => {
                    // Ask for a kick when the guest posts buffers beyond the ones it
                    // has, then look once more in case they came meanwhile.
                    if queue.enable_notifications_past_available() {
                        queue.disable_notifications();
                        continue;
                    }
                    break;
                }
                RxOutcome::NoBuffers => {
                    // Ask for a kick when buffers come, then look once more in case
                    // they came meanwhile.
                    if queue.enable_notifications() {
                        queue.disable_notifications();
                        continue;
                    }
                    break;
                }
            }
        }
        queue.signal();
    }

    /// Takes receive chains for one frame (one chain, or with MRG_RXBUF as many as
    /// a largest frame needs), reads one frame into them and returns the ones used.
    fn receive_frame(&mut self, queue: &mut ActiveQueue<'_>) -> RxOutcome {
        let mem = queue.memory();
        let mergeable = self.device.mergeable_rx.load(Ordering::Relaxed);
        let hdr_len = self.device.hdr_len();
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
        self.chains.clear();
        let mut capacity = 0usize;
        let mut ring_dry = false;
        while capacity < wanted && (mergeable || self.chains.is_empty()) {
            let chain = match queue.pop() {
                Ok(chain) => chain,
                Err(RingUnreadable) => {
                    self.give_back_chains(queue);
                    return RxOutcome::RingBroken;
                }
            };
            let Some(chain) = chain else {
                ring_dry = true;
                break;
            };
            let head = chain.head_index();
            let entries = self.iovecs.entries();
            match collect_rx_chain(chain, mem, hdr_len, &mut self.iovecs) {
                Ok((chain_capacity, first)) => {
                    capacity += chain_capacity;
                    self.chains.push(RxChain {
                        head,
                        capacity: chain_capacity,
                        first,
                    });
                }
                Err(e) => {
                    self.iovecs.truncate(entries);
                    if !self.chains.is_empty() {
                        // Put it back and deal with it first next time, so the chains
                        // we give back below stay the last ones taken.
                        queue.put_back(head);
                        break;
                    }
                    guest_error!(
                        "pair {}: returning unusable rx chain {head}: {e}",
                        self.pair
                    );
                    queue.complete(head, 0);
                }
            }
        }
        if self.chains.is_empty() {
            return match self.pending {
                Some(_) => RxOutcome::WaitForBuffers,
                None => RxOutcome::NoBuffers,
            };
        }
        if let Some(HeldFrame { frame, .. }) = self.pending.take() {
            if capacity < frame.len() {
                if self.chains.len() >= usize::from(queue.size()) {
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
            self.iovecs.copy_from_slice(&frame);
            return self.complete_frame(queue, frame.len(), hdr_len);
        }
        if mergeable && ring_dry && capacity < wanted {
            // The guest has not posted room for a largest frame yet. Read the next
            // frame aside: it goes out now if it fits, or waits for more buffers
            // instead of being dropped.
            let mut frame = vec![0u8; wanted];
            // SAFETY: the buffer is ours, `wanted` bytes long; read writes at most that.
            let n = unsafe { libc::read(self.tap_fd, frame.as_mut_ptr().cast(), frame.len()) };
            let Ok(n) = usize::try_from(n) else {
                let err = io::Error::last_os_error();
                self.give_back_chains(queue);
                if err.kind() != io::ErrorKind::WouldBlock {
                    guest_debug!("pair {}: reading the tap failed: {err}", self.pair);
                }
                return RxOutcome::TapEmpty;
            };
            frame.truncate(n);
            if frame.len() > capacity {
                self.pending = Some(HeldFrame { frame, hdr_len });
                self.give_back_chains(queue);
                return RxOutcome::WaitForBuffers;
            }
            self.iovecs.copy_from_slice(&frame);
            return self.complete_frame(queue, frame.len(), hdr_len);
        }
        // One byte past the guest's buffers: a frame that reaches it did not fit.
        // collect_rx_chain left an entry free for it.
        if self.iovecs.push_spill_byte().is_err() {
            self.give_back_chains(queue);
            return RxOutcome::Progress;
        }
        let n = match self.iovecs.readv(self.tap_fd) {
            Ok(n) => n,
            Err(err) => {
                self.give_back_chains(queue);
                if err.kind() != io::ErrorKind::WouldBlock {
                    guest_debug!("pair {}: reading the tap failed: {err}", self.pair);
                }
                return RxOutcome::TapEmpty;
            }
        };
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
        self.complete_frame(queue, n, hdr_len)
    }

    /// A frame of `n` bytes is in the chains taken: hands back the ones it filled
    /// (with num_buffers set) and puts the unused rest back on the ring.
    fn complete_frame(
        &mut self,
        queue: &mut ActiveQueue<'_>,
        n: usize,
        hdr_len: usize,
    ) -> RxOutcome {
        // The unused rest goes back to the ring (they were the last ones taken).
        let used = chains_filled(n, self.chains.iter().map(|c| c.capacity));
        for chain in self.chains[used..].iter().rev() {
            queue.put_back(chain.head);
        }
        if hdr_len == VNET_HDR_LEN {
            // The tap leaves num_buffers alone; it is ours to fill (1 without
            // MRG_RXBUF, as the spec asks).
            // At most the queue size (chains taken for one frame): fits 16 bits.
            let num_buffers = u16::try_from(used).unwrap_or(u16::MAX).to_le_bytes();
            if let Err(e) = write_in_span(
                &**queue.memory(),
                self.chains[0].first,
                NUM_BUFFERS_OFFSET,
                &num_buffers,
            ) {
                guest_error!("pair {}: cannot write num_buffers: {e}", self.pair);
            }
        }
        let mut left = n;
        for chain in &self.chains[..used] {
            let len = left.min(chain.capacity);
            left -= len;
            // At most a largest frame: fits 32 bits.
            queue.complete(chain.head, u32::try_from(len).unwrap_or(u32::MAX));
        }
        self.chains.clear();
        RxOutcome::Progress
    }

    /// Puts every chain taken for the current frame back on the available ring.
    fn give_back_chains(&mut self, queue: &mut ActiveQueue<'_>) {
        for chain in self.chains.drain(..).rev() {
            queue.put_back(chain.head);
        }
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
pub(crate) fn tx_iovecs<C>(
    chain: C,
    mem: &Mem,
    hdr_len: usize,
    iovecs: &mut IoVecs,
) -> Result<usize, TxDrop>
where
    C: Iterator<Item = Descriptor>,
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
        iovecs.push_descriptor(mem, &desc).map_err(|e| match e {
            IoVecError::TooMany => TxDrop::Shape(TxError::TooManyDescriptors(descriptors)),
            IoVecError::OutsideMemory { addr, .. } => TxDrop::OutsideMemory(addr),
            IoVecError::OtherMemory => TxDrop::OutsideMemory(desc.addr()),
        })?;
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
pub(crate) fn collect_rx_chain<C>(
    chain: C,
    mem: &Mem,
    hdr_len: usize,
    iovecs: &mut IoVecs,
) -> Result<(usize, (GuestAddress, usize)), RxChainError>
where
    C: Iterator<Item = Descriptor>,
{
    let mut capacity = 0usize;
    let mut first = None;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(RxChainError::ReadableDescriptor);
        }
        let len = desc.len() as usize;
        first.get_or_insert((desc.addr(), len));
        iovecs.push_descriptor(mem, &desc).map_err(|e| match e {
            IoVecError::TooMany => RxChainError::TooManyDescriptors,
            IoVecError::OutsideMemory { addr, .. } => RxChainError::OutsideMemory(addr),
            IoVecError::OtherMemory => RxChainError::OutsideMemory(desc.addr()),
        })?;
        // One entry stays free for the overflow byte.
        if iovecs.entries() >= MAX_IOVECS {
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
    memory: Option<GuestMemory>,
    queue: QueueServer,
    commands: Commands,
}

/// The control queue's requests: one command per chain, answered with an ack.
struct Commands {
    device: Arc<DeviceState>,
}

impl ControlWorker {
    pub fn new(device: Arc<DeviceState>) -> Self {
        ControlWorker {
            memory: None,
            // The control queue is quiet: no busy-polling.
            queue: QueueServer::new("control queue", Poller::off()),
            commands: Commands { device },
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
        self.queue.serve(&mut self.commands, vring, &mem)
    }
}

impl QueueDevice for Commands {
    fn serve(&mut self, queue: &mut ActiveQueue<'_>, chain: Chain<'_>) {
        let head = chain.head_index();
        let used_len = self.run_command(chain, queue.memory());
        queue.complete(head, used_len);
    }
}

impl Commands {
    fn run_command(&mut self, chain: Chain<'_>, mem: &Mem) -> u32 {
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

    fn decode(&self, chain: Chain<'_>, mem: &Mem) -> Result<Command, String> {
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

/// The queue handling of a pair in process, as vhost-user-backend's own tests do
/// it: split rings in test memory, a socket pair standing for the tap (one frame
/// per datagram, as a tap reads and writes), one kick or tap event at a time.
#[cfg(test)]
mod in_process {
    use super::*;
    use std::fs::File;
    use std::os::fd::{AsRawFd, FromRawFd};
    use vhost_user_backend::VringT;
    use vm_memory::GuestMemoryAtomic;

    const SIZE: u16 = 8;
    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    /// One split ring at `base` (descriptors, then avail at +0x1000, used at +0x2000).
    struct Ring {
        base: u64,
        vring: Vring,
        avail_idx: u16,
        next_desc: u16,
    }

    impl Ring {
        fn new(memory: &GuestMemory, base: u64) -> Self {
            let vring = Vring::new(memory.clone(), SIZE).unwrap();
            vring.set_queue_size(SIZE);
            vring
                .set_queue_info(base, base + 0x1000, base + 0x2000)
                .unwrap();
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            Ring {
                base,
                vring,
                avail_idx: 0,
                next_desc: 0,
            }
        }

        /// Offers one chain of (address, length, flags) buffers.
        fn offer(&mut self, mem: &GuestMemoryMmap<()>, bufs: &[(u64, u32, u16)]) -> u16 {
            let head = self.next_desc;
            for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
                let index = self.next_desc;
                self.next_desc += 1;
                let next = if i + 1 < bufs.len() { F_NEXT } else { 0 };
                let at = GuestAddress(self.base + 16 * u64::from(index));
                mem.write_obj(addr, at).unwrap();
                mem.write_obj(len, at.unchecked_add(8)).unwrap();
                mem.write_obj(flags | next, at.unchecked_add(12)).unwrap();
                mem.write_obj(index + 1, at.unchecked_add(14)).unwrap();
            }
            let avail = self.base + 0x1000;
            let slot = avail + 4 + 2 * u64::from(self.avail_idx % SIZE);
            mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.avail_idx += 1;
            mem.write_obj(self.avail_idx, GuestAddress(avail + 2))
                .unwrap();
            head
        }

        fn used_idx(&self, mem: &GuestMemoryMmap<()>) -> u16 {
            mem.read_obj(GuestAddress(self.base + 0x2002)).unwrap()
        }

        /// Used element `i`: (head, length).
        fn used(&self, mem: &GuestMemoryMmap<()>, i: u16) -> (u32, u32) {
            let at = GuestAddress(self.base + 0x2004 + 8 * u64::from(i));
            (
                mem.read_obj(at).unwrap(),
                mem.read_obj(at.unchecked_add(4)).unwrap(),
            )
        }
    }

    /// A pair worker on a socket pair, with `coalesce` as its --coalesce-us:
    /// (worker, the "kernel" end of the tap).
    fn pair_on_socket(memory: &GuestMemory, coalesce: Duration) -> (PairWorker, File) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into `fds`; checked below.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: two fresh descriptors that nothing else owns.
        let (ours, kernel) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let device = Arc::new(DeviceState {
            tap: Arc::new(Tap::from_files("test", vec![ours])),
            max_pairs: 1,
            active_pairs: AtomicU16::new(1),
            // The control queue decides which pairs run: no tap steering here.
            ctrl_in_charge: AtomicBool::new(true),
            hdr_len: std::sync::atomic::AtomicUsize::new(VNET_HDR_LEN),
            mergeable_rx: AtomicBool::new(false),
            rx_frame_max: std::sync::atomic::AtomicUsize::new(1514),
        });
        let mut worker = PairWorker::new(0, device, Duration::ZERO, coalesce);
        worker.set_memory(memory.clone());
        (worker, kernel)
    }

    /// While the transmit signal is held, a frame that comes for the guest is
    /// delivered at once by the transmit round (one thread serves both queues),
    /// not only once the guest stops sending.
    #[test]
    fn a_frame_for_the_guest_is_delivered_during_a_transmit_hold() {
        let mmap = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let memory = GuestMemoryAtomic::new(mmap);
        let mem = memory.memory().into_inner();
        let (mut worker, kernel) = pair_on_socket(&memory, Duration::from_millis(5));
        let mut tx = Ring::new(&memory, 0x10000);
        let mut rx = Ring::new(&memory, 0x20000);
        rx.offer(&mem, &[(0x50000, 1536, F_WRITE)]);
        // The frame is on the tap when the guest kicks: the first hold window
        // finds it.
        let incoming = [0x5au8; 72];
        // SAFETY: writes from our buffer of its length.
        let n = unsafe { libc::write(kernel.as_raw_fd(), incoming.as_ptr().cast(), 72) };
        assert_eq!(n, 72);
        mem.write_slice(&[0u8; 112], GuestAddress(0x40000)).unwrap();
        tx.offer(&mem, &[(0x40000, 112, 0)]);
        worker.handle_tx(&tx.vring, Some(&rx.vring)).unwrap();
        assert_eq!(tx.used_idx(&mem), 1);
        assert_eq!(rx.used_idx(&mem), 1, "delivered within the transmit round");
        assert_eq!(rx.used(&mem, 0), (0, 72));
    }

    #[test]
    fn frames_go_both_ways_through_guest_buffers_without_a_copy_of_ours() {
        let mmap = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let memory = GuestMemoryAtomic::new(mmap);
        let mem = memory.memory().into_inner();
        let (mut worker, kernel) = pair_on_socket(&memory, Duration::ZERO);
        let mut tx = Ring::new(&memory, 0x10000);
        let mut rx = Ring::new(&memory, 0x20000);

        // Transmit: a 12-byte header and a 100-byte frame in two buffers.
        let frame: Vec<u8> = (0..112u8).collect();
        mem.write_slice(&frame[..40], GuestAddress(0x40000))
            .unwrap();
        mem.write_slice(&frame[40..], GuestAddress(0x41000))
            .unwrap();
        tx.offer(&mem, &[(0x40000, 40, 0), (0x41000, 72, 0)]);
        // And a chain with a writable buffer, which transmit refuses.
        tx.offer(&mem, &[(0x42000, 64, F_WRITE)]);
        worker.handle_tx(&tx.vring, Some(&rx.vring)).unwrap();
        assert_eq!(tx.used_idx(&mem), 2, "both chains go back to the guest");
        let mut got = [0u8; 2048];
        // SAFETY: reads into our buffer of its length.
        let n = unsafe { libc::read(kernel.as_raw_fd(), got.as_mut_ptr().cast(), got.len()) };
        assert_eq!(
            usize::try_from(n).unwrap(),
            112,
            "one frame, header included"
        );
        assert_eq!(&got[..112], &frame[..]);
        // SAFETY: as above; nothing else was sent.
        let n = unsafe { libc::read(kernel.as_raw_fd(), got.as_mut_ptr().cast(), got.len()) };
        assert_eq!(n, -1, "the refused chain sent nothing");

        // Receive: a 72-byte frame (header included) into a 1536-byte buffer, then
        // one too long for the next buffer (no MRG_RXBUF): dropped, buffer kept.
        let incoming: Vec<u8> = (0..72u8).map(|b| b ^ 0x55).collect();
        let write = |bytes: &[u8]| {
            // SAFETY: writes from our buffer of its length.
            let n = unsafe { libc::write(kernel.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
            assert_eq!(usize::try_from(n).unwrap(), bytes.len());
        };
        write(&incoming);
        write(&vec![7u8; 3000]);
        write(&incoming);
        rx.offer(&mem, &[(0x50000, 1536, F_WRITE)]);
        rx.offer(&mem, &[(0x51000, 1536, F_WRITE)]);
        worker.handle_rx(&rx.vring).unwrap();
        assert_eq!(rx.used_idx(&mem), 2);
        assert_eq!(rx.used(&mem, 0), (0, 72));
        assert_eq!(
            rx.used(&mem, 1),
            (1, 72),
            "the long frame was dropped, its buffer reused"
        );
        let mut back = vec![0u8; 72];
        mem.read_slice(&mut back, GuestAddress(0x51000)).unwrap();
        // num_buffers (bytes 10-11) is the device's to fill: 1.
        let mut expected = incoming.clone();
        expected[10..12].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(back, expected);
        // The long frame filled the buffer up to its end and not a byte further
        // (its 1537th byte went to the worker's spill byte).
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x51000 + 1535)).unwrap(), 7);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x51000 + 1536)).unwrap(), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transmit hold ends as soon as the tap has a frame for the guest, and
    /// otherwise waits its window out.
    #[test]
    fn a_hold_on_the_tap_ends_when_a_frame_comes() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let window = Duration::from_millis(20);
        let start = std::time::Instant::now();
        assert!(!tap_readable_within(fds[0], window), "nothing to read yet");
        assert!(start.elapsed() >= window, "the window was waited out");
        // SAFETY: fds[1] is the pipe's open write end; one byte from a live buffer.
        assert_eq!(unsafe { libc::write(fds[1], [1u8].as_ptr().cast(), 1) }, 1);
        assert!(tap_readable_within(fds[0], Duration::from_secs(10)));
        for fd in fds {
            // SAFETY: both ends are ours and closed once.
            unsafe { libc::close(fd) };
        }
    }

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
        let mem: Mem =
            Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
        let w = VRING_DESC_F_WRITE as u16;
        let mut iovecs = IoVecs::default();
        let ok = [Descriptor::new(0x1000, 1536, w, 0)];
        let (cap, first) = collect_rx_chain(ok.into_iter(), &mem, 12, &mut iovecs).unwrap();
        assert_eq!((cap, first), (1536, (GuestAddress(0x1000), 1536)));
        assert_eq!(iovecs.entries(), 1);
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
