//! Confining the daemon to the shared folder (`--sandbox`), as virtiofsd does.
//!
//! Both sandboxes fork once the vhost-user socket is bound: the parent (the process
//! the VMM started) stays outside as a supervisor that forwards SIGTERM, SIGINT and
//! SIGHUP to the child, removes the socket once the child exits and exits with the
//! child's status; the child, killed if the supervisor dies (`PR_SET_PDEATHSIG`),
//! enters the sandbox and serves. Call [`enter`] while the process has one thread.
//!
//! - `namespace`: the child is pid 1 of new pid, mount and network namespaces (the
//!   supervisor stays in the host's, as it must to remove the socket). Mounts
//!   are made slaves of the host's (nothing propagates back), the shared folder is
//!   bind-mounted onto itself and made the root with `pivot_root`, and the old root
//!   is detached: the daemon's mount table holds the shared folder alone. A fresh
//!   proc of the new pid namespace is mounted first and `/proc/self/fd` bind-mounted
//!   over it; the descriptor kept to it (for re-opening inodes) is on a mount
//!   detached with the old root, so `..` leads nowhere.
//! - `chroot`: the child `chroot`s into the shared folder; `/proc/self/fd` is opened
//!   before. Weaker (no namespaces, the proc descriptor reaches the host's proc),
//!   but works without mount namespaces.
//!
//! Both need root (CAP_SYS_ADMIN for namespaces and mounts, CAP_SYS_CHROOT for
//! chroot); [`check_privileges`] refuses them up front otherwise.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use log::{error, info};

use vhostkit_common::socket::SocketFile;

use crate::config::Sandbox;

/// Capability numbers (linux/capability.h).
pub const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_CHROOT: u32 = 18;
const CAP_SYS_ADMIN: u32 = 21;

/// Whether the process has capability `cap` in its effective set.
pub fn has_capability(cap: u32) -> bool {
    effective_capabilities().is_ok_and(|caps| caps & (1u64 << cap) != 0)
}

/// Refuses a sandbox the process lacks the capabilities for, in one line.
pub fn check_privileges(mode: Sandbox) -> Result<(), String> {
    let (cap, cap_name, what) = match mode {
        Sandbox::None => return Ok(()),
        Sandbox::Namespace => (CAP_SYS_ADMIN, "CAP_SYS_ADMIN", "namespace"),
        Sandbox::Chroot => (CAP_SYS_CHROOT, "CAP_SYS_CHROOT", "chroot"),
    };
    let effective = effective_capabilities()
        .map_err(|e| format!("--sandbox {what}: cannot read the capabilities: {e}"))?;
    if effective & (1u64 << cap) == 0 {
        return Err(format!(
            "--sandbox {what} needs root ({cap_name}); run as root or use --sandbox none"
        ));
    }
    Ok(())
}

/// `CapEff` of /proc/self/status.
fn effective_capabilities() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| io::Error::other("no CapEff line in /proc/self/status"))
}

/// What the serving process keeps of the outside world once confined.
pub struct Confined {
    /// The shared folder as the process now sees it ("/" inside a sandbox).
    pub root: PathBuf,
    /// An `O_PATH` descriptor of this process's `/proc/self/fd`.
    pub proc_self_fd: OwnedFd,
}

fn io_err(what: &str, e: io::Error) -> String {
    format!("sandbox: {what}: {e}")
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn cpath(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{}: contains NUL", p.display()))
}

fn open_path(path: &CString, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated; open returns a new descriptor or -1.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn mount(
    src: Option<&CString>,
    target: &CString,
    fstype: Option<&CString>,
    flags: u64,
) -> io::Result<()> {
    let ptr = |s: Option<&CString>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is NULL or a NUL-terminated string that outlives the call;
    // no data argument is passed.
    cvt(unsafe {
        libc::mount(
            ptr(src),
            target.as_ptr(),
            ptr(fstype),
            flags as libc::c_ulong,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// Enters `mode` for the folder `shared_dir` (absolute, canonical). In a sandbox
/// this forks: only the child returns, the parent supervises it and exits with its
/// status, removing `socket_to_remove` first. `keep_fds` are descriptors the child
/// needs (the listening socket); the parent closes them.
pub fn enter(
    mode: Sandbox,
    shared_dir: &Path,
    socket_to_remove: Option<&SocketFile>,
    keep_fds: &[libc::c_int],
) -> Result<Confined, String> {
    let proc_self_fd_path = c"/proc/self/fd".to_owned();
    if mode == Sandbox::None {
        let proc_self_fd = open_path(&proc_self_fd_path, libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| io_err("cannot open /proc/self/fd", e))?;
        return Ok(Confined {
            root: shared_dir.to_path_buf(),
            proc_self_fd,
        });
    }
    let dir = cpath(shared_dir)?;
    // Signals are taken by sigwait, in the supervisor and (through the daemon's
    // signal thread) in the child; block them before forking so none is lost.
    let signals = signal_set(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD]);
    // SAFETY: `signals` is an initialised sigset_t; this only changes the thread's mask.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io_err(
            "cannot block signals",
            io::Error::from_raw_os_error(rc),
        ));
    }
    if mode == Sandbox::Namespace {
        // SAFETY: unshare(CLONE_NEWPID) only puts the children forked from now on
        // in a new pid namespace; the supervisor itself stays where it is (and in
        // the host's mount namespace, where it removes the socket at the end).
        cvt(unsafe { libc::unshare(libc::CLONE_NEWPID) })
            .map_err(|e| io_err("unshare(pid namespace)", e))?;
    }
    // A pipe whose write end only the supervisor holds: the child sees it hang up
    // if the supervisor died before PR_SET_PDEATHSIG took effect.
    let mut lifeline = [0; 2];
    // SAFETY: `lifeline` has room for the two descriptors pipe2 writes.
    cvt(unsafe { libc::pipe2(lifeline.as_mut_ptr(), libc::O_CLOEXEC) })
        .map_err(|e| io_err("pipe", e))?;
    // SAFETY: both descriptors were just created and are owned here only.
    let (lifeline_r, lifeline_w) = unsafe {
        (
            OwnedFd::from_raw_fd(lifeline[0]),
            OwnedFd::from_raw_fd(lifeline[1]),
        )
    };
    // SAFETY: the process has one thread (the caller's contract), so the child
    // starts in a consistent state and may run Rust code.
    let child = cvt(unsafe { libc::fork() }).map_err(|e| io_err("fork", e))?;
    if child > 0 {
        drop(lifeline_r);
        for &fd in keep_fds {
            // SAFETY: the child owns these now; the supervisor never uses them.
            unsafe { libc::close(fd) };
        }
        supervise(child, socket_to_remove, &signals, lifeline_w);
    }
    drop(lifeline_w);
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets this process's parent-death signal.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
        return Err(io_err("PR_SET_PDEATHSIG", io::Error::last_os_error()));
    }
    let mut pfd = libc::pollfd {
        fd: lifeline_r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 {
        return Err("sandbox: the supervising process is gone".into());
    }
    drop(lifeline_r);
    let chld = signal_set(&[libc::SIGCHLD]);
    // SAFETY: as above; the child gets SIGCHLD back to normal.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &chld, std::ptr::null_mut()) };
    let proc_self_fd = match mode {
        Sandbox::Namespace => enter_namespace(&dir)?,
        _ => enter_chroot(&dir)?,
    };
    info!(
        "sandbox {}: serving {} as / in process {}",
        if mode == Sandbox::Namespace {
            "namespace"
        } else {
            "chroot"
        },
        shared_dir.display(),
        std::process::id()
    );
    Ok(Confined {
        root: PathBuf::from("/"),
        proc_self_fd,
    })
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data that sigemptyset initialises before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// The supervisor: forwards stop signals to `child`, and once it exits removes the
/// socket and exits with the child's status.
fn supervise(
    child: libc::pid_t,
    socket_to_remove: Option<&SocketFile>,
    signals: &libc::sigset_t,
    _lifeline: OwnedFd,
) -> ! {
    loop {
        let mut status = 0;
        // SAFETY: non-blocking wait for our own child; `status` is a valid out pointer.
        let rc = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
        if rc == child || (rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR))
        {
            if let Some(socket) = socket_to_remove {
                socket.remove();
            }
            let code = if rc < 0 {
                1
            } else if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else if libc::WIFSIGNALED(status) {
                let sig = libc::WTERMSIG(status);
                error!("the sandboxed daemon was killed by signal {sig}");
                128 + sig
            } else {
                1
            };
            std::process::exit(code);
        }
        let mut signal = 0;
        // SAFETY: `signals` is initialised and blocked; `signal` is a valid out pointer.
        if unsafe { libc::sigwait(signals, &mut signal) } == 0 && signal != libc::SIGCHLD {
            // SAFETY: kill() has no memory-safety preconditions.
            unsafe { libc::kill(child, signal) };
        }
    }
}

/// pivot_root into the shared folder inside fresh namespaces (see the module doc).
fn enter_namespace(dir: &CString) -> Result<OwnedFd, String> {
    let root = c"/".to_owned();
    let proc = c"/proc".to_owned();
    // SAFETY: unshare only changes this (single-threaded) process's namespaces.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET) })
        .map_err(|e| io_err("unshare(mount, network namespaces)", e))?;
    mount(None, &root, None, libc::MS_REC | libc::MS_SLAVE)
        .map_err(|e| io_err("cannot make the mounts private", e))?;
    mount(
        Some(&c"proc".to_owned()),
        &proc,
        Some(&c"proc".to_owned()),
        libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_NOSUID | libc::MS_RELATIME,
    )
    .map_err(|e| io_err("cannot mount proc", e))?;
    mount(
        Some(&c"/proc/self/fd".to_owned()),
        &proc,
        None,
        libc::MS_BIND,
    )
    .map_err(|e| io_err("cannot bind-mount /proc/self/fd", e))?;
    let proc_self_fd = open_path(&proc, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| io_err("cannot open /proc/self/fd", e))?;
    mount(Some(dir), dir, None, libc::MS_BIND | libc::MS_REC)
        .map_err(|e| io_err("cannot bind-mount the shared folder", e))?;
    // SAFETY: `dir` is NUL-terminated.
    cvt(unsafe { libc::chdir(dir.as_ptr()) })
        .map_err(|e| io_err("cannot enter the shared folder", e))?;
    let dot = c".".to_owned();
    // SAFETY: pivot_root with "." twice stacks the old root on the new one; both
    // pointers are NUL-terminated strings.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    if rc != 0 {
        return Err(io_err("pivot_root", io::Error::last_os_error()));
    }
    // SAFETY: `dot` is NUL-terminated; detaches the old root stacked on ".".
    cvt(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) })
        .map_err(|e| io_err("cannot detach the old root", e))?;
    // SAFETY: `root` is NUL-terminated.
    cvt(unsafe { libc::chdir(root.as_ptr()) }).map_err(|e| io_err("chdir /", e))?;
    Ok(proc_self_fd)
}

/// chroot into the shared folder, /proc/self/fd opened before.
fn enter_chroot(dir: &CString) -> Result<OwnedFd, String> {
    let proc_self_fd = open_path(
        &c"/proc/self/fd".to_owned(),
        libc::O_PATH | libc::O_DIRECTORY,
    )
    .map_err(|e| io_err("cannot open /proc/self/fd", e))?;
    // SAFETY: `dir` is NUL-terminated.
    cvt(unsafe { libc::chroot(dir.as_ptr()) }).map_err(|e| io_err("chroot", e))?;
    // SAFETY: a NUL-terminated literal.
    cvt(unsafe { libc::chdir(c"/".as_ptr()) }).map_err(|e| io_err("chdir /", e))?;
    Ok(proc_self_fd)
}
