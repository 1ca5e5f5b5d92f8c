//! The VMM's system call filter (`--seccomp`, kill by default, as Firecracker's):
//! installed on every thread once the VM is set up (memory registered, devices
//! connected, daemons started, ioeventfds and irqfds given to KVM), before the
//! vCPU threads start. From then on the VMM runs guest code (KVM_RUN, its only
//! ioctl), serves port and MMIO exits (the serial console, virtio-mmio registers,
//! which talk vhost-user to the backends), and at the end stops the daemons it
//! started and removes their socket folder.

use vhostkit_common::seccomp::{self, SeccompAction};

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = 0xae80;

/// Calls the VMM makes once the VM runs, on top of
/// [`vhostkit_common::seccomp::BASE`].
pub const VMM_CALLS: &[libc::c_long] = &[
    // Watching and stopping the daemons it started.
    libc::SYS_pidfd_open,
    libc::SYS_kill,
    libc::SYS_wait4,
    libc::SYS_waitid,
    // Removing their socket folder.
    libc::SYS_openat,
    libc::SYS_getdents64,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rmdir,
];

/// The only ioctl: running a vCPU.
pub const VMM_IOCTLS: &[u64] = &[KVM_RUN];

/// Installs the filter for `action` on every thread of the process.
pub fn install(action: SeccompAction) -> Result<(), String> {
    seccomp::install(action, VMM_CALLS, VMM_IOCTLS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vhostkit_common::seccomp::{
        exited_cleanly, filter, killed_by_sigsys, status_of_call_under,
    };

    /// KVM_RUN is the one ioctl; other KVM requests (creating a VM, changing
    /// memory slots) and calls outside the list kill the process.
    #[test]
    fn the_filter_allows_the_vmms_calls_only() {
        let kill = filter(SeccompAction::Kill, VMM_CALLS, VMM_IOCTLS)
            .unwrap()
            .unwrap();
        let run = |nr, args| status_of_call_under(&kill, nr, args);
        assert!(exited_cleanly(run(libc::SYS_ioctl, [u64::MAX, KVM_RUN, 0])));
        // KVM_CREATE_VM, KVM_SET_USER_MEMORY_REGION.
        assert!(killed_by_sigsys(run(
            libc::SYS_ioctl,
            [u64::MAX, 0xae01, 0]
        )));
        assert!(killed_by_sigsys(run(
            libc::SYS_ioctl,
            [u64::MAX, 0x4020_ae46, 0]
        )));
        assert!(killed_by_sigsys(run(libc::SYS_execve, [0; 3])));
        assert!(killed_by_sigsys(run(libc::SYS_socket, [0; 3])));
        assert!(exited_cleanly(run(libc::SYS_wait4, [u64::MAX, 0, 0])));
    }
}
