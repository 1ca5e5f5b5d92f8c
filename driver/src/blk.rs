//! virtio-blk on top of the driver: requests, completions and the config space.
//!
//! A request is a chain `[header (16 bytes, device reads)] [data ...] [status (1
//! byte, device writes)]`; for DISCARD and WRITE_ZEROES the data is a list of
//! `virtio_blk_discard_write_zeroes` segments (16 bytes each) that the device reads.
//! [`BlkQueue`] owns a [`Queue`] and one "slot" of guest memory per request it can
//! have in flight (header, status byte, segments); data buffers are the caller's, given
//! as `(guest address, length)` pairs.
//!
//! ```text
//! BlkQueue::add(&BlkRequest, token)   place a request (not yet visible)
//! BlkQueue::submit()                  publish everything added, kick if wanted
//! BlkQueue::pop()                     a BlkCompletion { token, status, used_len }
//! BlkQueue::wait(timeout)             block on the call eventfd
//! BlkQueue::run / run_all             synchronous helpers for tests
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk;

use super::device::{Driver, DriverConfig};
use super::memory::GuestMem;
use super::virtq::{Buf, Queue};
use super::{ConfigBytes, Error, Result};

pub use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_TOPOLOGY,
    VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};

/// Sector size of virtio-blk addressing.
pub const SECTOR_SIZE: u64 = 512;
/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = virtio_blk::VIRTIO_BLK_S_OK as u8;
/// Status: I/O error.
pub const VIRTIO_BLK_S_IOERR: u8 = virtio_blk::VIRTIO_BLK_S_IOERR as u8;
/// Status: unsupported request.
pub const VIRTIO_BLK_S_UNSUPP: u8 = virtio_blk::VIRTIO_BLK_S_UNSUPP as u8;
/// What the status byte holds before the device writes it.
pub const STATUS_UNWRITTEN: u8 = 0xff;

/// Segments of DISCARD / WRITE_ZEROES a request slot holds.
pub const MAX_SEGMENTS: usize = 16;

/// The virtio-blk config space (the fields up to `write_zeroes_may_unmap`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkConfig {
    /// In 512-byte sectors.
    pub capacity: u64,
    pub size_max: u32,
    pub seg_max: u32,
    pub cylinders: u16,
    pub heads: u8,
    pub sectors: u8,
    pub blk_size: u32,
    pub physical_block_exp: u8,
    pub alignment_offset: u8,
    pub min_io_size: u16,
    pub opt_io_size: u32,
    pub writeback: u8,
    pub num_queues: u16,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub write_zeroes_may_unmap: u8,
}

impl BlkConfig {
    /// Bytes read by [`BlkConfig::read`]: up to and including `unused1[3]`.
    pub const SIZE: u32 = 60;

    /// Parses the little-endian config space.
    pub fn parse(b: &[u8]) -> Result<Self> {
        let b = ConfigBytes::new(b, Self::SIZE)?;
        Ok(BlkConfig {
            capacity: b.u64_at(0),
            size_max: b.u32_at(8),
            seg_max: b.u32_at(12),
            cylinders: b.u16_at(16),
            heads: b.u8_at(18),
            sectors: b.u8_at(19),
            blk_size: b.u32_at(20),
            physical_block_exp: b.u8_at(24),
            alignment_offset: b.u8_at(25),
            min_io_size: b.u16_at(26),
            opt_io_size: b.u32_at(28),
            writeback: b.u8_at(32),
            num_queues: b.u16_at(34),
            max_discard_sectors: b.u32_at(36),
            max_discard_seg: b.u32_at(40),
            discard_sector_alignment: b.u32_at(44),
            max_write_zeroes_sectors: b.u32_at(48),
            max_write_zeroes_seg: b.u32_at(52),
            write_zeroes_may_unmap: b.u8_at(56),
        })
    }

    /// GET_CONFIG of the whole structure.
    pub fn read(driver: &mut Driver) -> Result<Self> {
        Self::parse(&driver.get_config(0, Self::SIZE)?)
    }

    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity.saturating_mul(SECTOR_SIZE)
    }
}

/// One DISCARD / WRITE_ZEROES range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscardSegment {
    pub sector: u64,
    pub num_sectors: u32,
    /// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP` or 0.
    pub flags: u32,
}

impl DiscardSegment {
    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.sector.to_le_bytes());
        b[8..12].copy_from_slice(&self.num_sectors.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b
    }
}

/// A virtio-blk request to place on a [`BlkQueue`].
#[derive(Clone, Copy, Debug)]
pub struct BlkRequest<'a> {
    /// `VIRTIO_BLK_T_*` (any value, for tests of unsupported types).
    pub type_: u32,
    pub ioprio: u32,
    pub sector: u64,
    /// Data buffers `(guest address, length)`.
    pub data: &'a [(u64, u32)],
    /// Whether the device writes the data buffers (IN, GET_ID).
    pub data_device_writable: bool,
    /// DISCARD / WRITE_ZEROES ranges; the queue writes them into the slot and sends
    /// them as one device-readable buffer before `data`.
    pub segments: &'a [DiscardSegment],
    /// Send the chain as one indirect descriptor.
    pub indirect: bool,
}

impl<'a> BlkRequest<'a> {
    /// A request of any type, with device-readable data.
    pub fn raw(type_: u32, sector: u64, data: &'a [(u64, u32)]) -> Self {
        BlkRequest {
            type_,
            ioprio: 0,
            sector,
            data,
            data_device_writable: false,
            segments: &[],
            indirect: false,
        }
    }

    /// VIRTIO_BLK_T_IN: read from `sector` into `data`.
    pub fn read(sector: u64, data: &'a [(u64, u32)]) -> Self {
        BlkRequest {
            data_device_writable: true,
            ..Self::raw(VIRTIO_BLK_T_IN, sector, data)
        }
    }

    /// VIRTIO_BLK_T_OUT: write `data` at `sector`.
    pub fn write(sector: u64, data: &'a [(u64, u32)]) -> Self {
        Self::raw(VIRTIO_BLK_T_OUT, sector, data)
    }

    /// VIRTIO_BLK_T_FLUSH.
    pub fn flush() -> Self {
        Self::raw(VIRTIO_BLK_T_FLUSH, 0, &[])
    }

    /// VIRTIO_BLK_T_GET_ID into `buf` (normally `VIRTIO_BLK_ID_BYTES` long).
    pub fn get_id(buf: &'a [(u64, u32)]) -> Self {
        BlkRequest {
            data_device_writable: true,
            ..Self::raw(VIRTIO_BLK_T_GET_ID, 0, buf)
        }
    }

    /// VIRTIO_BLK_T_DISCARD of `segments`.
    pub fn discard(segments: &'a [DiscardSegment]) -> Self {
        BlkRequest {
            segments,
            ..Self::raw(VIRTIO_BLK_T_DISCARD, 0, &[])
        }
    }

    /// VIRTIO_BLK_T_WRITE_ZEROES of `segments`.
    pub fn write_zeroes(segments: &'a [DiscardSegment]) -> Self {
        BlkRequest {
            segments,
            ..Self::raw(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[])
        }
    }

    /// The same request, sent as one indirect descriptor (or not).
    pub fn indirect(self, indirect: bool) -> Self {
        BlkRequest { indirect, ..self }
    }

    /// Payload bytes of the data buffers.
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|d| u64::from(d.1)).sum()
    }
}

/// A finished request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkCompletion {
    /// The token given to [`BlkQueue::add`].
    pub token: u64,
    /// The status byte (`VIRTIO_BLK_S_*`, or [`STATUS_UNWRITTEN`]).
    pub status: u8,
    /// The length the device put in the used ring.
    pub used_len: u32,
}

const SLOT_HDR: u64 = 0;
const SLOT_STATUS: u64 = 16;
const SLOT_SEGS: u64 = 32;
const SLOT_STRIDE: u64 = (SLOT_SEGS + 16 * MAX_SEGMENTS as u64).next_multiple_of(64);

/// A virtio-blk queue: a [`Queue`] plus per-request header/status memory.
pub struct BlkQueue {
    q: Queue,
    mem: Arc<GuestMem>,
    slots: u64,
    free_slots: Vec<u32>,
    tokens: Vec<u64>,
    scratch: Vec<Buf>,
}

impl std::fmt::Debug for BlkQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlkQueue")
            .field("queue", &self.q)
            .field("free_slots", &self.free_slots.len())
            .finish()
    }
}

impl BlkQueue {
    /// Wraps `queue`, with memory for `max_inflight` requests in flight at once.
    pub fn new(queue: Queue, max_inflight: usize) -> Result<Self> {
        if max_inflight == 0 {
            return Err(Error::InvalidRequest("max_inflight must be at least 1"));
        }
        let mem = queue.memory().clone();
        let slots = mem.alloc_zeroed(SLOT_STRIDE * max_inflight as u64, 64)?;
        Ok(BlkQueue {
            q: queue,
            mem,
            slots,
            free_slots: (0..max_inflight as u32).rev().collect(),
            tokens: vec![0; max_inflight],
            scratch: Vec::with_capacity(8),
        })
    }

    /// The underlying virtqueue.
    pub fn queue(&self) -> &Queue {
        &self.q
    }

    /// The underlying virtqueue, e.g. for its raw API.
    pub fn queue_mut(&mut self) -> &mut Queue {
        &mut self.q
    }

    /// Requests that can still be added before one completes.
    pub fn free_slots(&self) -> usize {
        self.free_slots.len()
    }

    /// Requests added and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.tokens.len() - self.free_slots.len()
    }

    /// Places `req` on the queue (not yet published: see [`BlkQueue::submit`]).
    pub fn add(&mut self, req: &BlkRequest<'_>, token: u64) -> Result<()> {
        if req.segments.len() > MAX_SEGMENTS {
            return Err(Error::InvalidRequest(
                "too many discard/write-zeroes segments",
            ));
        }
        let slot = *self
            .free_slots
            .last()
            .ok_or(Error::NoFreeSlot(self.tokens.len()))?;
        let base = self.slots + u64::from(slot) * SLOT_STRIDE;
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&req.type_.to_le_bytes());
        hdr[4..8].copy_from_slice(&req.ioprio.to_le_bytes());
        hdr[8..16].copy_from_slice(&req.sector.to_le_bytes());
        self.mem.write(base + SLOT_HDR, &hdr)?;
        self.mem.write(base + SLOT_STATUS, &[STATUS_UNWRITTEN])?;
        self.scratch.clear();
        self.scratch.push(Buf::readable(base + SLOT_HDR, 16));
        if !req.segments.is_empty() {
            for (i, s) in req.segments.iter().enumerate() {
                self.mem
                    .write(base + SLOT_SEGS + 16 * i as u64, &s.to_bytes())?;
            }
            self.scratch.push(Buf::readable(
                base + SLOT_SEGS,
                16 * req.segments.len() as u32,
            ));
        }
        for &(addr, len) in req.data {
            self.scratch.push(Buf {
                addr,
                len,
                device_writable: req.data_device_writable,
            });
        }
        self.scratch.push(Buf::writable(base + SLOT_STATUS, 1));
        self.q.add(&self.scratch, req.indirect, u64::from(slot))?;
        self.free_slots.pop();
        self.tokens[slot as usize] = token;
        Ok(())
    }

    /// Publishes everything added and kicks if the backend wants it. Returns whether
    /// it kicked.
    pub fn submit(&mut self) -> Result<bool> {
        self.q.submit()
    }

    /// Reaps one completion.
    pub fn pop(&mut self) -> Result<Option<BlkCompletion>> {
        let Some(used) = self.q.pop_used() else {
            return Ok(None);
        };
        let slot = used
            .token
            .filter(|&s| (s as usize) < self.tokens.len())
            .ok_or(Error::UnknownUsedId(used.id))? as u32;
        let base = self.slots + u64::from(slot) * SLOT_STRIDE;
        let mut status = [0u8; 1];
        self.mem.read(base + SLOT_STATUS, &mut status)?;
        self.free_slots.push(slot);
        Ok(Some(BlkCompletion {
            token: self.tokens[slot as usize],
            status: status[0],
            used_len: used.len,
        }))
    }

    /// Blocks until a completion is ready or `timeout` passes (false).
    pub fn wait(&mut self, timeout: Duration) -> Result<bool> {
        self.q.wait_used(timeout)
    }

    /// Adds all `reqs` (tokens are their indexes), submits once and waits for all of
    /// them; returns the completions in request order. The queue must have nothing
    /// else in flight.
    pub fn run_all(
        &mut self,
        reqs: &[BlkRequest<'_>],
        timeout: Duration,
    ) -> Result<Vec<BlkCompletion>> {
        if self.in_flight() > 0 {
            return Err(Error::InvalidRequest(
                "run/run_all on a queue with requests in flight",
            ));
        }
        for (i, r) in reqs.iter().enumerate() {
            self.add(r, i as u64)?;
        }
        self.submit()?;
        let deadline = Instant::now() + timeout;
        let mut done: Vec<Option<BlkCompletion>> = vec![None; reqs.len()];
        let mut left = reqs.len();
        while left > 0 {
            while let Some(c) = self.pop()? {
                if let Some(d) = done.get_mut(c.token as usize).filter(|d| d.is_none()) {
                    *d = Some(c);
                    left -= 1;
                }
            }
            if left == 0 {
                break;
            }
            let now = Instant::now();
            if now >= deadline || !self.wait(deadline - now)? {
                return Err(Error::Timeout);
            }
        }
        Ok(done.into_iter().flatten().collect())
    }

    /// Runs one request to completion.
    pub fn run(&mut self, req: &BlkRequest<'_>, timeout: Duration) -> Result<BlkCompletion> {
        self.run_all(std::slice::from_ref(req), timeout)?
            .pop()
            .ok_or(Error::Timeout)
    }
}

/// A vhost-user-blk device: the connection and its config space.
#[derive(Debug)]
pub struct BlkDevice {
    pub driver: Driver,
    /// Read at connect time (default values if the backend lacks CONFIG).
    pub config: BlkConfig,
}

impl BlkDevice {
    /// [`Driver::connect_with_config`] with this device's config space.
    pub fn connect(socket: impl AsRef<std::path::Path>, cfg: &DriverConfig) -> Result<Self> {
        let (driver, config) = Driver::connect_with_config(socket, cfg, BlkConfig::read)?;
        Ok(BlkDevice { driver, config })
    }

    /// Sets up queues `0..count` of `size` entries, each able to hold `max_inflight`
    /// requests.
    pub fn setup_queues(
        &mut self,
        count: u16,
        size: u16,
        max_inflight: usize,
    ) -> Result<Vec<BlkQueue>> {
        (0..count)
            .map(|i| BlkQueue::new(self.driver.setup_queue(i, size)?, max_inflight))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::DEFAULT_BASE;
    use crate::virtq::{RawDesc, DESC_F_NEXT, DESC_F_WRITE};

    #[test]
    fn config_parse() {
        let mut b = vec![0u8; 60];
        b[0..8].copy_from_slice(&(131072u64).to_le_bytes());
        b[12..16].copy_from_slice(&126u32.to_le_bytes());
        b[20..24].copy_from_slice(&4096u32.to_le_bytes());
        b[34..36].copy_from_slice(&2u16.to_le_bytes());
        b[56] = 1;
        let c = BlkConfig::parse(&b).unwrap();
        assert_eq!(c.capacity, 131072);
        assert_eq!(c.capacity_bytes(), 64 << 20);
        assert_eq!(c.seg_max, 126);
        assert_eq!(c.blk_size, 4096);
        assert_eq!(c.num_queues, 2);
        assert_eq!(c.write_zeroes_may_unmap, 1);
        assert!(BlkConfig::parse(&b[..59]).is_err());
    }

    #[test]
    fn request_chain_layout() {
        let mem = Arc::new(GuestMem::new(1 << 20, DEFAULT_BASE).unwrap());
        let q = Queue::new(mem.clone(), 0, 8, false, 8).unwrap();
        let mut bq = BlkQueue::new(q, 2).unwrap();
        let data = mem.alloc(4096, 4096).unwrap();
        bq.add(&BlkRequest::read(8, &[(data, 4096)]), 77).unwrap();
        let q = bq.queue();
        let head = q.memory().read_obj::<u16>(q.addrs().avail + 4).unwrap();
        let d0 = q.read_desc(head).unwrap();
        assert_eq!((d0.len, d0.flags & DESC_F_WRITE), (16, 0));
        let hdr = mem.read_vec(d0.addr, 16).unwrap();
        assert_eq!(
            u32::from_le_bytes(hdr[0..4].try_into().unwrap()),
            VIRTIO_BLK_T_IN
        );
        assert_eq!(u64::from_le_bytes(hdr[8..16].try_into().unwrap()), 8);
        let d1 = q.read_desc(d0.next).unwrap();
        assert_eq!(
            d1,
            RawDesc {
                addr: data,
                len: 4096,
                flags: DESC_F_WRITE | DESC_F_NEXT,
                next: d1.next
            }
        );
        let d2 = q.read_desc(d1.next).unwrap();
        assert_eq!((d2.len, d2.flags), (1, DESC_F_WRITE));
        assert_eq!(mem.read_vec(d2.addr, 1).unwrap(), vec![STATUS_UNWRITTEN]);

        let seg = [DiscardSegment {
            sector: 1,
            num_sectors: 2,
            flags: VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
        }];
        bq.add(&BlkRequest::write_zeroes(&seg).indirect(true), 78)
            .unwrap();
        assert!(matches!(
            bq.add(&BlkRequest::flush(), 79),
            Err(Error::NoFreeSlot(2))
        ));
        let q = bq.queue();
        let head = q.memory().read_obj::<u16>(q.addrs().avail + 6).unwrap();
        let d = q.read_desc(head).unwrap();
        assert_eq!(d.len, 48);
        let s = RawDesc::read_at(&mem, d.addr + 16).unwrap();
        assert_eq!(s.len, 16);
        let bytes = mem.read_vec(s.addr, 16).unwrap();
        assert_eq!(bytes, seg[0].to_bytes());
    }
}
