//! Target `net_tx`: virtio-net transmit chains as the net worker (vhost-net
//! `worker.rs`, `drain_tx`/`transmit`) turns them into one writev to the tap:
//! [`tx_iovecs`] (the shape checks of `net::check_tx` and the mapping of the
//! virtio-net header and frame), then the bytes the tap would read; every chain
//! goes back to the used ring. With options bit 1, the same queue is a receive
//! queue instead (`receive_frame`/`collect_rx_chain`): each chain's buffers are
//! mapped, appended to the iovecs of the frame being received (bit 2: mergeable
//! receive buffers, so several chains gather for one frame) and filled as the
//! tap's readv would.
//!
//! Input: the queue and guest memory of [`crate::ring`]; options bit 0: a legacy
//! 10-byte header instead of the 12-byte one. Checked: accepted chains lie inside
//! guest memory, their length is what was mapped, within the frame limits, and a
//! receive chain's first buffer holds the whole header.

use vhost_net::fuzzing::{rx_chain, tx_iovecs};
use vhost_net::net::{check_tx, MAX_IOVECS, MAX_TX_LEN, VNET_HDR_LEN};
use virtio_queue::{QueueOwnedT, QueueT};

use crate::input::Input;
use crate::ring::{with_guest, Guest};

/// Options bits.
pub const OPT_LEGACY_HDR: u8 = 1;
pub const OPT_RX: u8 = 2;
pub const OPT_MERGEABLE: u8 = 4;

pub fn run(data: &[u8]) {
    with_guest(|guest| run_in(guest, data));
}

fn run_in(guest: &Guest, data: &[u8]) {
    let guest_mem = &guest.mem;
    let mem = &**guest_mem;
    let mut input = Input::new(data);
    let (mut queue, options) = guest.load(&mut input);
    let hdr_len = if options & OPT_LEGACY_HDR != 0 {
        10
    } else {
        VNET_HDR_LEN
    };
    let mut iovecs = vhostkit_common::queue::IoVecs::default();
    let _ = queue.disable_notification(mem);
    for _ in 0..=queue.size() {
        let chain = match queue.iter(mem) {
            Ok(mut avail) => avail.next(),
            Err(_) => break,
        };
        let Some(chain) = chain else {
            break;
        };
        let head = chain.head_index();
        let used_len = if options & OPT_RX != 0 {
            if options & OPT_MERGEABLE == 0 {
                iovecs.clear();
            }
            let start = iovecs.entries();
            match rx_chain(chain, guest_mem, hdr_len, &mut iovecs) {
                Ok((capacity, (_, first_len))) => {
                    assert!(
                        iovecs.entries() < MAX_IOVECS,
                        "no iovec left for the overflow byte"
                    );
                    assert_eq!(guest.check_iovecs(&iovecs.as_slice()[start..]), capacity);
                    assert!(first_len >= hdr_len && first_len <= capacity);
                    guest.scatter(&iovecs.as_slice()[start..], 0x5a);
                    u32::try_from(capacity).unwrap_or(u32::MAX)
                }
                Err(_) => {
                    iovecs.truncate(start);
                    0
                }
            }
        } else {
            match tx_iovecs(chain, guest_mem, hdr_len, &mut iovecs) {
                Ok(total) => {
                    assert!(
                        total >= hdr_len && total <= MAX_TX_LEN,
                        "{total} bytes sent"
                    );
                    assert!(
                        iovecs.entries() <= MAX_IOVECS,
                        "{} iovecs",
                        iovecs.entries()
                    );
                    let bytes = guest.gather(iovecs.as_slice());
                    assert_eq!(bytes.len(), total);
                    let (header, frame) = bytes.split_at(hdr_len);
                    assert_eq!(header.len() + frame.len(), total);
                    assert!(check_tx(total, iovecs.entries().min(MAX_IOVECS), hdr_len).is_ok());
                }
                Err(e) => assert!(!e.is_empty()),
            }
            0
        };
        let _ = queue.add_used(mem, head, used_len);
    }
    let _ = queue.needs_notification(mem);
    let _ = queue.enable_notification(mem);
}
