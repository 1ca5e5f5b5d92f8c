//! The VMM's system call filter (`--seccomp`, kill by default, as Firecracker's):
//! installed on every thread once the VM is set up (memory registered, devices
//! connected, daemons started, ioeventfds and irqfds given to KVM), before the
//! vCPU threads start. From then on the VMM runs guest code (KVM_RUN, its only
//! ioctl), serves port and MMIO exits (the serial console, virtio-mmio registers,
//! which talk vhost-user to the backends), and at the end stops the daemons it
//! started and removes their socket folder.

use vhostkit_common::seccomp::{Policy, SeccompAction};

use crate::daemons::Daemons;

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = 0xae80;

/// Calls the VMM makes once the VM runs, on top of
/// [`vhostkit_common::seccomp::BASE`]: reaping the daemons it started.
pub const VMM_CALLS: &[libc::c_long] = &[libc::SYS_wait4, libc::SYS_waitid];

/// The only ioctl: running a vCPU.
pub const VMM_IOCTLS: &[u64] = &[KVM_RUN];

/// The VMM's allow-list: [`VMM_CALLS`], KVM_RUN, and for the daemons it started
/// `kill` and `pidfd_open` of their pids only and `unlinkat` in their socket folder
/// only. No call that opens or creates a file is on it: the VMM keeps root's
/// capabilities (it starts the daemons), so the filter is what stops a guest that
/// took over a vCPU thread from reaching the host's files.
pub fn policy(daemons: &Daemons) -> Policy {
    let mut policy = Policy::new(VMM_CALLS).ioctls(VMM_IOCTLS);
    for pid in daemons.pids() {
        policy = policy
            .call_with_arg(libc::SYS_kill, 0, u64::from(pid))
            .call_with_arg(libc::SYS_pidfd_open, 0, u64::from(pid));
    }
    for fd in daemons.dir_fds() {
        policy = policy.call_with_arg(libc::SYS_unlinkat, 0, fd as u64);
    }
    policy
}

/// Installs the filter for `action` on every thread of the process.
pub fn install(action: SeccompAction, daemons: &Daemons) -> Result<(), String> {
    policy(daemons).install(action)
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
