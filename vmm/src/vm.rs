//! The KVM virtual machine: vCPU set-up and the vCPU threads' run loops.

use std::io::{self, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use log::{debug, info};

use crate::boot;
use crate::devices::{Action, DeviceError, IoBus, MmioBus};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("cannot create the VM")]
    CreateVm(#[source] kvm_ioctls::Error),
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
    #[error("vCPU 0 halted with no interrupt source to wake it (the guest is stuck)")]
    BspHalted,
    #[error("vCPU {0}: device error")]
    Device(u8, #[source] DeviceError),
    #[error("all vCPU threads ended without a result")]
    NoResult,
}

pub type Result<T> = std::result::Result<T, VmError>;

/// The KVM handle and a VM with no memory yet.
pub fn create() -> Result<(Kvm, VmFd)> {
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    let vm = kvm.create_vm().map_err(VmError::CreateVm)?;
    Ok((kvm, vm))
}

/// Creates vCPU `id` in long mode at `rip` (vCPU 0: the kernel entry; others: the
/// parking loop).
pub fn create_vcpu(kvm: &Kvm, vm: &VmFd, id: u8, rip: u64) -> Result<VcpuFd> {
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
    let mut sregs = vcpu.get_sregs().map_err(|e| setup("get sregs", e))?;
    boot::long_mode_sregs(&mut sregs);
    vcpu.set_sregs(&sregs)
        .map_err(|e| setup("long-mode sregs", e))?;
    vcpu.set_regs(&boot::entry_regs(rip))
        .map_err(|e| setup("regs", e))?;
    vcpu.set_fpu(&boot::initial_fpu())
        .map_err(|e| setup("FPU", e))?;
    Ok(vcpu)
}

/// How a vCPU thread ended.
pub type VcpuResult = Result<()>;

/// Runs vCPU `id` until the guest powers off (Ok) or fails (Err); sends the outcome
/// on `done`. A secondary vCPU that halts is parked until the process ends.
pub fn run_vcpu<W: Write>(
    id: u8,
    mut vcpu: VcpuFd,
    bus: Arc<Mutex<IoBus<W>>>,
    mmio: Arc<Mutex<MmioBus>>,
    done: mpsc::Sender<VcpuResult>,
) {
    let result = run_loop(id, &mut vcpu, &bus, &mmio);
    match result {
        Ok(Parked::Yes) => {
            debug!("vCPU {id} parked");
            // Keep the vCPU fd alive; the VMM ends when vCPU 0 does.
            loop {
                std::thread::park();
            }
        }
        Ok(Parked::PowerOff) => {
            let _ = done.send(Ok(()));
        }
        Err(e) => {
            let _ = done.send(Err(e));
        }
    }
}

enum Parked {
    Yes,
    PowerOff,
}

fn run_loop<W: Write>(
    id: u8,
    vcpu: &mut VcpuFd,
    bus: &Mutex<IoBus<W>>,
    mmio: &Mutex<MmioBus>,
) -> Result<Parked> {
    loop {
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Err(VmError::Run(id, e)),
        };
        match exit {
            VcpuExit::IoOut(port, data) => {
                let action = lock(bus)
                    .write(port, data)
                    .map_err(|e| VmError::Device(id, e))?;
                if action == Action::Stop {
                    info!("vCPU {id}: the guest asked to stop (i8042 reset)");
                    return Ok(Parked::PowerOff);
                }
            }
            VcpuExit::IoIn(port, data) => lock(bus).read(port, data),
            VcpuExit::MmioRead(addr, data) => lock(mmio).read(addr, data),
            VcpuExit::MmioWrite(addr, data) => lock(mmio).write(addr, data),
            VcpuExit::Hlt if id == 0 => return Err(VmError::BspHalted),
            VcpuExit::Hlt => return Ok(Parked::Yes),
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
