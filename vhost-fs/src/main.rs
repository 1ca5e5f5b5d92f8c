use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use log::error;
use vhost_fs::config::{capabilities_json, refuse_unsupported_flags};
use vhost_fs::{Args, FsConfig};
use vhostkit_common::lifecycle::{install_signal_handler, StopHandle};
use vhostkit_common::logging;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.iter().skip(1).any(|a| a == "--print-capabilities") {
        println!("{}", capabilities_json());
        return ExitCode::SUCCESS;
    }
    if let Err(e) = refuse_unsupported_flags(&argv) {
        logging::init("info");
        error!("{e}");
        return ExitCode::from(2);
    }
    let args = Args::parse_from(argv);
    logging::init(&args.log.log_level);
    let config = match FsConfig::try_from(args) {
        Ok(config) => config,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let started = match vhost_fs::start(config) {
        Ok(started) => started,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = match StopHandle::new() {
        Ok(stop) => stop,
        Err(e) => {
            error!("cannot create the stop event: {e}");
            return ExitCode::FAILURE;
        }
    };
    let socket = started.socket_to_remove().map(Path::to_path_buf);
    if let Err(e) = install_signal_handler(stop.clone(), socket, Duration::from_secs(5)) {
        error!("{e}");
        return ExitCode::FAILURE;
    }
    match vhost_fs::serve(started, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
