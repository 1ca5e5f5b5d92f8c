use std::process::ExitCode;

use vhost_blk::BlkDaemon;
use vhostkit_common::daemon::daemon_main;

fn main() -> ExitCode {
    daemon_main::<BlkDaemon>()
}
