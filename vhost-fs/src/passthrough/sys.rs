//! The system calls of the passthrough file system, each wrapped once: every
//! `unsafe` block of [`crate::passthrough`] is here, with the reason it is sound.
//! The wrappers answer an [`Errno`] for a failed call and own what the kernel
//! returns (a new descriptor is an `OwnedFd` at once). None of them resolves a path
//! of more than one component: callers pass a folder's descriptor and one checked
//! name, or work on a descriptor itself (`AT_EMPTY_PATH`).

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::filesystem::{Errno, Result};

const EMPTY: &CStr = c"";

fn cvt(rc: libc::c_int) -> Result<libc::c_int> {
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc)
    }
}

fn cvt_long(rc: libc::c_long) -> Result<libc::c_long> {
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc)
    }
}

fn cvt_size(rc: isize) -> Result<usize> {
    usize::try_from(rc).map_err(|_| Errno::last())
}

/// A byte count returned through `syscall` (a long), or the call's errno.
fn cvt_len(rc: libc::c_long) -> Result<usize> {
    usize::try_from(rc).map_err(|_| Errno::last())
}

/// Takes ownership of a descriptor the kernel has just returned.
fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: callers pass the non-negative result of a call that returns a new
    // descriptor (checked by cvt/cvt_long first); nothing else owns it.
    // A descriptor number always fits an int.
    unsafe { OwnedFd::from_raw_fd(RawFd::try_from(fd).unwrap_or(-1)) }
}

/// `struct open_how` of openat2 (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(dirfd, name, flags | O_CLOEXEC, mode, resolve)`.
pub fn openat2(dirfd: RawFd, name: &CStr, flags: i32, mode: u32, resolve: u64) -> Result<OwnedFd> {
    let how = OpenHow {
        flags: u64::from((flags | libc::O_CLOEXEC).cast_unsigned()),
        mode: u64::from(mode),
        resolve,
    };
    // SAFETY: `name` is NUL-terminated, `how` is a valid open_how whose size we
    // pass; the kernel only reads them.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    Ok(owned(cvt_long(fd)?))
}

/// `openat(dirfd, name, flags)` (the caller adds O_CLOEXEC): the re-open of a
/// node through `/proc/self/fd`.
pub fn openat(dirfd: RawFd, name: &CStr, flags: i32) -> Result<File> {
    // SAFETY: valid dirfd and NUL-terminated name; returns a new descriptor.
    let fd = cvt(unsafe { libc::openat(dirfd, name.as_ptr(), flags) })?;
    Ok(File::from(owned(fd.into())))
}

/// fstat of a descriptor (an `O_PATH` one too), not following a symlink.
pub fn stat_fd(fd: RawFd) -> Result<libc::stat64> {
    // SAFETY: stat64 is plain data; all zeroes is a valid value.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: valid empty path, valid out buffer; AT_EMPTY_PATH stats `fd` itself.
    cvt(unsafe {
        libc::fstatat64(
            fd,
            EMPTY.as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// statvfs of the file system holding `fd` (`O_PATH` allowed).
pub fn statvfs(fd: RawFd) -> Result<libc::statvfs64> {
    // SAFETY: statvfs64 is plain data; all zeroes is a valid value.
    let mut st: libc::statvfs64 = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and out buffer.
    cvt(unsafe { libc::fstatvfs64(fd, &mut st) })?;
    Ok(st)
}

/// `fchmodat2(fd, "", mode, AT_EMPTY_PATH)`: the mode of `fd`'s node itself.
pub fn chmod_fd(fd: RawFd, mode: u32) -> Result<()> {
    // SAFETY: AT_EMPTY_PATH changes the mode of `fd` itself (an O_PATH descriptor
    // too); the empty path is NUL-terminated.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            fd,
            EMPTY.as_ptr(),
            mode,
            libc::AT_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// The owner of `fd`'s node itself (`u32::MAX`: unchanged).
pub fn chown_fd(fd: RawFd, uid: u32, gid: u32) -> Result<()> {
    // SAFETY: AT_EMPTY_PATH makes fchownat act on `fd` itself; NUL-terminated path.
    cvt(unsafe {
        libc::fchownat(
            fd,
            EMPTY.as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

/// The access and modification times of `fd`'s node itself.
pub fn utimens_fd(fd: RawFd, times: &[libc::timespec; 2]) -> Result<()> {
    // SAFETY: two valid timespecs; AT_EMPTY_PATH makes it act on `fd`.
    cvt(unsafe {
        libc::utimensat(
            fd,
            EMPTY.as_ptr(),
            times.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

pub fn ftruncate(fd: RawFd, size: i64) -> Result<()> {
    // SAFETY: ftruncate on a descriptor the caller owns.
    cvt(unsafe { libc::ftruncate(fd, size) })?;
    Ok(())
}

/// The target of the symlink `fd` (an `O_PATH | O_NOFOLLOW` descriptor of it),
/// at most `max` bytes.
pub fn readlink_fd(fd: RawFd, max: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; max];
    // SAFETY: the buffer is valid for its length; the empty name reads the link
    // `fd` itself.
    let n = cvt_size(unsafe {
        libc::readlinkat(fd, EMPTY.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    })?;
    buf.truncate(n);
    Ok(buf)
}

pub fn symlinkat(target: &CStr, dirfd: RawFd, name: &CStr) -> Result<()> {
    // SAFETY: both strings are NUL-terminated; the link is made in `dirfd`.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dirfd, name.as_ptr()) })?;
    Ok(())
}

pub fn mknodat(dirfd: RawFd, name: &CStr, mode: u32, rdev: u64) -> Result<()> {
    // SAFETY: NUL-terminated name relative to the folder's descriptor.
    cvt(unsafe { libc::mknodat(dirfd, name.as_ptr(), mode, rdev) })?;
    Ok(())
}

pub fn mkdirat(dirfd: RawFd, name: &CStr, mode: u32) -> Result<()> {
    // SAFETY: NUL-terminated name relative to the folder's descriptor.
    cvt(unsafe { libc::mkdirat(dirfd, name.as_ptr(), mode) })?;
    Ok(())
}

pub fn unlinkat(dirfd: RawFd, name: &CStr, flags: i32) -> Result<()> {
    // SAFETY: NUL-terminated name relative to the folder's descriptor.
    cvt(unsafe { libc::unlinkat(dirfd, name.as_ptr(), flags) })?;
    Ok(())
}

pub fn renameat2(
    olddir: RawFd,
    oldname: &CStr,
    newdir: RawFd,
    newname: &CStr,
    flags: u32,
) -> Result<()> {
    // SAFETY: NUL-terminated names relative to the two folders' descriptors.
    cvt(unsafe { libc::renameat2(olddir, oldname.as_ptr(), newdir, newname.as_ptr(), flags) })?;
    Ok(())
}

/// Links the node of `fd` itself as `name` in `dirfd`.
pub fn link_fd(fd: RawFd, dirfd: RawFd, name: &CStr) -> Result<()> {
    // SAFETY: AT_EMPTY_PATH links the inode of `fd` itself under the
    // NUL-terminated name in the folder.
    cvt(unsafe {
        libc::linkat(
            fd,
            EMPTY.as_ptr(),
            dirfd,
            name.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// `faccessat2(fd, "", mask, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)`.
pub fn access_fd(fd: RawFd, mask: u32) -> Result<()> {
    // SAFETY: faccessat2 with AT_EMPTY_PATH checks `fd` itself; NUL-terminated path.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            fd,
            EMPTY.as_ptr(),
            mask,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

/// fsync, or fdatasync with `datasync`.
pub fn fsync(fd: RawFd, datasync: bool) -> Result<()> {
    // SAFETY: syncing a descriptor the caller owns.
    cvt(unsafe {
        if datasync {
            libc::fdatasync(fd)
        } else {
            libc::fsync(fd)
        }
    })?;
    Ok(())
}

pub fn syncfs(fd: RawFd) -> Result<()> {
    // SAFETY: syncfs on a descriptor the caller owns.
    cvt(unsafe { libc::syncfs(fd) })?;
    Ok(())
}

pub fn fallocate(fd: RawFd, mode: i32, offset: i64, length: i64) -> Result<()> {
    // SAFETY: fallocate on a descriptor the caller owns.
    cvt(unsafe { libc::fallocate64(fd, mode, offset, length) })?;
    Ok(())
}

pub fn lseek(fd: RawFd, offset: i64, whence: i32) -> Result<i64> {
    // SAFETY: lseek on a descriptor the caller owns (the kernel checks whence).
    cvt_long(unsafe { libc::lseek64(fd, offset, whence) })
}

pub fn copy_file_range(
    fd_in: RawFd,
    off_in: &mut i64,
    fd_out: RawFd,
    off_out: &mut i64,
    len: usize,
    flags: u32,
) -> Result<usize> {
    // SAFETY: both offsets are valid exclusive references; both descriptors are
    // the caller's.
    cvt_size(unsafe { libc::copy_file_range(fd_in, off_in, fd_out, off_out, len, flags) })
}

/// getdents64 into `buf`; answers the bytes filled (0 at the end of the folder).
pub fn getdents64(fd: RawFd, buf: &mut [u8]) -> Result<usize> {
    // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`.
    cvt_len(unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) })
}

/// `name_to_handle_at(fd, "", raw, &mount_id, AT_EMPTY_PATH)`: `raw` is a
/// `struct file_handle` whose `handle_bytes` says how much room follows its
/// 8-byte header. Answers the mount id.
pub fn name_to_handle_fd(fd: RawFd, raw: &mut [u8]) -> Result<i32> {
    assert!(raw.len() >= 8, "struct file_handle has an 8-byte header");
    let room = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
    assert!(8 + room <= raw.len(), "handle_bytes exceeds the buffer");
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `raw` is a struct file_handle whose handle_bytes (checked above) is
    // at most the room after its header; the empty path with AT_EMPTY_PATH names
    // `fd`; `mount_id` is a valid out value.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd,
            EMPTY.as_ptr(),
            raw.as_mut_ptr(),
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        )
    })?;
    Ok(mount_id)
}

/// `open_by_handle_at(mount_fd, raw, flags)`: `raw` as name_to_handle_fd filled it.
pub fn open_by_handle(mount_fd: RawFd, raw: &[u8], flags: i32) -> Result<OwnedFd> {
    assert!(raw.len() >= 8, "struct file_handle has an 8-byte header");
    let len = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
    assert!(8 + len <= raw.len(), "handle_bytes exceeds the buffer");
    // SAFETY: `raw` is a struct file_handle whose handle_bytes (checked above) lie
    // within it; open_by_handle_at only reads it and returns a new descriptor.
    let fd = cvt_long(unsafe {
        libc::syscall(libc::SYS_open_by_handle_at, mount_fd, raw.as_ptr(), flags)
    })?;
    Ok(owned(fd))
}

/// The soft and hard limits on open files (RLIMIT_NOFILE).
pub fn open_file_limit() -> Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the rlimit we pass.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    Ok(limit)
}

/// Duplicates `fd` onto the lowest free number >= `min` and closes the copy at
/// once: the descriptor table grows to hold `min`.
pub fn grow_fd_table(fd: RawFd, min: RawFd) {
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor the caller owns onto a free
    // number (never an open one), and only that new copy is closed.
    unsafe {
        let copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min);
        if copy >= 0 {
            libc::close(copy);
        }
    }
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// This thread's file-system uid and gid (setfsgid first, as the pair must be
/// set while the uid still allows it).
pub fn set_fs_ids(uid: u32, gid: u32) {
    // SAFETY: setfsgid/setfsuid change only this thread's fs credentials.
    unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
    }
}

/// Back to root's file-system uid and gid for this thread.
pub fn reset_fs_ids() {
    // SAFETY: setfsuid/setfsgid change only this thread's fs credentials.
    unsafe {
        libc::setfsuid(0);
        libc::setfsgid(0);
    }
}

// The `*xattrat` calls (Linux 6.13); x86_64 and aarch64 share these numbers (the
// generic syscall table).
pub const SYS_SETXATTRAT: libc::c_long = 463;
pub const SYS_GETXATTRAT: libc::c_long = 464;
pub const SYS_LISTXATTRAT: libc::c_long = 465;
pub const SYS_REMOVEXATTRAT: libc::c_long = 466;

/// `struct xattr_args` of setxattrat/getxattrat.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// getxattrat(dirfd, node, 0, name) into `buf` (empty: the size).
pub fn getxattrat(dirfd: RawFd, node: &CStr, name: &CStr, buf: &mut [u8]) -> Result<usize> {
    let mut args = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: u32::try_from(buf.len()).map_err(|_| Errno::ERANGE)?,
        flags: 0,
    };
    // SAFETY: both names are NUL-terminated; `args` points at `buf`, valid for
    // `size` bytes, which the kernel writes at most.
    let rc = unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dirfd,
            node.as_ptr(),
            0,
            name.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    cvt_len(rc)
}

/// listxattrat(dirfd, node, 0) into `buf` (empty: the size).
pub fn listxattrat(dirfd: RawFd, node: &CStr, buf: &mut [u8]) -> Result<usize> {
    // SAFETY: NUL-terminated name; `buf` is valid for its length.
    let rc = unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            dirfd,
            node.as_ptr(),
            0,
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    cvt_len(rc)
}

/// setxattrat(dirfd, node, 0, name, value, flags).
pub fn setxattrat(dirfd: RawFd, node: &CStr, name: &CStr, value: &[u8], flags: i32) -> Result<()> {
    let args = XattrArgs {
        value: value.as_ptr() as u64,
        size: u32::try_from(value.len()).map_err(|_| Errno(libc::E2BIG))?,
        flags: flags.cast_unsigned(),
    };
    // SAFETY: both names are NUL-terminated; `args` points at `value`, which the
    // kernel only reads.
    let rc = unsafe {
        libc::syscall(
            SYS_SETXATTRAT,
            dirfd,
            node.as_ptr(),
            0,
            name.as_ptr(),
            &args as *const XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    cvt_long(rc).map(drop)
}

/// removexattrat(dirfd, node, 0, name).
pub fn removexattrat(dirfd: RawFd, node: &CStr, name: &CStr) -> Result<()> {
    // SAFETY: both names are NUL-terminated.
    let rc = unsafe { libc::syscall(SYS_REMOVEXATTRAT, dirfd, node.as_ptr(), 0, name.as_ptr()) };
    cvt_long(rc).map(drop)
}

pub fn fgetxattr(fd: RawFd, name: &CStr, buf: &mut [u8]) -> Result<usize> {
    // SAFETY: `buf` is valid for its length; the name is NUL-terminated.
    cvt_size(unsafe { libc::fgetxattr(fd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

pub fn flistxattr(fd: RawFd, buf: &mut [u8]) -> Result<usize> {
    // SAFETY: `buf` is valid for its length.
    cvt_size(unsafe { libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

pub fn fsetxattr(fd: RawFd, name: &CStr, value: &[u8], flags: i32) -> Result<()> {
    // SAFETY: NUL-terminated name; `value` valid for its length.
    cvt(unsafe { libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), flags) })?;
    Ok(())
}

pub fn fremovexattr(fd: RawFd, name: &CStr) -> Result<()> {
    // SAFETY: NUL-terminated name on a descriptor the caller owns.
    cvt(unsafe { libc::fremovexattr(fd, name.as_ptr()) })?;
    Ok(())
}
