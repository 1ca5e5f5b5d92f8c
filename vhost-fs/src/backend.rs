//! The vhost-user side of the file system device: features, config space (tag and
//! number of request queues), and the dispatch of kicks to the queue workers.
//! Queue 0 is the high-priority queue (FORGET, BATCH_FORGET), queues 1..=N the
//! request queues; each queue has its own thread.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::VhostUserBackend;
use vhostkit_common::backend::{bit, config_slice};
use vhostkit_common::lifecycle::{ExitEvents, GuestMemory, ServedBackend, Vring};
use vhostkit_common::{guest_debug, guest_error};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::config::{FsConfig, InodeFileHandles, TAG_BYTES};
use crate::passthrough::{FsOptions, PassthroughFs};
use crate::server::{FsServer, Server};
use crate::worker::process_queue;
use vhostkit_common::queue::{Coalescer, Poller, QueueServer};

/// Largest queue size a frontend may configure.
pub const MAX_QUEUE_SIZE: usize = 1024;
/// `struct virtio_fs_config`: `tag[36]`, `num_request_queues` (le32).
pub const CONFIG_LEN: usize = TAG_BYTES + 4;

/// The shared folder as the serving process reaches it, for every connection.
pub struct Share {
    /// The folder, opened once at start-up (`O_PATH | O_DIRECTORY`; inside a
    /// sandbox, its "/"). Every session starts from this descriptor, never from a
    /// path looked up again: a folder renamed or replaced on the host after
    /// start-up does not change what a later frontend gets.
    pub root: OwnedFd,
    /// This process's `/proc/self/fd` (`O_PATH`), opened before any sandbox.
    pub proc_self_fd: OwnedFd,
}

/// A file system device for one frontend connection. Clones share everything.
#[derive(Clone)]
pub struct FsBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<FsConfig>,
    fs: FsServer,
    memory: Mutex<Option<GuestMemory>>,
    /// Each queue's server, with its adaptive polling (only its own worker
    /// thread locks it).
    queues: Vec<Mutex<QueueServer>>,
    exit_events: ExitEvents,
}

impl FsBackend {
    /// A fresh session (no inodes but the root, no open files) for a new connection.
    pub fn new(config: Arc<FsConfig>, share: &Share) -> io::Result<Self> {
        let fs = PassthroughFs::with_root(
            share.root.try_clone()?,
            share.proc_self_fd.try_clone()?,
            FsOptions {
                readonly: config.readonly,
                xattr: config.xattr,
                cache: config.cache,
                announce_submounts: config.announce_submounts,
                file_handles: config.inode_file_handles != InodeFileHandles::Never,
                allow_direct_io: config.allow_direct_io,
            },
        )
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", config.shared_dir.display())))?;
        Ok(FsBackend {
            inner: Arc::new(Inner {
                fs: Server::new(fs),
                memory: Mutex::new(None),
                queues: (0..=config.num_request_queues)
                    .map(|q| {
                        Mutex::new(
                            QueueServer::new(format!("queue {q}"), Poller::adaptive(config.poll))
                                .with_coalescing(Coalescer::adaptive(config.coalesce)),
                        )
                    })
                    .collect(),
                config,
                exit_events: ExitEvents::default(),
            }),
        })
    }

    /// The virtio_fs_config bytes.
    pub fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        if let Some(tag) = &self.inner.config.tag {
            c[..TAG_BYTES].copy_from_slice(tag);
        }
        c[TAG_BYTES..]
            .copy_from_slice(&u32::from(self.inner.config.num_request_queues).to_le_bytes());
        c
    }

    fn memory(&self) -> Option<GuestMemory> {
        self.inner
            .memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl VhostUserBackend for FsBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        1 + usize::from(self.inner.config.num_request_queues)
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_RING_F_EVENT_IDX)
            | bit(VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        guest_debug!("frontend acked features {features:#x}");
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        vhostkit_common::backend::protocol_features()
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The library configures each vring for EVENT_IDX; the worker's
        // enable/disable/needs_notification calls follow it.
    }

    fn update_memory(&self, mem: GuestMemory) -> io::Result<()> {
        *self.inner.memory.lock().unwrap_or_else(|p| p.into_inner()) = Some(mem);
        Ok(())
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        config_slice(&self.config_space(), offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // The virtio-fs config space is read-only; an error would end the connection.
        guest_error!(
            "SET_CONFIG ignored: offset {offset} length {} (read-only config)",
            buf.len()
        );
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.num_queues()).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.inner.exit_events.new_pair()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // Thread `thread_id` serves queue `thread_id` alone, so its vrings[0] is
        // that queue and event 0 its kick.
        if device_event != 0 {
            guest_error!("unexpected event {device_event} on queue thread {thread_id}");
            return Ok(());
        }
        let Some(vring) = vrings.first() else {
            return Ok(());
        };
        let Some(memory) = self.memory() else {
            guest_error!("queue {thread_id}: kicked before a memory table was set");
            return Ok(());
        };
        let Some(server) = self.inner.queues.get(thread_id) else {
            guest_error!("event on unknown queue thread {thread_id}");
            return Ok(());
        };
        let mut server = server.lock().unwrap_or_else(|p| p.into_inner());
        process_queue(&self.inner.fs, vring, &memory, thread_id, &mut server)
    }
}

impl ServedBackend for FsBackend {}
