//! vhostkit: a small KVM VMM. Milestone 1 boots a 64-bit ELF kernel with a serial
//! console on stdout and a simple exit device (see [`devices`]).

pub mod boot;
pub mod config;
pub mod devices;
pub mod memory;
pub mod virtio;
pub mod vm;

use std::sync::{mpsc, Arc, Mutex};

use log::info;

pub use config::{Cli, Command, RunConfig};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Vm(#[from] vm::VmError),
}

pub type Result<T> = std::result::Result<T, Error>;

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        // Some library errors repeat their source in their own message.
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s.replace('\n', " ")
}

/// Boots `config.kernel` and runs until the guest powers off (Ok) or fails.
pub fn run(config: &RunConfig) -> Result<()> {
    let (kvm, vmfd) = vm::create()?;
    let mem = memory::create(config.memory)?;
    memory::register(&vmfd, &mem)?;
    let entry = boot::load_kernel(&mem, config.memory, &config.kernel)?;
    boot::setup_memory(&mem, config.memory, &config.cmdline)?;
    info!(
        "booting {} at {entry:#x}: {} vCPUs, {} MiB",
        config.kernel.display(),
        config.cpus,
        config.memory >> 20
    );

    let bus = Arc::new(Mutex::new(devices::IoBus::new(std::io::stdout())));
    let (done, results) = mpsc::channel();
    for id in 0..config.cpus {
        let rip = if id == 0 { entry } else { boot::AP_PARK };
        let vcpu = vm::create_vcpu(&kvm, &vmfd, id, rip)?;
        let (bus, done) = (bus.clone(), done.clone());
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || vm::run_vcpu(id, vcpu, bus, done))
            .map_err(|e| vm::VmError::Thread(id, e))?;
    }
    drop(done);
    // The first outcome decides; parked vCPUs and the VM go away with the process.
    let outcome = results.recv().map_err(|_| vm::VmError::NoResult)?;
    // Keep the memory mapped until here: KVM holds its address.
    drop(mem);
    Ok(outcome?)
}
