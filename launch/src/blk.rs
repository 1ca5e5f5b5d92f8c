//! vhost-user-blk's options (`vhost-blk/src/config.rs`).

use std::path::PathBuf;

use clap::ValueEnum;

use crate::{ArgList, DaemonArgs};

/// `--engine`: how requests reach the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    #[value(name = "io_uring")]
    IoUring,
    Sync,
    Null,
}

impl std::fmt::Display for Engine {
    /// The name the daemon's `--engine` takes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::IoUring => "io_uring",
            Engine::Sync => "sync",
            Engine::Null => "null",
        })
    }
}

/// vhost-user-blk's own options; `None` and `false` leave the daemon's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlkArgs {
    /// `--path`: the image.
    pub path: PathBuf,
    /// `--readonly`.
    pub readonly: bool,
    /// `--num-queues`.
    pub num_queues: Option<u16>,
    /// `--queue-size`.
    pub queue_size: Option<u16>,
    /// `--direct` (O_DIRECT).
    pub direct: bool,
    /// `--serial`.
    pub serial: Option<String>,
    /// `--engine`.
    pub engine: Option<Engine>,
    /// `--poll-us`.
    pub poll_us: Option<u64>,
}

impl BlkArgs {
    /// Serving the image at `path` with the daemon's defaults.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        BlkArgs {
            path: path.into(),
            ..Default::default()
        }
    }
}

impl DaemonArgs for BlkArgs {
    const PROGRAM: &'static str = "vhost-user-blk";

    fn render(&self, args: &mut ArgList) {
        args.path("--path", &self.path)
            .switch("--readonly", self.readonly)
            .opt_value("--num-queues", self.num_queues)
            .switch("--direct", self.direct)
            .opt_value("--queue-size", self.queue_size)
            .opt_value("--serial", self.serial.as_deref())
            .choice("--engine", self.engine)
            .opt_value("--poll-us", self.poll_us);
    }
}
