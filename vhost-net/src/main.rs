use std::process::ExitCode;

use vhost_net::NetDaemon;
use vhostkit_common::daemon::daemon_main;

fn main() -> ExitCode {
    daemon_main::<NetDaemon>()
}
