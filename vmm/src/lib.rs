//! vhostkit: a small KVM VMM. Milestone 1 boots a 64-bit ELF kernel with a serial
//! console on stdout and a simple exit device (see [`devices`]).

pub mod acpi;
pub mod boot;
pub mod config;
pub mod daemons;
pub mod devices;
pub mod memory;
pub mod mptable;
pub mod seccomp;
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
    #[error(transparent)]
    Daemons(#[from] daemons::DaemonError),
    #[error("{0}")]
    Device(String, #[source] virtio::mmio::MmioError),
    #[error("{0}")]
    Backend(String, #[source] virtio::vhost_user::BackendError),
    #[error("{0}: the vhost-user backend closed the connection")]
    BackendHangup(String),
    #[error("{0}")]
    DaemonExited(String),
    #[error("{0}")]
    Seccomp(String),
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

/// Boots `config.kernel` and runs until the guest powers off or reboots (Ok) or
/// something fails: the guest (triple fault), KVM, a backend that hangs up, or one
/// of the daemons the VMM started.
pub fn run(config: &RunConfig) -> Result<()> {
    // Our daemons first (`--disk path=` and the like): their sockets are needed
    // below. On this thread, which outlives the VM: they die with it.
    let (mut daemons, sockets) =
        daemons::Daemons::start(&config.devices, &config.log_level, config.seccomp)?;
    let (kvm, vmfd) = vm::create()?;
    let mem = Arc::new(memory::create(config.memory)?);
    memory::register(&vmfd, &mem)?;
    vm::create_irqchip(&vmfd)?;
    let kernel = boot::load_kernel(&mem, config.memory, &config.kernel)?;
    let entry = kernel.entry;

    // One virtio-mmio window per device: kicks through ioeventfds, calls through
    // irqfds, described to the guest in the ACPI DSDT.
    let mut mmio = devices::MmioBus::default();
    let mut platform = acpi::Platform {
        cpus: config.cpus,
        virtio_mmio: Vec::new(),
    };
    let mut watched = Vec::new();
    for (i, (device, socket)) in config.devices.iter().zip(&sockets).enumerate() {
        let base = devices::VIRTIO_MMIO_BASE + i as u64 * virtio::mmio::MMIO_WINDOW;
        let irq = devices::VIRTIO_MMIO_IRQ + i as u32;
        let what = device.describe();
        let dev_err = |e: virtio::mmio::MmioError| Error::Device(what.clone(), e);
        let backend = virtio::vhost_user::Backend::connect(socket)
            .map_err(|e| Error::Backend(what.clone(), e))?;
        // The device's index among those of its kind (a net device's default MAC).
        let nth = config.devices[..i]
            .iter()
            .filter(|d| std::mem::discriminant(&d.kind) == std::mem::discriminant(&device.kind))
            .count();
        let layout = device.kind.layout(device, backend.num_queues(), nth);
        let hangup = backend
            .socket()
            .try_clone_to_owned()
            .map_err(|e| dev_err(virtio::mmio::MmioError::EventFd(e)))?;
        watched.push((hangup, what.clone()));
        let device = virtio::devices::VhostUserDevice::new(backend, layout);
        let mut dev =
            virtio::mmio::MmioTransport::new(Box::new(device), mem.clone()).map_err(&dev_err)?;
        dev.register_ioeventfds(&vmfd, base).map_err(&dev_err)?;
        dev.register_irqfds(&vmfd, irq).map_err(&dev_err)?;
        info!(
            "{what}: virtio device {} with {} queues at {base:#x}, GSI {irq}",
            dev.device_id(),
            dev.num_queues()
        );
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
        config.initrd.as_deref(),
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
    forward_console_input(bus.clone());
    let mut vcpus = Vec::with_capacity(usize::from(config.cpus));
    for id in 0..config.cpus {
        vcpus.push(vm::create_vcpu(&kvm, &vmfd, id, entry)?);
    }
    // Everything is set up: from here on guest code runs, under the filter.
    seccomp::install(config.seccomp, &daemons).map_err(Error::Seccomp)?;
    let mmio = Arc::new(Mutex::new(mmio));
    let stats = Arc::new(vm::ExitStats::default());
    let (done, results) = mpsc::channel();
    // Wakes the watch below when a vCPU thread has sent its outcome.
    let vcpu_done = EventFd::new(EFD_NONBLOCK).map_err(vm::VmError::EventFd)?;
    for (id, vcpu) in (0..config.cpus).zip(vcpus) {
        let (bus, mmio, stats, done) = (bus.clone(), mmio.clone(), stats.clone(), done.clone());
        let wake = vcpu_done.try_clone().map_err(vm::VmError::EventFd)?;
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                vm::run_vcpu(id, vcpu, bus, mmio, stats, done);
                let _ = wake.write(1);
            })
            .map_err(|e| vm::VmError::Thread(id, e))?;
    }
    drop(done);
    let outcome = watch(&results, &vcpu_done, &watched, &mut daemons);
    let (port_io, mmio_exits, other) = stats.snapshot();
    let notifications = mmio
        .lock()
        .map(|m| m.notification_stats())
        .unwrap_or_default();
    info!(
        "vCPU exits: {port_io} port I/O, {mmio_exits} MMIO, {other} other; virtio notifications through the VMM: {} kicks, {} calls",
        notifications.kicks, notifications.calls
    );
    // The first outcome decides; vCPUs still in KVM_RUN and the VM go away with the
    // process. Dropping `daemons` stops the daemons we started.
    drop(daemons);
    drop(mem);
    outcome
}

/// Feeds stdin to the guest's serial console from a thread of its own (it wakes
/// only when there is input; with stdin closed or /dev/null it ends at once). The
/// terminal stays in cooked mode, as with QEMU's `-serial stdio`: lines arrive on
/// Enter, and Ctrl-C stops the VMM.
fn forward_console_input(bus: Arc<Mutex<devices::IoBus<std::io::Stdout>>>) {
    use std::io::Read;
    let spawned = std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 256];
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    return;
                }
                let mut pending = &buf[..n];
                while !pending.is_empty() {
                    let taken = bus
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .serial_input(pending);
                    pending = &pending[taken..];
                    if taken == 0 {
                        // The guest has not read the FIFO yet.
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("no console input: cannot start its thread: {e}");
    }
}

/// Waits, without a timer, until a vCPU reports (power-off or an error), a
/// backend's connection hangs up, or one of our daemons exits: one poll() on the
/// vCPUs' eventfd, the backend sockets (POLLRDHUP) and the daemons' pidfds.
fn watch(
    results: &mpsc::Receiver<vm::VcpuResult>,
    vcpu_done: &EventFd,
    backends: &[(std::os::fd::OwnedFd, String)],
    daemons: &mut daemons::Daemons,
) -> Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let pidfds: Vec<OwnedFd> = daemons
        .pids()
        .into_iter()
        .filter_map(|pid| {
            // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
            // or -1; it touches no memory of ours.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
            // SAFETY: a non-negative result is a descriptor we now own.
            (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
        })
        .collect();
    let mut fds = vec![libc::pollfd {
        fd: vcpu_done.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    for (fd, _) in backends {
        fds.push(libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        });
    }
    for fd in &pidfds {
        fds.push(libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    loop {
        // SAFETY: `fds` is a valid array of fds.len() pollfds for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue; // EINTR
        }
        if let Some(e) = backend_failure(&fds[1..], backends, daemons) {
            return Err(e);
        }
        if fds[0].revents != 0 {
            let _ = vcpu_done.read();
            match results.try_recv() {
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(())) => {
                    // The guest powered off. A backend that went away just before
                    // (the guest saw its device fail and gave up) is still the
                    // run's error: look once more without waiting.
                    for p in fds.iter_mut() {
                        p.revents = 0;
                    }
                    // SAFETY: as above; a zero timeout only samples the events.
                    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
                    return match backend_failure(&fds[1..], backends, daemons) {
                        Some(e) => Err(e),
                        None => Ok(()),
                    };
                }
                Err(mpsc::TryRecvError::Disconnected) => return Err(vm::VmError::NoResult.into()),
                Err(mpsc::TryRecvError::Empty) => {}
            }
        }
        // A pidfd fired for a daemon `exited` has not reaped yet: look again soon.
        if fds[1 + backends.len()..].iter().any(|p| p.revents != 0) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// What the events on the backend sockets and daemon pidfds in `fds` (backends
/// first, as in `backends`) say went wrong, if anything.
fn backend_failure(
    fds: &[libc::pollfd],
    backends: &[(std::os::fd::OwnedFd, String)],
    daemons: &mut daemons::Daemons,
) -> Option<Error> {
    if let Some(line) = daemons.exited() {
        return Some(Error::DaemonExited(line));
    }
    let has_daemons = fds.len() > backends.len();
    for (pfd, (_, what)) in fds.iter().zip(backends) {
        if pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            // A daemon of ours that died closed its socket first: its exit status
            // says more than the hang-up, so give it a moment to show.
            if has_daemons {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
                while std::time::Instant::now() < deadline {
                    if let Some(line) = daemons.exited() {
                        return Some(Error::DaemonExited(line));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            return Some(Error::BackendHangup(what.clone()));
        }
    }
    None
}
