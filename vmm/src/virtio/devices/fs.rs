//! virtio-fs: `--fs` / `[[fs]]`, served by a vhost-user backend at `socket=` (such as
//! virtiofsd) or by our vhost-user-fs on the folder at `dir=`. The config space
//! (`tag`, `num_request_queues`) is the VMM's; queue 0 is the hiprio queue, the
//! rest are request queues.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use vhostkit_launch::fs::FsArgs;
use virtio_bindings::virtio_ids::VIRTIO_ID_FS;

use super::{
    check_range, number, queue_size, resolve, ConfigSpace, DeviceBackend, DeviceConfig, DeviceKind,
    DeviceLayout, QueueRequest, VirtioKind, MAX_QUEUE_SIZE,
};

/// Most request queues of a virtio-fs device (`num-queues`): with the hiprio queue,
/// 64 virtqueues.
pub const MAX_FS_REQUEST_QUEUES: u16 = 63;
/// QueueNumMax of a shared folder unless `queue-size` says otherwise, and the
/// most our vhost-user-fs takes.
pub const FS_QUEUE_SIZE: u16 = 1024;
/// Size of the config-space `tag` field (virtio 1.2, 5.11.4; Linux's
/// `struct virtio_fs_config`, which virtio-bindings lacks): the longest tag.
pub const FS_TAG_BYTES: usize = 36;
/// The config space: `tag`, then `num_request_queues` (le32).
pub const CONFIG_SIZE: u32 = FS_TAG_BYTES as u32 + 4;

/// The kind. See the [module docs](self).
pub struct Fs;

/// A `--fs` spec or `[[fs]]` table, before validation.
#[derive(Deserialize, Default, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FsSpec {
    socket: Option<PathBuf>,
    dir: Option<PathBuf>,
    tag: Option<String>,
    num_queues: Option<u16>,
    queue_size: Option<u16>,
}

impl VirtioKind for Fs {
    const OPTION: &'static str = "--fs";
    const FORMS: &'static str = "socket=PATH,tag=TAG or dir=DIR,tag=TAG";
    const KEYS: &'static [&'static str] = &["socket", "dir", "tag", "num-queues", "queue-size"];
    const DAEMON_KEY: (&'static str, &'static str) = ("dir", "--shared-dir");
    type Spec = FsSpec;
    type Params = String;

    fn set(spec: &mut FsSpec, key: &str, val: &str) -> Result<(), String> {
        match key {
            "socket" => spec.socket = Some(val.into()),
            "dir" => spec.dir = Some(val.into()),
            "tag" => spec.tag = Some(val.into()),
            "queue-size" => spec.queue_size = Some(number(key, val)?),
            _ => spec.num_queues = Some(number(key, val)?),
        }
        Ok(())
    }

    fn resolve(spec: &mut FsSpec, base: &Path) {
        resolve(&mut spec.socket, base);
        resolve(&mut spec.dir, base);
    }

    fn validate(spec: FsSpec) -> Result<DeviceConfig, String> {
        let Some(tag) = spec.tag else {
            return Err("needs tag=TAG (the name the guest mounts)".into());
        };
        if tag.is_empty() || tag.len() > FS_TAG_BYTES || tag.contains('\0') {
            return Err(format!(
                "tag={tag}: must be 1 to {FS_TAG_BYTES} bytes, without NUL"
            ));
        }
        let num_queues = spec
            .num_queues
            .map(|n| check_range("num-queues", n, MAX_FS_REQUEST_QUEUES))
            .transpose()?;
        // Our vhost-user-fs takes queues of up to 1024 entries.
        let max = if spec.dir.is_some() {
            FS_QUEUE_SIZE
        } else {
            MAX_QUEUE_SIZE
        };
        let queue_size = queue_size(spec.queue_size, max, FS_QUEUE_SIZE)?;
        let backend = match (spec.socket, spec.dir) {
            (Some(_), Some(_)) => return Err("give socket or dir, not both".into()),
            (None, None) => {
                return Err("needs socket=PATH (a vhost-user backend) or dir=DIR (a folder for our vhost-user-fs)".into())
            }
            (Some(socket), None) => DeviceBackend::Socket(socket),
            (None, Some(dir)) => {
                match std::fs::metadata(&dir) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(format!("dir={}: not a folder", dir.display())),
                    Err(e) => return Err(format!("dir={}: {e}", dir.display())),
                }
                DeviceBackend::daemon(&FsArgs {
                    num_request_queues: num_queues,
                    ..FsArgs::tagged(dir, &tag)
                })
            }
        };
        Ok(DeviceConfig {
            kind: DeviceKind::Fs { tag },
            backend,
            num_queues,
            queue_size,
        })
    }

    fn layout(tag: &String, q: QueueRequest) -> DeviceLayout {
        layout(q.backend_queues, tag, q.num_queues, q.queue_size)
    }
}

/// virtio-fs: the config (`tag`, NUL-padded to 36 bytes, and `num_request_queues`)
/// is the VMM's. Queue 0 is the hiprio queue, the rest are request queues.
pub fn layout(
    backend_queues: u16,
    tag: &str,
    num_request_queues: Option<u16>,
    queue_max_size: u16,
) -> DeviceLayout {
    let backend_requests = backend_queues.saturating_sub(1).max(1);
    let requests = num_request_queues.map_or(backend_requests, |n| n.clamp(1, backend_requests));
    let mut config = vec![0u8; FS_TAG_BYTES];
    let tag = tag.as_bytes();
    let len = tag.len().min(FS_TAG_BYTES);
    config[..len].copy_from_slice(&tag[..len]);
    config.extend_from_slice(&u32::from(requests).to_le_bytes());
    DeviceLayout {
        device_id: VIRTIO_ID_FS,
        config_size: CONFIG_SIZE,
        queue_max_size,
        num_queues: 1 + requests,
        vmm_features: 0,
        masked_features: 0,
        config_space: ConfigSpace::Local(config),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon the VMM starts for `dir=`: the folder, the tag, the request
    /// queues if given.
    #[test]
    fn daemon_command_line() {
        let args = |spec: FsSpec| match Fs::validate(spec).unwrap().backend {
            DeviceBackend::Daemon { program, args } => {
                assert_eq!(program, "vhost-user-fs");
                args
            }
            other => panic!("{other:?}"),
        };
        let spec = FsSpec {
            dir: Some("/".into()),
            tag: Some("share".into()),
            ..Default::default()
        };
        assert_eq!(args(spec.clone()), ["--shared-dir", "/", "--tag", "share"]);
        let two = FsSpec {
            num_queues: Some(2),
            ..spec
        };
        assert_eq!(
            args(two),
            [
                "--shared-dir",
                "/",
                "--tag",
                "share",
                "--num-request-queues",
                "2"
            ]
        );
    }

    #[test]
    fn config_space_is_tag_and_request_queues() {
        let l = layout(4, "t", Some(1), FS_QUEUE_SIZE);
        assert_eq!(l.num_queues, 2);
        let ConfigSpace::Local(bytes) = l.config_space else {
            panic!("held by the VMM")
        };
        assert_eq!(bytes.len() as u32, CONFIG_SIZE);
        assert_eq!(bytes[0], b't');
        assert_eq!(bytes[36..], 1u32.to_le_bytes());
    }
}
