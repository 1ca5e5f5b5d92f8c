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

use super::sys;
use crate::filesystem::Result;

/// Where the attributes of one node are read and written.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// The node as `name` (its descriptor number) relative to `proc_self_fd`.
    ProcFd { proc_self_fd: RawFd, name: &'a CStr },
    /// An open descriptor of a regular file or folder (the fallback).
    Open(RawFd),
}

/// getxattr into `buf` (an empty `buf` asks for the size).
pub fn get(target: Target<'_>, name: &CStr, buf: &mut [u8]) -> Result<usize> {
    match target {
        Target::ProcFd {
            proc_self_fd,
            name: node,
        } => sys::getxattrat(proc_self_fd, node, name, buf),
        Target::Open(fd) => sys::fgetxattr(fd, name, buf),
    }
}

/// listxattr into `buf` (an empty `buf` asks for the size).
pub fn list(target: Target<'_>, buf: &mut [u8]) -> Result<usize> {
    match target {
        Target::ProcFd {
            proc_self_fd,
            name: node,
        } => sys::listxattrat(proc_self_fd, node, buf),
        Target::Open(fd) => sys::flistxattr(fd, buf),
    }
}

/// setxattr of `value` with `flags` (XATTR_CREATE, XATTR_REPLACE).
pub fn set(target: Target<'_>, name: &CStr, value: &[u8], flags: i32) -> Result<()> {
    match target {
        Target::ProcFd {
            proc_self_fd,
            name: node,
        } => sys::setxattrat(proc_self_fd, node, name, value, flags),
        Target::Open(fd) => sys::fsetxattr(fd, name, value, flags),
    }
}

/// removexattr.
pub fn remove(target: Target<'_>, name: &CStr) -> Result<()> {
    match target {
        Target::ProcFd {
            proc_self_fd,
            name: node,
        } => sys::removexattrat(proc_self_fd, node, name),
        Target::Open(fd) => sys::fremovexattr(fd, name),
    }
}
