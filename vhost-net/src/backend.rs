//! The vhost-user side of the network device: features, config space, the thread
//! layout (one worker thread per queue pair, the control queue on thread 0) and
//! the dispatch of kicks and tap readiness to the workers.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler};
use vhostkit_common::backend::{config_slice, protocol_features};
use vhostkit_common::lifecycle::{ExitEvents, GuestMemory, ServedBackend, Vring};
use vhostkit_common::{guest_debug, guest_error, guest_warn};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::config::NetConfig;
use crate::net::{self, bit, VNET_HDR_LEN};
use crate::tap::Tap;
use crate::worker::{ControlWorker, DeviceState, PairWorker};

/// Header of a legacy guest that acked neither VERSION_1 nor MRG_RXBUF.
const LEGACY_HDR_LEN: usize = 10;

/// Thread-local event ids (the library numbers a thread's queues 0, 1, ... in
/// queue order): a pair's receive and transmit queues, and on thread 0 the
/// control queue.
const RX_EVENT: u16 = 0;
const TX_EVENT: u16 = 1;
const CTRL_EVENT: u16 = 2;

/// A network device for one frontend connection. Clones share everything.
#[derive(Clone)]
pub struct NetBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<NetConfig>,
    device: Arc<DeviceState>,
    pairs: Vec<Mutex<PairWorker>>,
    ctrl: Mutex<ControlWorker>,
    acked_features: AtomicU64,
    exit_events: ExitEvents,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned worker means a bug panicked mid-frame; keep serving the rest.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl NetBackend {
    /// Makes the device for a new connection on the already opened tap, resetting
    /// what the previous guest set on it (offloads, queues in use).
    pub fn new(config: Arc<NetConfig>, tap: Arc<Tap>) -> io::Result<Self> {
        tap.set_offload(0).map_err(io::Error::other)?;
        tap.set_vnet_hdr_len(VNET_HDR_LEN)
            .map_err(io::Error::other)?;
        tap.set_active_queues(usize::from(config.num_queue_pairs))
            .map_err(io::Error::other)?;
        let device = Arc::new(DeviceState {
            tap,
            max_pairs: config.num_queue_pairs,
            active_pairs: AtomicU16::new(1),
            ctrl_in_charge: AtomicBool::new(false),
            hdr_len: AtomicUsize::new(VNET_HDR_LEN),
            mergeable_rx: AtomicBool::new(false),
            rx_frame_max: AtomicUsize::new(net::MAX_FRAME_LEN),
        });
        let pairs = (0..usize::from(config.num_queue_pairs))
            .map(|pair| {
                Mutex::new(PairWorker::new(
                    pair,
                    device.clone(),
                    config.poll,
                    config.coalesce,
                ))
            })
            .collect();
        Ok(NetBackend {
            inner: Arc::new(Inner {
                ctrl: Mutex::new(ControlWorker::new(device.clone())),
                config,
                device,
                pairs,
                acked_features: AtomicU64::new(0),
                exit_events: ExitEvents::default(),
            }),
        })
    }

    fn pair(&self, index: usize) -> Option<MutexGuard<'_, PairWorker>> {
        self.inner.pairs.get(index).map(lock)
    }

    /// The config space bytes.
    pub fn config_space(&self) -> [u8; net::CONFIG_LEN] {
        let c = &self.inner.config;
        net::config_space(c.mac, true, c.num_queue_pairs, c.mtu)
    }

    /// The epoll id of a pair's tap fd (the same on each thread; ids up to
    /// num_queues are the library's).
    fn tap_event(&self) -> u16 {
        // At most 2 * 31 + 1 queues (the configuration's limit): fits 16 bits.
        u16::try_from(net::num_queues(self.inner.config.num_queue_pairs))
            .map_or(u16::MAX, |n| n + 1)
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        net::num_queues(self.inner.config.num_queue_pairs)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.inner.config.queue_size)
    }

    fn features(&self) -> u64 {
        net::device_features(true) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        guest_debug!("frontend acked features {features:#x}");
        // A frame held for the previous driver may carry another header size.
        for pair in &self.inner.pairs {
            lock(pair).drop_held_frame();
        }
        self.inner.acked_features.store(features, Ordering::Relaxed);
        let device = &self.inner.device;
        let hdr_len = if features & (bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF)) != 0 {
            VNET_HDR_LEN
        } else {
            LEGACY_HDR_LEN
        };
        if let Err(e) = device.tap.set_vnet_hdr_len(hdr_len) {
            guest_warn!("{e}");
        }
        device.hdr_len.store(hdr_len, Ordering::Relaxed);
        device.mergeable_rx.store(
            features & bit(VIRTIO_NET_F_MRG_RXBUF) != 0,
            Ordering::Relaxed,
        );
        // The tap may hand the guest frames with partial checksums or as large
        // segments only if the guest said it takes them.
        let offload = net::tap_offload_flags(features);
        if let Err(e) = device.tap.set_offload(offload) {
            guest_warn!("{e}");
        }
        let rx_frame_max = if offload & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
            net::MAX_FRAME_LEN
        } else {
            net::max_frame_len_for_mtu(self.inner.config.mtu)
        };
        device.rx_frame_max.store(rx_frame_max, Ordering::Relaxed);
        // With the control queue the guest starts on one pair and asks for more
        // (spec 5.1.6.5.5); without it the enabled receive queues tell.
        let ctrl = features & bit(VIRTIO_NET_F_CTRL_VQ) != 0;
        device.ctrl_in_charge.store(ctrl, Ordering::Relaxed);
        let active = if ctrl || features & bit(VIRTIO_NET_F_MQ) == 0 {
            1
        } else {
            device.max_pairs
        };
        device.active_pairs.store(active, Ordering::Relaxed);
        if let Err(e) = device.tap.set_active_queues(usize::from(active)) {
            guest_warn!("{e}");
        }
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // Receive queues are the even ones below the control queue.
        let index = queue_index as usize;
        if index.is_multiple_of(2) {
            if let Some(mut worker) = self.pair(index / 2) {
                worker.drop_held_frame();
            }
        }
        Ok(())
    }

    fn reset_device(&self) {
        for pair in &self.inner.pairs {
            lock(pair).drop_held_frame();
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features()
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The library configures each vring's queue for EVENT_IDX.
    }

    fn update_memory(&self, mem: GuestMemory) -> io::Result<()> {
        for pair in &self.inner.pairs {
            lock(pair).set_memory(mem.clone());
        }
        lock(&self.inner.ctrl).set_memory(mem);
        Ok(())
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        config_slice(&self.config_space(), offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Nothing in virtio_net_config is writable by the driver. An error here
        // would make the library drop the whole connection, so only log.
        guest_error!(
            "SET_CONFIG ignored: offset {offset} length {} is read-only",
            buf.len()
        );
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // Thread i serves pair i (queues 2i and 2i+1); thread 0 also the control
        // queue, which is quiet next to the data queues.
        let pairs = self.inner.config.num_queue_pairs;
        let ctrl = net::ctrl_queue_index(pairs);
        (0..usize::from(pairs))
            .map(|i| {
                let mask = 0b11u64 << (2 * i);
                if i == 0 {
                    mask | 1u64 << ctrl
                } else {
                    mask
                }
            })
            .collect()
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
        let event = if device_event == self.tap_event() {
            RX_EVENT
        } else {
            device_event
        };
        let Some(vring) = vrings.get(usize::from(event)) else {
            guest_error!("unexpected event {device_event} on thread {thread_id}");
            return Ok(());
        };
        match event {
            RX_EVENT => match self.pair(thread_id) {
                Some(mut worker) => worker.handle_rx(vring),
                None => Ok(()),
            },
            TX_EVENT => match self.pair(thread_id) {
                Some(mut worker) => worker.handle_tx(vring, vrings.get(usize::from(RX_EVENT))),
                None => Ok(()),
            },
            CTRL_EVENT if thread_id == 0 => lock(&self.inner.ctrl).handle_kick(vring),
            _ => {
                guest_error!("unexpected event {device_event} on thread {thread_id}");
                Ok(())
            }
        }
    }
}

impl ServedBackend for NetBackend {
    fn attach(&self, handlers: &[Arc<VringEpollHandler<Self>>]) -> io::Result<()> {
        for (index, handler) in handlers.iter().enumerate() {
            let Some(fd) = self.pair(index).map(|w| w.tap_fd()) else {
                continue;
            };
            // Edge-triggered: a tap that stays readable while the guest has no
            // receive buffers does not wake the thread again and again; the
            // guest's receive kick restarts reading.
            handler.register_listener(
                fd,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
                u64::from(self.tap_event()),
            )?;
        }
        Ok(())
    }
}
