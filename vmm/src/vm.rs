//! The KVM virtual machine: vCPU set-up and the vCPU threads' run loops.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use log::info;

use crate::boot;
use crate::devices::{Action, DeviceError, IoBus, MmioBus};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("cannot create the VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("cannot create the in-kernel interrupt controllers ({0})")]
    Irqchip(&'static str, #[source] kvm_ioctls::Error),
    #[error("KVM does not report its supported CPUID")]
    Cpuid(#[source] kvm_ioctls::Error),
    #[error("cannot create vCPU {0}")]
    CreateVcpu(u8, #[source] kvm_ioctls::Error),
    #[error("cannot set up vCPU {0}: {1}")]
    SetupVcpu(u8, &'static str, #[source] kvm_ioctls::Error),
    #[error("cannot start the thread of vCPU {0}")]
    Thread(u8, #[source] io::Error),
    #[error("vCPU {0}: KVM_RUN failed")]
    Run(u8, #[source] kvm_ioctls::Error),
    #[error("vCPU {0}: the guest triple-faulted (KVM_EXIT_SHUTDOWN)")]
    Shutdown(u8),
    #[error(
        "vCPU {0}: KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY, hardware reason {1:#x})"
    )]
    FailEntry(u8, u64),
    #[error("vCPU {0}: KVM internal error (KVM_EXIT_INTERNAL_ERROR, suberror {1}{2})")]
    Internal(u8, u32, &'static str),
    #[error("vCPU {0}: unexpected exit {1}")]
    UnexpectedExit(u8, String),
    #[error("vCPU {0}: device error")]
    Device(u8, #[source] DeviceError),
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
    #[error("KVM refused the irqfd of GSI {0}")]
    Irqfd(u32, #[source] kvm_ioctls::Error),
    #[error("all vCPU threads ended without a result")]
    NoResult,
}

pub type Result<T> = std::result::Result<T, VmError>;

/// Where KVM may put the three pages of its real-mode TSS (Intel): just below the
/// 4 GiB boundary, in the MMIO hole and out of the way of RAM and devices, as
/// Firecracker does.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// The KVM handle and a VM with no memory yet.
pub fn create() -> Result<(Kvm, VmFd)> {
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    let vm = kvm.create_vm().map_err(VmError::CreateVm)?;
    Ok((kvm, vm))
}

/// KVM's in-kernel interrupt controllers: a local APIC per vCPU, the IOAPIC (24
/// GSIs) and the dual 8259 PIC, and the PIT, with a PC's GSI routing. With them, an
/// irqfd raises a guest interrupt without the VMM, HLT waits in the kernel, and
/// secondary vCPUs wait for INIT/SIPI from the boot vCPU. Call it after the guest
/// memory is registered and before the vCPUs are created, as Firecracker does.
pub fn create_irqchip(vm: &VmFd) -> Result<()> {
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(|e| VmError::Irqchip("TSS address", e))?;
    vm.create_irq_chip()
        .map_err(|e| VmError::Irqchip("irqchip", e))?;
    // The PIT, with its speaker port answered by KVM rather than the VMM.
    let pit = kvm_bindings::kvm_pit_config {
        flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| VmError::Irqchip("PIT", e))?;
    vm.set_gsi_routing(&pc_gsi_routing())
        .map_err(|e| VmError::Irqchip("GSI routing", e))?;
    Ok(())
}

/// Number of IOAPIC pins (KVM's IOAPIC has 24).
pub const IOAPIC_PINS: u32 = 24;

/// GSI routing of a PC, as QEMU sets it: ISA IRQs 0-15 to the 8259 pins (but 2, the
/// cascade) and GSIs 0-23 to the IOAPIC pins of the same number, except that IRQ 0
/// (the PIT) arrives on IOAPIC pin 2, as the MADT's interrupt source override and the
/// MP table say. KVM's default routes GSI 0 to pin 0 instead, which Linux's timer
/// check reports as an MP-BIOS bug.
fn pc_gsi_routing() -> kvm_bindings::KvmIrqRouting {
    use kvm_bindings::{
        kvm_irq_routing_entry, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
        KVM_IRQ_ROUTING_IRQCHIP,
    };
    let route = |gsi: u32, irqchip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = irqchip;
        e.u.irqchip.pin = pin;
        e
    };
    let mut entries = Vec::new();
    for gsi in (0..8).filter(|&g| g != 2) {
        entries.push(route(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
    }
    for gsi in 8..16 {
        entries.push(route(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
    }
    entries.push(route(0, KVM_IRQCHIP_IOAPIC, 2));
    for gsi in (1..IOAPIC_PINS).filter(|&g| g != 2) {
        entries.push(route(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    kvm_bindings::KvmIrqRouting::from_entries(&entries)
        .expect("fewer routes than KVM_MAX_IRQ_ROUTES")
}

/// Creates vCPU `id`. vCPU 0 starts in long mode at `entry`; the others wait in
/// KVM for the INIT/SIPI sequence with which the guest starts them (their KVM_RUN
/// blocks until then), as on real hardware.
pub fn create_vcpu(kvm: &Kvm, vm: &VmFd, id: u8, entry: u64) -> Result<VcpuFd> {
    let vcpu = vm
        .create_vcpu(id as u64)
        .map_err(|e| VmError::CreateVcpu(id, e))?;
    let setup = |what, e| VmError::SetupVcpu(id, what, e);
    // The guest CPUID must say long mode before EFER.LME is accepted.
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VmError::Cpuid)?;
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => entry.ebx = (entry.ebx & 0x00ff_ffff) | ((id as u32) << 24),
            0xb => entry.edx = id as u32,
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(|e| setup("CPUID", e))?;
    set_lint(&vcpu).map_err(|e| setup("local APIC", e))?;
    if id != 0 {
        return Ok(vcpu);
    }
    let mut sregs = vcpu.get_sregs().map_err(|e| setup("get sregs", e))?;
    boot::long_mode_sregs(&mut sregs);
    vcpu.set_sregs(&sregs)
        .map_err(|e| setup("long-mode sregs", e))?;
    vcpu.set_regs(&boot::entry_regs(entry))
        .map_err(|e| setup("regs", e))?;
    vcpu.set_fpu(&boot::initial_fpu())
        .map_err(|e| setup("FPU", e))?;
    Ok(vcpu)
}

/// Local APIC LVT entries as a PC's firmware leaves them: LINT0 in ExtINT mode (the
/// 8259 PIC's output, which Linux uses until it switches to the IOAPIC) and LINT1
/// as NMI.
fn set_lint(vcpu: &VcpuFd) -> std::result::Result<(), kvm_ioctls::Error> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const APIC_MODE_NMI: u32 = 0x4;
    const APIC_MODE_EXTINT: u32 = 0x7;
    let mut lapic = vcpu.get_lapic()?;
    let mut set_mode = |offset: usize, mode: u32| {
        let reg = &mut lapic.regs[offset..offset + 4];
        let bytes: [u8; 4] = std::array::from_fn(|i| reg[i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (dst, src) in reg.iter_mut().zip(value.to_le_bytes()) {
            *dst = src as _;
        }
    };
    set_mode(APIC_LVT0, APIC_MODE_EXTINT);
    set_mode(APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)
}

/// vCPU exits to the VMM, counted by kind over all vCPUs (for the log line at the
/// end of a run and the benchmark's wake-ups per request).
#[derive(Debug, Default)]
pub struct ExitStats {
    pub port_io: AtomicU64,
    pub mmio: AtomicU64,
    pub other: AtomicU64,
}

impl ExitStats {
    /// (port I/O, MMIO, other) exits so far.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.port_io.load(Ordering::Relaxed),
            self.mmio.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        )
    }
}

/// How a vCPU thread ended.
pub type VcpuResult = Result<()>;

/// Runs vCPU `id` until the guest powers off (Ok) or fails (Err); sends the outcome
/// on `done`. HLT never comes here: the in-kernel local APIC blocks the vCPU until
/// an interrupt, and a secondary vCPU waits in KVM_RUN for its SIPI.
pub fn run_vcpu<W: Write>(
    id: u8,
    mut vcpu: VcpuFd,
    bus: Arc<Mutex<IoBus<W>>>,
    mmio: Arc<Mutex<MmioBus>>,
    stats: Arc<ExitStats>,
    done: mpsc::Sender<VcpuResult>,
) {
    let result = run_loop(id, &mut vcpu, &bus, &mmio, &stats);
    let _ = done.send(result);
}

fn run_loop<W: Write>(
    id: u8,
    vcpu: &mut VcpuFd,
    bus: &Mutex<IoBus<W>>,
    mmio: &Mutex<MmioBus>,
    stats: &ExitStats,
) -> Result<()> {
    loop {
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Err(VmError::Run(id, e)),
        };
        let counter = match exit {
            VcpuExit::IoOut(..) | VcpuExit::IoIn(..) => &stats.port_io,
            VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => &stats.mmio,
            _ => &stats.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match exit {
            VcpuExit::IoOut(port, data) => {
                let action = lock(bus)
                    .write(port, data)
                    .map_err(|e| VmError::Device(id, e))?;
                if action == Action::Stop {
                    info!("vCPU {id}: the guest asked to stop (i8042 reset)");
                    return Ok(());
                }
            }
            VcpuExit::IoIn(port, data) => lock(bus).read(port, data),
            VcpuExit::MmioRead(addr, data) => lock(mmio).read(addr, data),
            VcpuExit::MmioWrite(addr, data) => lock(mmio).write(addr, data),
            VcpuExit::Shutdown => return Err(VmError::Shutdown(id)),
            VcpuExit::FailEntry(reason, _cpu) => return Err(VmError::FailEntry(id, reason)),
            VcpuExit::InternalError => {
                // SAFETY: after KVM_EXIT_INTERNAL_ERROR, the `internal` member is the
                // active one of kvm_run's exit union.
                let sub = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                let what = match sub {
                    1 => ": emulation failure",
                    2 => ": simultaneous exception",
                    3 => ": delivery event",
                    _ => "",
                };
                return Err(VmError::Internal(id, sub, what));
            }
            other => return Err(VmError::UnexpectedExit(id, format!("{other:?}"))),
        }
    }
}

/// A bus lock; a vCPU thread that panicked holding it leaves consistent state
/// (device accesses are single steps), so poisoning is ignored.
fn lock<T>(bus: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    bus.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER};

    #[test]
    fn pc_routing_puts_irq0_on_ioapic_pin_2() {
        let routing = pc_gsi_routing();
        let routes: Vec<(u32, u32, u32)> = routing
            .as_slice()
            .iter()
            // SAFETY: every entry was built as KVM_IRQ_ROUTING_IRQCHIP, whose union
            // member is `irqchip`.
            .map(|e| unsafe { (e.gsi, e.u.irqchip.irqchip, e.u.irqchip.pin) })
            .collect();
        let ioapic = |gsi| {
            routes
                .iter()
                .filter(|r| r.0 == gsi && r.1 == KVM_IRQCHIP_IOAPIC)
                .map(|r| r.2)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ioapic(0),
            [2],
            "the PIT on pin 2, as the MADT override says"
        );
        assert_eq!(
            ioapic(2),
            Vec::<u32>::new(),
            "GSI 2 is not a pin of its own"
        );
        for gsi in [1, 4, 5, 12, 23] {
            assert_eq!(ioapic(gsi), [gsi], "GSI {gsi}");
        }
        assert!(routes.contains(&(0, KVM_IRQCHIP_PIC_MASTER, 0)));
        assert!(!routes.iter().any(|r| r.1 != KVM_IRQCHIP_IOAPIC && r.0 == 2));
        // 15 PIC routes and 23 IOAPIC routes.
        assert_eq!(routes.len(), 15 + 23);
    }
}
