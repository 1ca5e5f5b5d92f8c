//! The virtio-net control queue protocol, knowing nothing of vhost-user: a command
//! is `struct virtio_net_ctrl_hdr { class, cmd }`, its data, and one ack byte the
//! device writes (VIRTIO_NET_OK or VIRTIO_NET_ERR).

use std::mem::size_of;

use virtio_bindings::virtio_net::*;

/// The most command bytes read from one chain. A MAC table of a few thousand
/// entries fits; anything longer is refused.
pub const MAX_COMMAND_LEN: usize = 64 * 1024;

// The spec's ack values are 0 and 1: they fit the ack byte.
#[allow(clippy::cast_possible_truncation)]
pub const ACK_OK: u8 = VIRTIO_NET_OK as u8;
#[allow(clippy::cast_possible_truncation)]
pub const ACK_ERR: u8 = VIRTIO_NET_ERR as u8;

/// A decoded control command.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET.
    SetQueuePairs(u16),
    /// VIRTIO_NET_CTRL_RX: promiscuous, all-multicast and the like. The tap hands
    /// the guest everything anyway, so these are acknowledged and ignored.
    RxMode { cmd: u8, on: bool },
    /// VIRTIO_NET_CTRL_MAC_TABLE_SET with its unicast and multicast entry counts
    /// (acknowledged: no filtering is done).
    MacTable { unicast: u32, multicast: u32 },
    /// VIRTIO_NET_CTRL_MAC_ADDR_SET.
    MacAddr([u8; 6]),
    /// VIRTIO_NET_CTRL_ANNOUNCE_ACK.
    AnnounceAck,
}

/// Why a command is refused (answered with VIRTIO_NET_ERR).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command of {0} bytes: shorter than its 2-byte header")]
    NoHeader(usize),
    #[error("command of more than {MAX_COMMAND_LEN} bytes")]
    TooLong,
    #[error("class {class} command {cmd}: {len} data bytes, {expected} expected")]
    BadLength {
        class: u8,
        cmd: u8,
        len: usize,
        expected: usize,
    },
    #[error("MAC table: entry counts do not match the {0} bytes given")]
    BadMacTable(usize),
    #[error("unsupported class {class} command {cmd}")]
    Unsupported { class: u8, cmd: u8 },
    #[error("{requested} queue pairs requested: must be 1 to {max}")]
    PairsOutOfRange { requested: u16, max: u16 },
    #[error("no writable ack byte")]
    NoAck,
}

const HDR_LEN: usize = size_of::<virtio_net_ctrl_hdr>();

fn exact<const N: usize>(class: u8, cmd: u8, data: &[u8]) -> Result<[u8; N], CommandError> {
    data.try_into().map_err(|_| CommandError::BadLength {
        class,
        cmd,
        len: data.len(),
        expected: N,
    })
}

/// Reads one `virtio_net_ctrl_mac` table (u32 entries, then 6 bytes each) off the
/// front of `data`; returns its entry count and the rest.
fn mac_table(data: &[u8], whole: usize) -> Result<(u32, &[u8]), CommandError> {
    let bad = || CommandError::BadMacTable(whole);
    let (count, rest) = data.split_first_chunk::<4>().ok_or_else(bad)?;
    let entries = u32::from_le_bytes(*count);
    let bytes = (entries as usize).checked_mul(6).ok_or_else(bad)?;
    if rest.len() < bytes {
        return Err(bad());
    }
    Ok((entries, &rest[bytes..]))
}

/// Decodes a command from the device-readable bytes of a control chain, checking
/// it against `max_pairs` (the device's queue pairs).
pub fn parse(bytes: &[u8], max_pairs: u16) -> Result<Command, CommandError> {
    let Some((hdr, data)) = bytes.split_first_chunk::<HDR_LEN>() else {
        return Err(CommandError::NoHeader(bytes.len()));
    };
    let [class, cmd] = *hdr;
    let unsupported = CommandError::Unsupported { class, cmd };
    match (u32::from(class), u32::from(cmd)) {
        (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) => {
            let pairs = u16::from_le_bytes(exact::<2>(class, cmd, data)?);
            if pairs == 0 || pairs > max_pairs {
                return Err(CommandError::PairsOutOfRange {
                    requested: pairs,
                    max: max_pairs,
                });
            }
            Ok(Command::SetQueuePairs(pairs))
        }
        (VIRTIO_NET_CTRL_RX, rx_cmd) if rx_cmd <= VIRTIO_NET_CTRL_RX_NOBCAST => {
            let [on] = exact::<1>(class, cmd, data)?;
            Ok(Command::RxMode { cmd, on: on != 0 })
        }
        (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET) => {
            let (unicast, rest) = mac_table(data, data.len())?;
            let (multicast, rest) = mac_table(rest, data.len())?;
            if !rest.is_empty() {
                return Err(CommandError::BadMacTable(data.len()));
            }
            Ok(Command::MacTable { unicast, multicast })
        }
        (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET) => {
            Ok(Command::MacAddr(exact::<6>(class, cmd, data)?))
        }
        (VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK) => {
            exact::<0>(class, cmd, data)?;
            Ok(Command::AnnounceAck)
        }
        _ => Err(unsupported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(class: u32, cmd: u32, data: &[u8]) -> Vec<u8> {
        let mut v = vec![class as u8, cmd as u8];
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn queue_pairs() {
        let mq = |n: u16| cmd(VIRTIO_NET_CTRL_MQ, 0, &n.to_le_bytes());
        assert_eq!(parse(&mq(2), 4), Ok(Command::SetQueuePairs(2)));
        assert_eq!(parse(&mq(4), 4), Ok(Command::SetQueuePairs(4)));
        assert!(matches!(
            parse(&mq(5), 4),
            Err(CommandError::PairsOutOfRange {
                requested: 5,
                max: 4
            })
        ));
        assert!(parse(&mq(0), 4).is_err());
        assert!(matches!(
            parse(&cmd(VIRTIO_NET_CTRL_MQ, 0, &[1]), 4),
            Err(CommandError::BadLength { .. })
        ));
        // RSS and hash configuration are not offered.
        assert!(matches!(
            parse(&cmd(VIRTIO_NET_CTRL_MQ, 1, &[0; 8]), 4),
            Err(CommandError::Unsupported { .. })
        ));
    }

    #[test]
    fn rx_and_mac() {
        assert_eq!(
            parse(
                &cmd(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, &[1]),
                1
            ),
            Ok(Command::RxMode { cmd: 0, on: true })
        );
        assert!(parse(&cmd(VIRTIO_NET_CTRL_RX, 9, &[1]), 1).is_err());
        let mut table = 1u32.to_le_bytes().to_vec();
        table.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        table.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            parse(&cmd(VIRTIO_NET_CTRL_MAC, 0, &table), 1),
            Ok(Command::MacTable {
                unicast: 1,
                multicast: 0
            })
        );
        // Counts that promise more than is there, or leave bytes over.
        let mut lying = u32::MAX.to_le_bytes().to_vec();
        lying.extend_from_slice(&0u32.to_le_bytes());
        assert!(parse(&cmd(VIRTIO_NET_CTRL_MAC, 0, &lying), 1).is_err());
        table.push(0);
        assert!(parse(&cmd(VIRTIO_NET_CTRL_MAC, 0, &table), 1).is_err());
        assert_eq!(
            parse(&cmd(VIRTIO_NET_CTRL_MAC, 1, &[2, 0, 0, 0, 0, 9]), 1),
            Ok(Command::MacAddr([2, 0, 0, 0, 0, 9]))
        );
    }

    #[test]
    fn malformed() {
        assert_eq!(parse(&[], 1), Err(CommandError::NoHeader(0)));
        assert_eq!(parse(&[4], 1), Err(CommandError::NoHeader(1)));
        assert!(matches!(
            parse(&[77, 0], 1),
            Err(CommandError::Unsupported { class: 77, cmd: 0 })
        ));
    }
}
