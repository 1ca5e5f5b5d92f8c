//! The virtio-blk request protocol: turning a descriptor chain into a validated
//! request. It knows guest memory and virtqueue descriptors, nothing of vhost-user
//! or of how the I/O is done.
//!
//! Any descriptor layout is accepted (VIRTIO_F_ANY_LAYOUT is implied by VERSION_1):
//! the device-readable bytes are the 16-byte header followed by OUT data (or
//! discard segments); the device-writable bytes are IN data (or the GET_ID buffer)
//! followed by the one status byte.

use std::fmt;
use std::sync::Arc;

use vhostkit_common::queue::{IoVecError, IoVecs};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::disk::{SECTOR_SHIFT, SECTOR_SIZE};

/// Size of `struct virtio_blk_outhdr`.
pub const HEADER_LEN: u32 = 16;
/// Size of `struct virtio_blk_discard_write_zeroes`.
pub const SEGMENT_LEN: u32 = 16;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;
/// The most data descriptors one read or write may have (the kernel's UIO_MAXIOV).
pub const MAX_DATA_SEGMENTS: usize = 1024;
/// The WRITE_ZEROES segment flag asking the device to deallocate.
pub const WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

// The spec's status values are 0, 1 and 2: they fit the status byte.
#[allow(clippy::cast_possible_truncation)]
pub const STATUS_OK: u8 = VIRTIO_BLK_S_OK as u8;
#[allow(clippy::cast_possible_truncation)]
pub const STATUS_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
#[allow(clippy::cast_possible_truncation)]
pub const STATUS_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> Self {
        match value {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            VIRTIO_BLK_T_DISCARD => RequestType::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => RequestType::WriteZeroes,
            other => RequestType::Unsupported(other),
        }
    }
}

/// A guest-physical byte range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A chain that cannot be answered with a status: it is returned to the driver
/// unanswered (used length 0) and logged.
#[derive(Debug, PartialEq, Eq)]
pub enum ChainError {
    /// The chain has no descriptors, loops, is longer than the queue, or has a
    /// broken indirect table: the descriptor walk stopped before the chain ended.
    Truncated,
    /// A device-readable descriptor follows a device-writable one.
    ReadableAfterWritable,
    /// No device-writable byte for the status.
    NoStatus,
    /// Fewer than 16 device-readable bytes for the header.
    ShortHeader,
    /// The header or status lies outside guest memory.
    BadAddress(GuestAddress),
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::Truncated => {
                write!(f, "descriptor chain is empty, loops or is cut short")
            }
            ChainError::ReadableAfterWritable => {
                write!(f, "device-readable descriptor after a device-writable one")
            }
            ChainError::NoStatus => write!(f, "no device-writable status byte"),
            ChainError::ShortHeader => write!(f, "request header shorter than 16 bytes"),
            ChainError::BadAddress(a) => {
                write!(f, "header or status at {:#x} outside guest memory", a.0)
            }
        }
    }
}

/// A parsed request. Its vectors are reused from request to request.
#[derive(Debug, Default)]
pub struct Request {
    pub head: u16,
    pub kind: Option<RequestType>,
    pub sector: u64,
    /// Device-readable bytes after the header: OUT data or discard segments.
    pub readable: Vec<Span>,
    /// Device-writable bytes before the status: IN data or the GET_ID buffer.
    pub writable: Vec<Span>,
    pub status: GuestAddress,
}

/// What the validated request asks of the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Read {
        offset: u64,
        len: u64,
    },
    Write {
        offset: u64,
        len: u64,
    },
    Flush,
    GetId,
    /// DISCARD or WRITE_ZEROES: the segments are read from `readable` by the worker.
    Segments {
        write_zeroes: bool,
        count: u32,
    },
    /// Answer with this status at once.
    Fail(u8),
}

fn span_total(spans: &[Span]) -> u64 {
    spans.iter().map(|s| u64::from(s.len)).sum()
}

/// Drops `n` bytes from the front of `spans`.
fn skip_front(spans: &mut Vec<Span>, mut n: u32) {
    let mut consumed = 0;
    for span in spans.iter_mut() {
        if n == 0 {
            break;
        }
        if span.len <= n {
            n -= span.len;
            consumed += 1;
        } else {
            // Cannot overflow: the span was translated from a valid descriptor.
            span.addr = span.addr.unchecked_add(u64::from(n));
            span.len -= n;
            n = 0;
        }
    }
    spans.drain(..consumed);
}

/// Reads `buf.len()` bytes from the front of `spans`.
pub fn read_spans<M: GuestMemoryBackend + ?Sized>(
    mem: &M,
    spans: &[Span],
    mut skip: u64,
    buf: &mut [u8],
) -> Result<(), GuestAddress> {
    let mut done = 0;
    for span in spans {
        if done == buf.len() {
            break;
        }
        let len = u64::from(span.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let take = usize::try_from(len - skip)
            .unwrap_or(usize::MAX)
            .min(buf.len() - done);
        let addr = span.addr.unchecked_add(skip);
        mem.read_slice(&mut buf[done..done + take], addr)
            .map_err(|_| addr)?;
        done += take;
        skip = 0;
    }
    if done == buf.len() {
        Ok(())
    } else {
        Err(spans.last().map(|s| s.addr).unwrap_or_default())
    }
}

/// Writes `data` to the front of `spans`, as far as they reach; returns bytes written.
pub fn write_spans<M: GuestMemoryBackend + ?Sized>(
    mem: &M,
    spans: &[Span],
    data: &[u8],
) -> Result<usize, GuestAddress> {
    let mut done = 0;
    for span in spans {
        if done == data.len() {
            break;
        }
        let take = (span.len as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + take], span.addr)
            .map_err(|_| span.addr)?;
        done += take;
    }
    Ok(done)
}

impl Request {
    /// Parses the descriptors of one chain (head index `head`) into `self`.
    pub fn parse<M, I>(&mut self, mem: &M, head: u16, chain: I) -> Result<(), ChainError>
    where
        M: GuestMemoryBackend + ?Sized,
        I: Iterator<Item = Descriptor>,
    {
        self.head = head;
        self.kind = None;
        self.readable.clear();
        self.writable.clear();
        let mut last_has_next = true;
        let mut any = false;
        for desc in chain {
            any = true;
            last_has_next = desc.has_next();
            let span = Span {
                addr: desc.addr(),
                len: desc.len(),
            };
            if desc.is_write_only() {
                self.writable.push(span);
            } else if self.writable.is_empty() {
                self.readable.push(span);
            } else {
                return Err(ChainError::ReadableAfterWritable);
            }
        }
        if !any || last_has_next {
            return Err(ChainError::Truncated);
        }

        // The status byte is the last device-writable byte.
        let status = loop {
            match self.writable.last_mut() {
                None => return Err(ChainError::NoStatus),
                Some(last) if last.len == 0 => {
                    self.writable.pop();
                }
                Some(last) => {
                    last.len -= 1;
                    let addr = last
                        .addr
                        .checked_add(u64::from(last.len))
                        .ok_or(ChainError::BadAddress(last.addr))?;
                    if last.len == 0 {
                        self.writable.pop();
                    }
                    break addr;
                }
            }
        };
        if !mem.address_in_range(status) {
            return Err(ChainError::BadAddress(status));
        }
        self.status = status;

        if span_total(&self.readable) < u64::from(HEADER_LEN) {
            return Err(ChainError::ShortHeader);
        }
        let mut header = [0u8; HEADER_LEN as usize];
        read_spans(mem, &self.readable, 0, &mut header).map_err(ChainError::BadAddress)?;
        skip_front(&mut self.readable, HEADER_LEN);
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        self.kind = Some(RequestType::from(kind));
        self.sector = u64::from_le_bytes([
            header[8], header[9], header[10], header[11], header[12], header[13], header[14],
            header[15],
        ]);
        Ok(())
    }

    /// Checks the request against the disk and says what to do.
    pub fn action(&self, limits: &Limits) -> Action {
        let Some(kind) = self.kind else {
            return Action::Fail(STATUS_IOERR);
        };
        match kind {
            RequestType::In | RequestType::Out => {
                let (spans, write) = if kind == RequestType::In {
                    (&self.writable, false)
                } else {
                    (&self.readable, true)
                };
                if write && limits.readonly {
                    return Action::Fail(STATUS_IOERR);
                }
                let len = span_total(spans);
                if !len.is_multiple_of(SECTOR_SIZE) || spans.len() > MAX_DATA_SEGMENTS {
                    return Action::Fail(STATUS_IOERR);
                }
                let Some(offset) = self.sector.checked_mul(SECTOR_SIZE) else {
                    return Action::Fail(STATUS_IOERR);
                };
                match offset.checked_add(len) {
                    Some(end) if end <= limits.disk_size => {}
                    _ => return Action::Fail(STATUS_IOERR),
                }
                if write {
                    Action::Write { offset, len }
                } else {
                    Action::Read { offset, len }
                }
            }
            RequestType::Flush => Action::Flush,
            RequestType::GetId => {
                if self.writable.is_empty() {
                    Action::Fail(STATUS_IOERR)
                } else {
                    Action::GetId
                }
            }
            RequestType::Discard | RequestType::WriteZeroes => {
                let write_zeroes = kind == RequestType::WriteZeroes;
                if limits.readonly {
                    return Action::Fail(STATUS_IOERR);
                }
                let len = span_total(&self.readable);
                let max_segments = if write_zeroes {
                    limits.max_write_zeroes_seg
                } else {
                    limits.max_discard_seg
                };
                if len == 0 || !len.is_multiple_of(u64::from(SEGMENT_LEN)) {
                    return Action::Fail(STATUS_IOERR);
                }
                let count = len / u64::from(SEGMENT_LEN);
                match u32::try_from(count) {
                    Ok(count) if count <= max_segments => Action::Segments {
                        write_zeroes,
                        count,
                    },
                    _ => Action::Fail(STATUS_UNSUPP),
                }
            }
            RequestType::Unsupported(_) => Action::Fail(STATUS_UNSUPP),
        }
    }

    /// Reads and checks discard / write-zeroes segment `index`; returns the byte range
    /// and whether to unmap, or the status to fail the request with.
    pub fn segment<M: GuestMemoryBackend + ?Sized>(
        &self,
        mem: &M,
        index: u32,
        write_zeroes: bool,
        limits: &Limits,
    ) -> Result<(u64, u64, bool), u8> {
        let mut raw = [0u8; SEGMENT_LEN as usize];
        read_spans(
            mem,
            &self.readable,
            u64::from(index) * u64::from(SEGMENT_LEN),
            &mut raw,
        )
        .map_err(|_| STATUS_IOERR)?;
        let sector = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
        let num_sectors = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(raw[12..16].try_into().unwrap_or_default());
        let max_sectors = if write_zeroes {
            limits.max_write_zeroes_sectors
        } else {
            limits.max_discard_sectors
        };
        let allowed_flags = if write_zeroes {
            WRITE_ZEROES_FLAG_UNMAP
        } else {
            0
        };
        if flags & !allowed_flags != 0 {
            return Err(STATUS_UNSUPP);
        }
        if num_sectors > max_sectors {
            return Err(STATUS_IOERR);
        }
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or(STATUS_IOERR)?;
        let len = u64::from(num_sectors) << SECTOR_SHIFT;
        match offset.checked_add(len) {
            Some(end) if end <= limits.disk_size => {}
            _ => return Err(STATUS_IOERR),
        }
        Ok((offset, len, flags & WRITE_ZEROES_FLAG_UNMAP != 0))
    }
}

/// What requests are checked against.
#[derive(Clone, Debug)]
pub struct Limits {
    pub disk_size: u64,
    pub readonly: bool,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
}

/// The guest buffers of `spans` as iovecs in `out` (refusing any byte outside
/// guest memory; see [`IoVecs`]).
pub fn spans_to_iovecs(
    mem: &Arc<GuestMemoryMmap<()>>,
    spans: &[Span],
    out: &mut IoVecs,
) -> Result<(), IoVecError> {
    out.clear();
    spans
        .iter()
        .try_for_each(|span| out.push_guest(mem, span.addr, span.len as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn d(addr: u64, len: u32, write: bool, next: bool) -> Descriptor {
        let mut flags = 0;
        if write {
            flags |= VRING_DESC_F_WRITE as u16;
        }
        if next {
            flags |= VRING_DESC_F_NEXT as u16;
        }
        Descriptor::new(addr, len, flags, 0)
    }

    fn header(mem: &GuestMemoryMmap<()>, at: u64, kind: u32, sector: u64) {
        mem.write_obj(kind, GuestAddress(at)).unwrap();
        mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    fn limits() -> Limits {
        Limits {
            disk_size: 1 << 20,
            readonly: false,
            max_discard_sectors: 1 << 16,
            max_discard_seg: 4,
            max_write_zeroes_sectors: 1 << 16,
            max_write_zeroes_seg: 4,
        }
    }

    #[test]
    fn read_request_in_usual_layout() {
        let m = mem();
        header(&m, 0x100, VIRTIO_BLK_T_IN, 8);
        let chain = [
            d(0x100, 16, false, true),
            d(0x1000, 4096, true, true),
            d(0x200, 1, true, false),
        ];
        let mut r = Request::default();
        r.parse(&m, 3, chain.into_iter()).unwrap();
        assert_eq!(r.kind, Some(RequestType::In));
        assert_eq!(r.status, GuestAddress(0x200));
        assert_eq!(
            r.writable,
            vec![Span {
                addr: GuestAddress(0x1000),
                len: 4096
            }]
        );
        assert_eq!(
            r.action(&limits()),
            Action::Read {
                offset: 4096,
                len: 4096
            }
        );
    }

    #[test]
    fn any_layout_header_and_status_share_descriptors() {
        let m = mem();
        // Header and 512 bytes of data in one readable descriptor; data and status
        // in one writable descriptor.
        header(&m, 0x100, VIRTIO_BLK_T_OUT, 0);
        let chain = [d(0x100, 16 + 512, false, true), d(0x2000, 1, true, false)];
        let mut r = Request::default();
        r.parse(&m, 0, chain.into_iter()).unwrap();
        assert_eq!(
            r.readable,
            vec![Span {
                addr: GuestAddress(0x110),
                len: 512
            }]
        );
        assert_eq!(
            r.action(&limits()),
            Action::Write {
                offset: 0,
                len: 512
            }
        );

        header(&m, 0x100, VIRTIO_BLK_T_IN, 0);
        let chain = [d(0x100, 16, false, true), d(0x2000, 513, true, false)];
        r.parse(&m, 0, chain.into_iter()).unwrap();
        assert_eq!(r.status, GuestAddress(0x2200));
        assert_eq!(
            r.writable,
            vec![Span {
                addr: GuestAddress(0x2000),
                len: 512
            }]
        );
    }

    #[test]
    fn malformed_chains_are_refused() {
        let m = mem();
        header(&m, 0x100, VIRTIO_BLK_T_IN, 0);
        let mut r = Request::default();
        // Cut short: the last descriptor still says NEXT.
        let chain = [d(0x100, 16, false, true), d(0x200, 1, true, true)];
        assert_eq!(
            r.parse(&m, 0, chain.into_iter()),
            Err(ChainError::Truncated)
        );
        assert_eq!(r.parse(&m, 0, [].into_iter()), Err(ChainError::Truncated));
        // No writable status.
        let chain = [d(0x100, 16, false, false)];
        assert_eq!(r.parse(&m, 0, chain.into_iter()), Err(ChainError::NoStatus));
        // Header too short.
        let chain = [d(0x100, 8, false, true), d(0x200, 1, true, false)];
        assert_eq!(
            r.parse(&m, 0, chain.into_iter()),
            Err(ChainError::ShortHeader)
        );
        // Header writable: then there is no readable header at all.
        let chain = [d(0x100, 16, true, true), d(0x200, 1, true, false)];
        assert_eq!(
            r.parse(&m, 0, chain.into_iter()),
            Err(ChainError::ShortHeader)
        );
        // Readable after writable.
        let chain = [
            d(0x100, 16, false, true),
            d(0x200, 1, true, true),
            d(0x300, 16, false, false),
        ];
        assert_eq!(
            r.parse(&m, 0, chain.into_iter()),
            Err(ChainError::ReadableAfterWritable)
        );
        // Status outside guest memory.
        let chain = [d(0x100, 16, false, true), d(0x10_0000, 1, true, false)];
        assert!(matches!(
            r.parse(&m, 0, chain.into_iter()),
            Err(ChainError::BadAddress(_))
        ));
        // Header outside guest memory.
        let chain = [d(0xfff8, 16, false, true), d(0x200, 1, true, false)];
        assert!(matches!(
            r.parse(&m, 0, chain.into_iter()),
            Err(ChainError::BadAddress(_))
        ));
    }

    #[test]
    fn validation_statuses() {
        let m = mem();
        let mut r = Request::default();
        let parse = |r: &mut Request, kind: u32, sector: u64, data: u32, write: bool| {
            header(&m, 0x100, kind, sector);
            let chain = [
                d(0x100, 16, false, true),
                d(0x1000, data, write, true),
                d(0x200, 1, true, false),
            ];
            r.parse(&m, 0, chain.into_iter()).unwrap();
        };
        let l = limits();
        // Not a multiple of 512.
        parse(&mut r, VIRTIO_BLK_T_IN, 0, 100, true);
        assert_eq!(r.action(&l), Action::Fail(STATUS_IOERR));
        // Past the end, and sector * 512 overflowing.
        parse(&mut r, VIRTIO_BLK_T_IN, 2047, 1024, true);
        assert_eq!(r.action(&l), Action::Fail(STATUS_IOERR));
        parse(&mut r, VIRTIO_BLK_T_IN, u64::MAX / 256, 512, true);
        assert_eq!(r.action(&l), Action::Fail(STATUS_IOERR));
        // Exactly the last sector is fine.
        parse(&mut r, VIRTIO_BLK_T_IN, 2047, 512, true);
        assert_eq!(
            r.action(&l),
            Action::Read {
                offset: 2047 * 512,
                len: 512
            }
        );
        // Unknown type.
        parse(&mut r, 77, 0, 512, true);
        assert_eq!(r.action(&l), Action::Fail(STATUS_UNSUPP));
        // Write to a read-only disk.
        parse(&mut r, VIRTIO_BLK_T_OUT, 0, 512, false);
        let ro = Limits {
            readonly: true,
            ..limits()
        };
        assert_eq!(r.action(&ro), Action::Fail(STATUS_IOERR));
        assert_eq!(
            r.action(&l),
            Action::Write {
                offset: 0,
                len: 512
            }
        );
    }

    #[test]
    fn discard_segments_are_checked() {
        let m = mem();
        let mut r = Request::default();
        header(&m, 0x100, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        let seg = |at: u64, sector: u64, n: u32, flags: u32| {
            m.write_obj(sector, GuestAddress(at)).unwrap();
            m.write_obj(n, GuestAddress(at + 8)).unwrap();
            m.write_obj(flags, GuestAddress(at + 12)).unwrap();
        };
        seg(0x1000, 8, 8, WRITE_ZEROES_FLAG_UNMAP);
        seg(0x1010, 2040, 16, 0);
        let chain = [
            d(0x100, 16, false, true),
            d(0x1000, 32, false, true),
            d(0x200, 1, true, false),
        ];
        r.parse(&m, 0, chain.into_iter()).unwrap();
        let l = limits();
        assert_eq!(
            r.action(&l),
            Action::Segments {
                write_zeroes: true,
                count: 2
            }
        );
        assert_eq!(r.segment(&m, 0, true, &l), Ok((4096, 4096, true)));
        // 2040 + 16 sectors runs past the 2048-sector disk.
        assert_eq!(r.segment(&m, 1, true, &l), Err(STATUS_IOERR));
        // DISCARD must have no flags.
        seg(0x1000, 8, 8, 1);
        assert_eq!(r.segment(&m, 0, false, &l), Err(STATUS_UNSUPP));
    }

    #[test]
    fn iovecs_refuse_addresses_outside_memory() {
        let m = Arc::new(mem());
        let mut iov = IoVecs::default();
        let ok = [Span {
            addr: GuestAddress(0x1000),
            len: 512,
        }];
        spans_to_iovecs(&m, &ok, &mut iov).unwrap();
        assert_eq!(iov.entries(), 1);
        assert_eq!(iov.as_slice()[0].iov_len, 512);
        let bad = [Span {
            addr: GuestAddress(0xff00),
            len: 512,
        }];
        assert!(spans_to_iovecs(&m, &bad, &mut iov).is_err());
        let far = [Span {
            addr: GuestAddress(1 << 40),
            len: 512,
        }];
        assert!(spans_to_iovecs(&m, &far, &mut iov).is_err());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::{GuestMemoryMmap, GuestMemoryRegion};

    static ACCEPTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    static IO: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

    const MEM_BASE: u64 = 0x10000;
    const MEM_SIZE: u64 = 0x20000;

    /// Addresses clustered around guest memory's edges, plus anywhere at all.
    fn addr() -> impl Strategy<Value = u64> {
        prop_oneof![
            MEM_BASE..MEM_BASE + MEM_SIZE,
            (MEM_BASE + MEM_SIZE - 64)..(MEM_BASE + MEM_SIZE + 64),
            (MEM_BASE - 64)..(MEM_BASE + 64),
            any::<u64>(),
        ]
    }

    /// Lengths that make well-formed requests (header 16, status 1, whole sectors)
    /// as often as odd ones, so the accepted paths are exercised too.
    fn len() -> impl Strategy<Value = u32> {
        prop_oneof![
            Just(16u32),
            Just(1u32),
            Just(17u32),
            (0u32..16).prop_map(|k| k * 512),
            0u32..64,
            any::<u32>(),
        ]
    }

    fn desc() -> impl Strategy<Value = RawDesc> {
        let kind = prop_oneof![0u32..2, 0u32..16];
        (addr(), len(), any::<bool>(), kind, any::<u64>())
    }

    type RawDesc = (u64, u32, bool, u32, u64);

    /// A read or write as a driver builds it, with data addresses and lengths that
    /// are often, not always, valid.
    fn well_formed() -> impl Strategy<Value = Vec<RawDesc>> {
        let data = (addr(), prop_oneof![(1u32..16).prop_map(|k| k * 512), len()]);
        (
            MEM_BASE..MEM_BASE + MEM_SIZE - 16,
            0u32..2,
            proptest::collection::vec(data, 0..4),
            MEM_BASE..MEM_BASE + MEM_SIZE,
        )
            .prop_map(|(header, kind, data, status)| {
                let write = kind == 0; // IN: the device writes the data
                let mut chain = vec![(header, 16, false, kind, 0)];
                chain.extend(data.into_iter().map(|(a, l)| (a, l, write, kind, 0)));
                chain.push((status, 1, true, kind, 0));
                chain
            })
    }

    fn chain() -> impl Strategy<Value = Vec<RawDesc>> {
        prop_oneof![proptest::collection::vec(desc(), 0..8), well_formed(),]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Whatever the chain, parsing and validating never panics, and whatever is
        /// accepted for I/O translates only to host memory inside guest RAM, with the
        /// exact length the action names.
        #[test]
        fn parse_never_panics_and_iovecs_stay_inside(
            mut descs in chain(),
            ordered in proptest::bool::weighted(0.8),
            truncated in proptest::bool::weighted(0.1),
            sector in prop_oneof![0u64..4096, 4090u64..4100, any::<u64>()],
        ) {
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(MEM_BASE), MEM_SIZE as usize)]).unwrap();
            let region = mem.iter().next().unwrap();
            let host_start = region.get_host_address(vm_memory::MemoryRegionAddress(0)).unwrap() as usize;
            let host_end = host_start + MEM_SIZE as usize;
            if ordered {
                // Device-readable before device-writable, as a driver lays them out.
                descs.sort_by_key(|d| d.2);
            }
            let n = descs.len();
            let chain: Vec<Descriptor> = descs
                .iter()
                .enumerate()
                .map(|(i, &(a, l, write, kind, fill))| {
                    // Plant a header with a plausible type where a descriptor points.
                    let _ = mem.write_obj(kind, GuestAddress(a));
                    let _ = mem.write_obj(sector, GuestAddress(a.wrapping_add(8)));
                    let _ = mem.write_obj(fill, GuestAddress(a.wrapping_add(16)));
                    let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                    if i + 1 < n || truncated {
                        flags |= VRING_DESC_F_NEXT as u16;
                    }
                    Descriptor::new(a, l, flags, 0)
                })
                .collect();
            let limits = Limits {
                disk_size: 2 << 20,
                readonly: false,
                max_discard_sectors: 1 << 20,
                max_discard_seg: 4,
                max_write_zeroes_sectors: 1 << 20,
                max_write_zeroes_seg: 4,
            };
            let mut request = Request::default();
            if request.parse(&mem, 0, chain.into_iter()).is_err() {
                return Ok(());
            }
            ACCEPTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            prop_assert!(mem.address_in_range(request.status));
            let mut iovecs = IoVecs::default();
            let shared = Arc::new(mem.clone());
            match request.action(&limits) {
                Action::Read { offset, len } | Action::Write { offset, len } => {
                    prop_assert!(offset + len <= limits.disk_size);
                    let spans = if matches!(request.action(&limits), Action::Read { .. }) {
                        &request.writable
                    } else {
                        &request.readable
                    };
                    IO.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if spans_to_iovecs(&shared, spans, &mut iovecs).is_ok() {
                        let total: usize = iovecs.as_slice().iter().map(|v| v.iov_len).sum();
                        prop_assert_eq!(total as u64, len);
                        prop_assert_eq!(iovecs.len() as u64, len);
                        for v in iovecs.as_slice() {
                            let start = v.iov_base as usize;
                            prop_assert!(start >= host_start && start + v.iov_len <= host_end);
                        }
                    }
                }
                Action::Segments { write_zeroes, count } => {
                    for i in 0..count {
                        if let Ok((offset, len, _)) = request.segment(&mem, i, write_zeroes, &limits) {
                            prop_assert!(offset + len <= limits.disk_size);
                        }
                    }
                }
                Action::Flush | Action::GetId | Action::Fail(_) => {}
            }
        }
    }

    /// The property above proves little if almost every chain is refused early:
    /// check that a good share of the cases reach the I/O path.
    #[test]
    fn generator_reaches_the_io_path() {
        parse_never_panics_and_iovecs_stay_inside();
        let accepted = ACCEPTED.load(std::sync::atomic::Ordering::Relaxed);
        let io = IO.load(std::sync::atomic::Ordering::Relaxed);
        assert!(accepted > 500 && io > 200, "accepted {accepted}, I/O {io}");
        eprintln!("accepted {accepted}, I/O {io}");
    }
}
