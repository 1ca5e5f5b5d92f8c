//! The virtio-net protocol as this device speaks it, knowing nothing of vhost-user:
//! the features offered, the config space, the per-frame header, and the frame
//! limits. The header is never parsed here: the tap takes and produces it as its
//! vnet header, so checksum and segmentation offloads cross without work.

use std::mem::{offset_of, size_of};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// The per-frame header with VERSION_1 (or MRG_RXBUF): `virtio_net_hdr_mrg_rxbuf`,
/// 12 bytes, also the tap's vnet header size.
pub const VNET_HDR_LEN: usize = size_of::<virtio_net_hdr_mrg_rxbuf>();
/// Where `num_buffers` sits in the header (the device fills it on receive).
pub const NUM_BUFFERS_OFFSET: usize = offset_of!(virtio_net_hdr_mrg_rxbuf, num_buffers);

/// The longest frame (without the virtio-net header) either way: a 64 KiB GSO
/// packet plus an Ethernet header with one VLAN tag.
pub const MAX_FRAME_LEN: usize = 65536 + 18;
/// The longest frame of an MTU-sized packet: Ethernet header and one VLAN tag.
pub fn max_frame_len_for_mtu(mtu: u16) -> usize {
    usize::from(mtu) + 18
}

/// The longest transmit chain accepted.
pub const MAX_TX_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// Most descriptors a frame's chain may have (the kernel's UIO_MAXIOV for readv
/// and writev).
pub const MAX_IOVECS: usize = vhostkit_common::queue::IOV_MAX;

/// The smallest and largest MTU a guest can be given.
pub const MIN_MTU: u16 = 68;

/// Offset of `mtu` in `struct virtio_net_config`, and the bytes of the config space
/// this device has (mac, status, max_virtqueue_pairs, mtu).
pub const CONFIG_LEN: usize = offset_of!(virtio_net_config, mtu) + size_of::<u16>();

pub use vhostkit_common::backend::bit;

/// The virtio feature bits this device offers (before the vhost-user bit).
pub fn device_features(multi_queue: bool) -> u64 {
    let mut features = bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_RING_F_EVENT_IDX)
        | bit(VIRTIO_RING_F_INDIRECT_DESC)
        | bit(VIRTIO_NET_F_MAC)
        | bit(VIRTIO_NET_F_MTU)
        | bit(VIRTIO_NET_F_STATUS)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO6)
        | bit(VIRTIO_NET_F_GUEST_ECN)
        | bit(VIRTIO_NET_F_HOST_TSO4)
        | bit(VIRTIO_NET_F_HOST_TSO6)
        | bit(VIRTIO_NET_F_HOST_ECN)
        | bit(VIRTIO_NET_F_CTRL_VQ);
    if multi_queue {
        features |= bit(VIRTIO_NET_F_MQ);
    }
    features
}

/// The tap offloads (TUN_F_*) matching what the guest accepted: the tap may then
/// hand the guest frames that still need a checksum or segmentation.
pub fn tap_offload_flags(acked: u64) -> u32 {
    let mut flags = 0;
    if acked & bit(VIRTIO_NET_F_GUEST_CSUM) != 0 {
        flags |= libc::TUN_F_CSUM;
        // Segmentation offloads need checksum offload (the kernel refuses them alone).
        if acked & bit(VIRTIO_NET_F_GUEST_TSO4) != 0 {
            flags |= libc::TUN_F_TSO4;
        }
        if acked & bit(VIRTIO_NET_F_GUEST_TSO6) != 0 {
            flags |= libc::TUN_F_TSO6;
        }
        if acked & bit(VIRTIO_NET_F_GUEST_ECN) != 0
            && flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0
        {
            flags |= libc::TUN_F_TSO_ECN;
        }
    }
    flags
}

/// The queue layout of the spec: rx0, tx0, rx1, tx1, ..., then the control queue.
pub fn num_queues(pairs: u16) -> usize {
    2 * usize::from(pairs) + 1
}

/// The control queue's index.
pub fn ctrl_queue_index(pairs: u16) -> usize {
    2 * usize::from(pairs)
}

/// `struct virtio_net_config` up to `mtu`, little-endian (VERSION_1).
pub fn config_space(mac: [u8; 6], link_up: bool, max_pairs: u16, mtu: u16) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let status: u16 = if link_up {
        u16::try_from(VIRTIO_NET_S_LINK_UP).unwrap_or(1)
    } else {
        0
    };
    c[offset_of!(virtio_net_config, mac)..][..6].copy_from_slice(&mac);
    c[offset_of!(virtio_net_config, status)..][..2].copy_from_slice(&status.to_le_bytes());
    c[offset_of!(virtio_net_config, max_virtqueue_pairs)..][..2]
        .copy_from_slice(&max_pairs.to_le_bytes());
    c[offset_of!(virtio_net_config, mtu)..][..2].copy_from_slice(&mtu.to_le_bytes());
    c
}

/// Why a transmit chain is dropped.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("{0} bytes: shorter than the virtio-net header")]
    ShortHeader(usize),
    #[error("{0} bytes: longer than the largest frame ({MAX_TX_LEN} with header)")]
    TooLong(usize),
    #[error("{0} descriptors: more than {MAX_IOVECS}")]
    TooManyDescriptors(usize),
    #[error("device-writable descriptor in a transmit chain")]
    WritableDescriptor,
}

/// Checks the shape of a transmit chain of `len` readable bytes in `descriptors`
/// descriptors, with headers of `hdr_len` bytes. The header's contents are the
/// tap's to check.
pub fn check_tx(len: usize, descriptors: usize, hdr_len: usize) -> Result<(), TxError> {
    if len < hdr_len {
        return Err(TxError::ShortHeader(len));
    }
    if len > MAX_TX_LEN {
        return Err(TxError::TooLong(len));
    }
    if descriptors > MAX_IOVECS {
        return Err(TxError::TooManyDescriptors(descriptors));
    }
    Ok(())
}

/// A random locally administered unicast MAC (what QEMU and cloud-hypervisor
/// default to when none is given).
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most `mac.len()` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        // No entropy source: still unique enough per process and time.
        let seed = u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                // The low 64 bits are all the entropy wanted.
                .map(|d| u64::try_from(d.as_nanos() & u128::from(u64::MAX)).unwrap_or(0))
                .unwrap_or(0);
        mac.copy_from_slice(&seed.to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & !0x01) | 0x02; // unicast, locally administered
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        assert_eq!(VNET_HDR_LEN, 12);
        assert_eq!(NUM_BUFFERS_OFFSET, 10);
        assert_eq!(CONFIG_LEN, 12);
    }

    #[test]
    fn config_bytes() {
        let c = config_space([2, 1, 2, 3, 4, 5], true, 4, 1500);
        assert_eq!(&c[..6], &[2, 1, 2, 3, 4, 5]);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1);
        assert_eq!(u16::from_le_bytes([c[8], c[9]]), 4);
        assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1500);
    }

    #[test]
    fn offloads_follow_acked_features() {
        assert_eq!(tap_offload_flags(0), 0);
        // TSO without checksum offload is not something the tap takes.
        assert_eq!(tap_offload_flags(bit(VIRTIO_NET_F_GUEST_TSO4)), 0);
        let all = bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_GUEST_TSO4)
            | bit(VIRTIO_NET_F_GUEST_TSO6)
            | bit(VIRTIO_NET_F_GUEST_ECN);
        assert_eq!(
            tap_offload_flags(all),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
        );
        assert_eq!(
            tap_offload_flags(bit(VIRTIO_NET_F_GUEST_CSUM)),
            libc::TUN_F_CSUM
        );
    }

    #[test]
    fn tx_shapes() {
        assert_eq!(check_tx(11, 1, 12), Err(TxError::ShortHeader(11)));
        assert!(check_tx(11, 1, 10).is_ok());
        assert!(check_tx(12 + 60, 2, 12).is_ok());
        assert!(check_tx(MAX_TX_LEN, 2, 12).is_ok());
        assert_eq!(
            check_tx(MAX_TX_LEN + 1, 2, 12),
            Err(TxError::TooLong(MAX_TX_LEN + 1))
        );
        assert!(check_tx(100, MAX_IOVECS + 1, 12).is_err());
    }

    #[test]
    fn random_mac_is_local_unicast() {
        for _ in 0..16 {
            let m = random_mac();
            assert_eq!(m[0] & 0x03, 0x02);
        }
    }

    #[test]
    fn features() {
        assert_ne!(device_features(true) & bit(VIRTIO_NET_F_MQ), 0);
        assert_eq!(device_features(false) & bit(VIRTIO_NET_F_MQ), 0);
        assert_eq!(num_queues(2), 5);
        assert_eq!(ctrl_queue_index(2), 4);
    }
}
