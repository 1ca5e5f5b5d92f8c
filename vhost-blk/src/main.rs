use std::process::ExitCode;

use vhost_blk::BlkConfig;
use vhostkit_common::daemon::{daemon_main, ServiceDaemon};

fn main() -> ExitCode {
    daemon_main::<ServiceDaemon<BlkConfig>>()
}
