//! Target `net_ctrl`: virtio-net control-queue commands, as the control worker
//! (vhost-net `worker.rs`, `ControlWorker::decode`) hands the readable bytes of a
//! chain to [`ctrl::parse`].
//!
//! Input: 1 byte, the device's queue pairs (1 to 256), then the command bytes
//! (`struct virtio_net_ctrl_hdr { class, cmd }` and its data). Checked: what is
//! accepted has exactly the length its command needs, and the pair count is one
//! the device has.

use vhost_net::ctrl::{self, Command};

use crate::input::Input;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let max_pairs = u16::from(input.u8()) + 1;
    let bytes = input.rest();
    if bytes.len() > ctrl::MAX_COMMAND_LEN {
        return; // refused by decode before parsing
    }
    let len = bytes.len();
    match ctrl::parse(bytes, max_pairs) {
        Ok(Command::SetQueuePairs(pairs)) => {
            assert!((1..=max_pairs).contains(&pairs), "{pairs} pairs accepted");
            assert_eq!(len, 4);
        }
        Ok(Command::RxMode { .. }) => assert_eq!(len, 3),
        Ok(Command::MacTable { unicast, multicast }) => {
            let entries = u64::from(unicast) + u64::from(multicast);
            assert_eq!(len as u64, 2 + 8 + 6 * entries, "MAC table length");
        }
        Ok(Command::MacAddr(_)) => assert_eq!(len, 8),
        Ok(Command::AnnounceAck) => assert_eq!(len, 2),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
