//! The queue server against a split ring in test memory, with a device that
//! completes some chains at once and keeps others for later, as blk does.

use std::sync::{Arc, Mutex};

use vhost_user_backend::VringT;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap,
};

use super::*;
use crate::lifecycle::Vring;

const SIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

struct Ring {
    mem: Arc<GuestMemoryMmap<()>>,
    vring: Vring,
    avail_idx: u16,
}

impl Ring {
    fn new() -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let atomic = GuestMemoryAtomic::new(mem);
        let vring = Vring::new(atomic.clone(), SIZE).unwrap();
        vring.set_queue_size(SIZE);
        vring.set_queue_info(DESC, AVAIL, USED).unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        Ring {
            mem: atomic.memory().into_inner(),
            vring,
            avail_idx: 0,
        }
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(DESC + 16 * u64::from(i));
        self.mem.write_obj(addr, at).unwrap();
        self.mem.write_obj(len, at.unchecked_add(8)).unwrap();
        self.mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        self.mem.write_obj(next, at.unchecked_add(14)).unwrap();
    }

    /// Makes head `head` available.
    fn offer(&mut self, head: u16) {
        offer(&self.mem, &mut self.avail_idx, head);
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    /// Used element `i`: (head, length).
    fn used(&self, i: u16) -> (u32, u32) {
        let at = GuestAddress(USED + 4 + 8 * u64::from(i));
        (
            self.mem.read_obj(at).unwrap(),
            self.mem.read_obj(at.unchecked_add(4)).unwrap(),
        )
    }
}

/// Makes head `head` available at `avail_idx`, and moves that on.
fn offer(mem: &GuestMemoryMmap<()>, avail_idx: &mut u16, head: u16) {
    let slot = AVAIL + 4 + 2 * u64::from(*avail_idx % SIZE);
    mem.write_obj(head, GuestAddress(slot)).unwrap();
    *avail_idx = avail_idx.wrapping_add(1);
    mem.write_obj(*avail_idx, GuestAddress(AVAIL + 2)).unwrap();
}

/// Completes a chain at once with its writable length, unless its first byte
/// says "later" (1): then it keeps the head until `finish_held`.
#[derive(Default)]
struct Echo {
    served: Vec<u16>,
    held: Vec<u16>,
    room: usize,
}

impl QueueDevice for Echo {
    fn serve(&mut self, queue: &mut ActiveQueue<'_>, chain: Chain<'_>) {
        let head = chain.head_index();
        self.served.push(head);
        let mem = queue.memory();
        let mut readable = IoVecs::default();
        let mut writable = IoVecs::default();
        for d in chain {
            let list = if d.is_write_only() {
                &mut writable
            } else {
                &mut readable
            };
            list.push_descriptor(mem, &d).unwrap();
        }
        let mut first = [0u8];
        if readable.copy_to_slice(0, &mut first) && first[0] == 1 {
            self.held.push(head);
            return;
        }
        let len = writable.copy_from_slice(&vec![0xab; writable.len()]);
        queue.complete(head, u32::try_from(len).unwrap());
    }

    fn has_room(&mut self, _queue: &mut ActiveQueue<'_>) -> std::io::Result<bool> {
        Ok(self.room == 0 || self.held.len() < self.room)
    }
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
}

impl InflightLog for Recorder {
    fn popped(&self, head: u16) {
        self.events.lock().unwrap().push(format!("popped {head}"));
    }
    fn completed(&self, head: u16) {
        self.events
            .lock()
            .unwrap()
            .push(format!("completed {head}"));
    }
}

impl DirtyLog for Recorder {
    fn mark(&self, addr: GuestAddress, len: u64) {
        self.events
            .lock()
            .unwrap()
            .push(format!("dirty {:#x}+{len}", addr.0));
    }
}

struct Later;

impl Admission for Later {
    fn admit(&self, stats: &QueueStats) -> Admit {
        // Two requests, then hold the queue.
        if stats.popped.load(std::sync::atomic::Ordering::Relaxed) < 2 {
            Admit::Yes
        } else {
            Admit::Later(std::time::Duration::from_millis(1))
        }
    }
}

#[test]
fn a_kick_serves_every_available_chain_and_drops_heads_outside_the_queue() {
    let mut ring = Ring::new();
    ring.desc(0, 0x10000, 16, F_NEXT, 1);
    ring.desc(1, 0x11000, 100, F_WRITE, 0);
    ring.desc(2, 0x12000, 8, F_WRITE, 0);
    ring.offer(0);
    ring.offer(SIZE + 3); // outside the queue
    ring.offer(2);
    let mut server = QueueServer::new("test", Poller::off());
    let mut device = Echo::default();
    server.serve(&mut device, &ring.vring, &ring.mem).unwrap();
    assert_eq!(device.served, [0, 2]);
    assert_eq!(ring.used_idx(), 2);
    assert_eq!(ring.used(0), (0, 100));
    assert_eq!(ring.used(1), (2, 8));
    assert_eq!(
        ring.mem.read_obj::<u8>(GuestAddress(0x11063)).unwrap(),
        0xab
    );
    assert_eq!(
        ring.mem.read_obj::<u8>(GuestAddress(0x11064)).unwrap(),
        0,
        "nothing past the buffer"
    );
    let stats = server.stats();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        (
            get(&stats.popped),
            get(&stats.completed),
            get(&stats.dropped),
            get(&stats.used_bytes)
        ),
        (2, 2, 1, 108)
    );
    // One interrupt for the batch; a kick that finds nothing sends none.
    assert_eq!(get(&stats.signals), 1);
    server.serve(&mut device, &ring.vring, &ring.mem).unwrap();
    assert_eq!(get(&server.stats().signals), 1);
}

#[test]
fn chains_completed_later_are_tracked_and_their_written_pages_marked() {
    let mut ring = Ring::new();
    let log = Arc::new(Recorder::default());
    let mut server = QueueServer::new("test", Poller::off());
    server.set_hooks(QueueHooks {
        inflight: Some(log.clone()),
        dirty: Some(log.clone()),
        ..Default::default()
    });
    // Head 4: "later", with 2 writable buffers; head 6: at once.
    ring.mem.write_obj(1u8, GuestAddress(0x10000)).unwrap();
    ring.desc(4, 0x10000, 1, F_NEXT, 5);
    ring.desc(5, 0x20000, 0x3000, F_WRITE | F_NEXT, 7);
    ring.desc(7, 0x30000, 0x100, F_WRITE, 0);
    ring.desc(6, 0x40000, 0x10, F_WRITE, 0);
    ring.offer(4);
    ring.offer(6);
    let mut device = Echo::default();
    server.serve(&mut device, &ring.vring, &ring.mem).unwrap();
    assert_eq!(device.held, [4]);
    assert_eq!(ring.used_idx(), 1);
    assert_eq!(server.stats().in_flight(), 1);
    // The device finishes head 4 with 0x3010 bytes written (into both buffers).
    {
        let mut state = ring.vring.get_mut();
        let mut queue = server.activate(&mut state, &ring.mem);
        queue.complete(4, 0x3010);
        queue.signal();
    }
    assert_eq!(ring.used(1), (4, 0x3010));
    assert_eq!(server.stats().in_flight(), 0);
    let events = log.events.lock().unwrap().clone();
    assert_eq!(
        events,
        [
            "popped 4",
            "popped 6",
            "completed 6",
            "dirty 0x2004+8",
            "dirty 0x2002+2",
            "dirty 0x40000+16",
            "completed 4",
            "dirty 0x200c+8",
            "dirty 0x2002+2",
            "dirty 0x20000+12288",
            "dirty 0x30000+16",
        ]
    );
}

#[test]
fn admission_holds_the_queue_and_put_back_chains_are_popped_again() {
    let mut ring = Ring::new();
    for i in 0..4 {
        ring.desc(i, 0x10000 + 0x100 * u64::from(i), 4, F_WRITE, 0);
        ring.offer(i);
    }
    let mut server = QueueServer::new("test", Poller::off());
    server.set_hooks(QueueHooks {
        admission: Some(Arc::new(Later)),
        ..Default::default()
    });
    let mut device = Echo::default();
    server.serve(&mut device, &ring.vring, &ring.mem).unwrap();
    assert_eq!(device.served, [0, 1], "admission let two through");
    assert_eq!(ring.used_idx(), 2);
    assert!(
        server
            .stats()
            .throttled
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );

    // Without admission: pop one, put it back, and it comes again.
    server.set_hooks(QueueHooks::default());
    let mut state = ring.vring.get_mut();
    let mut queue = server.activate(&mut state, &ring.mem);
    let chain = queue.pop().unwrap().unwrap();
    assert_eq!(chain.head_index(), 2);
    queue.put_back(2);
    assert_eq!(queue.pop().unwrap().unwrap().head_index(), 2);
    assert_eq!(queue.pop().unwrap().unwrap().head_index(), 3);
    assert!(queue.pop().unwrap().is_none());
}

#[test]
fn an_unreadable_avail_ring_ends_the_round_without_spinning() {
    let ring = Ring::new();
    // An avail index more than a queue ahead of the device: impossible.
    ring.mem
        .write_obj(SIZE * 3, GuestAddress(AVAIL + 2))
        .unwrap();
    let mut server = QueueServer::new("test", Poller::fixed(std::time::Duration::from_micros(50)));
    let mut device = Echo::default();
    server.serve(&mut device, &ring.vring, &ring.mem).unwrap();
    assert!(device.served.is_empty());
    assert_eq!(ring.used_idx(), 0);
}

/// A guest that goes on submitting while the queue holds its signal: each time
/// the server looks for finished work after a hold window, it posts head
/// `next` (a 4-byte writable buffer), `posts` times in all.
struct BusyGuest {
    echo: Echo,
    mem: Arc<GuestMemoryMmap<()>>,
    avail_idx: u16,
    posts: u16,
    windows: usize,
}

impl BusyGuest {
    fn new(ring: &Ring, posts: u16) -> Self {
        for i in 0..SIZE {
            ring.desc(i, 0x10000 + 0x100 * u64::from(i), 4, F_WRITE, 0);
        }
        BusyGuest {
            echo: Echo::default(),
            mem: ring.mem.clone(),
            avail_idx: ring.avail_idx,
            posts,
            windows: 0,
        }
    }
}

impl QueueDevice for BusyGuest {
    fn serve(&mut self, queue: &mut ActiveQueue<'_>, chain: Chain<'_>) {
        self.echo.serve(queue, chain);
    }

    fn poll_completions(&mut self, _queue: &mut ActiveQueue<'_>) {
        self.windows += 1;
        self.post();
    }
}

impl BusyGuest {
    /// Posts the guest's next request, if it has one left.
    fn post(&mut self) {
        if self.posts > 0 {
            self.posts -= 1;
            let head = self.avail_idx % SIZE;
            offer(&self.mem, &mut self.avail_idx, head);
        }
    }
}

fn signals(server: &QueueServer) -> u64 {
    server
        .stats()
        .signals
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn coalescing_answers_a_guest_that_keeps_submitting_with_one_signal() {
    let mut ring = Ring::new();
    let mut guest = BusyGuest::new(&ring, 3);
    ring.offer(0);
    guest.avail_idx = ring.avail_idx;
    let window = std::time::Duration::from_micros(100);
    let mut server =
        QueueServer::new("test", Poller::off()).with_coalescing(Coalescer::adaptive(window));
    server.serve(&mut guest, &ring.vring, &ring.mem).unwrap();
    assert_eq!(guest.echo.served, [0, 1, 2, 3], "what came during the hold");
    assert_eq!(ring.used_idx(), 4);
    assert_eq!(signals(&server), 1, "one interrupt for the four");
    assert_eq!(guest.windows, 4, "the fourth window caught nothing: signal");

    // Without coalescing each kick's answer is signalled at once.
    let mut ring = Ring::new();
    let mut guest = BusyGuest::new(&ring, 3);
    ring.offer(0);
    let mut server = QueueServer::new("test", Poller::off());
    server.serve(&mut guest, &ring.vring, &ring.mem).unwrap();
    assert_eq!((guest.echo.served.len(), signals(&server)), (1, 1));
    assert_eq!(guest.windows, 0);
}

#[test]
fn a_guest_that_waits_for_its_answer_is_answered_at_once_after_one_useless_hold() {
    let mut ring = Ring::new();
    let mut guest = BusyGuest::new(&ring, 0);
    let window = std::time::Duration::from_micros(100);
    let mut server =
        QueueServer::new("test", Poller::off()).with_coalescing(Coalescer::adaptive(window));
    ring.offer(0);
    server.serve(&mut guest, &ring.vring, &ring.mem).unwrap();
    assert_eq!(
        (signals(&server), guest.windows),
        (1, 1),
        "one window, then the signal"
    );
    // The guest was waiting: the next answers are not held ...
    for i in 1..=Coalescer::REST_EPISODES {
        ring.offer(u16::try_from(i).unwrap() % SIZE);
        server.serve(&mut guest, &ring.vring, &ring.mem).unwrap();
        assert_eq!(guest.windows, 1);
    }
    assert_eq!(signals(&server), u64::from(Coalescer::REST_EPISODES) + 1);
    // ... and then holding is tried again.
    ring.offer(0);
    server.serve(&mut guest, &ring.vring, &ring.mem).unwrap();
    assert_eq!(guest.windows, 2);
}

#[test]
fn a_guest_that_never_stops_submitting_is_still_signalled_within_the_cap() {
    let mut ring = Ring::new();
    let posts = 3 * u16::try_from(Coalescer::CAP_WINDOWS).unwrap();
    let mut guest = BusyGuest::new(&ring, posts);
    ring.offer(0);
    guest.avail_idx = ring.avail_idx;
    let window = std::time::Duration::from_micros(50);
    let mut server =
        QueueServer::new("test", Poller::off()).with_coalescing(Coalescer::adaptive(window));
    // A serve ends at the cap; the guest's next request kicks the queue again.
    while guest.posts > 0 {
        guest.post();
        server.serve(&mut guest, &ring.vring, &ring.mem).unwrap();
    }
    assert_eq!(ring.used_idx(), posts + 1, "everything served");
    // Sleeps may overrun (the cap is time, not windows), so there may be more
    // signals than posts / CAP_WINDOWS; but never one for all.
    assert!(signals(&server) >= 3, "{} signals", signals(&server));
    assert!(
        signals(&server) <= u64::from(posts / 2),
        "{} signals",
        signals(&server)
    );
}
