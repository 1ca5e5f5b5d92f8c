//! Extended attributes of a node without opening it.
//!
//! An inode is held as an `O_PATH` descriptor, and `fgetxattr` and friends refuse
//! those (EBADF). Opening the node for reading would work for regular files and
//! folders, but a device node, FIFO or socket must never be opened for the guest
//! (an open reaches the device, or blocks on a FIFO). So every xattr call names the
//! node as `N` relative to this process's `/proc/self/fd` with the `*xattrat`
//! system calls (Linux 6.13): the lookup follows the descriptor's magic link to the
//! node itself (a symlink or device node included) and the attribute call works on
//! that inode; nothing is opened.
//!
//! On an older kernel the `*xattrat` calls answer ENOSYS; the caller then falls
//! back to the `f*` calls ([`Target::Open`]) on a descriptor it opens only for
//! regular files and folders, and answers EOPNOTSUPP for other nodes.

use std::ffi::CStr;
use std::os::fd::RawFd;

use crate::fuse::Errno;

// x86_64 and aarch64 share these numbers (the generic syscall table).
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

/// Where the attributes of one node are read and written.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// The node as `name` (its descriptor number) relative to `proc_self_fd`.
    ProcFd { proc_self_fd: RawFd, name: &'a CStr },
    /// An open descriptor of a regular file or folder (the fallback).
    Open(RawFd),
}

/// The result of a raw call.
fn result(rc: libc::c_long) -> Result<usize, Errno> {
    if rc >= 0 {
        Ok(rc as usize)
    } else {
        Err(Errno::last())
    }
}

/// getxattr into `buf` (an empty `buf` asks for the size).
pub fn get(target: Target<'_>, name: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    match target {
        Target::ProcFd {
            proc_self_fd,
            name: node,
        } => {
            let mut args = XattrArgs {
                value: buf.as_mut_ptr() as u64,
                size: u32::try_from(buf.len()).map_err(|_| Errno::ERANGE)?,
                flags: 0,
            };
            // SAFETY: both names are NUL-terminated; `args` points at `buf`, valid
            // for `size` bytes, which the kernel writes at most.
            let rc = unsafe {
                libc::syscall(
                    SYS_GETXATTRAT,
                    proc_self_fd,
                    node.as_ptr(),
                    0,
                    name.as_ptr(),
                    &mut args as *mut XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                )
            };
            result(rc)
        }
        Target::Open(fd) => {
            // SAFETY: `buf` is valid for its length; the name is NUL-terminated.
            let rc =
                unsafe { libc::fgetxattr(fd, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            result(rc as libc::c_long)
        }
    }
}

/// listxattr into `buf` (an empty `buf` asks for the size).
pub fn list(target: Target<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    match target {
        Target::ProcFd {
            proc_self_fd,
            name: node,
        } => {
            // SAFETY: NUL-terminated name; `buf` is valid for its length.
            let rc = unsafe {
                libc::syscall(
                    SYS_LISTXATTRAT,
                    proc_self_fd,
                    node.as_ptr(),
                    0,
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            };
            result(rc)
        }
        Target::Open(fd) => {
            // SAFETY: `buf` is valid for its length.
            let rc = unsafe { libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()) };
            result(rc as libc::c_long)
        }
    }
}

/// setxattr of `value` with `flags` (XATTR_CREATE, XATTR_REPLACE).
pub fn set(target: Target<'_>, name: &CStr, value: &[u8], flags: i32) -> Result<(), Errno> {
    match target {
        Target::ProcFd {
            proc_self_fd,
            name: node,
        } => {
            let args = XattrArgs {
                value: value.as_ptr() as u64,
                size: u32::try_from(value.len()).map_err(|_| Errno(libc::E2BIG))?,
                flags: flags as u32,
            };
            // SAFETY: both names are NUL-terminated; `args` points at `value`,
            // which the kernel only reads.
            let rc = unsafe {
                libc::syscall(
                    SYS_SETXATTRAT,
                    proc_self_fd,
                    node.as_ptr(),
                    0,
                    name.as_ptr(),
                    &args as *const XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                )
            };
            result(rc).map(drop)
        }
        Target::Open(fd) => {
            // SAFETY: NUL-terminated name; `value` valid for its length.
            let rc = unsafe {
                libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), flags)
            };
            result(rc as libc::c_long).map(drop)
        }
    }
}

/// removexattr.
pub fn remove(target: Target<'_>, name: &CStr) -> Result<(), Errno> {
    match target {
        Target::ProcFd {
            proc_self_fd,
            name: node,
        } => {
            // SAFETY: both names are NUL-terminated.
            let rc = unsafe {
                libc::syscall(
                    SYS_REMOVEXATTRAT,
                    proc_self_fd,
                    node.as_ptr(),
                    0,
                    name.as_ptr(),
                )
            };
            result(rc).map(drop)
        }
        Target::Open(fd) => {
            // SAFETY: NUL-terminated name on a descriptor the caller owns.
            let rc = unsafe { libc::fremovexattr(fd, name.as_ptr()) };
            result(rc as libc::c_long).map(drop)
        }
    }
}
