//! The driver side of a split virtqueue, written by us into guest memory.
//!
//! Layout (virtio 1.x, all fields little-endian), `N` = queue size:
//!
//! | area | alignment | bytes | contents |
//! |---|---|---|---|
//! | descriptor table | 16 | 16 N | `{ addr: u64, len: u32, flags: u16, next: u16 }` |
//! | avail ring | 2 | 6 + 2 N | `flags: u16, idx: u16, ring: [u16; N], used_event: u16` |
//! | used ring | 4 | 6 + 8 N | `flags: u16, idx: u16, ring: [{ id: u32, len: u32 }; N], avail_event: u16` |
//!
//! We place each area on its own 64-byte cache lines (descriptor table page aligned),
//! so the driver-written avail ring and the device-written used ring do not share a
//! line.
//!
//! Ordering: descriptors and avail ring entries are written first, then the avail
//! index is stored with `Release`; the used index is loaded with `Acquire` before used
//! entries are read. A full fence separates "store avail idx" from "read avail_event /
//! used flags" (kick decision) and "store used_event" from "re-read used idx" (before
//! blocking), the two store-load pairs the device mirrors on its side.
//!
//! The managed API keeps a free list of descriptors and remembers, for each head in
//! flight, a caller token and how many descriptors to give back. The raw API
//! ([`Queue::write_desc`], [`Queue::push_avail`], [`Queue::set_avail_idx`], ...) writes
//! whatever it is given and does not touch that bookkeeping; use one or the other on a
//! queue (raw completions come back from [`Queue::pop_used`] with `token: None`).

use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::memory::GuestMem;
use super::{Error, Result};

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// Descriptor flag: the device writes this buffer.
pub const DESC_F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
/// Descriptor flag: the buffer is a table of descriptors.
pub const DESC_F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// Size of one descriptor in bytes.
pub const DESC_SIZE: u64 = 16;

/// Sizes and field offsets of a split ring of `size` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    pub size: u16,
}

impl RingLayout {
    /// Required alignment of the descriptor table.
    pub const DESC_ALIGN: u64 = 16;
    /// Required alignment of the avail ring.
    pub const AVAIL_ALIGN: u64 = 2;
    /// Required alignment of the used ring.
    pub const USED_ALIGN: u64 = 4;

    /// Checks that `size` is a power of two in 1..=32768.
    pub fn new(size: u16) -> Result<Self> {
        if size == 0 || !size.is_power_of_two() {
            return Err(Error::BadQueueSize(size));
        }
        Ok(RingLayout { size })
    }

    pub fn desc_table_bytes(&self) -> u64 {
        DESC_SIZE * u64::from(self.size)
    }

    /// Avail ring bytes, including `used_event`.
    pub fn avail_bytes(&self) -> u64 {
        6 + 2 * u64::from(self.size)
    }

    /// Used ring bytes, including `avail_event`.
    pub fn used_bytes(&self) -> u64 {
        6 + 8 * u64::from(self.size)
    }

    /// Offset of `avail.ring[i]` from the start of the avail ring.
    pub fn avail_entry(&self, i: u16) -> u64 {
        4 + 2 * u64::from(i)
    }

    /// Offset of `used_event` from the start of the avail ring.
    pub fn used_event(&self) -> u64 {
        4 + 2 * u64::from(self.size)
    }

    /// Offset of `used.ring[i]` from the start of the used ring.
    pub fn used_entry(&self, i: u16) -> u64 {
        4 + 8 * u64::from(i)
    }

    /// Offset of `avail_event` from the start of the used ring.
    pub fn avail_event(&self) -> u64 {
        4 + 8 * u64::from(self.size)
    }
}

/// Guest physical addresses of a queue's three areas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingAddrs {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

/// One descriptor exactly as it sits in memory (values in host order here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawDesc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// The in-memory, little-endian form of a descriptor.
#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct DescLe {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl RawDesc {
    fn to_le(self) -> DescLe {
        DescLe {
            addr: self.addr.to_le(),
            len: self.len.to_le(),
            flags: self.flags.to_le(),
            next: self.next.to_le(),
        }
    }

    /// The 16 bytes of this descriptor in memory order.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    /// Parses 16 bytes in memory order.
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        RawDesc {
            addr: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }

    /// Writes this descriptor at any guest address (e.g. into a hand-made indirect
    /// table).
    pub fn write_at(self, mem: &GuestMem, addr: u64) -> Result<()> {
        mem.write(addr, &self.to_bytes())
    }

    /// Reads a descriptor from any guest address.
    pub fn read_at(mem: &GuestMem, addr: u64) -> Result<Self> {
        let mut b = [0u8; 16];
        mem.read(addr, &mut b)?;
        Ok(Self::from_bytes(&b))
    }
}

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    /// Guest physical address.
    pub addr: u64,
    pub len: u32,
    /// The device writes this buffer (`VRING_DESC_F_WRITE`).
    pub device_writable: bool,
}

impl Buf {
    /// A buffer the device reads.
    pub fn readable(addr: u64, len: u32) -> Self {
        Buf {
            addr,
            len,
            device_writable: false,
        }
    }

    /// A buffer the device writes.
    pub fn writable(addr: u64, len: u32) -> Self {
        Buf {
            addr,
            len,
            device_writable: true,
        }
    }
}

/// A completion reaped from the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// The head descriptor index the device returned.
    pub id: u32,
    /// Bytes the device says it wrote.
    pub len: u32,
    /// The token given to [`Queue::add`], or `None` if `id` was not a chain in flight
    /// (raw API, or a misbehaving device).
    pub token: Option<u64>,
}

/// Counters of one queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Chains added with [`Queue::add`].
    pub added: u64,
    /// Completions reaped.
    pub completed: u64,
    /// Publishes that made new entries visible.
    pub publishes: u64,
    /// Kicks written to the kick eventfd.
    pub kicks: u64,
    /// Publishes after which the device did not want a kick.
    pub kicks_suppressed: u64,
    /// Times [`Queue::wait_used`] blocked in poll.
    pub sleeps: u64,
}

#[derive(Clone, Copy, Debug)]
struct Inflight {
    token: u64,
    ndesc: u16,
}

/// The driver side of one split virtqueue. See the [module docs](self).
pub struct Queue {
    mem: Arc<GuestMem>,
    index: u16,
    layout: RingLayout,
    mask: u16,
    addrs: RingAddrs,
    // Host addresses of the three areas (inside `mem`'s mapping, which `mem` keeps).
    desc_host: usize,
    avail_host: usize,
    used_host: usize,
    // One indirect table of `max_indirect` entries per descriptor index.
    indirect_gpa: u64,
    indirect_host: usize,
    max_indirect: u16,
    kick: EventFd,
    call: EventFd,
    event_idx: bool,
    free: Vec<u16>,
    next: Vec<u16>,
    inflight: Vec<Option<Inflight>>,
    /// Entries written to the avail ring (shadow of the index we will publish).
    avail_idx: u16,
    /// Avail index last stored to memory.
    published: u16,
    /// Next used entry to reap.
    last_used: u16,
    stats: QueueStats,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("index", &self.index)
            .field("size", &self.layout.size)
            .field("addrs", &self.addrs)
            .field("event_idx", &self.event_idx)
            .field("free", &self.free.len())
            .field("avail_idx", &self.avail_idx)
            .field("last_used", &self.last_used)
            .finish()
    }
}

/// `vring_need_event` of the virtio spec: whether moving an index from `old` to `new`
/// crosses `event`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// The descriptor for one buffer of a chain; `next` is the following entry's
/// index, or None for the chain's last buffer.
fn buf_desc(b: &Buf, next: Option<u16>) -> RawDesc {
    RawDesc {
        addr: b.addr,
        len: b.len,
        flags: if b.device_writable { DESC_F_WRITE } else { 0 }
            | if next.is_some() { DESC_F_NEXT } else { 0 },
        next: next.unwrap_or(0),
    }
}

impl Queue {
    /// Allocates (zeroed) rings of `size` entries in `mem`, indirect tables of
    /// `max_indirect` entries per descriptor (0 for none) and fresh kick and call
    /// eventfds. The queue is not yet known to any backend: [`super::Driver::setup_queue`]
    /// does that, or a test sends the vring messages itself using [`Queue::addrs`].
    ///
    /// The memory is not returned to the allocator when the queue is dropped (the
    /// backend may still be using it).
    pub fn new(
        mem: Arc<GuestMem>,
        index: u16,
        size: u16,
        event_idx: bool,
        max_indirect: u16,
    ) -> Result<Self> {
        let layout = RingLayout::new(size)?;
        let desc = mem.alloc_zeroed(layout.desc_table_bytes(), 4096)?;
        let avail = mem.alloc_zeroed(layout.avail_bytes().next_multiple_of(64), 64)?;
        let used = mem.alloc_zeroed(layout.used_bytes().next_multiple_of(64), 64)?;
        let (indirect_gpa, indirect_host) = if max_indirect > 0 {
            let bytes = u64::from(size) * u64::from(max_indirect) * DESC_SIZE;
            let gpa = mem.alloc_zeroed(bytes, 64)?;
            (gpa, mem.host_ptr(gpa, bytes)? as usize)
        } else {
            (0, 0)
        };
        let desc_host = mem.host_ptr(desc, layout.desc_table_bytes())? as usize;
        let avail_host = mem.host_ptr(avail, layout.avail_bytes())? as usize;
        let used_host = mem.host_ptr(used, layout.used_bytes())? as usize;
        let kick = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        let call = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        Ok(Queue {
            mem,
            index,
            layout,
            mask: size - 1,
            addrs: RingAddrs { desc, avail, used },
            desc_host,
            avail_host,
            used_host,
            indirect_gpa,
            indirect_host,
            max_indirect,
            kick,
            call,
            event_idx,
            free: (0..size).rev().collect(),
            next: vec![0; usize::from(size)],
            inflight: vec![None; usize::from(size)],
            avail_idx: 0,
            published: 0,
            last_used: 0,
            stats: QueueStats::default(),
        })
    }

    // ---- field access -------------------------------------------------------------

    fn avail_u16(&self, off: u64) -> &AtomicU16 {
        debug_assert!(off + 2 <= self.layout.avail_bytes() && off.is_multiple_of(2));
        // SAFETY: `off` is one of the layout's field offsets, inside the avail ring that
        // `new` checked lies in `mem`'s mapping; the ring is 64-byte aligned and the
        // offset even, so the u16 is aligned. `self.mem` keeps the mapping alive for
        // the life of the reference. The memory is shared with the backend process,
        // which is why it is only accessed atomically.
        unsafe { &*((self.avail_host + off as usize) as *const AtomicU16) }
    }

    fn used_u16(&self, off: u64) -> &AtomicU16 {
        debug_assert!(off + 2 <= self.layout.used_bytes() && off.is_multiple_of(2));
        // SAFETY: as in `avail_u16`, for the used ring.
        unsafe { &*((self.used_host + off as usize) as *const AtomicU16) }
    }

    fn write_desc_le(&self, host: usize, d: RawDesc) {
        // SAFETY: callers pass the host address of a descriptor slot inside the
        // descriptor table or an indirect table, both allocated in `new` inside the
        // mapping `self.mem` keeps alive, and 16-byte aligned. The backend only reads
        // descriptors; the volatile store keeps the write from being elided.
        unsafe { std::ptr::write_volatile(host as *mut DescLe, d.to_le()) }
    }

    fn desc_slot(&self, i: u16) -> usize {
        self.desc_host + usize::from(i & self.mask) * DESC_SIZE as usize
    }

    /// Queue index (on the backend).
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.layout.size
    }

    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    /// Guest addresses of the descriptor table, avail ring and used ring.
    pub fn addrs(&self) -> RingAddrs {
        self.addrs
    }

    /// The guest memory the queue lives in.
    pub fn memory(&self) -> &Arc<GuestMem> {
        &self.mem
    }

    /// Whether `VIRTIO_RING_F_EVENT_IDX` rules notifications on this queue.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Longest chain [`Queue::add`] accepts as one indirect table.
    pub fn max_indirect(&self) -> u16 {
        self.max_indirect
    }

    /// The eventfd we write to kick the backend (SET_VRING_KICK).
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// The eventfd the backend writes when it wants our attention (SET_VRING_CALL).
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// Descriptors on the free list.
    pub fn free_descs(&self) -> usize {
        self.free.len()
    }

    /// Chains added with [`Queue::add`] and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.layout.size as usize - self.free.len()
    }

    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    // ---- managed API --------------------------------------------------------------

    /// Places `bufs` as one chain: as direct descriptors linked with `NEXT`, or, with
    /// `indirect`, as one descriptor pointing to a table of them. Writes the head into
    /// the avail ring but does not publish it (see [`Queue::publish`]), so that many
    /// chains can go out with one index store and one kick. Returns the head index.
    pub fn add(&mut self, bufs: &[Buf], indirect: bool, token: u64) -> Result<u16> {
        let n = bufs.len();
        if n == 0 {
            return Err(Error::EmptyChain);
        }
        let head = if indirect {
            if n > usize::from(self.max_indirect) {
                return Err(Error::ChainTooLong {
                    len: n,
                    max: usize::from(self.max_indirect),
                });
            }
            let head = self
                .free
                .pop()
                .ok_or(Error::QueueFull { wanted: 1, free: 0 })?;
            let table_off = u64::from(head) * u64::from(self.max_indirect) * DESC_SIZE;
            for (i, b) in bufs.iter().enumerate() {
                let d = buf_desc(b, (i + 1 < n).then_some((i + 1) as u16));
                let host = self.indirect_host + (table_off + i as u64 * DESC_SIZE) as usize;
                self.write_desc_le(host, d);
            }
            let d = RawDesc {
                addr: self.indirect_gpa + table_off,
                len: (n as u64 * DESC_SIZE) as u32,
                flags: DESC_F_INDIRECT,
                next: 0,
            };
            self.write_desc_le(self.desc_slot(head), d);
            self.inflight[usize::from(head)] = Some(Inflight { token, ndesc: 1 });
            head
        } else {
            if n > self.free.len() {
                return Err(Error::QueueFull {
                    wanted: n,
                    free: self.free.len(),
                });
            }
            // Build from the tail so each descriptor knows its successor.
            let mut next = 0u16;
            for (i, b) in bufs.iter().enumerate().rev() {
                let id = self
                    .free
                    .pop()
                    .ok_or(Error::QueueFull { wanted: n, free: 0 })?;
                let d = buf_desc(b, (i + 1 < n).then_some(next));
                self.write_desc_le(self.desc_slot(id), d);
                self.next[usize::from(id)] = next;
                next = id;
            }
            self.inflight[usize::from(next)] = Some(Inflight {
                token,
                ndesc: n as u16,
            });
            next
        };
        self.push_avail(head);
        self.stats.added += 1;
        Ok(head)
    }

    /// Stores the avail index so the backend sees every head added since the last
    /// publish, and says whether the backend asked to be kicked for them (EVENT_IDX:
    /// `avail_event` was crossed; otherwise `VRING_USED_F_NO_NOTIFY` is clear).
    /// Returns false if there was nothing new.
    pub fn publish(&mut self) -> bool {
        let old = self.published;
        let new = self.avail_idx;
        if old == new {
            return false;
        }
        // Release: descriptors and ring entries are visible before the index.
        self.avail_u16(2).store(new.to_le(), Ordering::Release);
        self.published = new;
        self.stats.publishes += 1;
        // The device may be checking for more work right now and about to sleep:
        // order our index store before reading its notification wishes.
        fence(Ordering::SeqCst);
        let kick = if self.event_idx {
            let ev = u16::from_le(
                self.used_u16(self.layout.avail_event())
                    .load(Ordering::Acquire),
            );
            need_event(ev, new, old)
        } else {
            let flags = u16::from_le(self.used_u16(0).load(Ordering::Acquire));
            flags & VRING_USED_F_NO_NOTIFY as u16 == 0
        };
        if !kick {
            self.stats.kicks_suppressed += 1;
        }
        kick
    }

    /// Writes the kick eventfd.
    pub fn kick(&mut self) -> Result<()> {
        self.stats.kicks += 1;
        self.kick.write(1).map_err(Error::EventFd)
    }

    /// [`Queue::publish`], then [`Queue::kick`] if the backend wants one. Returns
    /// whether it kicked.
    pub fn submit(&mut self) -> Result<bool> {
        if self.publish() {
            self.kick()?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Whether the backend has returned entries we have not reaped.
    pub fn has_used(&self) -> bool {
        u16::from_le(self.used_u16(2).load(Ordering::Acquire)) != self.last_used
    }

    /// Reaps one completion, returning its descriptors to the free list if it was a
    /// chain added with [`Queue::add`].
    pub fn pop_used(&mut self) -> Option<Used> {
        let used_idx = u16::from_le(self.used_u16(2).load(Ordering::Acquire));
        if used_idx == self.last_used {
            return None;
        }
        let off = self.layout.used_entry(self.last_used & self.mask);
        // SAFETY: `off` is the offset of a used element (8 bytes, 4-aligned because
        // the ring is 64-aligned and elements start at 4 + 8 i) inside the used ring
        // that `new` checked lies in the mapping `self.mem` keeps alive. The Acquire
        // load of the index above orders this read after the device's write.
        let (id, len) = unsafe {
            let p = (self.used_host + off as usize) as *const u32;
            (
                u32::from_le(std::ptr::read_volatile(p)),
                u32::from_le(std::ptr::read_volatile(p.add(1))),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        let token = self.release_chain(id);
        self.stats.completed += 1;
        Some(Used { id, len, token })
    }

    fn release_chain(&mut self, id: u32) -> Option<u64> {
        let head = u16::try_from(id).ok().filter(|&h| h < self.layout.size)?;
        let inflight = self.inflight[usize::from(head)].take()?;
        let mut d = head;
        for _ in 0..inflight.ndesc {
            self.free.push(d);
            d = self.next[usize::from(d)];
        }
        Some(inflight.token)
    }

    /// Asks the backend to signal the call eventfd for the next completion
    /// (EVENT_IDX: `used_event = last_used`; otherwise clears
    /// `VRING_AVAIL_F_NO_INTERRUPT`), followed by a full fence.
    pub fn enable_notifications(&mut self) {
        if self.event_idx {
            self.avail_u16(self.layout.used_event())
                .store(self.last_used.to_le(), Ordering::Relaxed);
        } else {
            self.avail_u16(0).store(0, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
    }

    /// Asks the backend not to signal (a hint it may ignore).
    pub fn disable_notifications(&mut self) {
        if self.event_idx {
            // An event index just behind us is crossed again only after a wrap.
            self.avail_u16(self.layout.used_event())
                .store(self.last_used.wrapping_sub(1).to_le(), Ordering::Relaxed);
        } else {
            self.avail_u16(0).store(
                (VRING_AVAIL_F_NO_INTERRUPT as u16).to_le(),
                Ordering::Relaxed,
            );
        }
    }

    /// Waits until the used ring has something to reap, blocking on the call eventfd
    /// (with notifications enabled) for at most `timeout`. Returns false on timeout.
    pub fn wait_used(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.has_used() {
                return Ok(true);
            }
            self.enable_notifications();
            if self.has_used() {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            self.stats.sleeps += 1;
            if poll_readable(self.call.as_raw_fd(), deadline - now)? {
                // Clear the counter; a signal racing with this read stays pending.
                let _ = self.call.read();
            }
        }
    }

    /// The next used element, waiting for one until `deadline`; `None` on timeout.
    pub fn next_used_by(&mut self, deadline: Instant) -> Result<Option<Used>> {
        loop {
            if let Some(used) = self.pop_used() {
                return Ok(Some(used));
            }
            let now = Instant::now();
            if now >= deadline || !self.wait_used(deadline - now)? {
                return Ok(None);
            }
        }
    }

    /// Reads and clears the call eventfd without blocking; returns its count.
    pub fn drain_call(&self) -> u64 {
        self.call.read().unwrap_or(0)
    }

    // ---- raw API ------------------------------------------------------------------

    /// Writes descriptor `index` of the table verbatim (any address, length, flags,
    /// next). Only `index` itself is checked (it must be inside the table).
    pub fn write_desc(&mut self, index: u16, d: RawDesc) -> Result<()> {
        if index >= self.layout.size {
            return Err(Error::BadDescIndex(index));
        }
        self.write_desc_le(self.desc_slot(index), d);
        Ok(())
    }

    /// Reads descriptor `index` of the table.
    pub fn read_desc(&self, index: u16) -> Result<RawDesc> {
        if index >= self.layout.size {
            return Err(Error::BadDescIndex(index));
        }
        RawDesc::read_at(&self.mem, self.addrs.desc + u64::from(index) * DESC_SIZE)
    }

    /// Writes `head` (any value, also out of range) into the next avail ring slot
    /// without publishing it.
    pub fn push_avail(&mut self, head: u16) {
        let off = self.layout.avail_entry(self.avail_idx & self.mask);
        self.avail_u16(off).store(head.to_le(), Ordering::Relaxed);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Stores `idx` as the avail index right away (e.g. more than a ring's worth
    /// ahead of the device), and takes it as our own shadow index.
    pub fn set_avail_idx(&mut self, idx: u16) {
        fence(Ordering::Release);
        self.avail_u16(2).store(idx.to_le(), Ordering::Release);
        self.avail_idx = idx;
        self.published = idx;
    }

    /// Our avail index (entries written, published or not).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// The device's used index as it is in memory now.
    pub fn used_idx(&self) -> u16 {
        u16::from_le(self.used_u16(2).load(Ordering::Acquire))
    }

    /// The next used entry [`Queue::pop_used`] will reap.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// The used element in ring slot `slot` (id, len).
    pub fn read_used(&self, slot: u16) -> Result<(u32, u32)> {
        if slot >= self.layout.size {
            return Err(Error::BadDescIndex(slot));
        }
        let addr = self.addrs.used + self.layout.used_entry(slot);
        Ok((
            self.mem.read_obj::<u32>(addr)?,
            self.mem.read_obj::<u32>(addr + 4)?,
        ))
    }

    /// The used ring's flags.
    pub fn used_flags(&self) -> u16 {
        u16::from_le(self.used_u16(0).load(Ordering::Acquire))
    }

    /// The device's `avail_event` (meaningful with EVENT_IDX).
    pub fn avail_event(&self) -> u16 {
        u16::from_le(
            self.used_u16(self.layout.avail_event())
                .load(Ordering::Acquire),
        )
    }

    /// Writes the avail ring's flags verbatim.
    pub fn set_avail_flags(&mut self, flags: u16) {
        self.avail_u16(0).store(flags.to_le(), Ordering::Release);
    }

    /// Writes `used_event` verbatim.
    pub fn set_used_event(&mut self, v: u16) {
        self.avail_u16(self.layout.used_event())
            .store(v.to_le(), Ordering::Release);
    }
}

/// Waits up to `timeout` for `fd` to become readable.
pub(crate) fn poll_readable(fd: i32, timeout: Duration) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `pfd` and `ts` are valid for the duration of the call and we pass a
    // count of one; a null signal mask means "do not change it".
    let r = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(Error::Poll(e));
    }
    Ok(r > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::DEFAULT_BASE;

    fn queue(size: u16, event_idx: bool) -> Queue {
        let mem = Arc::new(GuestMem::new(1 << 20, DEFAULT_BASE).unwrap());
        Queue::new(mem, 0, size, event_idx, 8).unwrap()
    }

    #[test]
    fn layout_sizes_and_offsets() {
        let l = RingLayout::new(256).unwrap();
        assert_eq!(l.desc_table_bytes(), 4096);
        assert_eq!(l.avail_bytes(), 6 + 512);
        assert_eq!(l.used_bytes(), 6 + 2048);
        assert_eq!(l.avail_entry(3), 10);
        assert_eq!(l.used_event(), 4 + 512);
        assert_eq!(l.used_entry(1), 12);
        assert_eq!(l.avail_event(), 4 + 2048);
        assert!(RingLayout::new(0).is_err());
        assert!(RingLayout::new(3).is_err());
        assert!(RingLayout::new(32768).is_ok());
    }

    #[test]
    fn desc_bytes_roundtrip() {
        let d = RawDesc {
            addr: 0x0102_0304_0506_0708,
            len: 0x1122_3344,
            flags: 0x0506,
            next: 0x0708,
        };
        let b = d.to_bytes();
        assert_eq!(b[0], 0x08);
        assert_eq!(b[8], 0x44);
        assert_eq!(b[12], 0x06);
        assert_eq!(b[14], 0x08);
        assert_eq!(RawDesc::from_bytes(&b), d);
    }

    #[test]
    fn need_event_matches_spec() {
        // Crossing the event index from old to new asks for a notification.
        assert!(need_event(0, 1, 0));
        assert!(need_event(5, 10, 0));
        assert!(!need_event(10, 10, 0));
        assert!(!need_event(3, 10, 5));
        // Wrap-around.
        assert!(need_event(u16::MAX, 0, u16::MAX));
        assert!(need_event(u16::MAX, 2, u16::MAX - 1));
    }

    #[test]
    fn add_direct_chain_writes_linked_descs_and_avail() {
        let mut q = queue(8, false);
        let mem = q.memory().clone();
        let bufs = [
            Buf::readable(DEFAULT_BASE + 0x8000, 16),
            Buf::writable(DEFAULT_BASE + 0x9000, 512),
            Buf::writable(DEFAULT_BASE + 0xa000, 1),
        ];
        let head = q.add(&bufs, false, 42).unwrap();
        assert_eq!(q.free_descs(), 5);
        // Walk the chain as a device would.
        let mut d = q.read_desc(head).unwrap();
        let mut seen = vec![d];
        while d.flags & DESC_F_NEXT != 0 {
            d = q.read_desc(d.next).unwrap();
            seen.push(d);
        }
        assert_eq!(seen.len(), 3);
        for (s, b) in seen.iter().zip(bufs.iter()) {
            assert_eq!(s.addr, b.addr);
            assert_eq!(s.len, b.len);
            assert_eq!(s.flags & DESC_F_WRITE != 0, b.device_writable);
        }
        // Not visible before publish.
        let a = q.addrs();
        assert_eq!(mem.read_obj::<u16>(a.avail + 2).unwrap(), 0);
        assert_eq!(mem.read_obj::<u16>(a.avail + 4).unwrap(), head);
        assert!(q.publish(), "no NO_NOTIFY flag, so a kick is wanted");
        assert_eq!(mem.read_obj::<u16>(a.avail + 2).unwrap(), 1);
        assert!(!q.publish(), "nothing new");
    }

    #[test]
    fn add_indirect_uses_one_desc() {
        let mut q = queue(4, false);
        let bufs = [
            Buf::readable(DEFAULT_BASE + 0x8000, 16),
            Buf::writable(DEFAULT_BASE + 0x9000, 1),
        ];
        let head = q.add(&bufs, true, 7).unwrap();
        assert_eq!(q.free_descs(), 3);
        let d = q.read_desc(head).unwrap();
        assert_eq!(d.flags, DESC_F_INDIRECT);
        assert_eq!(d.len, 32);
        let t0 = RawDesc::read_at(q.memory(), d.addr).unwrap();
        let t1 = RawDesc::read_at(q.memory(), d.addr + 16).unwrap();
        assert_eq!(t0.flags, DESC_F_NEXT);
        assert_eq!(t0.next, 1);
        assert_eq!(t1.flags, DESC_F_WRITE);
        assert_eq!(t1.addr, DEFAULT_BASE + 0x9000);
        let too_long = [Buf::readable(DEFAULT_BASE, 1); 9];
        assert!(matches!(
            q.add(&too_long, true, 0),
            Err(Error::ChainTooLong { len: 9, max: 8 })
        ));
    }

    /// Plays the device: returns `head` with `len` in the used ring.
    fn device_complete(q: &Queue, head: u16, len: u32) {
        let mem = q.memory();
        let a = q.addrs();
        let idx: u16 = mem.read_obj(a.used + 2).unwrap();
        let slot = idx & (q.size() - 1);
        mem.write_obj(a.used + 4 + 8 * u64::from(slot), u32::from(head))
            .unwrap();
        mem.write_obj(a.used + 8 + 8 * u64::from(slot), len)
            .unwrap();
        mem.write_obj(a.used + 2, idx.wrapping_add(1)).unwrap();
    }

    #[test]
    fn reap_frees_descriptors_and_returns_token() {
        let mut q = queue(4, false);
        let b = [
            Buf::readable(DEFAULT_BASE, 1),
            Buf::writable(DEFAULT_BASE, 1),
        ];
        let h1 = q.add(&b, false, 1).unwrap();
        let h2 = q.add(&b, false, 2).unwrap();
        assert!(matches!(
            q.add(&b, false, 3),
            Err(Error::QueueFull { wanted: 2, free: 0 })
        ));
        q.publish();
        assert!(q.pop_used().is_none());
        device_complete(&q, h2, 9);
        device_complete(&q, h1, 8);
        assert_eq!(
            q.pop_used(),
            Some(Used {
                id: u32::from(h2),
                len: 9,
                token: Some(2)
            })
        );
        assert_eq!(q.free_descs(), 2);
        assert_eq!(q.pop_used().unwrap().token, Some(1));
        assert_eq!(q.free_descs(), 4);
        // A bogus id from the device is reported, not trusted.
        device_complete(&q, 3, 0);
        assert_eq!(q.pop_used().unwrap().token, None);
        assert_eq!(q.free_descs(), 4);
        // Fill and drain many times to exercise index wrap-around.
        for i in 0..70_000u64 {
            let h = q.add(&b, i % 2 == 0, i).unwrap();
            q.publish();
            device_complete(&q, h, 0);
            assert_eq!(q.pop_used().unwrap().token, Some(i));
        }
        assert_eq!(q.free_descs(), 4);
    }

    #[test]
    fn event_idx_kick_suppression_and_used_event() {
        let mut q = queue(8, true);
        let mem = q.memory().clone();
        let a = q.addrs();
        let b = [Buf::readable(DEFAULT_BASE, 1)];
        // avail_event = 0: publishing 0 -> 1 crosses it.
        q.add(&b, false, 0).unwrap();
        assert!(q.publish());
        // Device says "kick me when you pass index 5".
        mem.write_obj(a.used + 4 + 8 * 8, 5u16).unwrap();
        q.add(&b, false, 0).unwrap();
        assert!(!q.publish(), "1 -> 2 does not cross 5");
        for _ in 0..4 {
            q.add(&b, false, 0).unwrap();
        }
        assert!(q.publish(), "2 -> 6 crosses 5");
        assert_eq!(q.stats().kicks_suppressed, 1);
        q.enable_notifications();
        assert_eq!(mem.read_obj::<u16>(a.avail + 4 + 2 * 8).unwrap(), 0);
    }

    #[test]
    fn no_notify_flag_suppresses_kick() {
        let mut q = queue(8, false);
        let a = q.addrs();
        q.memory()
            .write_obj(a.used, VRING_USED_F_NO_NOTIFY as u16)
            .unwrap();
        q.add(&[Buf::readable(DEFAULT_BASE, 1)], false, 0).unwrap();
        assert!(!q.publish());
    }

    #[test]
    fn wait_times_out_and_wakes() {
        let mut q = queue(8, true);
        let t = Instant::now();
        assert!(!q.wait_used(Duration::from_millis(20)).unwrap());
        assert!(t.elapsed() >= Duration::from_millis(20));
        let h = q.add(&[Buf::readable(DEFAULT_BASE, 1)], false, 0).unwrap();
        q.publish();
        device_complete(&q, h, 0);
        q.call_fd().write(1).unwrap();
        assert!(q.wait_used(Duration::from_secs(1)).unwrap());
    }

    #[test]
    fn raw_api_writes_anything() {
        let mut q = queue(4, false);
        let evil = RawDesc {
            addr: u64::MAX - 3,
            len: u32::MAX,
            flags: DESC_F_NEXT | DESC_F_INDIRECT,
            next: 0,
        };
        q.write_desc(0, evil).unwrap();
        assert_eq!(q.read_desc(0).unwrap(), evil);
        assert!(q.write_desc(4, evil).is_err());
        q.push_avail(999);
        q.publish();
        let a = q.addrs();
        assert_eq!(q.memory().read_obj::<u16>(a.avail + 4).unwrap(), 999);
        q.set_avail_idx(40000);
        assert_eq!(q.memory().read_obj::<u16>(a.avail + 2).unwrap(), 40000);
    }
}
