//! virtio-net on top of the driver: transmit frames, receive buffers, the control
//! queue and the config space.
//!
//! Every frame either way starts with the 12-byte `virtio_net_hdr_mrg_rxbuf`
//! ([`NetHdr`], VERSION_1 layout). Queues follow the spec's layout: pair `i` is
//! receive queue `2i` and transmit queue `2i+1`; the control queue comes after the
//! last pair ([`ctrl_queue_index`]).
//!
//! ```text
//! NetDevice::connect / setup_pairs / setup_ctrl
//! NetQueuePair::send(&hdr, frame)     post a tx frame (header + frame in one buffer)
//! NetQueuePair::send_chain(&bufs)     post a tx chain of a test's own making
//! NetQueuePair::reap_tx(timeout)      wait for tx completions, free their buffers
//! NetQueuePair::post_rx(n, size)      give the device n receive buffers
//! NetQueuePair::recv(timeout)         one received frame (all its buffers), reposted
//! CtrlQueue::command(class, cmd, data) an ack byte (VIRTIO_NET_OK / ERR)
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::device::{Driver, DriverConfig};
use super::memory::GuestMem;
use super::virtq::{Buf, Queue, Used};
use super::{ConfigBytes, Error, Result};

pub use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, VIRTIO_NET_CTRL_MAC_TABLE_SET,
    VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_CTRL_RX,
    VIRTIO_NET_CTRL_RX_ALLMULTI, VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_S_LINK_UP,
};

/// Bytes of the per-frame header (`virtio_net_hdr_mrg_rxbuf`).
pub const VNET_HDR_LEN: usize = 12;
/// Control acks.
pub const VIRTIO_NET_OK: u8 = virtio_bindings::virtio_net::VIRTIO_NET_OK as u8;
pub const VIRTIO_NET_ERR: u8 = virtio_bindings::virtio_net::VIRTIO_NET_ERR as u8;
/// What the ack byte holds before the device writes it.
pub const ACK_UNWRITTEN: u8 = 0xee;

/// Index of the control queue of a device with `max_pairs` queue pairs.
pub fn ctrl_queue_index(max_pairs: u16) -> u16 {
    2 * max_pairs
}

/// The per-frame header, VERSION_1 layout, host byte order here and little-endian
/// in guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl NetHdr {
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> Self {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        NetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }
}

/// The virtio-net config space up to `mtu`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    pub mac: [u8; 6],
    pub status: u16,
    pub max_virtqueue_pairs: u16,
    pub mtu: u16,
}

impl NetConfig {
    pub const SIZE: u32 = 12;

    pub fn parse(b: &[u8]) -> Result<Self> {
        let b = ConfigBytes::new(b, Self::SIZE)?;
        Ok(NetConfig {
            mac: b.array_at(0),
            status: b.u16_at(6),
            max_virtqueue_pairs: b.u16_at(8),
            mtu: b.u16_at(10),
        })
    }

    pub fn read(driver: &mut Driver) -> Result<Self> {
        Self::parse(&driver.get_config(0, Self::SIZE)?)
    }
}

/// A received frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxFrame {
    pub hdr: NetHdr,
    /// The frame after the header.
    pub data: Vec<u8>,
    /// Used entries (buffers) it took.
    pub buffers: u16,
}

/// One receive queue and its transmit partner.
pub struct NetQueuePair {
    pub rx: Queue,
    pub tx: Queue,
    mem: Arc<GuestMem>,
    /// Guest address of each receive buffer in flight -> its size.
    rx_bufs: HashMap<u64, u32>,
}

impl std::fmt::Debug for NetQueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetQueuePair")
            .field("rx", &self.rx)
            .field("tx", &self.tx)
            .finish()
    }
}

impl NetQueuePair {
    pub fn new(rx: Queue, tx: Queue) -> Self {
        NetQueuePair {
            mem: rx.memory().clone(),
            rx,
            tx,
            rx_bufs: HashMap::new(),
        }
    }

    pub fn memory(&self) -> &Arc<GuestMem> {
        &self.mem
    }

    /// Copies `hdr` and `frame` into one new buffer and posts it on the transmit
    /// queue (published and kicked). The buffer is freed by [`Self::reap_tx`].
    pub fn send(&mut self, hdr: &NetHdr, frame: &[u8]) -> Result<()> {
        let len = VNET_HDR_LEN + frame.len();
        let addr = self.mem.alloc(len as u64, 64)?;
        self.mem.write(addr, &hdr.to_bytes())?;
        self.mem.write(addr + VNET_HDR_LEN as u64, frame)?;
        let len = u32::try_from(len).map_err(|_| Error::InvalidRequest("frame too long"))?;
        self.tx.add(&[Buf::readable(addr, len)], false, addr)?;
        self.tx.submit()?;
        Ok(())
    }

    /// Posts a transmit chain of the caller's buffers (token 0: nothing is freed).
    pub fn send_chain(&mut self, bufs: &[Buf], indirect: bool) -> Result<()> {
        self.tx.add(bufs, indirect, 0)?;
        self.tx.submit()?;
        Ok(())
    }

    /// Waits until every transmit chain in flight is returned (freeing buffers of
    /// [`Self::send`]); returns the completions.
    pub fn reap_tx(&mut self, timeout: Duration) -> Result<Vec<Used>> {
        let deadline = Instant::now() + timeout;
        let mut done = Vec::new();
        while self.tx.in_flight() > 0 {
            while let Some(used) = self.tx.pop_used() {
                if let Some(addr) = used.token.filter(|&t| t != 0) {
                    self.mem.free(addr);
                }
                done.push(used);
            }
            if self.tx.in_flight() == 0 {
                break;
            }
            let now = Instant::now();
            if now >= deadline || !self.tx.wait_used(deadline - now)? {
                return Err(Error::Timeout);
            }
        }
        Ok(done)
    }

    /// Allocates `count` receive buffers of `size` bytes and posts them.
    pub fn post_rx(&mut self, count: usize, size: u32) -> Result<()> {
        for _ in 0..count {
            let addr = self.mem.alloc(u64::from(size), 64)?;
            self.mem.fill(addr, u64::from(size), 0xa5)?;
            self.rx.add(&[Buf::writable(addr, size)], false, addr)?;
            self.rx_bufs.insert(addr, size);
        }
        self.rx.submit()?;
        Ok(())
    }

    /// Receive buffers the device holds.
    pub fn rx_posted(&self) -> usize {
        self.rx.in_flight()
    }

    fn next_rx_used(&mut self, deadline: Instant) -> Result<Option<Used>> {
        self.rx.next_used_by(deadline)
    }

    /// Waits up to `timeout` for one frame (all the buffers its `num_buffers`
    /// says), reads it and posts its buffers again. `None` on timeout.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<RxFrame>> {
        let deadline = Instant::now() + timeout;
        let Some(first) = self.next_rx_used(deadline)? else {
            return Ok(None);
        };
        let mut bytes = self.take_rx(first)?;
        if bytes.len() < VNET_HDR_LEN {
            return Err(Error::InvalidRequest(
                "received buffer shorter than the header",
            ));
        }
        let mut hdr_bytes = [0u8; VNET_HDR_LEN];
        hdr_bytes.copy_from_slice(&bytes[..VNET_HDR_LEN]);
        let hdr = NetHdr::from_bytes(&hdr_bytes);
        for _ in 1..hdr.num_buffers.max(1) {
            let Some(more) = self.next_rx_used(deadline)? else {
                return Err(Error::Timeout);
            };
            bytes.extend(self.take_rx(more)?);
        }
        self.rx.submit()?;
        Ok(Some(RxFrame {
            hdr,
            data: bytes.split_off(VNET_HDR_LEN),
            buffers: hdr.num_buffers,
        }))
    }

    /// Reads a used receive buffer and adds it back (not yet published).
    fn take_rx(&mut self, used: Used) -> Result<Vec<u8>> {
        let addr = used.token.ok_or(Error::UnknownUsedId(used.id))?;
        let size = *self
            .rx_bufs
            .get(&addr)
            .ok_or(Error::UnknownUsedId(used.id))?;
        if used.len > size {
            return Err(Error::InvalidRequest("device wrote past a receive buffer"));
        }
        let bytes = self.mem.read_vec(addr, used.len as usize)?;
        self.rx.add(&[Buf::writable(addr, size)], false, addr)?;
        Ok(bytes)
    }
}

/// The control queue, with one command slot.
pub struct CtrlQueue {
    pub q: Queue,
    slot: u64,
}

/// Room in the command slot for the header and data.
pub const CTRL_SLOT_LEN: u64 = 4096;

impl CtrlQueue {
    pub fn new(q: Queue) -> Result<Self> {
        let slot = q.memory().alloc(CTRL_SLOT_LEN + 64, 64)?;
        Ok(CtrlQueue { q, slot })
    }

    /// Sends `class`/`cmd` with `data` and returns the ack byte the device wrote
    /// ([`ACK_UNWRITTEN`] if it wrote none).
    pub fn command(&mut self, class: u32, cmd: u32, data: &[u8], timeout: Duration) -> Result<u8> {
        let mem = self.q.memory().clone();
        if data.len() as u64 + 2 > CTRL_SLOT_LEN {
            return Err(Error::InvalidRequest("control data too long"));
        }
        mem.write(self.slot, &[class as u8, cmd as u8])?;
        mem.write(self.slot + 2, data)?;
        let ack = self.slot + CTRL_SLOT_LEN;
        mem.write(ack, &[ACK_UNWRITTEN])?;
        let mut bufs = vec![Buf::readable(self.slot, 2)];
        if !data.is_empty() {
            bufs.push(Buf::readable(self.slot + 2, data.len() as u32));
        }
        bufs.push(Buf::writable(ack, 1));
        self.run(&bufs, timeout)?;
        Ok(mem.read_vec(ack, 1)?[0])
    }

    /// Posts a chain of the caller's making and waits for it to come back; returns
    /// the used length.
    pub fn run(&mut self, bufs: &[Buf], timeout: Duration) -> Result<u32> {
        self.q.add(bufs, false, 1)?;
        self.q.submit()?;
        match self.q.next_used_by(Instant::now() + timeout)? {
            Some(used) => Ok(used.len),
            None => Err(Error::Timeout),
        }
    }
}

/// A vhost-user-net device: the connection and its config space.
#[derive(Debug)]
pub struct NetDevice {
    pub driver: Driver,
    pub config: NetConfig,
}

impl NetDevice {
    /// [`Driver::connect_with_config`] with this device's config space.
    pub fn connect(socket: impl AsRef<std::path::Path>, cfg: &DriverConfig) -> Result<Self> {
        let (driver, config) = Driver::connect_with_config(socket, cfg, NetConfig::read)?;
        Ok(NetDevice { driver, config })
    }

    /// Sets up pairs `0..count` with queues of `size` entries.
    pub fn setup_pairs(&mut self, count: u16, size: u16) -> Result<Vec<NetQueuePair>> {
        (0..count)
            .map(|i| {
                let rx = self.driver.setup_queue(2 * i, size)?;
                let tx = self.driver.setup_queue(2 * i + 1, size)?;
                Ok(NetQueuePair::new(rx, tx))
            })
            .collect()
    }

    /// Sets up the control queue (after the device's last pair).
    pub fn setup_ctrl(&mut self, size: u16) -> Result<CtrlQueue> {
        let pairs = ((self.driver.num_queues().saturating_sub(1)) / 2) as u16;
        CtrlQueue::new(self.driver.setup_queue(ctrl_queue_index(pairs), size)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = NetHdr {
            flags: 1,
            gso_type: 1,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 3,
        };
        let b = h.to_bytes();
        assert_eq!(b[4..6], 1448u16.to_le_bytes());
        assert_eq!(NetHdr::from_bytes(&b), h);
    }

    #[test]
    fn config_parse() {
        let b = [2, 0, 0, 0, 0, 7, 1, 0, 4, 0, 0xdc, 0x05];
        let c = NetConfig::parse(&b).unwrap();
        assert_eq!(c.mac, [2, 0, 0, 0, 0, 7]);
        assert_eq!(c.status, 1);
        assert_eq!(c.max_virtqueue_pairs, 4);
        assert_eq!(c.mtu, 1500);
        assert!(NetConfig::parse(&b[..11]).is_err());
    }
}
