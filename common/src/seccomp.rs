//! System call filters (`--seccomp kill|log|trap|none`): every vhostkit process
//! installs an allow-list of what it does while serving, once its start-up is over
//! (socket bound, image or tap open, sandbox entered, capabilities dropped).
//!
//! [`BASE`] is what any of them does: memory, threads, signals, time, the event
//! loops and eventfds, the vhost-user socket (with descriptors), logging, and the
//! removal of its socket at exit. Each daemon adds its own calls (file system
//! calls, io_uring, the tap's ioctls, KVM_RUN) and may allow `ioctl` for a few
//! request numbers only.
//!
//! Anything else gets the chosen action: `kill` ends the process
//! (`SECCOMP_RET_KILL_PROCESS`), `trap` raises SIGSYS in the calling thread (which,
//! unhandled, also ends the process), `log` allows the call and has the kernel log
//! it (an audit record `type=1326 ... syscall=N`, in `dmesg`).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction as Action, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule,
};

/// What to do with a system call outside the allow-list.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeccompAction {
    Kill,
    Log,
    Trap,
    None,
}

/// Every process's calls while serving (see the module doc). `clone` is allowed
/// only without `CLONE_NEW*` flags, `clone3` answers ENOSYS (its flags sit in
/// memory a filter cannot read; glibc then falls back to `clone`), and `tgkill`
/// only for the process's own threads: see [`Policy::new`].
pub const BASE: &[libc::c_long] = &[
    // Memory: the allocator, guest memory mappings, thread stacks.
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    // Threads (each connection's workers), synchronisation, time.
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
    // A sleep or wait a signal interrupted, resumed by the kernel.
    libc::SYS_restart_syscall,
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
    // Descriptors and plain I/O (eventfds, the log, data).
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
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
];

/// The namespace flags a thread of ours never needs: `clone` with any of them is
/// refused (a new user namespace would hand the process every capability in it).
pub const CLONE_NEW_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64
    | 0x80; // CLONE_NEWTIME

/// A process's allow-list: [`BASE`], its own calls, and calls allowed only with
/// given argument values (`ioctl` request numbers, the descriptor of a folder
/// `unlinkat` may work in, the pids `kill` may signal).
#[derive(Clone, Debug, Default)]
pub struct Policy {
    calls: Vec<libc::c_long>,
    /// (system call, argument index, value): allowed when that argument equals
    /// the value; several entries for one call are alternatives.
    with_args: Vec<(libc::c_long, u8, u64)>,
}

impl Policy {
    /// [`BASE`] and `extra`, `clone` without namespaces, `tgkill` of this process.
    pub fn new(extra: &[libc::c_long]) -> Self {
        let mut calls = BASE.to_vec();
        calls.extend_from_slice(extra);
        // SAFETY: getpid has no preconditions.
        let pid = u64::from(unsafe { libc::getpid() }.unsigned_abs());
        Policy {
            calls,
            with_args: vec![(libc::SYS_tgkill, 0, pid)],
        }
    }

    /// Allows `ioctl` with these request numbers (argument 1).
    pub fn ioctls(mut self, requests: &[u64]) -> Self {
        for &request in requests {
            // The request is an unsigned int in the kernel: the low 32 bits.
            self.with_args
                .push((libc::SYS_ioctl, 1, request & 0xffff_ffff));
        }
        self
    }

    /// With a socket the process created: `unlinkat` in the socket's folder only
    /// (removing the socket at exit).
    pub fn socket(self, socket: Option<&crate::socket::SocketFile>) -> Self {
        match socket {
            // A descriptor is never negative.
            Some(s) => {
                self.call_with_arg(libc::SYS_unlinkat, 0, u64::from(s.dir_fd().unsigned_abs()))
            }
            None => self,
        }
    }

    /// Allows `nr` when argument `arg` is `value`.
    pub fn call_with_arg(mut self, nr: libc::c_long, arg: u8, value: u64) -> Self {
        self.with_args.push((nr, arg, value));
        self
    }

    /// The allow-list program for `action` (None for `--seccomp none`).
    pub fn program(&self, action: SeccompAction) -> Result<Option<BpfProgram>, String> {
        let mismatch = match action {
            SeccompAction::None => return Ok(None),
            SeccompAction::Kill => Action::KillProcess,
            SeccompAction::Log => Action::Log,
            SeccompAction::Trap => Action::Trap,
        };
        let err = |e: &dyn std::fmt::Display| format!("seccomp: {e}");
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
            self.calls.iter().map(|&nr| (nr, Vec::new())).collect();
        // clone3 is allowed here; the program of `clone3_enosys` turns it into ENOSYS.
        rules.insert(libc::SYS_clone3, Vec::new());
        let no_namespaces = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(CLONE_NEW_FLAGS),
            0,
        )
        .map_err(|e| err(&e))?;
        rules.insert(
            libc::SYS_clone,
            vec![SeccompRule::new(vec![no_namespaces]).map_err(|e| err(&e))?],
        );
        for &(nr, arg, value) in &self.with_args {
            let len = if nr == libc::SYS_ioctl {
                SeccompCmpArgLen::Dword
            } else {
                SeccompCmpArgLen::Qword
            };
            let condition =
                SeccompCondition::new(arg, len, SeccompCmpOp::Eq, value).map_err(|e| err(&e))?;
            let rule = SeccompRule::new(vec![condition]).map_err(|e| err(&e))?;
            match rules.get_mut(&nr) {
                // An unconditional entry already allows the call.
                Some(existing) if existing.is_empty() && !self.is_conditional(nr) => {}
                Some(existing) => existing.push(rule),
                None => {
                    rules.insert(nr, vec![rule]);
                }
            }
        }
        compile(rules, mismatch, Action::Allow)
    }

    fn is_conditional(&self, nr: libc::c_long) -> bool {
        !self.calls.contains(&nr)
    }

    /// Installs the programs for `action` on every thread of the process; threads
    /// started later inherit them.
    pub fn install(&self, action: SeccompAction) -> Result<(), String> {
        let Some(program) = self.program(action)? else {
            return Ok(());
        };
        let apply = |p: &BpfProgram| {
            seccompiler::apply_filter_all_threads(p)
                .map_err(|e| format!("cannot install the seccomp filter: {e}"))
        };
        apply(&clone3_enosys()?)?;
        apply(&program)
    }
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: Action,
    matched: Action,
) -> Result<Option<BpfProgram>, String> {
    let err = |e: &dyn std::fmt::Display| format!("seccomp: {e}");
    let arch = std::env::consts::ARCH.try_into().map_err(|e| err(&e))?;
    let filter = SeccompFilter::new(rules, mismatch, matched, arch).map_err(|e| err(&e))?;
    let program: BpfProgram = filter.try_into().map_err(|e| err(&e))?;
    Ok(Some(program))
}

/// A program that answers `clone3` with ENOSYS and allows everything else: stacked
/// under the allow-list (the kernel takes the stricter answer), it makes glibc
/// start threads with `clone`, whose flags the allow-list can check.
pub fn clone3_enosys() -> Result<BpfProgram, String> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    compile(rules, Action::Allow, Action::Errno(libc::ENOSYS as u32))?
        .ok_or_else(|| "seccomp: empty clone3 program".to_string())
}

/// The allow-list program for `action` of [`BASE`], `extra` and `ioctl` with the
/// request numbers in `ioctls` (a shorthand of [`Policy`]).
pub fn filter(
    action: SeccompAction,
    extra: &[libc::c_long],
    ioctls: &[u64],
) -> Result<Option<BpfProgram>, String> {
    Policy::new(extra).ioctls(ioctls).program(action)
}

/// For tests of each daemon's list: forks a child that installs `program`, makes
/// system call `nr` with `args` and exits 0; returns the child's wait status.
#[doc(hidden)]
pub fn status_of_call_under(program: &BpfProgram, nr: libc::c_long, args: [u64; 3]) -> libc::c_int {
    // SAFETY: the child only makes system calls (prctl, seccomp, `nr`, _exit) before
    // it exits; the filter was compiled (allocated) before the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let code = match seccompiler::apply_filter(program) {
            Ok(()) => {
                // SAFETY: a raw system call; the tests pass no pointers the call
                // would follow (or none it may write through).
                unsafe { libc::syscall(nr, args[0], args[1], args[2]) };
                0
            }
            Err(_) => 3,
        };
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid");
    status
}

/// Whether `status` (from [`status_of_call_under`]) is a child killed by SIGSYS.
pub fn killed_by_sigsys(status: libc::c_int) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
}

/// Whether `status` is a child that exited 0 (its call was allowed).
pub fn exited_cleanly(status: libc::c_int) -> bool {
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clone without namespace flags (how threads start) passes; with one it is
    /// refused; tgkill only for our own process.
    #[test]
    fn clone_and_tgkill_are_checked() {
        let kill = filter(SeccompAction::Kill, &[], &[]).unwrap().unwrap();
        // clone with an invalid flag combination fails with EINVAL, but is made.
        let thread_flags = (libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert!(exited_cleanly(status_of_call_under(
            &kill,
            libc::SYS_clone,
            [thread_flags, 0, 0]
        )));
        let new_user = libc::CLONE_NEWUSER as u64 | thread_flags;
        assert!(killed_by_sigsys(status_of_call_under(
            &kill,
            libc::SYS_clone,
            [new_user, 0, 0]
        )));
        // tgkill of another process (pid 1) with signal 0.
        assert!(killed_by_sigsys(status_of_call_under(
            &kill,
            libc::SYS_tgkill,
            [1, 1, 0]
        )));
    }

    #[test]
    fn every_action_compiles_and_none_installs_nothing() {
        assert!(filter(SeccompAction::None, &[], &[]).unwrap().is_none());
        for action in [SeccompAction::Kill, SeccompAction::Log, SeccompAction::Trap] {
            assert!(!filter(action, &[], &[1]).unwrap().unwrap().is_empty());
        }
    }

    #[test]
    fn a_call_outside_the_list_gets_the_action() {
        assert!(!BASE.contains(&libc::SYS_getppid));
        let kill = filter(SeccompAction::Kill, &[], &[]).unwrap().unwrap();
        assert!(killed_by_sigsys(status_of_call_under(
            &kill,
            libc::SYS_getppid,
            [0; 3]
        )));
        let trap = filter(SeccompAction::Trap, &[], &[]).unwrap().unwrap();
        assert!(killed_by_sigsys(status_of_call_under(
            &trap,
            libc::SYS_getppid,
            [0; 3]
        )));
        let log = filter(SeccompAction::Log, &[], &[]).unwrap().unwrap();
        assert!(exited_cleanly(status_of_call_under(
            &log,
            libc::SYS_getppid,
            [0; 3]
        )));
        assert!(exited_cleanly(status_of_call_under(
            &kill,
            libc::SYS_getpid,
            [0; 3]
        )));
    }

    /// `ioctl` only with the listed request numbers (the call fails on a bad
    /// descriptor, but it is made: the process lives).
    #[test]
    fn ioctl_only_with_listed_requests() {
        const ALLOWED: u64 = 0x1277;
        let kill = filter(SeccompAction::Kill, &[], &[ALLOWED])
            .unwrap()
            .unwrap();
        assert!(exited_cleanly(status_of_call_under(
            &kill,
            libc::SYS_ioctl,
            [u64::MAX, ALLOWED, 0]
        )));
        assert!(killed_by_sigsys(status_of_call_under(
            &kill,
            libc::SYS_ioctl,
            [u64::MAX, 0x5401, 0]
        )));
        let none = filter(SeccompAction::Kill, &[], &[]).unwrap().unwrap();
        assert!(killed_by_sigsys(status_of_call_under(
            &none,
            libc::SYS_ioctl,
            [u64::MAX, ALLOWED, 0]
        )));
    }
}
