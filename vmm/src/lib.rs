//! vhostkit: a small KVM VMM. Milestone 1 boots a 64-bit ELF kernel with a serial
//! console on stdout and a simple exit device (see [`devices`]).

pub mod acpi;
pub mod boot;
pub mod config;
pub mod devices;
pub mod memory;
pub mod mptable;
pub mod virtio;
pub mod vm;

use std::sync::{mpsc, Arc, Mutex};

use log::info;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use config::{Cli, Command, RunConfig};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    #[error("ACPI tables")]
    Acpi(#[from] acpi::AcpiError),
    #[error("MP table")]
    Mptable(#[from] mptable::MptableError),
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
    let kernel = boot::load_kernel(&mem, config.memory, &config.kernel)?;
    let entry = kernel.entry;

    // virtio-blk disks: one virtio-mmio window each, kicks through ioeventfds, calls
    // through irqfds, described to the guest in the ACPI DSDT.
    let mut mmio = devices::MmioBus::default();
    let mut platform = acpi::Platform {
        cpus: config.cpus,
        virtio_mmio: Vec::new(),
    };
    for (i, socket) in config.disks.iter().enumerate() {
        let base = devices::VIRTIO_MMIO_BASE + i as u64 * virtio::mmio::MMIO_WINDOW;
        let irq = devices::VIRTIO_MMIO_IRQ + i as u32;
        let disk_err = |e: virtio::mmio::MmioError| Error::Disk(socket.display().to_string(), e);
        let backend =
            virtio::vhost_user::Backend::connect(socket).map_err(|e| disk_err(e.into()))?;
        let device_config = virtio::mmio::DeviceConfig::blk(backend.num_queues(), None);
        let dev =
            virtio::mmio::MmioDevice::new(backend, mem.clone(), device_config).map_err(disk_err)?;
        dev.register_ioeventfds(&vmfd, base).map_err(disk_err)?;
        let mut dev = dev;
        dev.register_irqfds(&vmfd, irq).map_err(disk_err)?;
        info!("disk {i}: {} at {base:#x}, IRQ {irq}", socket.display());
        platform.virtio_mmio.push(acpi::VirtioMmioInfo {
            base,
            size: virtio::mmio::MMIO_WINDOW,
            gsi: irq,
        });
        mmio.add(base, dev);
    }
    mptable::write(&mem, config.cpus)?;
    let rsdp = acpi::write_tables(&mem, &platform)?;
    boot::setup_memory(
        &mem,
        config.memory,
        &kernel,
        &config.cmdline,
        None,
        Some(rsdp),
    )?;
    info!(
        "booting {} at {entry:#x}: {} vCPUs, {} MiB",
        config.kernel.display(),
        config.cpus,
        config.memory >> 20
    );

    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(vm::VmError::EventFd)?;
    vmfd.register_irqfd(&serial_irq, devices::COM1_GSI)
        .map_err(|e| vm::VmError::Irqfd(devices::COM1_GSI, e))?;
    let bus = Arc::new(Mutex::new(devices::IoBus::new(
        std::io::stdout(),
        serial_irq,
    )));
    let mmio = Arc::new(Mutex::new(mmio));
    let stats = Arc::new(vm::ExitStats::default());
    let (done, results) = mpsc::channel();
    for id in 0..config.cpus {
        let vcpu = vm::create_vcpu(&kvm, &vmfd, id, entry)?;
        let (bus, mmio, stats, done) = (bus.clone(), mmio.clone(), stats.clone(), done.clone());
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || vm::run_vcpu(id, vcpu, bus, mmio, stats, done))
            .map_err(|e| vm::VmError::Thread(id, e))?;
    }
    drop(done);
    // The first outcome decides; parked vCPUs and the VM go away with the process.
    let outcome = results.recv().map_err(|_| vm::VmError::NoResult)?;
    let (port_io, mmio_exits, other) = stats.snapshot();
    let notifications = mmio
        .lock()
        .map(|m| m.notification_stats())
        .unwrap_or_default();
    info!(
        "vCPU exits: {port_io} port I/O, {mmio_exits} MMIO, {other} other; virtio notifications through the VMM: {} kicks, {} calls",
        notifications.kicks, notifications.calls
    );
    // Keep the memory mapped until here: KVM holds its address.
    drop(mem);
    Ok(outcome?)
}
