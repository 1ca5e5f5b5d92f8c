//! Messages written to the socket by hand, for the states in which the vhost crate's
//! `Frontend` refuses to send them (it checks the protocol's order more strictly
//! than backends and QEMU do).
//!
//! The wire format (vhost-user spec): a header of three little-endian u32s (request,
//! flags with protocol version 1, body size), then the body; a reply has the same
//! header with the REPLY flag, and an ack's body is one u64, 0 for success.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use vhost::vhost_user::message::{FrontendReq, VhostUserHeaderFlag, VhostUserVringState};
use vm_memory::ByteValued;

/// Protocol version 1 in a header's flags.
const VERSION_1: u32 = 0x1;
/// A header: request, flags, body size.
const HEADER_SIZE: usize = 12;

/// SET_VRING_ENABLE for `index`, with `need_reply` (REPLY_ACK acked) waiting for the
/// backend's ack. Errors as `Frontend` reports them: a non-zero ack is
/// `BackendInternalError`, a socket error is `SocketError`.
pub(crate) fn set_vring_enable(
    socket: &mut UnixStream,
    index: u16,
    enable: bool,
    need_reply: bool,
) -> vhost::Result<()> {
    let protocol = |e| vhost::Error::VhostUserProtocol(e);
    let code = u32::from(FrontendReq::SET_VRING_ENABLE);
    let body = VhostUserVringState::new(u32::from(index), u32::from(enable));
    let mut flags = VERSION_1;
    if need_reply {
        flags |= VhostUserHeaderFlag::NEED_REPLY.bits();
    }
    match send(socket, code, flags, body.as_slice(), need_reply) {
        Ok(0) => Ok(()),
        Ok(_) => Err(protocol(vhost::vhost_user::Error::BackendInternalError)),
        Err(e) => Err(protocol(vhost::vhost_user::Error::SocketError(e))),
    }
}

/// Writes one message; with `need_reply` reads the ack back and returns its value
/// (0 without `need_reply`).
fn send(
    socket: &mut UnixStream,
    code: u32,
    flags: u32,
    body: &[u8],
    need_reply: bool,
) -> io::Result<u64> {
    let size = u32::try_from(body.len()).map_err(io::Error::other)?;
    let mut msg = Vec::with_capacity(HEADER_SIZE + body.len());
    for word in [code, flags, size] {
        msg.extend_from_slice(&word.to_le_bytes());
    }
    msg.extend_from_slice(body);
    socket.write_all(&msg)?;
    if !need_reply {
        return Ok(0);
    }
    let mut reply = [0u8; HEADER_SIZE + 8];
    socket.read_exact(&mut reply)?;
    let word = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&reply[4 * i..4 * i + 4]);
        u32::from_le_bytes(b)
    };
    if word(0) != code || word(1) & VhostUserHeaderFlag::REPLY.bits() == 0 || word(2) != 8 {
        return Err(io::Error::other(format!(
            "unexpected reply header {:x?}",
            &reply[..HEADER_SIZE]
        )));
    }
    let mut ack = [0u8; 8];
    ack.copy_from_slice(&reply[HEADER_SIZE..]);
    Ok(u64::from_le_bytes(ack))
}
