use std::process::ExitCode;

use vhost_blk::BlkConfig;
use vhostkit_common::daemon::daemon_main;

fn main() -> ExitCode {
    daemon_main::<BlkConfig>()
}
