use std::process::ExitCode;

use vhost_net::NetConfig;
use vhostkit_common::daemon::{daemon_main, ServiceDaemon};

fn main() -> ExitCode {
    daemon_main::<ServiceDaemon<NetConfig>>()
}
