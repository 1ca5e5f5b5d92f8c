//! The device kinds the VMM offers, one module each ([`blk`], [`net`], [`fs`]),
//! and their registry ([`DeviceKind`]).
//!
//! A kind implements [`VirtioKind`]: how the user asks for a device (its
//! `--OPTION key=value,...` spec and `[[TABLE]]` of the `--config` file, parsed and
//! validated into a [`DeviceConfig`]), the daemon of ours that serves it (a typed
//! options struct of `vhostkit-launch`, rendered to its command line), and what the
//! guest sees (device ID, features, config space, queues: a [`DeviceLayout`] that
//! [`VhostUserDevice`] serves over the backend's connection). Adding a kind: a
//! module, a variant of [`DeviceKind`] with its arms here, and its option and table
//! in `config.rs` (docs/developers.md, "Adding a device kind").

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub mod blk;
pub mod fs;
pub mod net;
mod vhost_user_device;

pub use vhost_user_device::{ConfigSpace, DeviceLayout, VhostUserDevice};
pub use vhostkit_launch::DaemonArgs;

/// QueueNumMax of a disk or network device unless `queue-size` says otherwise: our
/// daemons' default `--queue-size`.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Largest split virtqueue.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// One virtio device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    pub kind: DeviceKind,
    pub backend: DeviceBackend,
    /// The virtqueues the VMM should offer, if the user chose: for a disk its request
    /// queues; for a network device rx + tx queues, i.e. 2 * num-queue-pairs (the
    /// control queue not counted); for a shared folder its request queues (the
    /// hiprio queue not counted: the device has `num_queues + 1` virtqueues, and
    /// `num_queues` is its config-space `num_request_queues`). None: the default
    /// (one queue, one pair).
    pub num_queues: Option<u16>,
    /// QueueNumMax: the largest queue the guest may set up, one the backend takes
    /// (vhost-user has no message to ask a backend its limit: a daemon vhostkit
    /// starts is given it, a socket backend's is the user's `queue-size`).
    pub queue_size: u16,
}

/// The registry of device kinds: one variant per kind, holding what the VMM itself
/// shows the guest of that device (the rest is the backend's). Every `match` on it
/// is in this file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// [`blk`]: a disk.
    Block,
    /// [`net`]: `mac`, the address in the device's config space (VIRTIO_NET_F_MAC),
    /// if given.
    Net { mac: Option<[u8; 6]> },
    /// [`fs`]: `tag`, the name the guest mounts, 1 to 36 bytes, no NUL.
    Fs { tag: String },
}

impl DeviceKind {
    /// The command-line option of the kind (`--disk`); its `--config` table is the
    /// same word (`[[disk]]`).
    pub fn option(&self) -> &'static str {
        match self {
            DeviceKind::Block => blk::Blk::OPTION,
            DeviceKind::Net { .. } => net::Net::OPTION,
            DeviceKind::Fs { .. } => fs::Fs::OPTION,
        }
    }

    /// The spec key that names what our daemon serves (`path`), and the daemon's
    /// flag that carries it (`--path`).
    fn daemon_key(&self) -> (&'static str, &'static str) {
        match self {
            DeviceKind::Block => blk::Blk::DAEMON_KEY,
            DeviceKind::Net { .. } => net::Net::DAEMON_KEY,
            DeviceKind::Fs { .. } => fs::Fs::DAEMON_KEY,
        }
    }

    /// What the guest sees of `device` (of this kind) behind a backend with
    /// `backend_queues` queues; `nth`: the device's index among those of its kind.
    pub fn layout(&self, device: &DeviceConfig, backend_queues: u16, nth: usize) -> DeviceLayout {
        let q = QueueRequest {
            backend_queues,
            num_queues: device.num_queues,
            queue_size: device.queue_size,
            nth,
        };
        match self {
            DeviceKind::Block => blk::Blk::layout(&(), q),
            DeviceKind::Net { mac } => net::Net::layout(mac, q),
            DeviceKind::Fs { tag } => fs::Fs::layout(tag, q),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceBackend {
    /// A vhost-user backend already listening on this socket.
    Socket(PathBuf),
    /// One of our daemons, started by the VMM: the binary name (e.g. "vhost-user-blk")
    /// and its arguments, without the ones every daemon gets
    /// ([`vhostkit_launch::CommonArgs`]: the VMM picks the socket). Rendered from
    /// the daemon's [`DaemonArgs`] struct.
    Daemon {
        program: &'static str,
        args: Vec<OsString>,
    },
}

impl DeviceBackend {
    /// The command line of a daemon `options` describe.
    pub fn daemon<A: DaemonArgs>(options: &A) -> Self {
        DeviceBackend::Daemon {
            program: A::PROGRAM,
            args: options.to_args(),
        }
    }
}

impl DeviceConfig {
    /// How the user named this device, for messages: "--disk path=x.img",
    /// "--net socket=/run/net.sock".
    pub fn describe(&self) -> String {
        let option = self.kind.option();
        match &self.backend {
            DeviceBackend::Socket(path) => format!("{option} socket={}", path.display()),
            DeviceBackend::Daemon { program, args } => {
                let (key, flag) = self.kind.daemon_key();
                match args.iter().position(|a| a == flag) {
                    Some(i) if i + 1 < args.len() => {
                        format!("{option} {key}={}", args[i + 1].to_string_lossy())
                    }
                    _ => {
                        let args: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
                        format!("{option} ({program} {})", args.join(" "))
                    }
                }
            }
        }
    }
}

/// What a kind's [`VirtioKind::layout`] gets besides its own parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueRequest {
    /// Queues the backend has (GET_QUEUE_NUM, 1 without MQ).
    pub backend_queues: u16,
    /// [`DeviceConfig::num_queues`]: what the user asked for, if anything.
    pub num_queues: Option<u16>,
    /// [`DeviceConfig::queue_size`]: QueueNumMax.
    pub queue_size: u16,
    /// The device's index among the devices of its kind (0 for the first disk).
    pub nth: usize,
}

/// One kind of virtio device over vhost-user: everything the VMM knows of it. The
/// kind's module implements it on a unit struct (`blk::Blk`); [`DeviceKind`] holds
/// its [`Params`](Self::Params) and dispatches to it.
pub trait VirtioKind {
    /// The command-line option, `--disk`; the `--config` table is the word after
    /// the dashes, `[[disk]]`.
    const OPTION: &'static str;
    /// The accepted forms, for messages: "socket=PATH or path=IMG".
    const FORMS: &'static str;
    /// Every key of a spec (command line and table alike).
    const KEYS: &'static [&'static str];
    /// The key naming what our daemon serves and the daemon's flag for it
    /// (`("path", "--path")`): how [`DeviceConfig::describe`] names such a device.
    const DAEMON_KEY: (&'static str, &'static str);

    /// A spec before validation: a `--disk` value or a `[[disk]]` table (serde,
    /// kebab-case keys, unknown ones refused).
    type Spec: DeserializeOwned + Default;
    /// What the VMM holds of a device of this kind (its [`DeviceKind`] variant's
    /// fields): `()` for a disk, the MAC of a network device, the tag of a folder.
    type Params;

    /// Sets `key` (one of [`KEYS`](Self::KEYS)) from its command-line text `val`.
    fn set(spec: &mut Self::Spec, key: &str, val: &str) -> Result<(), String>;

    /// Makes the relative paths of a `--config` table relative to `base`, the
    /// file's folder.
    fn resolve(spec: &mut Self::Spec, base: &Path);

    /// Checks a spec; the device, with our daemon's command line if it names one.
    /// Errors are the reason only (the caller says which spec).
    fn validate(spec: Self::Spec) -> Result<DeviceConfig, String>;

    /// What the guest sees: device ID, features the VMM adds or hides, config
    /// space, queue count and QueueNumMax.
    fn layout(params: &Self::Params, queues: QueueRequest) -> DeviceLayout;
}

/// Parses a command-line spec of kind `K`: `key=value` items separated by commas.
pub fn parse_spec<K: VirtioKind>(value: &str) -> Result<K::Spec, String> {
    let mut spec = K::Spec::default();
    for (key, val) in split_kv(value, K::FORMS, K::KEYS)? {
        K::set(&mut spec, key, val)?;
    }
    Ok(spec)
}

/// Splits a QEMU-style `key=value,key=value` list, refusing malformed items, keys
/// not in `known` and keys given twice. Errors are the reason only; `forms` names
/// the accepted forms ("socket=PATH or path=IMG").
fn split_kv<'a>(
    value: &'a str,
    forms: &str,
    known: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, String> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for item in value.split(',') {
        let Some((key, val)) = item.split_once('=') else {
            return Err(format!(
                "expected {forms}: key=value items separated by commas, got {item:?}"
            ));
        };
        if !known.contains(&key) {
            return Err(format!("unknown key {key:?} (known: {})", known.join(", ")));
        }
        if out.iter().any(|(k, _)| *k == key) {
            return Err(format!("key {key} given twice"));
        }
        if val.is_empty() {
            return Err(format!("{key}= needs a value"));
        }
        out.push((key, val));
    }
    Ok(out)
}

/// `key=on` or `key=off`.
pub fn on_off(key: &str, val: &str) -> Result<bool, String> {
    match val {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{key}={val}: expected on or off")),
    }
}

/// `key=N`, a u16.
pub fn number(key: &str, val: &str) -> Result<u16, String> {
    val.parse()
        .map_err(|_| format!("{key}={val}: expected a number"))
}

/// `queue-size`: a power of two from 2 to `max`, or `default`.
pub fn queue_size(n: Option<u16>, max: u16, default: u16) -> Result<u16, String> {
    match n {
        None => Ok(default),
        Some(n) if (2..=max).contains(&n) && n.is_power_of_two() => Ok(n),
        Some(n) => Err(format!(
            "queue-size={n}: must be a power of two from 2 to {max}"
        )),
    }
}

/// `key=n` within 1 to `max`.
pub fn check_range(key: &str, n: u16, max: u16) -> Result<u16, String> {
    if (1..=max).contains(&n) {
        Ok(n)
    } else {
        Err(format!("{key}={n}: must be 1 to {max}"))
    }
}

/// Makes a relative path relative to `base` (the `--config` file's folder).
pub fn resolve(path: &mut Option<PathBuf>, base: &Path) {
    if let Some(p) = path {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
}
