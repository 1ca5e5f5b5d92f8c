//! The vhost-user side of the block device: features, config space, and the
//! dispatch of kicks and completions to the per-queue workers.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler};
use vhostkit_common::backend::{bit, config_slice, protocol_features};
use vhostkit_common::lifecycle::{ExitEvents, GuestMemory, ServedBackend, Vring};
use vhostkit_common::{guest_debug, guest_error, guest_info};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::config::BlkConfig;
use crate::disk::Disk;
use crate::engine::SyncEngine;
use crate::request::{Limits, ID_BYTES};
use crate::worker::{DeviceState, QueueWorker};
use crate::EnginePool;

/// Offset of the `writeback` byte in `struct virtio_blk_config`.
const CONFIG_WRITEBACK_OFFSET: usize = 32;
/// Size of `struct virtio_blk_config` as of virtio 1.1 (up to write_zeroes_may_unmap
/// and its padding).
const CONFIG_LEN: usize = 60;

/// The most sectors one discard or write-zeroes segment may cover: 16 MiB, as
/// qemu-storage-daemon's export. A Linux guest takes this as the limit of a whole
/// request (discard_max_bytes) and splits a discard of the whole disk (mkfs,
/// blkdiscard) into requests of this size, so the work one request asks for, and
/// what GET_VRING_BASE waits for when it stops a queue, stays bounded.
pub const MAX_SEGMENT_SECTORS: u32 = 1 << 15;
/// The most segments in one discard or write-zeroes request.
pub const MAX_SEGMENTS: u32 = 32;

/// A block device for one frontend connection. Clones share everything.
#[derive(Clone)]
pub struct BlkBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<BlkConfig>,
    device: Arc<DeviceState>,
    workers: Vec<Mutex<QueueWorker>>,
    acked_features: AtomicU64,
    /// Where the workers' engines go back when the connection ends.
    engines: Arc<EnginePool>,
    exit_events: ExitEvents,
}

impl BlkBackend {
    /// Makes the device for a new connection on an already opened disk, with the
    /// engines of `engines` (given back when the connection ends).
    pub fn new(
        config: Arc<BlkConfig>,
        disk: Arc<Disk>,
        engines: Arc<EnginePool>,
    ) -> io::Result<Self> {
        let limits = Limits {
            disk_size: disk.size,
            readonly: disk.readonly,
            max_discard_sectors: MAX_SEGMENT_SECTORS,
            max_discard_seg: MAX_SEGMENTS,
            max_write_zeroes_sectors: MAX_SEGMENT_SECTORS,
            max_write_zeroes_seg: MAX_SEGMENTS,
        };
        let device = Arc::new(DeviceState {
            disk: disk.clone(),
            limits,
            serial: config.serial,
            writeback: AtomicBool::new(true),
        });
        let mut workers = Vec::with_capacity(config.num_queues as usize);
        for index in 0..config.num_queues as usize {
            // The pool holds one engine per queue, and the previous connection's
            // backend is gone before the next is made: a missing engine is a bug,
            // served without io_uring rather than with a ring made under seccomp.
            let engine = engines.take(index).unwrap_or_else(|| {
                log::error!("queue {index}: no engine left; using the sync engine");
                Box::new(SyncEngine::new(Arc::new(
                    disk.file
                        .try_clone()
                        .expect("duplicate the disk descriptor"),
                )))
            });
            workers.push(Mutex::new(QueueWorker::new(
                index,
                device.clone(),
                engine,
                config.queue_size as usize,
                config.poll,
                config.coalesce,
            )));
        }
        Ok(BlkBackend {
            inner: Arc::new(Inner {
                config,
                device,
                workers,
                acked_features: AtomicU64::new(0),
                engines,
                exit_events: ExitEvents::default(),
            }),
        })
    }

    fn worker(&self, index: usize) -> Option<MutexGuard<'_, QueueWorker>> {
        // A poisoned worker means a bug panicked mid-request; keep serving the rest.
        self.inner
            .workers
            .get(index)
            .map(|w| w.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// The virtio_blk_config bytes for the current state.
    pub fn config_space(&self) -> [u8; CONFIG_LEN] {
        let disk = &self.inner.device.disk;
        let config = &self.inner.config;
        let limits = &self.inner.device.limits;
        let mut c = [0u8; CONFIG_LEN];
        let mut put =
            |offset: usize, bytes: &[u8]| c[offset..offset + bytes.len()].copy_from_slice(bytes);
        put(0, &disk.sectors().to_le_bytes()); // capacity
        put(8, &0u32.to_le_bytes()); // size_max: no limit
        put(12, &seg_max(config.queue_size).to_le_bytes());
        put(20, &disk.logical_block_size.to_le_bytes()); // blk_size
                                                         // At most 32: fits a byte.
        let exp =
            u8::try_from((disk.physical_block_size / disk.logical_block_size).trailing_zeros())
                .unwrap_or(0);
        put(24, &[exp, 0]); // physical_block_exp, alignment_offset
        put(26, &1u16.to_le_bytes()); // min_io_size (logical blocks)
        put(28, &0u32.to_le_bytes()); // opt_io_size
        let writeback = self.inner.device.writeback.load(Ordering::Relaxed);
        put(CONFIG_WRITEBACK_OFFSET, &[u8::from(writeback), 0]);
        put(34, &config.num_queues.to_le_bytes());
        put(36, &limits.max_discard_sectors.to_le_bytes());
        put(40, &limits.max_discard_seg.to_le_bytes());
        put(44, &(disk.physical_block_size >> 9).max(1).to_le_bytes()); // discard alignment
        put(48, &limits.max_write_zeroes_sectors.to_le_bytes());
        put(52, &limits.max_write_zeroes_seg.to_le_bytes());
        put(56, &[1]); // write_zeroes_may_unmap
        c
    }
}

/// SEG_MAX: the most data segments a request may have; two descriptors of a chain
/// go to the header and the status (as QEMU does).
fn seg_max(queue_size: u16) -> u32 {
    u32::from(queue_size).saturating_sub(2).max(1)
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.inner.config.num_queues as usize
    }

    fn max_queue_size(&self) -> usize {
        self.inner.config.queue_size as usize
    }

    fn features(&self) -> u64 {
        let mut features = bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_RING_F_EVENT_IDX)
            | bit(VIRTIO_RING_F_INDIRECT_DESC)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_FLUSH)
            | bit(VIRTIO_BLK_F_TOPOLOGY)
            | bit(VIRTIO_BLK_F_CONFIG_WCE)
            | bit(VIRTIO_BLK_F_MQ)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.inner.device.disk.readonly {
            features |= bit(VIRTIO_BLK_F_RO);
        } else {
            features |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        features
    }

    fn acked_features(&self, features: u64) {
        guest_debug!("frontend acked features {features:#x}");
        self.inner.acked_features.store(features, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features()
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The library configures each vring's queue for EVENT_IDX; the worker's
        // enable/disable/needs_notification calls follow it from there.
    }

    fn update_memory(&self, mem: GuestMemory) -> io::Result<()> {
        for index in 0..self.inner.workers.len() {
            if let Some(mut worker) = self.worker(index) {
                worker.set_memory(mem.clone());
            }
        }
        Ok(())
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        config_slice(&self.config_space(), offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Only the writeback byte is writable, and only with CONFIG_WCE.
        let wce =
            self.inner.acked_features.load(Ordering::Relaxed) & bit(VIRTIO_BLK_F_CONFIG_WCE) != 0;
        if offset as usize == CONFIG_WRITEBACK_OFFSET && buf.len() == 1 && wce {
            let writeback = buf[0] != 0;
            guest_info!(
                "guest set the write cache to {}",
                if writeback {
                    "write-back"
                } else {
                    "write-through"
                }
            );
            self.inner
                .device
                .writeback
                .store(writeback, Ordering::Relaxed);
            return Ok(());
        }
        // Like QEMU's virtio-blk, ignore writes to read-only fields. An error here
        // would make the vhost-user library drop the whole connection.
        guest_error!(
            "SET_CONFIG ignored: offset {offset} length {} is not writable",
            buf.len()
        );
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One worker thread per queue.
        (0..self.inner.config.num_queues)
            .map(|q| 1u64 << q)
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.inner.exit_events.new_pair()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if let Some(mut worker) = self.worker(queue_index as usize) {
            worker.drain();
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // Thread `thread_id` serves queue `thread_id` alone (queues_per_thread), so
        // its vrings[0] is that queue and event 0 is its kick.
        let Some(vring) = vrings.first() else {
            return Ok(());
        };
        let Some(mut worker) = self.worker(thread_id) else {
            return Ok(());
        };
        if device_event == 0 {
            worker.handle_kick(vring)
        } else if device_event == self.completion_event() {
            if let Some(fd) = worker.completion_fd() {
                clear_eventfd(fd);
            }
            worker.handle_completions(vring)
        } else {
            guest_error!("unexpected event {device_event} on queue thread {thread_id}");
            Ok(())
        }
    }
}

impl BlkBackend {
    /// The epoll id of a worker's engine-completion eventfd (the same on each thread;
    /// ids up to num_queues are the library's).
    fn completion_event(&self) -> u16 {
        self.inner.config.num_queues + 1
    }
}

fn clear_eventfd(fd: std::os::fd::RawFd) {
    let mut value: u64 = 0;
    // SAFETY: reading 8 bytes into a local u64 from a non-blocking eventfd we own.
    let _ = unsafe { libc::read(fd, (&mut value as *mut u64).cast(), 8) };
}

impl ServedBackend for BlkBackend {
    fn attach(&self, handlers: &[Arc<VringEpollHandler<Self>>]) -> io::Result<()> {
        for (index, handler) in handlers.iter().enumerate() {
            let Some(worker) = self.worker(index) else {
                continue;
            };
            if let Some(fd) = worker.completion_fd() {
                handler.register_listener(fd, EventSet::IN, u64::from(self.completion_event()))?;
            }
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Complete whatever is in flight, then hand each engine back, idle, for the
        // next connection.
        for (index, worker) in self.workers.iter_mut().enumerate() {
            let worker = worker.get_mut().unwrap_or_else(|p| p.into_inner());
            worker.drain();
            self.engines.give_back(index, worker.take_engine());
        }
    }
}

/// Builds the 20-byte GET_ID answer from a serial string (NUL-padded, cut at 20).
pub fn serial_bytes(serial: &str) -> [u8; ID_BYTES] {
    let mut id = [0u8; ID_BYTES];
    let bytes = serial.as_bytes();
    let n = bytes.len().min(ID_BYTES);
    id[..n].copy_from_slice(&bytes[..n]);
    id
}
