//! virtio-fs on top of the driver: FUSE requests on the high-priority queue
//! (queue 0) and the request queues (1..=N), and the config space.
//!
//! This layer knows the FUSE headers only (`fuse_in_header`, `fuse_out_header`);
//! the bodies are bytes a test builds itself, so it can send anything, malformed
//! ones included.
//!
//! ```text
//! FsDevice::connect / setup_queues(n, size)   hiprio queue + n request queues
//! FsQueue::call(opcode, nodeid, body, room)   one request, its reply (FsReply)
//! FsQueue::send_raw(bytes, room)              any bytes; the reply bytes
//! FsQueue::send_no_reply(opcode, nodeid, body) FORGET-style, waits for the chain
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::device::{Driver, DriverConfig};
use super::memory::GuestMem;
use super::virtq::{Buf, Queue};
use super::{Error, Result};

/// Bytes of the tag in the config space.
pub const TAG_BYTES: usize = 36;
/// Bytes of `fuse_in_header` and `fuse_out_header`.
pub const IN_HEADER_LEN: usize = 40;
pub const OUT_HEADER_LEN: usize = 16;

/// `struct virtio_fs_config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsConfig {
    pub tag: [u8; TAG_BYTES],
    pub num_request_queues: u32,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            tag: [0; TAG_BYTES],
            num_request_queues: 0,
        }
    }
}

impl FsConfig {
    pub const SIZE: u32 = TAG_BYTES as u32 + 4;

    pub fn parse(b: &[u8]) -> Result<Self> {
        if b.len() < Self::SIZE as usize {
            return Err(Error::ConfigSize {
                got: b.len(),
                wanted: Self::SIZE as usize,
            });
        }
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&b[..TAG_BYTES]);
        let n = u32::from_le_bytes([b[36], b[37], b[38], b[39]]);
        Ok(FsConfig {
            tag,
            num_request_queues: n,
        })
    }

    /// The tag up to its first NUL.
    pub fn tag_str(&self) -> String {
        let end = self.tag.iter().position(|&b| b == 0).unwrap_or(TAG_BYTES);
        String::from_utf8_lossy(&self.tag[..end]).into_owned()
    }
}

/// A parsed reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsReply {
    /// `fuse_out_header.error`: 0 or a negated errno.
    pub error: i32,
    pub unique: u64,
    /// The bytes after the out header.
    pub body: Vec<u8>,
    /// The `len` field of the out header.
    pub len: u32,
    /// The used length the device reported.
    pub used_len: u32,
}

/// The FUSE request header (host byte order here, little-endian on the wire).
pub fn in_header(len: u32, opcode: u32, unique: u64, nodeid: u64) -> [u8; IN_HEADER_LEN] {
    let mut h = [0u8; IN_HEADER_LEN];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&opcode.to_le_bytes());
    h[8..16].copy_from_slice(&unique.to_le_bytes());
    h[16..24].copy_from_slice(&nodeid.to_le_bytes());
    h
}

/// One virtio-fs queue.
pub struct FsQueue {
    pub q: Queue,
    mem: Arc<GuestMem>,
    next_unique: u64,
}

impl std::fmt::Debug for FsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsQueue").field("q", &self.q).finish()
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl FsQueue {
    pub fn new(q: Queue) -> Self {
        FsQueue {
            mem: q.memory().clone(),
            q,
            next_unique: 1,
        }
    }

    /// Sends `request` (one readable buffer) with `room` writable bytes for the
    /// reply (none if 0); returns the used length and the reply bytes.
    pub fn send_raw(&mut self, request: &[u8], room: u32) -> Result<(u32, Vec<u8>)> {
        let len = u32::try_from(request.len()).map_err(|_| Error::InvalidRequest("too long"))?;
        let req_addr = self.mem.alloc(u64::from(len.max(1)), 64)?;
        self.mem.write(req_addr, request)?;
        let reply_addr = self.mem.alloc_zeroed(u64::from(room.max(1)), 64)?;
        let mut bufs = Vec::with_capacity(2);
        if len > 0 {
            bufs.push(Buf::readable(req_addr, len));
        }
        if room > 0 {
            bufs.push(Buf::writable(reply_addr, room));
        }
        let result = self.run(&bufs).and_then(|used| {
            let n = used.min(room);
            Ok((used, self.mem.read_vec(reply_addr, n as usize)?))
        });
        self.mem.free(req_addr);
        self.mem.free(reply_addr);
        result
    }

    /// Like [`Self::send_raw`] with the request cut into buffers of
    /// `request_parts` bytes (the last takes the rest) and the reply room into
    /// buffers of `reply_parts` bytes, optionally as one indirect table; returns
    /// the used length and the reply bytes (all reply buffers, concatenated).
    pub fn send_split(
        &mut self,
        request: &[u8],
        request_parts: &[u32],
        reply_parts: &[u32],
        indirect: bool,
    ) -> Result<(u32, Vec<u8>)> {
        let mut bufs = Vec::new();
        let mut allocated = Vec::new();
        let mut rest = request;
        for (i, &part) in request_parts.iter().enumerate() {
            let take = if i + 1 == request_parts.len() {
                rest.len()
            } else {
                (part as usize).min(rest.len())
            };
            let (chunk, r) = rest.split_at(take);
            rest = r;
            if chunk.is_empty() {
                continue;
            }
            let addr = self.mem.alloc(chunk.len() as u64, 8)?;
            allocated.push(addr);
            self.mem.write(addr, chunk)?;
            bufs.push(Buf::readable(addr, chunk.len() as u32));
        }
        let mut reply_bufs = Vec::new();
        for &part in reply_parts {
            let addr = self.mem.alloc_zeroed(u64::from(part.max(1)), 8)?;
            allocated.push(addr);
            bufs.push(Buf::writable(addr, part));
            reply_bufs.push((addr, part));
        }
        let result = self.q.add(&bufs, indirect, 1).and_then(|_| self.wait());
        let result = result.and_then(|used| {
            let mut reply = Vec::new();
            for (addr, len) in reply_bufs {
                reply.extend(self.mem.read_vec(addr, len as usize)?);
            }
            reply.truncate(used as usize);
            Ok((used, reply))
        });
        for addr in allocated {
            self.mem.free(addr);
        }
        result
    }

    fn run(&mut self, bufs: &[Buf]) -> Result<u32> {
        self.q.add(bufs, false, 1)?;
        self.wait()
    }

    fn wait(&mut self) -> Result<u32> {
        self.q.submit()?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(used) = self.q.pop_used() {
                return Ok(used.len);
            }
            let now = Instant::now();
            if now >= deadline || !self.q.wait_used(deadline - now)? {
                return Err(Error::Timeout);
            }
        }
    }

    /// The request bytes of `opcode` on `nodeid` with `body`, and its unique id.
    pub fn build(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> (Vec<u8>, u64) {
        let unique = self.next_unique;
        self.next_unique += 1;
        let len = (IN_HEADER_LEN + body.len()) as u32;
        let mut bytes = in_header(len, opcode, unique, nodeid).to_vec();
        bytes.extend_from_slice(body);
        (bytes, unique)
    }

    /// One request and its reply, with `room` bytes for the reply.
    pub fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8], room: u32) -> Result<FsReply> {
        let (bytes, _) = self.build(opcode, nodeid, body);
        let (used_len, reply) = self.send_raw(&bytes, room)?;
        parse_reply(&reply, used_len)
    }

    /// A request without a reply (FORGET, BATCH_FORGET); returns the used length.
    pub fn send_no_reply(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> Result<u32> {
        let (bytes, _) = self.build(opcode, nodeid, body);
        Ok(self.send_raw(&bytes, 0)?.0)
    }
}

/// Parses reply bytes (out header + body).
pub fn parse_reply(reply: &[u8], used_len: u32) -> Result<FsReply> {
    if reply.len() < OUT_HEADER_LEN || (used_len as usize) < OUT_HEADER_LEN {
        return Err(Error::InvalidRequest(
            "reply shorter than the FUSE out header",
        ));
    }
    let len = u32::from_le_bytes([reply[0], reply[1], reply[2], reply[3]]);
    let error = i32::from_le_bytes([reply[4], reply[5], reply[6], reply[7]]);
    let mut unique = [0u8; 8];
    unique.copy_from_slice(&reply[8..16]);
    let end = (len as usize).clamp(OUT_HEADER_LEN, reply.len());
    Ok(FsReply {
        error,
        unique: u64::from_le_bytes(unique),
        body: reply[OUT_HEADER_LEN..end].to_vec(),
        len,
        used_len,
    })
}

/// A vhost-user-fs device: the connection and its config space.
#[derive(Debug)]
pub struct FsDevice {
    pub driver: Driver,
    pub config: FsConfig,
}

impl FsDevice {
    /// [`Driver::connect`], then GET_CONFIG if the CONFIG protocol feature was acked.
    pub fn connect(socket: impl AsRef<std::path::Path>, cfg: &DriverConfig) -> Result<Self> {
        let mut driver = Driver::connect(socket, cfg)?;
        let config = if driver
            .protocol_features()
            .contains(vhost::vhost_user::VhostUserProtocolFeatures::CONFIG)
        {
            FsConfig::parse(&driver.get_config(0, FsConfig::SIZE)?)?
        } else {
            FsConfig::default()
        };
        Ok(FsDevice { driver, config })
    }

    /// Sets up the high-priority queue and `count` request queues of `size`
    /// entries; returns (hiprio, request queues).
    pub fn setup_queues(&mut self, count: u16, size: u16) -> Result<(FsQueue, Vec<FsQueue>)> {
        let hiprio = FsQueue::new(self.driver.setup_queue(0, size)?);
        let requests = (1..=count)
            .map(|i| Ok(FsQueue::new(self.driver.setup_queue(i, size)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok((hiprio, requests))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_and_reply_parse() {
        let mut b = vec![0u8; 40];
        b[..4].copy_from_slice(b"myfs");
        b[36] = 2;
        let c = FsConfig::parse(&b).unwrap();
        assert_eq!(c.tag_str(), "myfs");
        assert_eq!(c.num_request_queues, 2);
        assert!(FsConfig::parse(&b[..39]).is_err());
        let mut r = vec![0u8; 20];
        r[0] = 20;
        r[4..8].copy_from_slice(&(-2i32).to_le_bytes());
        r[8] = 5;
        let reply = parse_reply(&r, 20).unwrap();
        assert_eq!((reply.error, reply.unique, reply.body.len()), (-2, 5, 4));
        assert!(parse_reply(&r[..10], 10).is_err());
    }
}
