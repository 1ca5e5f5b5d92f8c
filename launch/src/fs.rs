//! vhost-user-fs's options (`vhost-fs/src/config.rs`).

use std::path::PathBuf;

use clap::ValueEnum;

use crate::{ArgList, DaemonArgs};

/// `--cache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Cache {
    Auto,
    Always,
    Never,
}

/// `--sandbox`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Sandbox {
    Namespace,
    Chroot,
    None,
}

/// `--inode-file-handles=MODE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InodeFileHandles {
    Never,
    Prefer,
    Mandatory,
}

/// vhost-user-fs's own options; `None` and `false` leave the daemon's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsArgs {
    /// `--shared-dir`.
    pub shared_dir: PathBuf,
    /// `--tag`.
    pub tag: Option<String>,
    /// `--cache`.
    pub cache: Option<Cache>,
    /// `--xattr`.
    pub xattr: bool,
    /// `--readonly`.
    pub readonly: bool,
    /// `--num-request-queues`.
    pub num_request_queues: Option<u16>,
    /// `--allow-direct-io`.
    pub allow_direct_io: bool,
    /// `--poll-us`.
    pub poll_us: Option<u64>,
    /// `--sandbox`.
    pub sandbox: Option<Sandbox>,
    /// `--inode-file-handles=MODE` (with `=`: the flag's value is optional).
    pub inode_file_handles: Option<InodeFileHandles>,
    /// `--announce-submounts`.
    pub announce_submounts: bool,
}

impl FsArgs {
    /// Sharing `shared_dir` with the daemon's defaults.
    pub fn new(shared_dir: impl Into<PathBuf>) -> Self {
        FsArgs {
            shared_dir: shared_dir.into(),
            ..Default::default()
        }
    }

    /// The same with the mount tag `tag`.
    pub fn tagged(shared_dir: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        FsArgs {
            tag: Some(tag.into()),
            ..Self::new(shared_dir)
        }
    }
}

impl DaemonArgs for FsArgs {
    const PROGRAM: &'static str = "vhost-user-fs";

    fn render(&self, args: &mut ArgList) {
        args.path("--shared-dir", &self.shared_dir)
            .opt_value("--tag", self.tag.as_deref())
            .choice("--cache", self.cache)
            .switch("--xattr", self.xattr)
            .switch("--readonly", self.readonly)
            .opt_value("--num-request-queues", self.num_request_queues)
            .switch("--allow-direct-io", self.allow_direct_io)
            .opt_value("--poll-us", self.poll_us)
            .choice("--sandbox", self.sandbox);
        if let Some(name) = self
            .inode_file_handles
            .as_ref()
            .and_then(ValueEnum::to_possible_value)
        {
            args.raw([format!("--inode-file-handles={}", name.get_name())]);
        }
        args.switch("--announce-submounts", self.announce_submounts);
    }
}
