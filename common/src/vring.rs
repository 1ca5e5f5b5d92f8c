//! Small pieces of a backend's queue loop that do not depend on the device type:
//! notifying the guest, busy-polling for new entries, and error conversion.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost_user_backend::VringState;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::guest_error;
use crate::lifecycle::GuestMemory;

/// Signals the guest that used entries are ready, if the queue's event index (or its
/// flags) say the guest wants it. Failures are the guest's doing (a bad ring address)
/// or a closed call eventfd, so they are only logged (rate-limited): the queue loop
/// goes on either way.
pub fn signal_if_needed(state: &mut VringState<GuestMemory>, mem: &GuestMemoryMmap<()>) {
    match state.get_queue_mut().needs_notification(mem) {
        Ok(true) => {
            if let Err(e) = state.signal_used_queue() {
                guest_error!("cannot signal the guest: {e}");
            }
        }
        Ok(false) => {}
        Err(e) => guest_error!("cannot read the queue's event index: {e}"),
    }
}

/// Whether `head`, the head index of a chain just popped off `queue`'s avail ring,
/// names one of its descriptors. The guest writes the avail ring: virtio-queue
/// hands out any head it finds there, and refuses (logging an error line per
/// entry) to put one outside the queue in the used ring. Such a chain is dropped
/// unanswered, with one rate-limited line here: nothing can go back for it.
pub fn head_in_queue(queue: &Queue, head: u16, what: &str) -> bool {
    if head < queue.size() {
        return true;
    }
    guest_error!(
        "{what}: dropping a chain with head {head}, outside the queue of {} entries",
        queue.size()
    );
    false
}

/// Spins for up to `poll` waiting for new available entries; true if some came.
pub fn poll_avail(
    queue: &mut Queue,
    mem: &GuestMemoryMmap<()>,
    poll: Duration,
) -> io::Result<bool> {
    let deadline = Instant::now() + poll;
    while Instant::now() < deadline {
        let avail = queue.avail_idx(mem, Ordering::Acquire).map_err(queue_err)?;
        if avail.0 != queue.next_avail() {
            return Ok(true);
        }
        std::hint::spin_loop();
    }
    Ok(false)
}

/// A virtio-queue error as an `io::Error`, the error type of the backend's event
/// handler.
pub fn queue_err(e: virtio_queue::Error) -> io::Error {
    io::Error::other(e.to_string())
}

/// The kick handler's loop, alike for every queue: serve what is available, signal
/// the guest, then (with a `poll` time) busy-poll for more with notifications still
/// off, and finally turn notifications back on, going round again if entries arrived
/// while they were off (else a kick could be lost).
///
/// `drain(ctx, state, mem)` serves the available entries (turning notifications off
/// first) and returns false if the avail ring cannot be read: then nothing can be
/// served until the driver puts it right and kicks again, so notifications go back on
/// and the loop ends rather than spin on it. `poll_more(ctx, state, mem)` spins up to
/// the poll time and returns true if new entries came (see [`poll_avail`]); it is not
/// called when `poll` is zero. Both get `ctx` (the worker) so that each can borrow it
/// mutably in turn.
pub fn serve_until_idle<T>(
    ctx: &mut T,
    state: &mut VringState<GuestMemory>,
    mem: &Arc<GuestMemoryMmap<()>>,
    poll: Duration,
    mut drain: impl FnMut(
        &mut T,
        &mut VringState<GuestMemory>,
        &Arc<GuestMemoryMmap<()>>,
    ) -> io::Result<bool>,
    mut poll_more: impl FnMut(
        &mut T,
        &mut VringState<GuestMemory>,
        &Arc<GuestMemoryMmap<()>>,
    ) -> io::Result<bool>,
) -> io::Result<()> {
    loop {
        let readable = drain(ctx, state, mem)?;
        // Tell the guest what finished before waiting for more.
        signal_if_needed(state, mem);
        if !readable {
            state
                .get_queue_mut()
                .enable_notification(&**mem)
                .map_err(queue_err)?;
            return Ok(());
        }
        // With --poll-us, watch the ring a while longer with notifications still off,
        // so a driver that sends again soon needs no kick and the worker no wake-up.
        if !poll.is_zero() && poll_more(ctx, state, mem)? {
            continue;
        }
        if !state
            .get_queue_mut()
            .enable_notification(&**mem)
            .map_err(queue_err)?
        {
            return Ok(());
        }
        // More arrived while notifications were off.
    }
}
