//! Pieces of the `VhostUserBackend` implementation that do not depend on the device
//! type: the protocol features, feature bits and the GET_CONFIG bounds check.

use vhost::vhost_user::message::VhostUserProtocolFeatures;

use crate::guest_error;

/// The mask of feature bit `n` (`VIRTIO_F_*`, `VIRTIO_*_F_*` are bit numbers).
pub const fn bit(n: u32) -> u64 {
    1u64 << n
}

/// The vhost-user protocol features every vhostkit backend offers: CONFIG (the
/// device config space over GET_CONFIG / SET_CONFIG), MQ (more than one queue, or
/// pair) and REPLY_ACK (the frontend may ask for an ack of any message).
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
}

/// GET_CONFIG: `size` bytes at `offset` of the device's config space `config`, or
/// nothing (logged, rate-limited) if the range does not lie inside it. An error
/// would make the vhost-user library drop the connection, so a bad range from the
/// frontend only gets an empty reply.
pub fn config_slice(config: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let start = offset as usize;
    match start.checked_add(size as usize) {
        Some(end) if end <= config.len() => config[start..end].to_vec(),
        _ => {
            guest_error!("GET_CONFIG out of range: offset {offset} size {size}");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_slice_bounds() {
        let c = [1u8, 2, 3, 4];
        assert_eq!(config_slice(&c, 1, 2), vec![2, 3]);
        assert_eq!(config_slice(&c, 0, 4), c.to_vec());
        assert!(config_slice(&c, 3, 2).is_empty());
        assert!(config_slice(&c, u32::MAX, u32::MAX).is_empty());
        assert_eq!(bit(3), 8);
    }
}
