//! virtio-blk: `--disk` / `[[disk]]`, served by a vhost-user backend at `socket=` or
//! by our vhost-user-blk on the image at `path=`. The config space is the backend's
//! (GET_CONFIG), with `num_queues` replaced by the VMM's count.

use std::mem::offset_of;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vhostkit_launch::blk::BlkArgs;
use virtio_bindings::virtio_blk::{virtio_blk_config, VIRTIO_BLK_F_MQ};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

use super::{
    check_range, number, on_off, queue_size, resolve, ConfigSpace, DeviceBackend, DeviceConfig,
    DeviceKind, DeviceLayout, QueueRequest, VirtioKind, DEFAULT_QUEUE_SIZE, MAX_QUEUE_SIZE,
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
                DeviceBackend::daemon(&BlkArgs {
                    readonly: spec.readonly == Some(true),
                    num_queues,
                    direct: spec.direct == Some(true),
                    // Always given: the VMM's QueueNumMax.
                    queue_size: Some(queue_size),
                    ..BlkArgs::new(path)
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

    /// The daemon the VMM starts for `path=`: each option the spec sets, and
    /// `--queue-size` always.
    #[test]
    fn daemon_command_line() {
        let args = |spec: DiskSpec| match Blk::validate(spec).unwrap().backend {
            DeviceBackend::Daemon { program, args } => {
                assert_eq!(program, "vhost-user-blk");
                args
            }
            other => panic!("{other:?}"),
        };
        let path = Some(PathBuf::from("/dev/null"));
        let plain = DiskSpec {
            path: path.clone(),
            ..Default::default()
        };
        assert_eq!(args(plain), ["--path", "/dev/null", "--queue-size", "256"]);
        let full = DiskSpec {
            path,
            readonly: Some(true),
            direct: Some(true),
            num_queues: Some(2),
            queue_size: Some(64),
            ..Default::default()
        };
        assert_eq!(
            args(full),
            [
                "--path",
                "/dev/null",
                "--readonly",
                "--num-queues",
                "2",
                "--direct",
                "--queue-size",
                "64"
            ]
        );
    }
}
