use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use log::error;
use vhost_net::{Args, NetConfig};
use vhostkit_common::cli::ListenAddr;
use vhostkit_common::lifecycle::{install_signal_handler, StopHandle};
use vhostkit_common::logging;

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(&args.log.log_level);
    let config = match NetConfig::try_from(args) {
        Ok(config) => config,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let stop = match StopHandle::new() {
        Ok(stop) => stop,
        Err(e) => {
            error!("cannot create the stop event: {e}");
            return ExitCode::FAILURE;
        }
    };
    let socket = match &config.listen {
        ListenAddr::Path(p) => Some(p.clone()),
        ListenAddr::Fd(_) => None,
    };
    if let Err(e) = install_signal_handler(stop.clone(), socket, Duration::from_secs(5)) {
        error!("{e}");
        return ExitCode::FAILURE;
    }
    match vhost_net::run(config, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
