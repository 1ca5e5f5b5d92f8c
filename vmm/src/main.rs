use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use log::error;
use vhostkit_common::logging;
use vhostkit_vmm::{Cli, Command, RunConfig};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message up to the usage, on one line; --help has the rest.
            let msg = e.to_string();
            let first: Vec<&str> = msg
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("vhostkit: {}", first.join(" "));
            return ExitCode::from(2);
        }
    };
    let Command::Run(args) = cli.command;
    logging::init(&args.log.log_level);
    let config = match RunConfig::try_from(args) {
        Ok(config) => config,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    match vhostkit_vmm::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{}", vhostkit_vmm::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
