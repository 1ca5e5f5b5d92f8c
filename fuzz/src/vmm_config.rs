//! Target `vmm_config`: the VMM's `--config` TOML file, through what `vhostkit
//! run --config vm.toml` does (vmm `config.rs`: `RunConfig::try_from` reads and
//! parses the file, resolves its relative paths against its folder, validates the
//! scalars and every `[[disk]]`, `[[net]]` and `[[fs]]` table).
//!
//! Input: the file's bytes (any bytes: a file that is not UTF-8 is refused too).
//! It is written to `vm.toml` in a scratch folder (made once per process) that
//! also holds `vmlinuz`, `initrd.img`, `disk.img` and a folder `share`, so
//! relative paths can name files that exist. Checked: an accepted configuration
//! is within the documented limits.

use std::path::PathBuf;
use std::sync::Mutex;

use clap::Parser;
use vhostkit_vmm::config::{
    Cli, Command, DeviceKind, RunArgs, RunConfig, FS_TAG_BYTES, MAX_CPUS, MAX_DEVICES, MAX_MEMORY,
    MIN_MEMORY,
};

struct State {
    file: PathBuf,
    args: RunArgs,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

pub fn run(data: &[u8]) {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let state = guard.get_or_insert_with(State::new);
    if let Err(e) = std::fs::write(&state.file, data) {
        panic!("cannot write {}: {e}", state.file.display());
    }
    match RunConfig::try_from(state.args.clone()) {
        Ok(config) => check(&config),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

impl State {
    fn new() -> Self {
        let dir = crate::scratch::fresh("vmm_config");
        for file in ["vmlinuz", "initrd.img", "disk.img"] {
            std::fs::write(dir.join(file), b"fuzz").expect("scratch file");
        }
        std::fs::create_dir(dir.join("share")).expect("scratch folder");
        let file = dir.join("vm.toml");
        let cli = Cli::try_parse_from([
            "vhostkit".as_ref(),
            "run".as_ref(),
            "--config".as_ref(),
            file.as_os_str(),
        ])
        .expect("command line");
        let Command::Run(args) = cli.command;
        State { file, args }
    }
}

/// What an accepted configuration promises.
fn check(config: &RunConfig) {
    assert!(
        (MIN_MEMORY..=MAX_MEMORY).contains(&config.memory) && config.memory.is_multiple_of(4096),
        "memory {}",
        config.memory
    );
    assert!(
        (1..=MAX_CPUS).contains(&config.cpus),
        "{} cpus",
        config.cpus
    );
    assert!(config.devices.len() <= MAX_DEVICES);
    for device in &config.devices {
        assert!(!device.describe().is_empty());
        if let Some(n) = device.num_queues {
            assert!((1..=126).contains(&n), "{n} queues");
        }
        // The kinds with promises of their own (a new kind needs no arm here).
        if let DeviceKind::Net { mac: Some(mac) } = &device.kind {
            assert!(mac[0] & 1 == 0 && *mac != [0; 6], "mac {mac:?}");
        }
        if let DeviceKind::Fs { tag } = &device.kind {
            assert!(
                !tag.is_empty() && tag.len() <= FS_TAG_BYTES && !tag.contains('\0'),
                "tag {tag:?}"
            );
        }
    }
}
