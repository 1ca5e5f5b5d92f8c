//! The system call filter of vhost-user-fs (`--seccomp`): the calls every vhostkit
//! daemon makes ([`vhostkit_common::seccomp::BASE`]) and the file system calls of
//! `passthrough`, installed once start-up is over (socket bound, sandbox entered)
//! on every thread of the process; the threads started later (the signal thread,
//! each connection's queue workers) inherit it. See `vhostkit_common::seccomp` for
//! the actions.

use seccompiler::BpfProgram;
use vhostkit_common::seccomp::{Policy, SeccompAction};

/// The file system calls the daemon makes serving a guest, on top of the base list.
pub const FS_CALLS: &[libc::c_long] = &[
    // The file system.
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_name_to_handle_at,
    libc::SYS_fstatfs,
    libc::SYS_getdents64,
    libc::SYS_readlinkat,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_symlinkat,
    libc::SYS_linkat,
    libc::SYS_unlinkat,
    libc::SYS_renameat2,
    libc::SYS_fchmodat,
    libc::SYS_fchmodat2,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_faccessat2,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_syncfs,
    libc::SYS_copy_file_range,
    libc::SYS_fgetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_flistxattr,
    libc::SYS_fremovexattr,
    // Extended attributes of nodes that are never opened (crate::passthrough::xattr).
    crate::passthrough::sys::SYS_SETXATTRAT,
    crate::passthrough::sys::SYS_GETXATTRAT,
    crate::passthrough::sys::SYS_LISTXATTRAT,
    crate::passthrough::sys::SYS_REMOVEXATTRAT,
    // Each request runs with the caller's file system uid and gid.
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_renameat,
];

/// The daemon's allow-list. `open_by_handle_at` only with `--inode-file-handles`:
/// with CAP_DAC_READ_SEARCH it opens any inode of the file system from a handle
/// made up, so it is allowed only where the daemon needs it.
pub fn policy(file_handles: bool) -> Policy {
    let mut calls = FS_CALLS.to_vec();
    if file_handles {
        calls.push(libc::SYS_open_by_handle_at);
    }
    Policy::new(&calls)
}

/// The filter for `action` (None for `--seccomp none`).
pub fn filter(action: SeccompAction, file_handles: bool) -> Result<Option<BpfProgram>, String> {
    policy(file_handles).program(action)
}

/// Installs the filter for `action` on every thread of the process.
pub fn install(action: SeccompAction, file_handles: bool) -> Result<(), String> {
    policy(file_handles).install(action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vhostkit_common::seccomp::{exited_cleanly, killed_by_sigsys, status_of_call_under};

    #[test]
    fn every_action_compiles_and_none_installs_nothing() {
        assert!(filter(SeccompAction::None, false).unwrap().is_none());
        for action in [SeccompAction::Kill, SeccompAction::Log, SeccompAction::Trap] {
            assert!(!filter(action, true).unwrap().unwrap().is_empty());
        }
    }

    #[test]
    fn a_call_outside_the_list_gets_the_action() {
        let kill = filter(SeccompAction::Kill, false).unwrap().unwrap();
        // getppid and ioctl are not on the list; getpid and fsync are.
        assert!(killed_by_sigsys(status_of_call_under(
            &kill,
            libc::SYS_getppid,
            [0; 3]
        )));
        assert!(killed_by_sigsys(status_of_call_under(
            &kill,
            libc::SYS_ioctl,
            [0, 0x1277, 0]
        )));
        assert!(exited_cleanly(status_of_call_under(
            &kill,
            libc::SYS_getpid,
            [0; 3]
        )));
        assert!(exited_cleanly(status_of_call_under(
            &kill,
            libc::SYS_fsync,
            [u64::MAX, 0, 0]
        )));
        let trap = filter(SeccompAction::Trap, false).unwrap().unwrap();
        assert!(killed_by_sigsys(status_of_call_under(
            &trap,
            libc::SYS_getppid,
            [0; 3]
        )));
        let log = filter(SeccompAction::Log, false).unwrap().unwrap();
        // open_by_handle_at only with file handles.
        let run =
            |p: &BpfProgram| status_of_call_under(p, libc::SYS_open_by_handle_at, [u64::MAX, 0, 0]);
        assert!(killed_by_sigsys(run(&kill)));
        assert!(exited_cleanly(run(&filter(SeccompAction::Kill, true)
            .unwrap()
            .unwrap())));
        assert!(exited_cleanly(status_of_call_under(
            &log,
            libc::SYS_getppid,
            [0; 3]
        )));
    }
}
