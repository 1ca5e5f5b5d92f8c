//! The vhost-user socket file: created so that only the daemon's user (and with
//! `--socket-group`, that group) can connect, whatever umask the daemon was started
//! with. Whoever can connect is a frontend: it hands the daemon guest memory and
//! reads and writes the device (a disk, a tap, a shared folder).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Mode of a socket only its owner may connect to (connecting needs write access).
pub const OWNER_ONLY: u32 = 0o600;
/// Mode of a socket its group may connect to as well (`--socket-group`).
pub const OWNER_AND_GROUP: u32 = 0o660;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW | flags)`.
fn stat_at(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data that fstatat fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated name and a valid out buffer.
    cvt(unsafe {
        libc::fstatat(
            dir,
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW | flags,
        )
    })?;
    Ok(st)
}

fn is_socket(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFSOCK
}

/// The socket file a daemon created: its folder (held open from the bind on, so
/// removing it needs neither the path nor privileges dropped since), its name, and
/// its identity, so that it is removed at exit only if it is still that file (not
/// one a newer daemon created at the same path meanwhile).
#[derive(Debug)]
pub struct SocketFile {
    dir: OwnedFd,
    name: CString,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Removes the socket if it is still this one; true if it did.
    pub fn remove(&self) -> bool {
        match stat_at(self.dir.as_raw_fd(), &self.name, 0) {
            Ok(st) if st.st_dev == self.dev && st.st_ino == self.ino => {
                // SAFETY: a NUL-terminated name relative to our folder descriptor.
                unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.name.as_ptr(), 0) == 0 }
            }
            _ => false,
        }
    }

    /// The descriptor of the socket's folder: the one `unlinkat` needs at exit
    /// (a seccomp filter allows `unlinkat` on it alone).
    pub fn dir_fd(&self) -> RawFd {
        self.dir.as_raw_fd()
    }
}

/// Creates the listening socket at `path`: mode 0600, or 0660 owned by `group`.
///
/// A stale socket at the path is replaced; anything else there (a file, a folder)
/// is an error rather than deleted. The socket is bound under umask 0177, so it is
/// never more open than owner-only, not even for a moment; then the socket itself
/// (opened `O_PATH | O_NOFOLLOW`: never a symlink swapped in at the path) gets its
/// group and, with a group, mode 0660. The umask is process-wide: call this before
/// threads that create files start (the daemons call it at start-up).
pub fn bind(path: &Path, group: Option<libc::gid_t>) -> io::Result<(UnixListener, SocketFile)> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let name =
        CString::new(name.as_bytes()).map_err(|_| io::Error::other("socket path contains NUL"))?;
    let cparent = CString::new(parent.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("socket path contains NUL"))?;
    // SAFETY: a NUL-terminated path; open returns a new descriptor or -1.
    let dir = cvt(unsafe {
        libc::open(
            cparent.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    match stat_at(dir.as_raw_fd(), &name, 0) {
        Ok(st) if is_socket(&st) => {
            // SAFETY: a NUL-terminated name relative to the folder descriptor.
            cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // SAFETY: umask only sets this process's file mode creation mask; it is put back
    // right after the bind.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound?;
    let set_up = || -> io::Result<SocketFile> {
        // SAFETY: a NUL-terminated name relative to the folder descriptor.
        let node = cvt(unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: the kernel just returned this descriptor; nothing else owns it.
        let node = unsafe { OwnedFd::from_raw_fd(node) };
        let st = stat_at(node.as_raw_fd(), c"", libc::AT_EMPTY_PATH)?;
        if !is_socket(&st) {
            return Err(io::Error::other("the socket was replaced"));
        }
        if let Some(gid) = group {
            // SAFETY: AT_EMPTY_PATH makes fchownat act on `node` itself.
            cvt(unsafe {
                libc::fchownat(
                    node.as_raw_fd(),
                    c"".as_ptr(),
                    u32::MAX,
                    gid,
                    libc::AT_EMPTY_PATH,
                )
            })?;
            // The mode through the descriptor's /proc link: the socket itself, not
            // whatever the path names now.
            let proc_path = CString::new(format!("/proc/self/fd/{}", node.as_raw_fd()))
                .map_err(|_| io::Error::other("proc path"))?;
            // SAFETY: a NUL-terminated path; chmod follows the magic link to `node`.
            cvt(unsafe { libc::chmod(proc_path.as_ptr(), OWNER_AND_GROUP) })?;
        }
        Ok(SocketFile {
            dir: dir.try_clone()?,
            name: name.clone(),
            dev: st.st_dev,
            ino: st.st_ino,
        })
    };
    match set_up() {
        Ok(file) => Ok((listener, file)),
        Err(e) => {
            // SAFETY: a NUL-terminated name relative to the folder descriptor.
            unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
            Err(e)
        }
    }
}

/// Resolves `--socket-group` (a group name or number).
pub fn resolve_group(group: &str) -> Result<libc::gid_t, String> {
    if let Ok(gid) = group.parse::<libc::gid_t>() {
        return Ok(gid);
    }
    let name =
        CString::new(group).map_err(|_| format!("--socket-group {group:?}: contains NUL"))?;
    // SAFETY: `name` is a valid NUL-terminated string; getgrnam returns NULL or a
    // pointer to static storage that we read at once, before any other getgr* call
    // (command-line validation runs on one thread).
    let entry = unsafe { libc::getgrnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(format!("--socket-group {group}: no such group"));
    }
    // SAFETY: non-null pointer to a struct group returned just above.
    Ok(unsafe { (*entry).gr_gid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("vhostkit-socket-{name}-{}", std::process::id()))
    }

    #[test]
    fn owner_only_whatever_the_umask() {
        let path = temp_path("mode");
        // SAFETY: umask only sets the process's mask (restored below).
        let old = unsafe { libc::umask(0) };
        let bound = bind(&path, None);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let (_listener, file) = bound.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, OWNER_ONLY);
        assert!(file.remove());
        assert!(!path.exists());
    }

    #[test]
    fn a_stale_socket_is_replaced_other_files_are_not() {
        let path = temp_path("stale");
        let first = UnixListener::bind(&path).unwrap();
        drop(first);
        let (_l, file) = bind(&path, Some(0)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.permissions().mode() & 0o777, meta.gid()),
            (OWNER_AND_GROUP, 0)
        );
        // A socket a newer daemon put there is not removed by the old one.
        std::fs::remove_file(&path).unwrap();
        let (_newer, newer_file) = bind(&path, None).unwrap();
        assert!(!file.remove());
        assert!(path.exists());
        assert!(newer_file.remove());

        let regular = temp_path("regular");
        std::fs::write(&regular, b"keep me").unwrap();
        let err = bind(&regular, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&regular).unwrap(), b"keep me");
        std::fs::remove_file(&regular).unwrap();
    }

    #[test]
    fn groups_by_name_or_number() {
        assert_eq!(resolve_group("0"), Ok(0));
        assert_eq!(resolve_group("root"), Ok(0));
        assert!(resolve_group("no-such-group-here").is_err());
    }
}
