//! The vhost-user socket file: created so that only the daemon's user (and with
//! `--socket-group`, that group) can connect, whatever umask the daemon was started
//! with. Whoever can connect is a frontend: it hands the daemon guest memory and
//! reads and writes the device (a disk, a tap, a shared folder).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Mode of a socket only its owner may connect to (connecting needs write access).
pub const OWNER_ONLY: u32 = 0o600;
/// Mode of a socket its group may connect to as well (`--socket-group`).
pub const OWNER_AND_GROUP: u32 = 0o660;

/// Identity of the socket file a daemon created, to remove it at exit only if it is
/// still that file (not one a newer daemon created at the same path meanwhile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketFile {
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Removes the socket at `path` if it is still this one.
    pub fn remove(self, path: &Path) {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.dev() == self.dev && meta.ino() == self.ino {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Creates the listening socket at `path`: mode 0600, or 0660 owned by `group`.
///
/// A stale socket at the path is replaced; anything else there (a file, a folder)
/// is an error rather than deleted. The socket is bound under a umask that leaves
/// at most the final mode, so it is never more open than that, not even between
/// bind and chmod; then its group and mode are set explicitly. The umask is
/// process-wide: call this before threads that create files start (the daemons
/// call it at start-up).
pub fn bind(path: &Path, group: Option<libc::gid_t>) -> io::Result<(UnixListener, SocketFile)> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mode = if group.is_some() {
        OWNER_AND_GROUP
    } else {
        OWNER_ONLY
    };
    // SAFETY: umask only sets this process's file mode creation mask; it is put back
    // right after the bind.
    let old = unsafe { libc::umask(0o777 & !mode) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound?;
    let set_up = || -> io::Result<SocketFile> {
        if let Some(gid) = group {
            let cpath = CString::new(path.as_os_str().as_bytes())
                .map_err(|_| io::Error::other("socket path contains NUL"))?;
            // SAFETY: a NUL-terminated path; lchown only changes the socket's group.
            if unsafe { libc::lchown(cpath.as_ptr(), u32::MAX, gid) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        let meta = std::fs::symlink_metadata(path)?;
        Ok(SocketFile {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    };
    match set_up() {
        Ok(file) => Ok((listener, file)),
        Err(e) => {
            let _ = std::fs::remove_file(path);
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
        file.remove(&path);
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
        file.remove(&path);
        assert!(path.exists());
        newer_file.remove(&path);

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
