//! The system call filter (`--seccomp`): an allow-list of what the daemon does
//! serving a guest, installed once start-up is over (socket bound, sandbox
//! entered) on every thread of the process; the threads started later (the signal
//! thread, each connection's queue workers) inherit it.
//!
//! Anything else gets the chosen action: `kill` ends the process
//! (`SECCOMP_RET_KILL_PROCESS`), `trap` raises SIGSYS in the calling thread (which,
//! unhandled, also ends the process), `log` allows the call and has the kernel log
//! it (an audit record `type=1326 ... syscall=N`, in `dmesg`).

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction as Action, SeccompFilter, SeccompRule};

use crate::config::SeccompAction;

/// Every system call the daemon makes once it serves: the FUSE operations of
/// `passthrough`, the vhost-user socket (with descriptors), guest memory mappings,
/// epoll and eventfds of the queue workers, threads, signals, the log.
const ALLOWED: &[libc::c_long] = &[
    // Memory: the allocator, guest memory, thread stacks.
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    // Threads, synchronisation, time.
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_prctl,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    // Signals: the signal thread's sigwait, masks of new threads, SIGSYS of `trap`.
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    // Event loops and the vhost-user socket.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_ppoll,
    libc::SYS_accept4,
    libc::SYS_recvmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    // Descriptors and file I/O.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_close,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_fcntl,
    libc::SYS_lseek,
    // The file system.
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
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
    // Extended attributes of nodes that are never opened (crate::xattr).
    crate::xattr::SYS_SETXATTRAT,
    crate::xattr::SYS_GETXATTRAT,
    crate::xattr::SYS_LISTXATTRAT,
    crate::xattr::SYS_REMOVEXATTRAT,
    // Each request runs with the caller's file system uid and gid.
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_renameat,
    // The socket file, removed at a stop without a sandbox.
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
];

/// The filter for `action` (None for `--seccomp none`).
pub fn filter(action: SeccompAction) -> Result<Option<BpfProgram>, String> {
    let mismatch = match action {
        SeccompAction::None => return Ok(None),
        SeccompAction::Kill => Action::KillProcess,
        SeccompAction::Log => Action::Log,
        SeccompAction::Trap => Action::Trap,
    };
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp: {e}"))?;
    let filter = SeccompFilter::new(rules, mismatch, Action::Allow, arch)
        .map_err(|e| format!("seccomp: {e}"))?;
    let program: BpfProgram = filter.try_into().map_err(|e| format!("seccomp: {e}"))?;
    Ok(Some(program))
}

/// Installs the filter for `action` on every thread of the process.
pub fn install(action: SeccompAction) -> Result<(), String> {
    let Some(program) = filter(action)? else {
        return Ok(());
    };
    seccompiler::apply_filter_all_threads(&program)
        .map_err(|e| format!("cannot install the seccomp filter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_compiles_and_none_installs_nothing() {
        assert!(filter(SeccompAction::None).unwrap().is_none());
        for action in [SeccompAction::Kill, SeccompAction::Log, SeccompAction::Trap] {
            assert!(!filter(action).unwrap().unwrap().is_empty());
        }
    }

    /// Forks a child that installs the filter for `action`, makes `nr` (with no
    /// arguments) and exits 0: its wait status.
    fn child_status(action: SeccompAction, nr: libc::c_long) -> libc::c_int {
        let program = filter(action).unwrap().unwrap();
        // SAFETY: the child only makes system calls (prctl, seccomp, `nr`, _exit)
        // before it exits; the filter was compiled (allocated) before the fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match seccompiler::apply_filter(&program) {
                Ok(()) => {
                    // SAFETY: a raw system call without pointer arguments.
                    unsafe { libc::syscall(nr) };
                    0
                }
                Err(_) => 3,
            };
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    #[test]
    fn a_call_outside_the_list_gets_the_action() {
        // getppid is not on the list; getpid is.
        assert!(!ALLOWED.contains(&libc::SYS_getppid));
        let killed = child_status(SeccompAction::Kill, libc::SYS_getppid);
        assert!(libc::WIFSIGNALED(killed) && libc::WTERMSIG(killed) == libc::SIGSYS);
        let trapped = child_status(SeccompAction::Trap, libc::SYS_getppid);
        assert!(libc::WIFSIGNALED(trapped) && libc::WTERMSIG(trapped) == libc::SIGSYS);
        let logged = child_status(SeccompAction::Log, libc::SYS_getppid);
        assert!(libc::WIFEXITED(logged) && libc::WEXITSTATUS(logged) == 0);
        let allowed = child_status(SeccompAction::Kill, libc::SYS_getpid);
        assert!(libc::WIFEXITED(allowed) && libc::WEXITSTATUS(allowed) == 0);
    }
}
