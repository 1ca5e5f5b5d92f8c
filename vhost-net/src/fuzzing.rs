//! Entry points for the fuzz targets of `fuzz/` (crate `vhostkit-fuzz`): the
//! worker's private steps that turn guest descriptor chains into iovecs. Not an API.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestAddress, GuestMemoryBackend};

/// What the transmit path does with a chain before its writev to the tap
/// (`PairWorker::transmit`): the iovecs of the virtio-net header and frame, and
/// the chain's length; or why the chain is dropped.
pub fn tx_iovecs<C, M>(
    chain: C,
    mem: &M,
    hdr_len: usize,
    iovecs: &mut Vec<libc::iovec>,
) -> Result<usize, String>
where
    C: Iterator<Item = Descriptor>,
    M: GuestMemoryBackend + ?Sized,
{
    crate::worker::tx_iovecs(chain, mem, hdr_len, iovecs).map_err(|e| e.to_string())
}

/// What the receive path does with a chain before its readv from the tap
/// (`PairWorker::receive_frame`): appends its iovecs and returns its capacity and
/// first buffer; or why the chain cannot take frames.
pub fn rx_chain<C, M>(
    chain: C,
    mem: &M,
    hdr_len: usize,
    iovecs: &mut Vec<libc::iovec>,
) -> Result<(usize, (GuestAddress, usize)), String>
where
    C: Iterator<Item = Descriptor>,
    M: GuestMemoryBackend + ?Sized,
{
    crate::worker::collect_rx_chain(chain, mem, hdr_len, iovecs).map_err(|e| e.to_string())
}
