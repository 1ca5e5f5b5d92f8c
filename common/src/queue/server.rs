//! The avail-ring server: what every device queue does around its own requests.
//!
//! A [`QueueServer`] belongs to one queue of one device (it lives in the device's
//! worker for that queue). While the worker holds the vring, [`QueueServer::activate`]
//! gives an [`ActiveQueue`]: popping (with the head checked against the queue size),
//! putting back, completing (used ring), notification suppression and signalling,
//! each going through the queue's [`QueueHooks`]. Request/response queues (blk,
//! net tx and ctrl, fs) implement [`QueueDevice`] and let [`QueueServer::serve`] run
//! the whole kick loop; a queue whose pace the device sets (net rx: frames come
//! from the tap) uses the same `ActiveQueue` calls directly.
//!
//! The kick loop is EVENT_IDX-safe: notifications are off while the ring is
//! drained; the signal for what completed may be held for a few windows while the
//! guest keeps submitting (the [`Coalescer`]), then the guest is signalled; the
//! ring is polled a while longer if the [`Poller`] says so, and after
//! notifications go back on it is looked at once more (an entry that came while
//! they were off would otherwise wait for a kick that never comes).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use vhost_user_backend::{VringState, VringT};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemoryMmap};

use super::coalesce::{Coalescer, Hold};
use super::hooks::{Admit, QueueHooks, QueueStats};
use super::poll::Poller;
use crate::guest_error;
use crate::lifecycle::{GuestMemory, Vring};

/// A descriptor chain popped off a queue.
pub type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap<()>>;

/// The avail ring cannot be read (the driver gave an impossible index): nothing
/// can be served until it puts that right and kicks again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingUnreadable;

/// A device's side of a request/response queue, served by [`QueueServer::serve`].
pub trait QueueDevice {
    /// Serves one chain just popped: complete it now ([`ActiveQueue::complete`])
    /// or keep its head and complete it later, from a completion event.
    fn serve(&mut self, queue: &mut ActiveQueue<'_>, chain: Chain<'_>);

    /// Whether the device can take another chain now; it may complete finished
    /// work to make room. Asked before every pop.
    fn has_room(&mut self, _queue: &mut ActiveQueue<'_>) -> io::Result<bool> {
        Ok(true)
    }

    /// The ring ran dry after some pops: start what the device queued and
    /// complete what already finished.
    fn end_batch(&mut self, _queue: &mut ActiveQueue<'_>) -> io::Result<()> {
        Ok(())
    }

    /// Called again and again while the queue polls for new entries: complete
    /// work that finished meanwhile (the server signals the guest for it).
    fn poll_completions(&mut self, _queue: &mut ActiveQueue<'_>) {}

    /// Waits one coalescing window while the queue holds the guest's signal
    /// ([`Coalescer`]). A device whose thread has other work does it here (net
    /// transmit: frames for the guest on the tap, for the receive queue of the
    /// same thread); false ends the hold at once.
    fn hold_window(&mut self, window: std::time::Duration) -> bool {
        Coalescer::wait(window);
        true
    }
}

/// One queue's server. See the module documentation.
pub struct QueueServer {
    /// Names the queue in log lines ("queue 3", "pair 0 tx").
    name: String,
    hooks: QueueHooks,
    poller: Poller,
    coalescer: Coalescer,
    /// With a dirty log: the device-writable buffers of each chain in flight, by
    /// head, marked when the chain completes.
    writable_by_head: Vec<Vec<(GuestAddress, u32)>>,
}

impl std::fmt::Debug for QueueServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueServer")
            .field("name", &self.name)
            .field("hooks", &self.hooks)
            .field("poller", &self.poller)
            .field("coalescer", &self.coalescer)
            .finish()
    }
}

impl QueueServer {
    pub fn new(name: impl Into<String>, poller: Poller) -> Self {
        QueueServer {
            name: name.into(),
            hooks: QueueHooks::default(),
            poller,
            coalescer: Coalescer::off(),
            writable_by_head: Vec::new(),
        }
    }

    /// Holds the guest's signal while it keeps submitting (see [`Coalescer`]).
    pub fn with_coalescing(mut self, coalescer: Coalescer) -> Self {
        self.coalescer = coalescer;
        self
    }

    /// Replaces the queue's hooks (stats, admission, in-flight log, dirty log).
    pub fn set_hooks(&mut self, hooks: QueueHooks) {
        self.hooks = hooks;
        self.writable_by_head.clear();
    }

    pub fn hooks(&self) -> &QueueHooks {
        &self.hooks
    }

    pub fn stats(&self) -> &Arc<QueueStats> {
        &self.hooks.stats
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's calls for as long as the caller holds its vring state.
    pub fn activate<'a>(
        &'a mut self,
        state: &'a mut VringState<GuestMemory>,
        mem: &'a Arc<GuestMemoryMmap<()>>,
    ) -> ActiveQueue<'a> {
        ActiveQueue {
            server: self,
            state,
            mem,
            completed_unsignalled: false,
            throttled: false,
        }
    }

    /// The kick loop: serve what is available through `device`, signal the guest,
    /// poll a while for more (as the poller says), turn notifications back on and
    /// go round again if entries came meanwhile.
    pub fn serve<D: QueueDevice + ?Sized>(
        &mut self,
        device: &mut D,
        vring: &Vring,
        mem: &Arc<GuestMemoryMmap<()>>,
    ) -> io::Result<()> {
        self.poller.woken(Instant::now());
        let poll = self.poller.current();
        let mut state = vring.get_mut();
        let result = self
            .activate(&mut state, mem)
            .serve_until_idle(device, poll);
        self.poller.idle(Instant::now());
        result
    }
}

/// A queue being served: its vring state and guest memory held. See
/// [`QueueServer::activate`].
pub struct ActiveQueue<'a> {
    server: &'a mut QueueServer,
    state: &'a mut VringState<GuestMemory>,
    mem: &'a Arc<GuestMemoryMmap<()>>,
    /// Used entries written since the guest was last signalled.
    completed_unsignalled: bool,
    /// Admission said "later" this round.
    throttled: bool,
}

impl<'a> ActiveQueue<'a> {
    /// The guest memory the queue's buffers live in.
    pub fn memory(&self) -> &'a Arc<GuestMemoryMmap<()>> {
        self.mem
    }

    pub fn name(&self) -> &str {
        &self.server.name
    }

    /// The queue's size (its number of descriptors).
    pub fn size(&self) -> u16 {
        self.state.get_queue().size()
    }

    /// The frontend made the queue ready and enabled it.
    pub fn usable(&self) -> bool {
        self.state.get_queue().ready() && self.state.is_enabled()
    }

    /// Admission held the queue back during this activation.
    pub fn throttled(&self) -> bool {
        self.throttled
    }

    fn queue(&mut self) -> &mut Queue {
        self.state.get_queue_mut()
    }

    /// Takes the next chain off the avail ring: `Ok(None)` if there is none (or
    /// admission says not now). A chain whose head lies outside the queue is
    /// dropped unanswered, with one rate-limited line: nothing can go back for it
    /// (the used ring refuses such an id).
    pub fn pop(&mut self) -> Result<Option<Chain<'a>>, RingUnreadable> {
        let mem: &'a GuestMemoryMmap<()> = self.mem;
        loop {
            if let Some(admission) = &self.server.hooks.admission {
                if let Admit::Later(_) = admission.admit(&self.server.hooks.stats) {
                    QueueStats::add(&self.server.hooks.stats.throttled, 1);
                    self.throttled = true;
                    return Ok(None);
                }
            }
            let chain = match self.queue().iter(mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => {
                    guest_error!("{}: cannot read the available ring: {e}", self.server.name);
                    return Err(RingUnreadable);
                }
            };
            let Some(chain) = chain else {
                return Ok(None);
            };
            let head = chain.head_index();
            let size = self.size();
            if head >= size {
                guest_error!(
                    "{}: dropping request {head}: head index outside the queue of {size} entries",
                    self.server.name
                );
                QueueStats::add(&self.server.hooks.stats.dropped, 1);
                continue;
            }
            self.popped(&chain);
            return Ok(Some(chain));
        }
    }

    fn popped(&mut self, chain: &Chain<'a>) {
        let head = chain.head_index();
        let hooks = &self.server.hooks;
        QueueStats::add(&hooks.stats.popped, 1);
        if let Some(inflight) = &hooks.inflight {
            inflight.popped(head);
        }
        if hooks.dirty.is_some() {
            let size = usize::from(self.size());
            let table = &mut self.server.writable_by_head;
            if table.len() < size {
                table.resize_with(size, Vec::new);
            }
            let writable = &mut table[usize::from(head)];
            writable.clear();
            writable.extend(
                chain
                    .clone()
                    .filter(|d| d.is_write_only())
                    .map(|d| (d.addr(), d.len())),
            );
        }
    }

    /// Puts the chain last popped, with head `head`, back on the avail ring (it is
    /// popped again next time). Put chains back in the reverse order of popping.
    pub fn put_back(&mut self, head: u16) {
        self.queue().go_to_previous_position();
        let hooks = &self.server.hooks;
        hooks.stats.popped.fetch_sub(1, Ordering::Relaxed);
        if let Some(inflight) = &hooks.inflight {
            inflight.completed(head);
        }
    }

    /// Returns chain `head` to the guest with `used_len` bytes written into it.
    /// Failures are the guest's doing (a bad used-ring address) and only logged.
    pub fn complete(&mut self, head: u16, used_len: u32) {
        let mem: &GuestMemoryMmap<()> = self.mem;
        let next_used = self.queue().next_used();
        if let Err(e) = self.queue().add_used(mem, head, used_len) {
            guest_error!("{}: cannot return chain {head}: {e}", self.server.name);
            return;
        }
        self.completed_unsignalled = true;
        let hooks = &self.server.hooks;
        QueueStats::add(&hooks.stats.completed, 1);
        QueueStats::add(&hooks.stats.used_bytes, u64::from(used_len));
        if let Some(inflight) = &hooks.inflight {
            inflight.completed(head);
        }
        if let Some(dirty) = &hooks.dirty {
            let queue = self.state.get_queue();
            let used_ring = GuestAddress(queue.used_ring());
            let size = u64::from(queue.size().max(1));
            // The used element written (8 bytes) and the used index (2 bytes).
            let element = used_ring.unchecked_add(4 + 8 * (u64::from(next_used) % size));
            dirty.mark(element, 8);
            dirty.mark(used_ring.unchecked_add(2), 2);
            if let Some(writable) = self.server.writable_by_head.get_mut(usize::from(head)) {
                let mut left = u64::from(used_len);
                for &(addr, len) in writable.iter() {
                    if left == 0 {
                        break;
                    }
                    let len = left.min(u64::from(len));
                    dirty.mark(addr, len);
                    left -= len;
                }
                writable.clear();
            }
        }
    }

    /// Signals the guest if entries were completed since the last signal and the
    /// ring's event index (or flags) say the guest wants it. Failures (a bad ring
    /// address, a closed call eventfd) are only logged.
    pub fn signal(&mut self) {
        if !std::mem::take(&mut self.completed_unsignalled) {
            return;
        }
        let mem: &GuestMemoryMmap<()> = self.mem;
        match self.queue().needs_notification(mem) {
            Ok(true) => {
                if let Err(e) = self.state.signal_used_queue() {
                    guest_error!("{}: cannot signal the guest: {e}", self.server.name);
                } else {
                    QueueStats::add(&self.server.hooks.stats.signals, 1);
                }
            }
            Ok(false) => {}
            Err(e) => guest_error!(
                "{}: cannot read the queue's event index: {e}",
                self.server.name
            ),
        }
    }

    /// Turns guest notifications (kicks) off while the device serves the ring.
    pub fn disable_notifications(&mut self) {
        let mem: &GuestMemoryMmap<()> = self.mem;
        if let Err(e) = self.queue().disable_notification(mem) {
            guest_error!("{}: cannot disable notifications: {e}", self.server.name);
        }
    }

    /// Turns guest notifications back on; true if entries arrived while they were
    /// off (serve them: no kick will come for them).
    pub fn enable_notifications(&mut self) -> bool {
        let mem: &GuestMemoryMmap<()> = self.mem;
        match self.queue().enable_notification(mem) {
            Ok(more) => more,
            Err(e) => {
                guest_error!("{}: cannot enable notifications: {e}", self.server.name);
                false
            }
        }
    }

    /// Asks for a kick only once the guest posts entries beyond the ones already
    /// on the ring (a device that looked at them all and needs more, as net rx
    /// does for a frame longer than the buffers posted). True if such entries
    /// came meanwhile.
    pub fn enable_notifications_past_available(&mut self) -> bool {
        let mem: &GuestMemoryMmap<()> = self.mem;
        let queue = self.queue();
        let rewound = queue.next_avail();
        let end = queue
            .avail_idx(mem, Ordering::Acquire)
            .map_or(rewound, |end| end.0);
        // With EVENT_IDX, the event index written is the next avail position.
        queue.set_next_avail(end);
        let more = queue.enable_notification(mem);
        queue.set_next_avail(rewound);
        match more {
            Ok(more) => more,
            Err(e) => {
                guest_error!("{}: cannot enable notifications: {e}", self.server.name);
                false
            }
        }
    }

    /// Whether the guest has made entries available that are not popped yet.
    pub fn has_available(&mut self) -> Result<bool, RingUnreadable> {
        let mem: &GuestMemoryMmap<()> = self.mem;
        let queue = self.queue();
        match queue.avail_idx(mem, Ordering::Acquire) {
            Ok(avail) => Ok(avail.0 != queue.next_avail()),
            Err(e) => {
                guest_error!("{}: cannot read the available ring: {e}", self.server.name);
                Err(RingUnreadable)
            }
        }
    }

    /// Pops and serves until the ring runs dry (or the device has no room, or
    /// admission says not now); true unless the ring cannot be read.
    fn drain<D: QueueDevice + ?Sized>(&mut self, device: &mut D) -> io::Result<bool> {
        loop {
            self.disable_notifications();
            let mut popped = 0usize;
            let mut readable = true;
            while device.has_room(self)? {
                match self.pop() {
                    Ok(Some(chain)) => {
                        popped += 1;
                        device.serve(self, chain);
                    }
                    Ok(None) => break,
                    Err(RingUnreadable) => {
                        readable = false;
                        break;
                    }
                }
            }
            device.end_batch(self)?;
            if popped == 0 || !readable || self.throttled {
                return Ok(readable);
            }
        }
    }

    /// Spins for up to `poll` waiting for new entries, letting the device complete
    /// work meanwhile; true if entries came.
    fn poll_for_more<D: QueueDevice + ?Sized>(
        &mut self,
        device: &mut D,
        poll: std::time::Duration,
    ) -> bool {
        let deadline = Instant::now() + poll;
        while Instant::now() < deadline {
            device.poll_completions(self);
            self.signal();
            match self.has_available() {
                Ok(true) => return true,
                Ok(false) => {}
                Err(RingUnreadable) => return false,
            }
            std::hint::spin_loop();
        }
        false
    }

    fn serve_until_idle<D: QueueDevice + ?Sized>(
        &mut self,
        device: &mut D,
        poll: std::time::Duration,
    ) -> io::Result<()> {
        let mut hold = Hold::default();
        loop {
            let readable = self.drain(device)?;
            if !readable || self.throttled {
                // Nothing more can be taken until the guest kicks again (it fixed
                // its ring, or admission lets the queue go on).
                self.signal_after(&mut hold);
                self.enable_notifications();
                return Ok(());
            }
            if self.hold_signal(device, &mut hold) {
                continue;
            }
            // Tell the guest what finished before waiting for more.
            self.signal_after(&mut hold);
            // Watch the ring a while longer with notifications still off, so a
            // driver that sends again soon needs no kick and the worker no wake-up.
            if !poll.is_zero() && self.poll_for_more(device, poll) {
                continue;
            }
            if !self.enable_notifications() {
                return Ok(());
            }
            // More arrived while notifications were off.
        }
    }

    /// Holds back the signal for what just completed for one coalescing window,
    /// notifications still off, while the guest may be submitting more: true if
    /// new requests came (serve them; their answers share the signal). False if
    /// there is nothing to hold, the queue is not holding now, the window caught
    /// nothing, or the hold reached its cap: signal now.
    fn hold_signal<D: QueueDevice + ?Sized>(&mut self, device: &mut D, hold: &mut Hold) -> bool {
        if !self.completed_unsignalled {
            return false;
        }
        let Some(window) = self.server.coalescer.next_window(hold) else {
            return false;
        };
        if !device.hold_window(window) {
            hold.caught();
            return false;
        }
        device.poll_completions(self);
        if self.has_available() == Ok(true) {
            hold.caught();
            return true;
        }
        false
    }

    /// Signals the guest and tells the coalescer how the hold, if any, went.
    fn signal_after(&mut self, hold: &mut Hold) {
        if !self.completed_unsignalled {
            return;
        }
        self.server.coalescer.signalled(hold);
        self.signal();
    }
}
