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
//! FsQueue::call_with(opcode, nodeid, body, payload, reply)
//!                                             no allocation or copy of the data:
//!                                             payload and reply in caller buffers
//! ```
//!
//! [`body`] builds the common request bodies (INIT, LOOKUP, CREATE, OPEN, READ,
//! WRITE, GETATTR, RELEASE...) from their fields, and [`reply`] reads the fields
//! of the common replies (entry, open, directory listings), from the layouts of
//! linux `include/uapi/linux/fuse.h`, independently of any server's definitions.

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
    /// The request-header area [`FsQueue::call_with`] reuses (allocated on first use).
    scratch: Option<u64>,
}

impl Drop for FsQueue {
    fn drop(&mut self) {
        if let Some(addr) = self.scratch.take() {
            self.mem.free(addr);
        }
    }
}

/// The out header of a reply left in the caller's buffer by [`FsQueue::call_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyHeader {
    /// `fuse_out_header.error`: 0 or a negated errno.
    pub error: i32,
    /// `fuse_out_header.len` (header included).
    pub len: u32,
    /// The used length the device reported.
    pub used_len: u32,
}

impl ReplyHeader {
    /// Bytes of the reply body (after the out header).
    pub fn body_len(&self) -> u32 {
        self.len.saturating_sub(OUT_HEADER_LEN as u32)
    }
}

/// Bytes of the request area [`FsQueue::call_with`] keeps: header plus body.
pub const CALL_WITH_MAX_BODY: usize = 4096 - IN_HEADER_LEN;

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
            scratch: None,
        }
    }

    /// One request whose data stay in guest memory: the in header and `body` (at
    /// most [`CALL_WITH_MAX_BODY`] bytes) go into an area of the queue's, reused from
    /// call to call, followed by the caller's `payload` buffers (WRITE data; made
    /// device-readable) and its `reply` buffer (made device-writable; the out header
    /// lands at its start, the body after it). Nothing is allocated, zeroed or
    /// copied but the header and `body`: what a benchmark needs.
    pub fn call_with(
        &mut self,
        opcode: u32,
        nodeid: u64,
        body: &[u8],
        payload: &[(u64, u32)],
        reply: (u64, u32),
    ) -> Result<ReplyHeader> {
        if body.len() > CALL_WITH_MAX_BODY {
            return Err(Error::InvalidRequest("body too long for call_with"));
        }
        if (reply.1 as usize) < OUT_HEADER_LEN {
            return Err(Error::InvalidRequest("reply room below the out header"));
        }
        let scratch = match self.scratch {
            Some(addr) => addr,
            None => {
                let addr = self.mem.alloc(4096, 64)?;
                self.scratch = Some(addr);
                addr
            }
        };
        let payload_len: u64 = payload.iter().map(|p| u64::from(p.1)).sum();
        let len = u32::try_from(IN_HEADER_LEN as u64 + body.len() as u64 + payload_len)
            .map_err(|_| Error::InvalidRequest("too long"))?;
        let unique = self.next_unique;
        self.next_unique += 1;
        self.mem
            .write(scratch, &in_header(len, opcode, unique, nodeid))?;
        self.mem.write(scratch + IN_HEADER_LEN as u64, body)?;
        let mut bufs = Vec::with_capacity(payload.len() + 2);
        bufs.push(Buf::readable(scratch, (IN_HEADER_LEN + body.len()) as u32));
        bufs.extend(payload.iter().map(|&(addr, len)| Buf::readable(addr, len)));
        bufs.push(Buf::writable(reply.0, reply.1));
        let used_len = self.run(&bufs)?;
        if (used_len as usize) < OUT_HEADER_LEN {
            return Err(Error::InvalidRequest(
                "reply shorter than the FUSE out header",
            ));
        }
        let mut head = [0u8; OUT_HEADER_LEN];
        self.mem.read(reply.0, &mut head)?;
        Ok(ReplyHeader {
            len: u32::from_le_bytes([head[0], head[1], head[2], head[3]]),
            error: i32::from_le_bytes([head[4], head[5], head[6], head[7]]),
            used_len,
        })
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
        match self.q.next_used_by(Instant::now() + TIMEOUT)? {
            Some(used) => Ok(used.len),
            None => Err(Error::Timeout),
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

/// FUSE opcodes (`enum fuse_opcode`) the [`body`] builders are for.
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const UNLINK: u32 = 10;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const RELEASE: u32 = 18;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const CREATE: u32 = 35;
    pub const READDIRPLUS: u32 = 44;
}

/// Request bodies (after `fuse_in_header`), little-endian, as linux
/// `include/uapi/linux/fuse.h` lays them out.
pub mod body {
    fn le(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// `name` with its terminating NUL (LOOKUP, UNLINK, RMDIR bodies).
    pub fn cstr(name: &str) -> Vec<u8> {
        let mut v = Vec::with_capacity(name.len() + 1);
        v.extend_from_slice(name.as_bytes());
        v.push(0);
        v
    }

    /// `fuse_init_in` of protocol 7.`minor` with `flags`, then the 48 bytes 7.36
    /// appends (flags2 and unused, zero).
    pub fn init(minor: u32, max_readahead: u32, flags: u32) -> Vec<u8> {
        le(&[
            &7u32.to_le_bytes(),
            &minor.to_le_bytes(),
            &max_readahead.to_le_bytes(),
            &flags.to_le_bytes(),
            &[0u8; 48],
        ])
    }

    /// `fuse_create_in` and the name.
    pub fn create(flags: u32, mode: u32, umask: u32, name: &str) -> Vec<u8> {
        le(&[
            &flags.to_le_bytes(),
            &mode.to_le_bytes(),
            &umask.to_le_bytes(),
            &0u32.to_le_bytes(),
            &cstr(name),
        ])
    }

    /// `fuse_open_in` (OPEN, OPENDIR).
    pub fn open(flags: u32) -> Vec<u8> {
        le(&[&flags.to_le_bytes(), &0u32.to_le_bytes()])
    }

    /// `fuse_read_in` (READ, READDIR, READDIRPLUS).
    pub fn read(fh: u64, offset: u64, size: u32) -> Vec<u8> {
        le(&[
            &fh.to_le_bytes(),
            &offset.to_le_bytes(),
            &size.to_le_bytes(),
            &[0u8; 20], // read_flags, lock_owner, flags, padding
        ])
    }

    /// `fuse_write_in` for `size` bytes of data, without the data.
    pub fn write_header(fh: u64, offset: u64, size: u32) -> Vec<u8> {
        le(&[
            &fh.to_le_bytes(),
            &offset.to_le_bytes(),
            &size.to_le_bytes(),
            &[0u8; 20], // write_flags, lock_owner, flags, padding
        ])
    }

    /// `fuse_write_in` followed by `data`.
    pub fn write(fh: u64, offset: u64, data: &[u8]) -> Vec<u8> {
        let mut v = write_header(fh, offset, data.len() as u32);
        v.extend_from_slice(data);
        v
    }

    /// `fuse_getattr_in` without a file handle.
    pub fn getattr() -> Vec<u8> {
        vec![0u8; 16]
    }

    /// `fuse_release_in` (RELEASE, RELEASEDIR).
    pub fn release(fh: u64) -> Vec<u8> {
        le(&[&fh.to_le_bytes(), &[0u8; 16]])
    }

    /// `fuse_forget_in`.
    pub fn forget(nlookup: u64) -> Vec<u8> {
        nlookup.to_le_bytes().to_vec()
    }
}

/// Fields of reply bodies (after `fuse_out_header`).
pub mod reply {
    /// Bytes of `fuse_entry_out` (which starts with the node id) and of
    /// `fuse_attr_out`.
    pub const ENTRY_OUT_LEN: usize = 128;
    pub const ATTR_OUT_LEN: usize = 104;
    /// Bytes of `fuse_open_out` and of a `fuse_dirent` without its name.
    pub const OPEN_OUT_LEN: usize = 16;
    pub const DIRENT_LEN: usize = 24;

    fn u64_at(b: &[u8], at: usize) -> Option<u64> {
        Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
    }

    fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }

    /// The node id of a `fuse_entry_out` (LOOKUP, CREATE, MKDIR...).
    pub fn entry_nodeid(body: &[u8]) -> Option<u64> {
        (body.len() >= ENTRY_OUT_LEN).then(|| u64_at(body, 0))?
    }

    /// The file handle of a `fuse_open_out` (OPEN, OPENDIR) or of the one after the
    /// `fuse_entry_out` of a CREATE reply (`after_entry`).
    pub fn open_fh(body: &[u8], after_entry: bool) -> Option<u64> {
        let at = if after_entry { ENTRY_OUT_LEN } else { 0 };
        (body.len() >= at + OPEN_OUT_LEN).then(|| u64_at(body, at))?
    }

    /// One entry of a READDIR or READDIRPLUS reply.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct DirEntry {
        pub name: Vec<u8>,
        pub ino: u64,
        /// Where the next READDIR continues after this entry.
        pub off: u64,
        pub typ: u32,
        /// READDIRPLUS: the node id of the entry (0 where the server looked nothing
        /// up, as for "." and ".."); READDIR: 0.
        pub nodeid: u64,
    }

    /// The entries of a READDIR (`plus` false) or READDIRPLUS reply body; `None` if
    /// the body is malformed (an entry cut short).
    pub fn dirents(body: &[u8], plus: bool) -> Option<Vec<DirEntry>> {
        let mut out = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let mut nodeid = 0;
            if plus {
                nodeid = entry_nodeid(rest)?;
                rest = &rest[ENTRY_OUT_LEN..];
            }
            let ino = u64_at(rest, 0)?;
            let off = u64_at(rest, 8)?;
            let namelen = u32_at(rest, 16)? as usize;
            let typ = u32_at(rest, 20)?;
            let name = rest.get(DIRENT_LEN..DIRENT_LEN + namelen)?.to_vec();
            let padded = (DIRENT_LEN + namelen + 7) & !7;
            rest = rest.get(padded..).unwrap_or(&[]);
            out.push(DirEntry {
                name,
                ino,
                off,
                typ,
                nodeid,
            });
        }
        Some(out)
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

    #[test]
    fn bodies_have_the_kernel_layouts() {
        assert_eq!(body::init(31, 1 << 17, 3).len(), 64);
        assert_eq!(body::create(2, 0o644, 0o22, "ab").len(), 16 + 3);
        assert_eq!(
            &body::create(2, 0o644, 0o22, "ab")[4..8],
            &0o644u32.to_le_bytes()
        );
        assert_eq!(body::open(2), vec![2, 0, 0, 0, 0, 0, 0, 0]);
        let r = body::read(7, 4096, 512);
        assert_eq!(r.len(), 40);
        assert_eq!((r[0], r[9], &r[16..20]), (7, 16, &512u32.to_le_bytes()[..]));
        assert_eq!(body::write(1, 0, b"xyz").len(), 43);
        assert_eq!(body::getattr().len(), 16);
        assert_eq!(body::release(9).len(), 24);
        assert_eq!(body::cstr("f1"), b"f1\0");
    }

    #[test]
    fn dirents_parse_and_reject_truncation() {
        let mut b = Vec::new();
        for (i, name) in ["a", "bcdefghij"].iter().enumerate() {
            let mut entry = vec![0u8; reply::ENTRY_OUT_LEN];
            entry[..8].copy_from_slice(&(100 + i as u64).to_le_bytes());
            b.extend(entry);
            b.extend((10 + i as u64).to_le_bytes());
            b.extend((1 + i as u64).to_le_bytes());
            b.extend((name.len() as u32).to_le_bytes());
            b.extend(8u32.to_le_bytes());
            b.extend(name.as_bytes());
            b.resize(b.len().next_multiple_of(8), 0);
        }
        let d = reply::dirents(&b, true).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[1].name.as_slice(), d[1].nodeid, d[1].off),
            (&b"bcdefghij"[..], 101, 2)
        );
        assert_eq!((d[0].ino, d[0].typ), (10, 8));
        assert!(reply::dirents(&b[..b.len() - 10], true).is_none());
        assert_eq!(reply::entry_nodeid(&b), Some(100));
        assert_eq!(
            reply::open_fh(&[5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], false),
            Some(5)
        );
    }
}
