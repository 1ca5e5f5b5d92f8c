//! The per-queue request loop: pops FUSE requests off one virtqueue, answers each
//! in place (the passthrough calls are synchronous), returns the chains and
//! notifies the guest. EVENT_IDX-safe: notifications are off while the queue is
//! drained and the queue is looked at again after they are back on.

use std::io;
use std::sync::Arc;

use vhost_user_backend::{VringState, VringT};
use vhostkit_common::guest_error;
use vhostkit_common::lifecycle::{GuestMemory, Vring};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};

use crate::fuse::{self, Errno, Reply};
use crate::passthrough::PassthroughFs;

/// Serves everything available on queue `index`.
pub fn process_queue(
    fs: &PassthroughFs,
    vring: &Vring,
    memory: &GuestMemory,
    index: usize,
) -> io::Result<()> {
    let mem: Arc<GuestMemoryMmap<()>> = memory.memory().into_inner();
    let mut state = vring.get_mut();
    loop {
        let queue = state.get_queue_mut();
        queue.disable_notification(&*mem).map_err(queue_err)?;
        loop {
            let chain = match queue.iter(&*mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => {
                    guest_error!("queue {index}: cannot read the available ring: {e}");
                    None
                }
            };
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let used_len = serve_chain(fs, &mem, chain, index);
            if let Err(e) = queue.add_used(&*mem, head, used_len) {
                guest_error!("queue {index}: cannot return request {head}: {e}");
            }
        }
        signal_if_needed(&mut state, &mem);
        if !state
            .get_queue_mut()
            .enable_notification(&*mem)
            .map_err(queue_err)?
        {
            break;
        }
    }
    Ok(())
}

/// Answers one request chain; returns the bytes written into it.
fn serve_chain(
    fs: &PassthroughFs,
    mem: &GuestMemoryMmap<()>,
    chain: DescriptorChain<&GuestMemoryMmap<()>>,
    index: usize,
) -> u32 {
    let head = chain.head_index();
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
            fs.handle_request(&request.header, &request.body, room),
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

fn signal_if_needed(state: &mut VringState<GuestMemory>, mem: &GuestMemoryMmap<()>) {
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

fn queue_err(e: virtio_queue::Error) -> io::Error {
    io::Error::other(e.to_string())
}
