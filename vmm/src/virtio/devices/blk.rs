//! virtio-blk: `--disk` / `[[disk]]`, served by a vhost-user backend at `socket=` or
//! by our vhost-user-blk on the image at `path=`. The config space is the backend's
//! (GET_CONFIG), with `num_queues` replaced by the VMM's count.

use std::mem::offset_of;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use virtio_bindings::virtio_blk::{virtio_blk_config, VIRTIO_BLK_F_MQ};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

use super::{
    check_range, check_utf8, number, on_off, queue_size, resolve, ArgList, ConfigSpace, DaemonArgs,
    DeviceBackend, DeviceConfig, DeviceKind, DeviceLayout, QueueRequest, VirtioKind,
    DEFAULT_QUEUE_SIZE, MAX_QUEUE_SIZE,
};

/// Most queues of a disk (`num-queues`).
pub const MAX_BLK_QUEUES: u16 = 64;
/// Bytes of `virtio_blk_config` shown: up to `write_zeroes_may_unmap` and its
/// padding (60), the fields of the features our backends may offer.
pub const CONFIG_SIZE: u32 = offset_of!(virtio_blk_config, max_secure_erase_sectors) as u32;
/// Offset of `num_queues` (valid with VIRTIO_BLK_F_MQ).
const CONFIG_NUM_QUEUES: u32 = offset_of!(virtio_blk_config, num_queues) as u32;

/// The kind. See the [module docs](self).
pub struct Blk;

/// A `--disk` spec or `[[disk]]` table, before validation.
#[derive(Deserialize, Default, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DiskSpec {
    socket: Option<PathBuf>,
    path: Option<PathBuf>,
    readonly: Option<bool>,
    num_queues: Option<u16>,
    queue_size: Option<u16>,
    direct: Option<bool>,
}

/// vhost-user-blk's options, as the VMM starts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlkDaemonArgs {
    /// `--path`: the image.
    pub path: PathBuf,
    /// `--readonly`.
    pub readonly: bool,
    /// `--num-queues`, if the user chose.
    pub num_queues: Option<u16>,
    /// `--direct` (O_DIRECT).
    pub direct: bool,
    /// `--queue-size`: always given, the VMM's QueueNumMax.
    pub queue_size: u16,
}

impl DaemonArgs for BlkDaemonArgs {
    const PROGRAM: &'static str = "vhost-user-blk";

    fn render(&self, args: &mut ArgList) {
        args.path("--path", &self.path)
            .switch("--readonly", self.readonly)
            .opt_value("--num-queues", self.num_queues)
            .switch("--direct", self.direct)
            .value("--queue-size", self.queue_size);
    }
}

impl VirtioKind for Blk {
    const OPTION: &'static str = "--disk";
    const FORMS: &'static str = "socket=PATH or path=IMG";
    const KEYS: &'static [&'static str] = &[
        "socket",
        "path",
        "readonly",
        "num-queues",
        "queue-size",
        "direct",
    ];
    const DAEMON_KEY: (&'static str, &'static str) = ("path", "--path");
    type Spec = DiskSpec;
    type Params = ();

    fn set(spec: &mut DiskSpec, key: &str, val: &str) -> Result<(), String> {
        match key {
            "socket" => spec.socket = Some(val.into()),
            "path" => spec.path = Some(val.into()),
            "readonly" => spec.readonly = Some(on_off(key, val)?),
            "direct" => spec.direct = Some(on_off(key, val)?),
            "queue-size" => spec.queue_size = Some(number(key, val)?),
            _ => spec.num_queues = Some(number(key, val)?),
        }
        Ok(())
    }

    fn resolve(spec: &mut DiskSpec, base: &Path) {
        resolve(&mut spec.socket, base);
        resolve(&mut spec.path, base);
    }

    fn validate(spec: DiskSpec) -> Result<DeviceConfig, String> {
        let num_queues = spec
            .num_queues
            .map(|n| check_range("num-queues", n, MAX_BLK_QUEUES))
            .transpose()?;
        let queue_size = queue_size(spec.queue_size, MAX_QUEUE_SIZE, DEFAULT_QUEUE_SIZE)?;
        let backend = match (spec.socket, spec.path) {
            (Some(_), Some(_)) => return Err("give socket or path, not both".into()),
            (None, None) => {
                return Err("needs socket=PATH (a vhost-user backend) or path=IMG (an image for our vhost-user-blk)".into())
            }
            (Some(socket), None) => {
                if spec.readonly.is_some() || spec.direct.is_some() {
                    return Err(
                        "readonly and direct apply to path= only (a socket backend decides them)"
                            .into(),
                    );
                }
                DeviceBackend::Socket(socket)
            }
            (None, Some(path)) => {
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_dir() => {
                        return Err(format!("path={}: is a folder", path.display()))
                    }
                    Ok(_) => {}
                    Err(e) => return Err(format!("path={}: {e}", path.display())),
                }
                check_utf8("path", &path)?;
                DeviceBackend::daemon(&BlkDaemonArgs {
                    path,
                    readonly: spec.readonly == Some(true),
                    num_queues,
                    direct: spec.direct == Some(true),
                    queue_size,
                })
            }
        };
        Ok(DeviceConfig {
            kind: DeviceKind::Block,
            backend,
            num_queues,
            queue_size,
        })
    }

    fn layout(_: &(), q: QueueRequest) -> DeviceLayout {
        layout(q.backend_queues, q.num_queues, q.queue_size)
    }
}

/// virtio-blk: the backend's `virtio_blk_config` ([`CONFIG_SIZE`] bytes), queues of
/// up to `queue_max_size` entries (what the backend takes). With `num_queues` below
/// the backend's count, the guest sees that many and the config's `num_queues` says
/// so; with one queue MQ is not offered.
pub fn layout(backend_queues: u16, num_queues: Option<u16>, queue_max_size: u16) -> DeviceLayout {
    let n = num_queues.map_or(backend_queues, |n| n.min(backend_queues));
    DeviceLayout {
        device_id: VIRTIO_ID_BLOCK,
        config_size: CONFIG_SIZE,
        queue_max_size,
        num_queues: n,
        vmm_features: 0,
        masked_features: if n == 1 { 1 << VIRTIO_BLK_F_MQ } else { 0 },
        config_space: ConfigSpace::Backend {
            overrides: vec![(CONFIG_NUM_QUEUES, n.to_le_bytes().to_vec())],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_layout_matches_the_spec() {
        assert_eq!(CONFIG_SIZE, 60);
        assert_eq!(CONFIG_NUM_QUEUES, 34);
    }

    /// Each option its flag, in one order, `--queue-size` always.
    #[test]
    fn daemon_command_line() {
        let mut a = BlkDaemonArgs {
            path: "/i.img".into(),
            readonly: false,
            num_queues: None,
            direct: false,
            queue_size: 256,
        };
        assert_eq!(a.to_args(), ["--path", "/i.img", "--queue-size", "256"]);
        a.readonly = true;
        a.direct = true;
        a.num_queues = Some(2);
        assert_eq!(
            a.to_args(),
            [
                "--path",
                "/i.img",
                "--readonly",
                "--num-queues",
                "2",
                "--direct",
                "--queue-size",
                "256"
            ]
        );
    }
}
