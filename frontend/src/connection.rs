//! [`Connection`]: one vhost-user connection, from connecting to stopping its vrings.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VHOST_USER_MAX_VRINGS,
};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::raw;
use crate::watchdog::ControlWatchdog;
use crate::{Error, Result};

/// `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30): a virtio feature bit of vhost-user only
/// (never shown to a guest) that turns on the protocol-feature extension.
pub const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// The control timeout of [`ConnectOptions::default`]: long enough for a backend
/// under load, short enough that a hung one does not look like a hung VM.
pub const DEFAULT_CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// Protocol features this frontend implements: MQ (GET_QUEUE_NUM), REPLY_ACK (an
/// ack for every request) and CONFIG (GET_CONFIG, SET_CONFIG).
pub fn supported_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
}

/// How to connect and what to negotiate at connection time.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Protocol features this frontend may ack: it acks `offered & mask`. `None`:
    /// leave `VHOST_USER_F_PROTOCOL_FEATURES` unacked even when offered (the original
    /// protocol: the backend starts a vring at SET_VRING_KICK, there is no
    /// SET_VRING_ENABLE and no GET_QUEUE_NUM).
    pub protocol_features: Option<VhostUserProtocolFeatures>,
    /// Longest a control request (one message and its reply) may take; past it the
    /// socket is shut down and the request fails with [`Error::Timeout`]. `None`:
    /// wait forever. A backend that serves one frontend at a time
    /// (qemu-storage-daemon) accepts a second connection but does not answer it.
    pub timeout: Option<Duration>,
    /// How many more times to try, 100 ms apart, while the socket refuses the
    /// connection (a backend that has bound its socket but does not listen yet).
    pub refused_retries: u32,
}

impl Default for ConnectOptions {
    /// Every protocol feature this frontend implements, [`DEFAULT_CONTROL_TIMEOUT`],
    /// no retries.
    fn default() -> Self {
        ConnectOptions {
            protocol_features: Some(supported_protocol_features()),
            timeout: Some(DEFAULT_CONTROL_TIMEOUT),
            refused_retries: 0,
        }
    }
}

/// Host virtual addresses of a vring's three areas in the frontend's own mapping of
/// guest memory: what SET_VRING_ADDR carries (the backend translates them through
/// the memory table; guest physical addresses here make it fail).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VringHostAddrs {
    /// Descriptor table.
    pub desc: u64,
    /// Available ring (driver area).
    pub avail: u64,
    /// Used ring (device area).
    pub used: u64,
}

/// Everything [`Connection::set_up_vring`] hands the backend for one vring.
#[derive(Clone, Copy, Debug)]
pub struct VringSetup<'a> {
    /// Vring index (queue index of the device).
    pub index: u16,
    /// Entries (SET_VRING_NUM).
    pub size: u16,
    /// Where the rings are (SET_VRING_ADDR).
    pub addrs: VringHostAddrs,
    /// The next available index the backend reads (SET_VRING_BASE): 0 for a fresh
    /// ring, what [`Connection::stop_vring`] returned to resume one.
    pub base: u16,
    /// Signalled by the backend when it used buffers (SET_VRING_CALL).
    pub call: &'a EventFd,
    /// Signalled by the frontend when it made buffers available (SET_VRING_KICK).
    pub kick: &'a EventFd,
    /// Signalled by the backend on a vring error (SET_VRING_ERR); `None`: not sent.
    pub err: Option<&'a EventFd>,
    /// Send SET_VRING_ENABLE 1 after the kick. Only with protocol features in use:
    /// without them the backend starts the vring at SET_VRING_KICK.
    pub enable: bool,
}

/// A vring that [`Connection::reset`] could not stop.
#[derive(Debug)]
pub struct VringStopError {
    /// The vring (it no longer counts as started all the same).
    pub index: u16,
    /// Why SET_VRING_ENABLE 0 or GET_VRING_BASE failed.
    pub error: Error,
}

/// The SET_MEM_TABLE entries for every region of `mem`, which must all be file-backed
/// (the backend maps the files).
pub fn memory_regions<B: Bitmap>(
    mem: &GuestMemoryMmap<B>,
) -> Result<Vec<VhostUserMemoryRegionInfo>> {
    mem.iter()
        .map(VhostUserMemoryRegionInfo::from_guest_region)
        .collect::<vhost::Result<Vec<_>>>()
        .map_err(Error::Memory)
}

/// A vhost-user connection to one backend. See the [crate docs](crate). Dropping it
/// closes the socket (the watchdog thread ends with it).
pub struct Connection {
    frontend: Frontend,
    /// The same socket: watched for a hang-up ([`Connection::socket`]) and written
    /// directly for the messages `Frontend` refuses to send ([`raw`]).
    socket: UnixStream,
    /// `None` without a timeout.
    watchdog: Option<ControlWatchdog>,
    offered_features: u64,
    offered_protocol: VhostUserProtocolFeatures,
    /// Whether `VHOST_USER_F_PROTOCOL_FEATURES` is in use (offered and asked for).
    protocol_negotiated: bool,
    protocol: VhostUserProtocolFeatures,
    num_queues: u16,
    /// What the last SET_FEATURES sent; `None` before the first.
    acked_features: Option<u64>,
    /// Vrings set up and not stopped since: what a reset stops, and what a
    /// reconnect would set up again.
    started: BTreeSet<u16>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field(
                "offered_features",
                &format_args!("{:#x}", self.offered_features),
            )
            .field("protocol", &self.protocol)
            .field("num_queues", &self.num_queues)
            .field("started", &self.started)
            .finish()
    }
}

impl Connection {
    /// [`Connection::connect_with`] with [`ConnectOptions::default`].
    pub fn connect(socket: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with(socket, &ConnectOptions::default())
    }

    /// Connects to `socket` and runs the set-up that needs no guest memory:
    /// GET_FEATURES, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM (with MQ), SET_OWNER.
    pub fn connect_with(socket: impl AsRef<Path>, options: &ConnectOptions) -> Result<Self> {
        let path = socket.as_ref();
        let connect_err = |source| Error::Connect {
            path: path.display().to_string(),
            source,
        };
        let stream = connect_stream(path, options.refused_retries).map_err(connect_err)?;
        let socket = stream.try_clone().map_err(connect_err)?;
        let watchdog = match options.timeout {
            Some(timeout) => Some(
                ControlWatchdog::new(stream.try_clone().map_err(connect_err)?, timeout)
                    .map_err(connect_err)?,
            ),
            None => None,
        };
        let mut connection = Connection {
            frontend: Frontend::from_stream(stream, VHOST_USER_MAX_VRINGS),
            socket,
            watchdog,
            offered_features: 0,
            offered_protocol: VhostUserProtocolFeatures::empty(),
            protocol_negotiated: false,
            protocol: VhostUserProtocolFeatures::empty(),
            num_queues: 1,
            acked_features: None,
            started: BTreeSet::new(),
        };
        connection.handshake(options)?;
        Ok(connection)
    }

    fn handshake(&mut self, options: &ConnectOptions) -> Result<()> {
        self.offered_features = self.request("GET_FEATURES", |f| f.get_features())?;
        if let Some(wanted) = options.protocol_features {
            if self.offered_features & PROTOCOL_FEATURES != 0 {
                self.offered_protocol =
                    self.request("GET_PROTOCOL_FEATURES", |f| f.get_protocol_features())?;
                let protocol = self.offered_protocol & wanted;
                self.request("SET_PROTOCOL_FEATURES", |f| {
                    f.set_protocol_features(protocol)
                })?;
                self.protocol_negotiated = true;
                self.protocol = protocol;
                if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                    // Every message without a reply of its own asks for an ack: a
                    // refusal is the error of the call that caused it.
                    self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
                }
            }
        }
        if self.protocol.contains(VhostUserProtocolFeatures::MQ) {
            let count = self.request("GET_QUEUE_NUM", |f| f.get_queue_num())?;
            self.num_queues = u16::try_from(count)
                .ok()
                .filter(|&n| n != 0 && u64::from(n) <= VHOST_USER_MAX_VRINGS)
                .ok_or(Error::QueueCount(count))?;
        }
        self.request("SET_OWNER", |f| f.set_owner())
    }

    /// Runs `send` (one or more requests on the vhost crate's [`Frontend`]) under the
    /// control timeout; `request` names it in errors. The way to send a message this
    /// type has no method for.
    pub fn request<T>(
        &mut self,
        request: &'static str,
        send: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T> {
        self.under_watchdog(request, |c| send(&mut c.frontend))
    }

    /// Arms the watchdog around `send`; a failure after it fired is a timeout (the
    /// error `send` saw is only the shut-down socket).
    fn under_watchdog<T>(
        &mut self,
        request: &'static str,
        send: impl FnOnce(&mut Self) -> vhost::Result<T>,
    ) -> Result<T> {
        if let Some(w) = &self.watchdog {
            w.arm();
        }
        let result = send(self);
        let fired = self.watchdog.as_ref().is_some_and(ControlWatchdog::disarm);
        result.map_err(|source| match &self.watchdog {
            Some(w) if fired => Error::Timeout(request, w.timeout()),
            _ => Error::Request(request, source),
        })
    }

    /// The vhost crate's frontend, for tests that send messages of their own without
    /// the watchdog (prefer [`Connection::request`]).
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }

    /// The connection's socket: it polls readable with POLLRDHUP once the backend
    /// hangs up (nothing else arrives unasked on it).
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Virtio feature bits the backend offers (including [`PROTOCOL_FEATURES`]).
    pub fn offered_features(&self) -> u64 {
        self.offered_features
    }

    /// What the last SET_FEATURES sent; `None` before the first.
    pub fn acked_features(&self) -> Option<u64> {
        self.acked_features
    }

    /// Protocol features the backend offers (empty when they were not negotiated).
    pub fn offered_protocol_features(&self) -> VhostUserProtocolFeatures {
        self.offered_protocol
    }

    /// Protocol features in use.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// Whether `VHOST_USER_F_PROTOCOL_FEATURES` is in use: then vrings start and stop
    /// with SET_VRING_ENABLE, and SET_FEATURES carries the bit.
    pub fn protocol_features_negotiated(&self) -> bool {
        self.protocol_negotiated
    }

    /// Queues the backend has (GET_QUEUE_NUM, or 1 without MQ).
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// SET_FEATURES with the device's `acked` bits, plus [`PROTOCOL_FEATURES`] when
    /// protocol features are in use.
    pub fn set_features(&mut self, acked: u64) -> Result<()> {
        let mut features = acked;
        if self.protocol_negotiated {
            features |= PROTOCOL_FEATURES;
        }
        self.request("SET_FEATURES", |f| f.set_features(features))?;
        self.acked_features = Some(features);
        Ok(())
    }

    /// SET_MEM_TABLE with every region of `mem` (all must be file-backed).
    pub fn set_mem_table<B: Bitmap>(&mut self, mem: &GuestMemoryMmap<B>) -> Result<()> {
        let regions = memory_regions(mem)?;
        // The answer (the backend's mapping addresses) matters only for postcopy.
        self.request("SET_MEM_TABLE", |f| f.set_mem_table(&regions))
            .map(drop)
    }

    /// Hands a vring to the backend: SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE,
    /// SET_VRING_CALL, SET_VRING_ERR (with [`VringSetup::err`]), SET_VRING_KICK, and
    /// SET_VRING_ENABLE 1 (with [`VringSetup::enable`] and protocol features in use).
    /// The error fd goes before the kick because without protocol features the kick
    /// starts the vring. The vring counts as started once every message succeeded.
    pub fn set_up_vring(&mut self, vring: &VringSetup<'_>) -> Result<()> {
        let i = usize::from(vring.index);
        let config = VringConfigData {
            queue_max_size: vring.size,
            queue_size: vring.size,
            flags: 0,
            desc_table_addr: vring.addrs.desc,
            used_ring_addr: vring.addrs.used,
            avail_ring_addr: vring.addrs.avail,
            log_addr: None,
        };
        self.request("SET_VRING_NUM", |f| f.set_vring_num(i, vring.size))?;
        self.request("SET_VRING_ADDR", |f| f.set_vring_addr(i, &config))?;
        self.request("SET_VRING_BASE", |f| f.set_vring_base(i, vring.base))?;
        self.request("SET_VRING_CALL", |f| f.set_vring_call(i, vring.call))?;
        if let Some(err) = vring.err {
            self.request("SET_VRING_ERR", |f| f.set_vring_err(i, err))?;
        }
        self.request("SET_VRING_KICK", |f| f.set_vring_kick(i, vring.kick))?;
        if vring.enable && self.protocol_negotiated {
            self.request("SET_VRING_ENABLE", |f| f.set_vring_enable(i, true))?;
        }
        self.started.insert(vring.index);
        Ok(())
    }

    /// SET_VRING_ENABLE. Before the first SET_FEATURES (with protocol features
    /// negotiated, as QEMU 7.2's virtio-net sends it while the guest negotiates) the
    /// message is written to the socket by hand: the vhost crate's frontend refuses
    /// to send it until PROTOCOL_FEATURES is acked.
    pub fn set_vring_enable(&mut self, index: u16, enable: bool) -> Result<()> {
        if self.protocol_negotiated && self.acked_features.is_none() {
            let need_reply = self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
            return self.under_watchdog("SET_VRING_ENABLE (before SET_FEATURES)", |c| {
                raw::set_vring_enable(&mut c.socket, index, enable, need_reply)
            });
        }
        self.request("SET_VRING_ENABLE", |f| {
            f.set_vring_enable(usize::from(index), enable)
        })
    }

    /// GET_VRING_BASE alone: the backend stops the vring and returns its next avail
    /// index. The vring no longer counts as started, even if the request failed.
    pub fn get_vring_base(&mut self, index: u16) -> Result<u32> {
        self.started.remove(&index);
        self.request("GET_VRING_BASE", |f| f.get_vring_base(usize::from(index)))
    }

    /// Stops a vring as QEMU does: SET_VRING_ENABLE 0 (with protocol features in use),
    /// then GET_VRING_BASE; returns the backend's next avail index. The vring no
    /// longer counts as started, even if a request failed.
    pub fn stop_vring(&mut self, index: u16) -> Result<u32> {
        self.started.remove(&index);
        if self.protocol_negotiated {
            self.request("SET_VRING_ENABLE", |f| {
                f.set_vring_enable(usize::from(index), false)
            })?;
        }
        self.get_vring_base(index)
    }

    /// Vrings set up and not stopped since, in index order.
    pub fn started_vrings(&self) -> impl Iterator<Item = u16> + '_ {
        self.started.iter().copied()
    }

    /// Whether vring `index` was set up and not stopped since.
    pub fn is_vring_started(&self, index: u16) -> bool {
        self.started.contains(&index)
    }

    /// A device reset: stops every started vring ([`Connection::stop_vring`]), going
    /// on past failures, and returns them. The backend keeps owner, features and
    /// memory table; the next session sends features and memory table again before
    /// it sets vrings up.
    pub fn reset(&mut self) -> Vec<VringStopError> {
        let started: Vec<u16> = self.started_vrings().collect();
        started
            .into_iter()
            .filter_map(|index| {
                self.stop_vring(index)
                    .err()
                    .map(|error| VringStopError { index, error })
            })
            .collect()
    }

    fn require_config(&self) -> Result<()> {
        if self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            Ok(())
        } else {
            Err(Error::NoConfig)
        }
    }

    /// GET_CONFIG of `len` bytes at `offset`, exactly as asked (needs the CONFIG
    /// protocol feature).
    pub fn get_config(&mut self, offset: u32, len: u32) -> Result<Vec<u8>> {
        self.require_config()?;
        let zero = vec![0u8; len as usize];
        let (_, payload) = self.request("GET_CONFIG", |f| {
            f.get_config(offset, len, VhostUserConfigFlags::empty(), &zero)
        })?;
        if payload.len() != len as usize {
            return Err(Error::ConfigSize {
                got: payload.len(),
                wanted: len as usize,
            });
        }
        Ok(payload)
    }

    /// Reads `buf.len()` bytes of device config space at `offset`.
    ///
    /// The request starts at offset 0 and covers `offset + buf.len()` bytes, as
    /// QEMU's frontend does (it fetches the whole config): libvhost-user backends such
    /// as qemu-storage-daemon ignore GET_CONFIG's offset and return the config from
    /// its start.
    pub fn read_config(&mut self, offset: u32, buf: &mut [u8]) -> Result<()> {
        let wanted = u32::try_from(buf.len())
            .ok()
            .and_then(|len| offset.checked_add(len))
            .ok_or(Error::ConfigRange {
                offset,
                len: buf.len(),
            })?;
        let config = self.get_config(0, wanted)?;
        buf.copy_from_slice(&config[offset as usize..]);
        Ok(())
    }

    /// SET_CONFIG of `data` at `offset` (needs the CONFIG protocol feature).
    pub fn set_config(&mut self, offset: u32, data: &[u8]) -> Result<()> {
        self.require_config()?;
        self.request("SET_CONFIG", |f| {
            f.set_config(offset, VhostUserConfigFlags::WRITABLE, data)
        })
    }
}

/// Connects, retrying up to `retries` times while the socket refuses (as vhost's
/// `Frontend::connect` does for a backend that is not listening yet).
fn connect_stream(path: &Path, retries: u32) -> io::Result<UnixStream> {
    let mut tries = 0;
    loop {
        match UnixStream::connect(path) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && tries < retries => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::mpsc;
    use std::thread::JoinHandle;

    use vhost::vhost_user::message::FrontendReq;

    use super::*;

    const REPLY: u32 = 0x4;
    const NEED_REPLY: u32 = 0x8;

    /// A socket path of its own for each test, removed when dropped.
    struct SocketPath(PathBuf);

    impl std::ops::Deref for SocketPath {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for SocketPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn socket_path(name: &str) -> SocketPath {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "vhostkit-frontend-{}-{n}-{name}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        SocketPath(path)
    }

    fn code(req: FrontendReq) -> u32 {
        u32::from(req)
    }

    fn u64_body(v: u64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    /// A scripted backend: accepts one connection, reads every message and answers
    /// with what `answer(request, body)` returns (a reply body), or an ack of 0 when it
    /// returns `None` and the message asked for one. Sends each message's request code
    /// and body on the channel; ends when the frontend closes the socket.
    fn fake_backend(
        path: &Path,
        mut answer: impl FnMut(u32, &[u8]) -> Option<Vec<u8>> + Send + 'static,
    ) -> (mpsc::Receiver<(u32, Vec<u8>)>, JoinHandle<()>) {
        let listener = UnixListener::bind(path).unwrap();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            loop {
                let mut header = [0u8; 12];
                if s.read_exact(&mut header).is_err() {
                    return;
                }
                let word =
                    |i: usize| u32::from_le_bytes(header[4 * i..4 * i + 4].try_into().unwrap());
                let (request, flags, size) = (word(0), word(1), word(2));
                let mut body = vec![0u8; size as usize];
                s.read_exact(&mut body).unwrap();
                let reply = match answer(request, &body) {
                    Some(reply) => Some(reply),
                    None if flags & NEED_REPLY != 0 => Some(u64_body(0)),
                    None => None,
                };
                // Recorded before the reply goes out: once the frontend has its
                // answer, the test may read the record (`requests`) at once.
                if tx.send((request, body)).is_err() {
                    return;
                }
                if let Some(reply) = reply {
                    let mut msg = Vec::new();
                    for w in [request, 0x1 | REPLY, reply.len() as u32] {
                        msg.extend_from_slice(&w.to_le_bytes());
                    }
                    msg.extend_from_slice(&reply);
                    s.write_all(&msg).unwrap();
                }
            }
        });
        (rx, thread)
    }

    /// The answers of a backend that offers `features`, the protocol features
    /// `protocol` and `queues` queues.
    fn backend_answers(
        features: u64,
        protocol: VhostUserProtocolFeatures,
        queues: u64,
    ) -> impl FnMut(u32, &[u8]) -> Option<Vec<u8>> + Send + 'static {
        move |request, _body| {
            if request == code(FrontendReq::GET_FEATURES) {
                Some(u64_body(features))
            } else if request == code(FrontendReq::GET_PROTOCOL_FEATURES) {
                Some(u64_body(protocol.bits()))
            } else if request == code(FrontendReq::GET_QUEUE_NUM) {
                Some(u64_body(queues))
            } else {
                None
            }
        }
    }

    /// The request codes of the messages received so far.
    fn requests(rx: &mpsc::Receiver<(u32, Vec<u8>)>) -> Vec<u32> {
        rx.try_iter().map(|(request, _)| request).collect()
    }

    /// Closes the connection, waits until the backend saw it, and returns the
    /// messages it received that were not read yet.
    fn close(
        c: Connection,
        backend: JoinHandle<()>,
        rx: &mpsc::Receiver<(u32, Vec<u8>)>,
    ) -> Vec<(u32, Vec<u8>)> {
        drop(c);
        backend.join().unwrap();
        rx.try_iter().collect()
    }

    fn codes(messages: &[(u32, Vec<u8>)]) -> Vec<u32> {
        messages.iter().map(|m| m.0).collect()
    }

    fn vring<'a>(index: u16, call: &'a EventFd, kick: &'a EventFd) -> VringSetup<'a> {
        VringSetup {
            index,
            size: 16,
            addrs: VringHostAddrs {
                desc: 0x10000,
                avail: 0x11000,
                used: 0x12000,
            },
            base: 0,
            call,
            kick,
            err: None,
            enable: true,
        }
    }

    #[test]
    fn handshake_negotiates_what_both_sides_have() {
        let path = socket_path("handshake");
        let offered = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD;
        let (rx, backend) = fake_backend(
            &path,
            backend_answers(PROTOCOL_FEATURES | 1 << 32, offered, 3),
        );
        let mut c = Connection::connect(&*path).unwrap();
        assert_eq!(c.offered_features(), PROTOCOL_FEATURES | 1 << 32);
        assert_eq!(c.offered_protocol_features(), offered);
        assert_eq!(c.protocol_features(), supported_protocol_features());
        assert!(c.protocol_features_negotiated());
        assert_eq!(c.num_queues(), 3);
        assert_eq!(c.acked_features(), None);
        c.set_features(1 << 32).unwrap();
        assert_eq!(c.acked_features(), Some(PROTOCOL_FEATURES | 1 << 32));
        let got = close(c, backend, &rx);
        assert_eq!(
            codes(&got),
            [
                FrontendReq::GET_FEATURES,
                FrontendReq::GET_PROTOCOL_FEATURES,
                FrontendReq::SET_PROTOCOL_FEATURES,
                FrontendReq::GET_QUEUE_NUM,
                FrontendReq::SET_OWNER,
                FrontendReq::SET_FEATURES,
            ]
            .map(code)
        );
        assert_eq!(got[2].1, u64_body(supported_protocol_features().bits()));
        assert_eq!(got[5].1, u64_body(PROTOCOL_FEATURES | 1 << 32));
    }

    #[test]
    fn without_protocol_features_only_features_and_owner() {
        let path = socket_path("plain");
        let (rx, backend) = fake_backend(
            &path,
            backend_answers(PROTOCOL_FEATURES, supported_protocol_features(), 3),
        );
        let options = ConnectOptions {
            protocol_features: None,
            ..ConnectOptions::default()
        };
        let mut c = Connection::connect_with(&*path, &options).unwrap();
        assert!(!c.protocol_features_negotiated());
        assert_eq!(c.num_queues(), 1);
        assert!(matches!(c.get_config(0, 4), Err(Error::NoConfig)));
        c.set_features(0).unwrap();
        assert_eq!(
            codes(&close(c, backend, &rx)),
            [
                FrontendReq::GET_FEATURES,
                FrontendReq::SET_OWNER,
                FrontendReq::SET_FEATURES
            ]
            .map(code)
        );
    }

    #[test]
    fn a_queue_count_of_zero_or_past_the_maximum_is_refused() {
        for count in [0, VHOST_USER_MAX_VRINGS + 1] {
            let path = socket_path("bad-queue-count");
            let (_rx, _backend) = fake_backend(
                &path,
                backend_answers(PROTOCOL_FEATURES, VhostUserProtocolFeatures::MQ, count),
            );
            let e = Connection::connect(&*path).unwrap_err();
            // Past the maximum the vhost crate's frontend refuses the answer itself.
            assert!(
                matches!(e, Error::QueueCount(0) | Error::Request("GET_QUEUE_NUM", _)),
                "{count}: {e:?}"
            );
        }
    }

    #[test]
    fn a_backend_that_never_answers_times_out() {
        let path = socket_path("mute");
        let listener = UnixListener::bind(&*path).unwrap();
        let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
        let timeout = Duration::from_millis(200);
        let options = ConnectOptions {
            timeout: Some(timeout),
            ..ConnectOptions::default()
        };
        let start = std::time::Instant::now();
        let e = Connection::connect_with(&*path, &options).unwrap_err();
        assert!(
            matches!(e, Error::Timeout("GET_FEATURES", t) if t == timeout),
            "{e:?}"
        );
        assert!(!e.is_disconnect());
        assert!(start.elapsed() >= timeout);
        drop(held.join());
    }

    #[test]
    fn a_closed_connection_is_a_disconnect() {
        let path = socket_path("closed");
        let listener = UnixListener::bind(&*path).unwrap();
        let closer = std::thread::spawn(move || drop(listener.accept()));
        let e = Connection::connect(&*path).unwrap_err();
        assert!(e.is_disconnect(), "{e:?}");
        closer.join().unwrap();
    }

    /// SET_VRING_ENABLE before SET_FEATURES is written by hand (the vhost crate's
    /// frontend would refuse it), with an ack under REPLY_ACK; a refusal is an error.
    #[test]
    fn vring_enable_before_features_is_written_by_hand() {
        let path = socket_path("early-enable");
        let mut answers = backend_answers(PROTOCOL_FEATURES, supported_protocol_features(), 2);
        let (rx, backend) = fake_backend(&path, move |request, body| {
            if request == code(FrontendReq::SET_VRING_ENABLE) && body[0] == 1 {
                return Some(u64_body(1)); // refuses ring 1
            }
            answers(request, body)
        });
        let mut c = Connection::connect(&*path).unwrap();
        c.set_vring_enable(0, true).unwrap();
        let e = c.set_vring_enable(1, true).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Request("SET_VRING_ENABLE (before SET_FEATURES)", _)
            ),
            "{e:?}"
        );
        c.set_features(0).unwrap();
        c.set_vring_enable(0, false).unwrap();
        let enables: Vec<Vec<u8>> = close(c, backend, &rx)
            .into_iter()
            .filter(|(request, _)| *request == code(FrontendReq::SET_VRING_ENABLE))
            .map(|(_, body)| body)
            .collect();
        assert_eq!(
            enables,
            [[0, 0, 0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 1, 0, 0, 0], [0; 8]]
        );
    }

    #[test]
    fn reset_stops_the_started_vrings_and_reports_failures() {
        let path = socket_path("reset");
        let mut answers = backend_answers(PROTOCOL_FEATURES, supported_protocol_features(), 4);
        let (rx, backend) = fake_backend(&path, move |request, body| {
            if request == code(FrontendReq::GET_VRING_BASE) {
                // VhostUserVringState: the index, then the next avail index 7.
                let mut state = body[..4].to_vec();
                state.extend_from_slice(&7u32.to_le_bytes());
                return Some(state);
            }
            if request == code(FrontendReq::SET_VRING_ENABLE) && body == [2, 0, 0, 0, 0, 0, 0, 0] {
                return Some(u64_body(1)); // refuses to disable ring 2
            }
            answers(request, body)
        });
        let mut c = Connection::connect(&*path).unwrap();
        c.set_features(0).unwrap();
        let (call, kick) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
        for index in [0, 2, 3] {
            c.set_up_vring(&vring(index, &call, &kick)).unwrap();
        }
        assert_eq!(c.started_vrings().collect::<Vec<_>>(), [0, 2, 3]);
        assert_eq!(c.stop_vring(3).unwrap(), 7);
        assert!(!c.is_vring_started(3));
        requests(&rx);

        let failed = c.reset();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].index, 2);
        assert_eq!(c.started_vrings().count(), 0);
        assert!(c.reset().is_empty(), "nothing left to stop");
        assert_eq!(
            codes(&close(c, backend, &rx)),
            [
                FrontendReq::SET_VRING_ENABLE,
                FrontendReq::GET_VRING_BASE,
                FrontendReq::SET_VRING_ENABLE,
            ]
            .map(code)
        );
    }

    #[test]
    fn a_vring_is_set_up_in_order() {
        let path = socket_path("vring");
        let (rx, backend) = fake_backend(
            &path,
            backend_answers(PROTOCOL_FEATURES, supported_protocol_features(), 1),
        );
        let mut c = Connection::connect(&*path).unwrap();
        c.set_features(0).unwrap();
        requests(&rx);
        let (call, kick, err) = (
            EventFd::new(0).unwrap(),
            EventFd::new(0).unwrap(),
            EventFd::new(0).unwrap(),
        );
        let mut setup = vring(0, &call, &kick);
        setup.err = Some(&err);
        setup.base = 5;
        c.set_up_vring(&setup).unwrap();
        assert!(c.is_vring_started(0));
        let got = close(c, backend, &rx);
        assert_eq!(
            codes(&got),
            [
                FrontendReq::SET_VRING_NUM,
                FrontendReq::SET_VRING_ADDR,
                FrontendReq::SET_VRING_BASE,
                FrontendReq::SET_VRING_CALL,
                FrontendReq::SET_VRING_ERR,
                FrontendReq::SET_VRING_KICK,
                FrontendReq::SET_VRING_ENABLE,
            ]
            .map(code)
        );
        assert_eq!(got[2].1, [0, 0, 0, 0, 5, 0, 0, 0], "SET_VRING_BASE 5");
    }

    #[test]
    fn read_config_asks_from_offset_zero() {
        let path = socket_path("config");
        let mut answers = backend_answers(PROTOCOL_FEATURES, supported_protocol_features(), 1);
        let (rx, backend) = fake_backend(&path, move |request, body| {
            if request == code(FrontendReq::GET_CONFIG) {
                // VhostUserConfig: offset, size, flags, then the bytes 0, 1, 2...
                let size = u32::from_le_bytes(body[4..8].try_into().unwrap());
                let mut reply = body[..12].to_vec();
                reply.extend((0..size).map(|i| i as u8));
                return Some(reply);
            }
            answers(request, body)
        });
        let mut c = Connection::connect(&*path).unwrap();
        let mut buf = [0u8; 2];
        c.read_config(4, &mut buf).unwrap();
        assert_eq!(buf, [4, 5]);
        assert_eq!(c.get_config(4, 2).unwrap(), [0, 1]);
        let asked: Vec<[u8; 8]> = close(c, backend, &rx)
            .into_iter()
            .filter(|(request, _)| *request == code(FrontendReq::GET_CONFIG))
            .map(|(_, body)| body[..8].try_into().unwrap())
            .collect();
        assert_eq!(
            asked,
            [[0, 0, 0, 0, 6, 0, 0, 0], [4, 0, 0, 0, 2, 0, 0, 0]],
            "offset and size of each GET_CONFIG"
        );
    }
}
