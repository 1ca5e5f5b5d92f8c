//! Target `blk_request`: virtio-blk request chains, as the blk worker
//! (vhost-blk `worker.rs`, `drain_avail`/`start`/`finish`) handles them: pop each
//! chain with `Queue::iter`, [`Request::parse`] it, take its [`Request::action`],
//! then read every discard / write-zeroes [`Request::segment`], or map the data
//! with [`spans_to_iovecs`] (and move the bytes, as the engine would), or write the
//! GET_ID answer; write the status and return the chain to the used ring.
//!
//! Input: the queue and guest memory of [`crate::ring`]; the options byte picks the
//! disk (bits 0-1: size 1 MiB, 1 MiB + 100 bytes, 0, or 2^63 - 512; bit 2:
//! read-only). Besides "never panics", it checks what the I/O relies on: the status
//! byte is in guest memory, data iovecs lie inside guest memory and add up to the
//! action's length, and every range handed to the disk lies inside it.

use vhost_blk::request::{
    spans_to_iovecs, write_spans, Action, Limits, Request, ID_BYTES, STATUS_IOERR, STATUS_OK,
};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend};

use crate::input::Input;
use crate::ring::{with_guest, Guest};

/// The daemon's own segment limits (vhost-blk `backend.rs`).
const MAX_SEGMENT_SECTORS: u32 = (u32::MAX >> 9) - 1;
const MAX_SEGMENTS: u32 = 32;

const DISK_SIZES: [u64; 4] = [1 << 20, (1 << 20) + 100, 0, (1 << 63) - 512];

pub fn run(data: &[u8]) {
    with_guest(|guest| run_in(guest, data));
}

fn run_in(guest: &Guest, data: &[u8]) {
    let guest_mem = &guest.mem;
    let mem = &**guest_mem;
    let mut input = Input::new(data);
    let (mut queue, options) = guest.load(&mut input);
    let limits = Limits {
        disk_size: DISK_SIZES[usize::from(options & 3)],
        readonly: options & 4 != 0,
        max_discard_sectors: MAX_SEGMENT_SECTORS,
        max_discard_seg: MAX_SEGMENTS,
        max_write_zeroes_sectors: MAX_SEGMENT_SECTORS,
        max_write_zeroes_seg: MAX_SEGMENTS,
    };
    let serial = *b"fuzz-serial-0123456\0";
    let mut request = Request::default();
    let mut iovecs = vhostkit_common::queue::IoVecs::default();
    let _ = queue.disable_notification(mem);
    // As drain_avail: a fresh iterator per chain, until none is left or the ring
    // cannot be read. A queue holds at most its size in chains at once.
    for _ in 0..=queue.size() {
        let chain = match queue.iter(mem) {
            Ok(mut avail) => avail.next(),
            Err(_) => break,
        };
        let Some(chain) = chain else {
            break;
        };
        let head = chain.head_index();
        if head >= queue.size() {
            continue; // dropped without a used entry, as `start` does
        }
        if request.parse(mem, head, chain).is_err() {
            let _ = queue.add_used(mem, head, 0);
            continue;
        }
        assert!(
            mem.address_in_range(request.status),
            "status byte at {:#x} outside guest memory",
            request.status.0
        );
        let (status, used_len) = match request.action(&limits) {
            Action::Fail(status) => (status, 1),
            Action::Flush => (STATUS_OK, 1),
            Action::GetId => match write_spans(mem, &request.writable, &serial) {
                Ok(n) => {
                    assert!(n <= ID_BYTES);
                    (STATUS_OK, n as u32 + 1)
                }
                Err(_) => (STATUS_IOERR, 1),
            },
            Action::Segments {
                write_zeroes,
                count,
            } => {
                assert!((1..=MAX_SEGMENTS).contains(&count), "{count} segments");
                let mut status = STATUS_OK;
                for i in 0..count {
                    match request.segment(mem, i, write_zeroes, &limits) {
                        Ok((offset, len, unmap)) => {
                            let end = offset.checked_add(len).expect("segment end overflows");
                            assert!(end <= limits.disk_size, "segment past the disk end");
                            assert!(write_zeroes || !unmap, "unmap on a discard");
                        }
                        Err(s) => {
                            status = s;
                            break;
                        }
                    }
                }
                (status, 1)
            }
            action @ (Action::Read { offset, len } | Action::Write { offset, len }) => {
                let read = matches!(action, Action::Read { .. });
                assert!(
                    read || !limits.readonly,
                    "write accepted on a read-only disk"
                );
                let end = offset.checked_add(len).expect("I/O end overflows");
                assert!(end <= limits.disk_size, "I/O past the disk end");
                assert_eq!(len % 512, 0, "I/O of {len} bytes");
                let spans = if read {
                    &request.writable
                } else {
                    &request.readable
                };
                match spans_to_iovecs(guest_mem, spans, &mut iovecs) {
                    Ok(()) => {
                        // What the engine does with them: the kernel moves exactly
                        // `len` bytes between the disk and these buffers.
                        if read {
                            guest.scatter(iovecs.as_slice(), 0xa5);
                            assert_eq!(guest.check_iovecs(iovecs.as_slice()) as u64, len);
                        } else {
                            assert_eq!(guest.gather(iovecs.as_slice()).len() as u64, len);
                        }
                        let used = if read {
                            vhost_blk::worker::read_used_len(len)
                        } else {
                            1
                        };
                        (STATUS_OK, used)
                    }
                    Err(_) => (STATUS_IOERR, 1),
                }
            }
        };
        // As `finish`.
        let used_len = if mem.write_obj(status, request.status).is_ok() {
            used_len
        } else {
            0
        };
        let _ = queue.add_used(mem, head, used_len);
    }
    let _ = queue.needs_notification(mem);
    let _ = queue.enable_notification(mem);
}
