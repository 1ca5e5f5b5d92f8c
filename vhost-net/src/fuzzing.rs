//! Entry points for the fuzz targets of `fuzz/` (crate `vhostkit-fuzz`): the
//! worker's private steps that turn guest descriptor chains into iovecs. Not an API.

use std::sync::Arc;

use vhostkit_common::queue::IoVecs;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// What the transmit path does with a chain before its writev to the tap
/// (`PairWorker::transmit`): the iovecs of the virtio-net header and frame, and
/// the chain's length; or why the chain is dropped.
pub fn tx_iovecs<C>(
    chain: C,
    mem: &Arc<GuestMemoryMmap<()>>,
    hdr_len: usize,
    iovecs: &mut IoVecs,
) -> Result<usize, String>
where
    C: Iterator<Item = Descriptor>,
{
    crate::worker::tx_iovecs(chain, mem, hdr_len, iovecs).map_err(|e| e.to_string())
}

/// What the receive path does with a chain before its readv from the tap
/// (`PairWorker::receive_frame`): appends its iovecs and returns its capacity and
/// first buffer; or why the chain cannot take frames.
pub fn rx_chain<C>(
    chain: C,
    mem: &Arc<GuestMemoryMmap<()>>,
    hdr_len: usize,
    iovecs: &mut IoVecs,
) -> Result<(usize, (GuestAddress, usize)), String>
where
    C: Iterator<Item = Descriptor>,
{
    crate::worker::collect_rx_chain(chain, mem, hdr_len, iovecs).map_err(|e| e.to_string())
}
