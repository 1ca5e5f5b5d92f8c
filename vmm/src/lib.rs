//! vhostkit: a small KVM VMM. Milestone 1 boots a 64-bit ELF kernel with a serial
//! console on stdout and a simple exit device (see [`devices`]).

pub mod boot;
pub mod config;
pub mod daemons;
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
    #[error("--disk socket={0}")]
    Disk(String, #[source] virtio::mmio::MmioError),
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
    let mem = Arc::new(memory::create(config.memory)?);
    memory::register(&vmfd, &mem)?;
    let entry = boot::load_kernel(&mem, config.memory, &config.kernel)?;

    // virtio-blk disks: one virtio-mmio window each, kicks through ioeventfds. There
    // is no irqchip yet, so no interrupt reaches the guest: drivers must poll.
    let mut mmio = devices::MmioBus::default();
    let mut cmdline = config.cmdline.clone();
    let disks = config
        .devices
        .iter()
        .filter_map(|d| match (&d.kind, &d.backend) {
            (config::DeviceKind::Block, config::DeviceBackend::Socket(socket)) => Some(socket),
            _ => None,
        });
    for (i, socket) in disks.enumerate() {
        let base = devices::VIRTIO_MMIO_BASE + i as u64 * virtio::mmio::MMIO_WINDOW;
        let irq = devices::VIRTIO_MMIO_IRQ + i as u32;
        let disk_err = |e: virtio::mmio::MmioError| Error::Disk(socket.display().to_string(), e);
        let backend =
            virtio::vhost_user::Backend::connect(socket).map_err(|e| disk_err(e.into()))?;
        let dev =
            virtio::mmio::MmioDevice::new(backend, mem.clone(), virtio::mmio::DeviceConfig::blk())
                .map_err(disk_err)?;
        dev.register_ioeventfds(&vmfd, base).map_err(disk_err)?;
        info!("disk {i}: {} at {base:#x}, IRQ {irq}", socket.display());
        // How Linux finds it (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES).
        cmdline.push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{irq}"));
        mmio.add(base, dev);
    }
    boot::setup_memory(&mem, config.memory, cmdline.trim_start())?;
    info!(
        "booting {} at {entry:#x}: {} vCPUs, {} MiB",
        config.kernel.display(),
        config.cpus,
        config.memory >> 20
    );

    let bus = Arc::new(Mutex::new(devices::IoBus::new(std::io::stdout())));
    let mmio = Arc::new(Mutex::new(mmio));
    let (done, results) = mpsc::channel();
    for id in 0..config.cpus {
        let rip = if id == 0 { entry } else { boot::AP_PARK };
        let vcpu = vm::create_vcpu(&kvm, &vmfd, id, rip)?;
        let (bus, mmio, done) = (bus.clone(), mmio.clone(), done.clone());
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || vm::run_vcpu(id, vcpu, bus, mmio, done))
            .map_err(|e| vm::VmError::Thread(id, e))?;
    }
    drop(done);
    // The first outcome decides; parked vCPUs and the VM go away with the process.
    let outcome = results.recv().map_err(|_| vm::VmError::NoResult)?;
    // Keep the memory mapped until here: KVM holds its address.
    drop(mem);
    Ok(outcome?)
}
