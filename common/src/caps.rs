//! Dropping capabilities once start-up is over.
//!
//! vhost-user-blk needs its privileges only to open the image (a block device, a
//! file of another user) and vhost-user-net only to create and configure the tap
//! (CAP_NET_ADMIN). What they do afterwards (I/O on the open descriptors, the tap's
//! per-queue ioctls, guest memory mappings) needs none, so they drop every
//! capability from every set (effective, permitted, inheritable, ambient and the
//! bounding set) and set no_new_privs: a compromised daemon keeps the root uid it
//! may run as, but not root's powers (CAP_DAC_OVERRIDE, CAP_SYS_ADMIN, ...).

use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// Drops every capability from every set of the process's threads started from
/// now on and of the calling thread, and sets no_new_privs. Call it while the
/// process has one thread, or before the threads that must lose them start
/// (capabilities are per thread: threads started earlier keep theirs).
pub fn drop_all() -> io::Result<()> {
    keep_only(&[])
}

/// Capability numbers (linux/capability.h) a daemon may keep.
pub const CAP_CHOWN: u32 = 0;
pub const CAP_DAC_OVERRIDE: u32 = 1;
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_FOWNER: u32 = 3;
pub const CAP_FSETID: u32 = 4;
pub const CAP_SETGID: u32 = 6;
pub const CAP_SETUID: u32 = 7;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_MKNOD: u32 = 27;
pub const CAP_SETFCAP: u32 = 31;

fn capget() -> io::Result<[CapData; 2]> {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData structs (version 3 layout) into `data`.
    if unsafe {
        libc::syscall(
            libc::SYS_capget,
            &header as *const CapHeader,
            data.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

/// Keeps the capabilities in `keep` (those the process has of them) and drops
/// every other from every set of the calling thread (and the threads it starts
/// from now on), as [`drop_all`] does for all; sets no_new_privs.
pub fn keep_only(keep: &[u32]) -> io::Result<()> {
    let mask: u64 = keep.iter().fold(0, |m, &c| m | 1u64 << c);
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes below.
    for cap in 0..=last_cap() {
        if mask & (1u64 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // EPERM: no CAP_SETPCAP (an unprivileged daemon has nothing to drop);
            // EINVAL: a capability this kernel does not have.
            if !matches!(e.raw_os_error(), Some(libc::EPERM | libc::EINVAL)) {
                return Err(e);
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let current = capget()?;
    let permitted = u64::from(current[0].permitted) | u64::from(current[1].permitted) << 32;
    let kept = permitted & mask;
    // The kernel takes the 64 capability bits as two 32-bit halves.
    let (low, high) = split_u64(kept);
    let data = [
        CapData {
            effective: low,
            permitted: low,
            inheritable: 0,
        },
        CapData {
            effective: high,
            permitted: high,
            inheritable: 0,
        },
    ];
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads the header and two CapData structs, valid for the call.
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The effective, permitted and bounding sets of process `pid`'s main thread, from
/// /proc/PID/status (for tests and logs).
pub fn sets_of(pid: u32) -> io::Result<(u64, u64, u64)> {
    sets_in(&format!("/proc/{pid}/status"))
}

/// The effective, permitted and bounding sets of every thread of process `pid`
/// (capabilities are per thread: one that kept them is where they are).
pub fn sets_of_threads(pid: u32) -> io::Result<Vec<(u64, u64, u64)>> {
    let mut sets = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("status");
        match sets_in(&path.to_string_lossy()) {
            Ok(s) => sets.push(s),
            // A thread that ended meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sets)
}

fn sets_in(status_path: &str) -> io::Result<(u64, u64, u64)> {
    let status = std::fs::read_to_string(status_path)?;
    let pid = status_path;
    let field = |name: &str| -> io::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .ok_or_else(|| io::Error::other(format!("no {name} in /proc/{pid}/status")))
    };
    Ok((field("CapEff:")?, field("CapPrm:")?, field("CapBnd:")?))
}

/// The low and the high 32 bits of `v`.
fn split_u64(v: u64) -> (u32, u32) {
    let [a, b, c, d, e, f, g, h] = v.to_le_bytes();
    (
        u32::from_le_bytes([a, b, c, d]),
        u32::from_le_bytes([e, f, g, h]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a forked child: keep_only leaves exactly the kept capabilities (as root;
    /// none that the process did not have otherwise).
    #[test]
    fn keep_only_keeps_those_and_no_other() {
        // SAFETY: the child only makes system calls and reads /proc before _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let before = sets_of(std::process::id()).map(|s| s.1).unwrap_or(0);
            let want = before & (1 << CAP_CHOWN | 1 << CAP_MKNOD);
            let ok = keep_only(&[CAP_CHOWN, CAP_MKNOD]).is_ok()
                && sets_of(std::process::id()).is_ok_and(|(e, p, _)| e == want && p == want);
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }

    /// In a forked child (capabilities are the thread's): after drop_all every set
    /// is empty and no_new_privs is set.
    #[test]
    fn drop_all_empties_every_set() {
        // SAFETY: the child only makes system calls and reads /proc before _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = drop_all().is_ok()
                && sets_of(std::process::id()).is_ok_and(|(e, p, b)| {
                    // An unprivileged run cannot empty the bounding set.
                    // SAFETY: geteuid has no preconditions.
                    e == 0 && p == 0 && (b == 0 || unsafe { libc::geteuid() } != 0)
                })
                // SAFETY: prctl with integer arguments only.
                && unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } == 1;
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
