//! The passthrough file system: [`FileSystem`] on a host folder, the shared folder.
//!
//! - [`inodes`]: the inodes the guest holds (keys, lookup counts, `O_PATH`
//!   descriptors or file handles);
//! - [`handles`]: the files and folders it has open;
//! - [`creds`]: the requester's fs uid and gid while a node is made or opened;
//! - [`xattr`]: extended attributes of a node without opening it;
//! - [`sys`]: the system calls, every `unsafe` block of the file system.
//!
//! # Security model
//!
//! Every inode the guest knows is an `O_PATH` file descriptor held in a map keyed
//! by node id (the root, node 1, is the shared folder), or with
//! `--inode-file-handles` a file handle opened into such a descriptor for the
//! length of one request. Every operation is relative to those descriptors with a
//! single name component (the server checked it: no '/', not "." or ".."), never
//! a path string; lookups and creates go through `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` (and `RESOLVE_NO_SYMLINKS` for
//! creates), and never follow a symlink in the last component. A symlink's target
//! is only ever returned to the guest (READLINK), whose kernel resolves it inside
//! the mount. Opening an inode for I/O re-opens its `O_PATH` descriptor through
//! this process's `/proc/self/fd` (opened once at start), only for regular files
//! and folders, so a symlink node cannot be opened through.
//!
//! # Special files
//!
//! Device nodes, FIFOs and sockets may be created (MKNOD), looked up, listed,
//! stat'ed, renamed, linked, removed, and have their mode, owner, times and
//! extended attributes changed: a container's root file system needs all that.
//! None of them is ever opened for the guest: an open reaches the device (a host
//! disk, say) or, for a FIFO, blocks the queue thread. Every path that turns a node
//! into an open file goes through [`PassthroughFs::reopen`], which checks the
//! type of the very inode it opens (a fresh `fstat` of its descriptor) and answers
//! ENXIO for anything but a regular file or folder (EINVAL for a truncate, as
//! `truncate(2)` does); CREATE creates exclusively (`O_EXCL`) and, when the name
//! exists and the guest did not ask for `O_EXCL`, takes that same checked path.
//! Extended attributes of special files are reached without opening them
//! ([`xattr`]). A legitimate guest never asks to open one: its kernel serves
//! device nodes and FIFOs of a FUSE mount itself. Handles (and with them READ,
//! WRITE, FALLOCATE, LSEEK, COPY_FILE_RANGE, FSYNC, READDIR) only ever come from
//! such an open.
//!
//! Inode numbers and handles come from the guest: an unknown one is answered with
//! ENOENT or EBADF (and one rate-limited log line), never a panic.

mod creds;
mod handles;
mod inodes;
pub(crate) mod sys;
mod xattr;

#[cfg(test)]
pub(crate) mod tests;

use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vhostkit_common::guest_info;

use crate::config::CachePolicy;
use crate::filesystem::{
    Attr, Context, CopyRange, DirEntry, Entry, Errno, FileData, FileSystem, Handle, InitOptions,
    Inode, OpenOptions, Result, SetAttr, SetTime, Statfs, XattrReply,
};
use creds::Credentials;
use handles::Handles;
use inodes::{FileHandle, InodeData, InodeKey, InodeRef, InodeStore, Node, NodeFd};

/// Node id of the shared folder.
pub const ROOT_ID: u64 = Inode::ROOT.0;

/// What the file system is allowed to do.
#[derive(Clone, Copy, Debug)]
pub struct FsOptions {
    pub readonly: bool,
    pub xattr: bool,
    pub cache: CachePolicy,
    pub announce_submounts: bool,
    /// Keep looked-up inodes on the shared folder's mount as file handles rather
    /// than open descriptors (`--inode-file-handles`, checked at start).
    pub file_handles: bool,
    /// Pass the guest's O_DIRECT on to host opens (`--allow-direct-io`).
    pub allow_direct_io: bool,
}

/// A passthrough file system for one frontend connection.
pub struct PassthroughFs {
    options: FsOptions,
    /// `/proc/self/fd`, for re-opening `O_PATH` descriptors.
    proc_self_fd: OwnedFd,
    /// With file handles: the shared folder opened for reading (the mount
    /// descriptor of open_by_handle_at) and its mount id.
    mount: Option<(OwnedFd, i32)>,
    inodes: InodeStore,
    handles: Handles,
    /// Whether the kernel has the `*xattrat` calls (cleared at the first ENOSYS).
    xattrat: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a bug panicked mid-update; the maps stay usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn cstring(bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

/// `/proc/self/fd/N`'s name `N` for the descriptor `fd`.
fn fd_name(fd: RawFd) -> Result<CString> {
    cstring(fd.to_string().as_bytes())
}

/// The most bytes one COPY_FILE_RANGE copies.
const MAX_COPY: usize = 64 << 20;

/// The largest xattr value or list read in one request.
const XATTR_SIZE_MAX: usize = 1 << 16;

/// Longest symlink target, its NUL included.
const PATH_MAX: usize = libc::PATH_MAX as usize;

/// The bit of `O_TMPFILE` that is not `O_DIRECTORY` (`__O_TMPFILE`).
const O_TMPFILE_ONLY: i32 = libc::O_TMPFILE & !libc::O_DIRECTORY;

fn attr_from_stat(st: &libc::stat64) -> Attr {
    Attr {
        ino: st.st_ino,
        // Never negative for a node that exists.
        size: u64::try_from(st.st_size).unwrap_or(0),
        blocks: u64::try_from(st.st_blocks).unwrap_or(0),
        atime: st.st_atime,
        atime_nsec: st.st_atime_nsec,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec,
        ctime: st.st_ctime,
        ctime_nsec: st.st_ctime_nsec,
        mode: st.st_mode,
        nlink: st.st_nlink,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev,
        blksize: st.st_blksize,
    }
}

/// Opens the shared folder at `path` as the `O_PATH | O_DIRECTORY` descriptor every
/// session starts from ([`PassthroughFs::with_root`]).
pub fn open_shared_dir(path: &Path) -> std::io::Result<OwnedFd> {
    let dir = cstring(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("shared folder path contains NUL"))?;
    Ok(sys::openat2(
        libc::AT_FDCWD,
        &dir,
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        0,
    )?)
}

/// Whether the folder at `path` gives file handles (`--inode-file-handles`).
pub fn file_handles_supported(path: &Path) -> std::io::Result<()> {
    let dir = cstring(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("path contains NUL"))?;
    let fd = sys::openat2(libc::AT_FDCWD, &dir, libc::O_PATH | libc::O_DIRECTORY, 0, 0)?;
    FileHandle::of(fd.as_raw_fd())?;
    Ok(())
}

/// Descriptors [`reserve_fd_table`] makes room for (the open-file limit if lower).
const FD_TABLE_RESERVE: u64 = 65536;

/// Grows this process's descriptor table up front to [`FD_TABLE_RESERVE`] slots.
/// Every inode looked up holds a descriptor, and the kernel grows the table by
/// doubling, each time (in a multi-threaded process) waiting for an RCU grace
/// period: milliseconds during which the queue stalls, again and again while the
/// first thousands of inodes are looked up. The table never shrinks; a fork does
/// not copy the reservation, so the serving process calls this once at start-up,
/// after the sandbox and before seccomp (getrlimit is not on the allow-list).
pub fn reserve_fd_table(any_fd: RawFd) {
    let Ok(limit) = sys::open_file_limit() else {
        return;
    };
    let Ok(top) = libc::c_int::try_from(limit.rlim_cur.min(FD_TABLE_RESERVE).saturating_sub(1))
    else {
        return;
    };
    sys::grow_fd_table(any_fd, top);
}

fn is_write_open(flags: u32) -> bool {
    let flags = flags as i32;
    (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl PassthroughFs {
    /// A file system rooted at `shared_dir`.
    pub fn new(shared_dir: &Path, options: FsOptions) -> std::io::Result<Self> {
        let proc_self_fd = sys::openat2(
            libc::AT_FDCWD,
            c"/proc/self/fd",
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            0,
        )?;
        Self::with_proc_self_fd(shared_dir, proc_self_fd, options)
    }

    /// A file system rooted at `shared_dir`, re-opening inodes through
    /// `proc_self_fd` (this process's `/proc/self/fd`, opened before a sandbox hid
    /// /proc).
    pub fn with_proc_self_fd(
        shared_dir: &Path,
        proc_self_fd: OwnedFd,
        options: FsOptions,
    ) -> std::io::Result<Self> {
        Self::with_root(open_shared_dir(shared_dir)?, proc_self_fd, options)
    }

    /// A file system rooted at the folder `root` (an `O_PATH | O_DIRECTORY`
    /// descriptor, opened once at start-up: each session works on that very folder,
    /// whatever its path names later), re-opening inodes through `proc_self_fd`.
    pub fn with_root(
        root: OwnedFd,
        proc_self_fd: OwnedFd,
        options: FsOptions,
    ) -> std::io::Result<Self> {
        let st = sys::stat_fd(root.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let mount = if options.file_handles {
            let (_, mount_id) = FileHandle::of(root.as_raw_fd())?;
            // open_by_handle_at wants a descriptor that is not O_PATH.
            let mount_fd = sys::openat2(
                proc_self_fd.as_raw_fd(),
                &fd_name(root.as_raw_fd())?,
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
                0,
            )?;
            Some((mount_fd, mount_id))
        } else {
            None
        };
        let fs = PassthroughFs {
            options,
            proc_self_fd,
            mount,
            inodes: InodeStore::default(),
            handles: Handles::default(),
            xattrat: AtomicBool::new(true),
        };
        fs.inodes.reset(root, &st);
        Ok(fs)
    }

    /// Nodes the guest currently holds (the root included), for tests and logs.
    pub fn node_count(&self) -> usize {
        self.inodes.count()
    }

    /// Open file handles, for tests and logs.
    pub fn handle_count(&self) -> usize {
        self.handles.count()
    }

    /// For tests: behave as on a kernel without the `*xattrat` calls.
    #[doc(hidden)]
    pub fn without_xattrat(self) -> Self {
        self.xattrat.store(false, Ordering::Relaxed);
        self
    }

    /// The inode `inode` with a descriptor to work on.
    fn node(&self, inode: Inode) -> Result<Node> {
        let data = self.inodes.get(inode)?;
        let (file_type, dev) = (data.file_type, data.dev);
        let fd = match (&data.reference, &self.mount) {
            (InodeRef::Handle(handle), Some((mount_fd, _))) => {
                NodeFd::Opened(handle.open(mount_fd.as_raw_fd())?)
            }
            (InodeRef::Handle(_), None) => return Err(Errno::EIO),
            (InodeRef::Fd(fd), _) => NodeFd::Kept(fd.clone()),
        };
        Ok(Node { fd, file_type, dev })
    }

    /// The file handle to keep the inode of the `O_PATH` descriptor `fd` as: with
    /// file handles on, if it lives on the shared folder's mount.
    fn file_handle_of(&self, fd: &OwnedFd) -> Option<FileHandle> {
        let (_, root_mount) = self.mount.as_ref()?;
        match FileHandle::of(fd.as_raw_fd()) {
            Ok((handle, mount_id)) if mount_id == *root_mount => Some(handle),
            _ => None,
        }
    }

    fn writable(&self) -> Result<()> {
        if self.options.readonly {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    fn timeout(&self) -> Duration {
        match self.options.cache {
            CachePolicy::Never => Duration::ZERO,
            CachePolicy::Auto => Duration::from_secs(1),
            CachePolicy::Always => Duration::from_secs(86400),
        }
    }

    fn open_options(&self) -> OpenOptions {
        match self.options.cache {
            CachePolicy::Never => OpenOptions {
                direct_io: true,
                keep_cache: false,
            },
            CachePolicy::Auto => OpenOptions::default(),
            CachePolicy::Always => OpenOptions {
                direct_io: false,
                keep_cache: true,
            },
        }
    }

    /// Re-opens an inode for I/O with `flags` through /proc/self/fd: the one place
    /// a node becomes an open file. Only regular files and folders, checked on the
    /// inode about to be opened (not on what the store remembers): a symlink is
    /// refused with ELOOP, a device node, FIFO or socket with ENXIO (what opening
    /// a device node without a device gives), so nothing the guest names ever
    /// opens a host device or blocks on a FIFO.
    fn reopen(&self, node: &Node, flags: i32) -> Result<File> {
        let st = sys::stat_fd(node.fd.as_raw_fd())?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFDIR => {}
            libc::S_IFLNK => return Err(Errno(libc::ELOOP)),
            _ => return Err(Errno(libc::ENXIO)),
        }
        let name = fd_name(node.fd.as_raw_fd())?;
        // No creating, no O_TMPFILE (an unnamed file in a folder), no O_PATH.
        let flags = (flags
            & !(libc::O_NOFOLLOW
                | libc::O_CREAT
                | libc::O_EXCL
                | libc::O_NOCTTY
                | O_TMPFILE_ONLY
                | libc::O_PATH))
            | libc::O_CLOEXEC;
        sys::openat(self.proc_self_fd.as_raw_fd(), &name, flags)
    }

    /// Looks `name` up in `parent` and counts one lookup of the result.
    fn do_lookup(&self, parent: Inode, name: &CStr) -> Result<Entry> {
        let parent_node = self.node(parent)?;
        let fd = sys::openat2(
            parent_node.fd.as_raw_fd(),
            name,
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
        )?;
        let st = sys::stat_fd(fd.as_raw_fd())?;
        let handle = self.file_handle_of(&fd);
        let key = InodeKey::new(&st, handle.as_ref());
        let inode = self.inodes.look_up(key, || InodeData {
            reference: match handle {
                Some(handle) => InodeRef::Handle(handle),
                None => InodeRef::Fd(Arc::new(fd)),
            },
            file_type: st.st_mode & libc::S_IFMT,
            dev: st.st_dev,
        });
        let timeout = self.timeout();
        Ok(Entry {
            inode,
            generation: 0,
            attr: attr_from_stat(&st),
            submount: self.options.announce_submounts && st.st_dev != parent_node.dev,
            entry_timeout: timeout,
            attr_timeout: timeout,
        })
    }

    /// The guest's open flags as the host open gets them: O_DIRECT only with
    /// `--allow-direct-io`, as virtiofsd.
    fn host_open_flags(&self, guest_flags: u32) -> i32 {
        let flags = guest_flags as i32;
        if self.options.allow_direct_io {
            flags
        } else {
            flags & !libc::O_DIRECT
        }
    }

    fn open_node(&self, inode: Inode, flags: u32, dir: bool) -> Result<Handle> {
        if is_write_open(flags) {
            self.writable()?;
        }
        let node = self.node(inode)?;
        let flags = if dir {
            libc::O_RDONLY | libc::O_DIRECTORY
        } else {
            if node.file_type == libc::S_IFDIR && is_write_open(flags) {
                return Err(Errno(libc::EISDIR));
            }
            self.host_open_flags(flags)
        };
        let file = self.reopen(&node, flags)?;
        Ok(self.handles.insert(file))
    }

    fn xattr_enabled(&self) -> Result<()> {
        if self.options.xattr {
            Ok(())
        } else {
            Err(Errno::ENOSYS)
        }
    }

    /// Runs `op` on the extended attributes of `inode` without opening it (see
    /// [`xattr`]); on a kernel without the `*xattrat` calls, on a descriptor
    /// opened for reading, for regular files and folders only.
    fn with_xattr_target<T>(
        &self,
        inode: Inode,
        mut op: impl FnMut(xattr::Target<'_>) -> Result<T>,
    ) -> Result<T> {
        let node = self.node(inode)?;
        if self.xattrat.load(Ordering::Relaxed) {
            let name = fd_name(node.fd.as_raw_fd())?;
            match op(xattr::Target::ProcFd {
                proc_self_fd: self.proc_self_fd.as_raw_fd(),
                name: &name,
            }) {
                Err(Errno(libc::ENOSYS)) => {
                    guest_info!("no *xattrat system calls (Linux < 6.13): xattrs of special files are unsupported");
                    self.xattrat.store(false, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        let file = self.reopen(&node, libc::O_RDONLY).map_err(|e| match e.0 {
            libc::ENXIO | libc::ELOOP => Errno(libc::EOPNOTSUPP),
            _ => e,
        })?;
        op(xattr::Target::Open(file.as_raw_fd()))
    }

    /// GETXATTR and LISTXATTR: `name` None lists.
    fn read_xattr(&self, inode: Inode, name: Option<&CStr>, size: u32) -> Result<XattrReply> {
        self.xattr_enabled()?;
        let mut buf = vec![0u8; (size as usize).min(XATTR_SIZE_MAX)];
        let n = self.with_xattr_target(inode, |target| match name {
            Some(name) => xattr::get(target, name, &mut buf),
            None => xattr::list(target, &mut buf),
        })?;
        if size == 0 {
            // An xattr value or list is at most 64 KiB.
            return Ok(XattrReply::Size(u32::try_from(n).unwrap_or(u32::MAX)));
        }
        buf.truncate(n);
        Ok(XattrReply::Value(buf))
    }

    fn sync_handle(&self, handle: Handle, datasync: bool) -> Result<()> {
        let open = self.handles.get(handle)?;
        sys::fsync(open.file.as_raw_fd(), datasync)
    }
}

impl FileSystem for PassthroughFs {
    fn init(&self) -> Result<InitOptions> {
        Ok(InitOptions {
            submounts: self.options.announce_submounts,
            xattr: self.options.xattr,
        })
    }

    fn destroy(&self) {
        self.handles.clear();
        if let Some(Ok(root)) = self.inodes.root_fd().map(|fd| fd.try_clone()) {
            if let Ok(st) = sys::stat_fd(root.as_raw_fd()) {
                self.inodes.reset(root, &st);
            }
        }
    }

    fn lookup(&self, _ctx: Context, parent: Inode, name: &CStr) -> Result<Entry> {
        self.do_lookup(parent, name)
    }

    fn forget(&self, inode: Inode, count: u64) {
        self.inodes.forget(inode, count);
    }

    fn getattr(
        &self,
        _ctx: Context,
        inode: Inode,
        handle: Option<Handle>,
    ) -> Result<(Attr, Duration)> {
        let st = match handle {
            Some(handle) => sys::stat_fd(self.handles.get(handle)?.file.as_raw_fd())?,
            None => sys::stat_fd(self.node(inode)?.fd.as_raw_fd())?,
        };
        Ok((attr_from_stat(&st), self.timeout()))
    }

    fn setattr(
        &self,
        _ctx: Context,
        inode: Inode,
        attr: SetAttr,
        handle: Option<Handle>,
    ) -> Result<(Attr, Duration)> {
        self.writable()?;
        let node = self.node(inode)?;
        let open = match handle {
            Some(handle) => Some(self.handles.get(handle)?),
            None => None,
        };
        let fd = node.fd.as_raw_fd();
        if let Some(mode) = attr.mode {
            sys::chmod_fd(fd, mode & 0o7777)?;
        }
        if attr.uid.is_some() || attr.gid.is_some() {
            sys::chown_fd(
                fd,
                attr.uid.unwrap_or(u32::MAX),
                attr.gid.unwrap_or(u32::MAX),
            )?;
        }
        if let Some(size) = attr.size {
            let size = i64::try_from(size).map_err(|_| Errno::EINVAL)?;
            let reopened;
            let file = match &open {
                Some(open) => &open.file,
                None => {
                    // truncate(2) of anything but a regular file is EINVAL.
                    reopened = self.reopen(&node, libc::O_WRONLY).map_err(|e| match e.0 {
                        libc::ENXIO | libc::ELOOP => Errno::EINVAL,
                        _ => e,
                    })?;
                    &reopened
                }
            };
            sys::ftruncate(file.as_raw_fd(), size)?;
        }
        if attr.atime.is_some() || attr.mtime.is_some() {
            let time = |set: Option<SetTime>| match set {
                None => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                Some(SetTime::Now) => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_NOW,
                },
                Some(SetTime::To { sec, nsec }) => libc::timespec {
                    tv_sec: sec as i64,
                    tv_nsec: i64::from(nsec),
                },
            };
            sys::utimens_fd(fd, &[time(attr.atime), time(attr.mtime)])?;
        }
        let st = sys::stat_fd(fd)?;
        Ok((attr_from_stat(&st), self.timeout()))
    }

    fn readlink(&self, _ctx: Context, inode: Inode) -> Result<Vec<u8>> {
        let node = self.node(inode)?;
        sys::readlink_fd(node.fd.as_raw_fd(), PATH_MAX)
    }

    fn symlink(&self, ctx: Context, parent: Inode, name: &CStr, target: &CStr) -> Result<Entry> {
        self.writable()?;
        let len = target.to_bytes().len();
        if len == 0 || len >= PATH_MAX {
            return Err(Errno::EINVAL);
        }
        let dir = self.node(parent)?;
        {
            let _creds = Credentials::switch(ctx);
            sys::symlinkat(target, dir.fd.as_raw_fd(), name)?;
        }
        self.do_lookup(parent, name)
    }

    fn mknod(
        &self,
        ctx: Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
    ) -> Result<Entry> {
        self.writable()?;
        let dir = self.node(parent)?;
        {
            let _creds = Credentials::switch(ctx);
            sys::mknodat(dir.fd.as_raw_fd(), name, mode, u64::from(rdev))?;
        }
        self.do_lookup(parent, name)
    }

    fn mkdir(&self, ctx: Context, parent: Inode, name: &CStr, mode: u32) -> Result<Entry> {
        self.writable()?;
        let dir = self.node(parent)?;
        {
            let _creds = Credentials::switch(ctx);
            sys::mkdirat(dir.fd.as_raw_fd(), name, mode)?;
        }
        self.do_lookup(parent, name)
    }

    fn unlink(&self, _ctx: Context, parent: Inode, name: &CStr) -> Result<()> {
        self.writable()?;
        sys::unlinkat(self.node(parent)?.fd.as_raw_fd(), name, 0)
    }

    fn rmdir(&self, _ctx: Context, parent: Inode, name: &CStr) -> Result<()> {
        self.writable()?;
        sys::unlinkat(self.node(parent)?.fd.as_raw_fd(), name, libc::AT_REMOVEDIR)
    }

    fn rename(
        &self,
        _ctx: Context,
        olddir: Inode,
        oldname: &CStr,
        newdir: Inode,
        newname: &CStr,
        flags: u32,
    ) -> Result<()> {
        self.writable()?;
        let (olddir, newdir) = (self.node(olddir)?, self.node(newdir)?);
        // With the daemon's credentials, as virtiofsd: the guest kernel has checked the
        // requester's permissions (virtiofs mounts with default_permissions), and
        // switching to the requester's fsuid here would lose its supplementary groups.
        sys::renameat2(
            olddir.fd.as_raw_fd(),
            oldname,
            newdir.fd.as_raw_fd(),
            newname,
            flags,
        )
    }

    fn link(&self, _ctx: Context, inode: Inode, newparent: Inode, newname: &CStr) -> Result<Entry> {
        self.writable()?;
        let old = self.node(inode)?;
        let dir = self.node(newparent)?;
        sys::link_fd(old.fd.as_raw_fd(), dir.fd.as_raw_fd(), newname)?;
        self.do_lookup(newparent, newname)
    }

    fn open(&self, _ctx: Context, inode: Inode, flags: u32) -> Result<(Handle, OpenOptions)> {
        let handle = self.open_node(inode, flags, false)?;
        Ok((handle, self.open_options()))
    }

    fn read(
        &self,
        _ctx: Context,
        _inode: Inode,
        handle: Handle,
        offset: u64,
        size: usize,
        data: &mut dyn FileData,
    ) -> Result<usize> {
        let open = self.handles.get(handle)?;
        let offset = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        Ok(data.read_from(&open.file, offset, size)?)
    }

    fn write(
        &self,
        _ctx: Context,
        _inode: Inode,
        handle: Handle,
        offset: u64,
        size: usize,
        data: &mut dyn FileData,
    ) -> Result<usize> {
        self.writable()?;
        let open = self.handles.get(handle)?;
        let offset = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        Ok(data.write_to(&open.file, offset, size)?)
    }

    fn flush(&self, _ctx: Context, _inode: Inode, handle: Handle) -> Result<()> {
        self.handles.get(handle).map(drop)
    }

    fn fsync(&self, _ctx: Context, _inode: Inode, datasync: bool, handle: Handle) -> Result<()> {
        self.sync_handle(handle, datasync)
    }

    fn release(&self, _ctx: Context, _inode: Inode, handle: Handle) -> Result<()> {
        self.handles.remove(handle)
    }

    fn statfs(&self, _ctx: Context, inode: Inode) -> Result<Statfs> {
        let st = sys::statvfs(self.node(inode)?.fd.as_raw_fd())?;
        Ok(Statfs {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize,
            namelen: st.f_namemax,
            frsize: st.f_frsize,
        })
    }

    fn opendir(&self, _ctx: Context, inode: Inode, flags: u32) -> Result<Handle> {
        self.open_node(inode, flags, true)
    }

    fn readdir(
        &self,
        _ctx: Context,
        _inode: Inode,
        handle: Handle,
        offset: u64,
        size_hint: usize,
        add: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> Result<()> {
        let open = self.handles.get(handle)?;
        let offset = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let _position = lock(&open.dir_position);
        let fd = open.file.as_raw_fd();
        sys::lseek(fd, offset, libc::SEEK_SET)?;
        // What is read past what `add` takes is read again by the next READDIR; a
        // short read only costs another getdents.
        let mut raw = vec![0u8; size_hint.clamp(1024, 32 * 1024)];
        loop {
            let n = sys::getdents64(fd, &mut raw)?;
            if n == 0 {
                return Ok(());
            }
            let mut pos = 0;
            while pos + 19 <= n {
                // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name.
                let entry = &raw[pos..n];
                let ino = u64::from_ne_bytes(entry[0..8].try_into().unwrap_or_default());
                let off = u64::from_ne_bytes(entry[8..16].try_into().unwrap_or_default());
                let reclen = u16::from_ne_bytes([entry[16], entry[17]]) as usize;
                let kind = entry[18];
                if reclen < 19 || reclen > entry.len() {
                    break;
                }
                pos += reclen;
                // The kernel NUL-terminates every d_name.
                let Ok(name) = CStr::from_bytes_until_nul(&entry[19..reclen]) else {
                    continue;
                };
                let dirent = DirEntry {
                    ino,
                    offset: off,
                    kind,
                    name,
                };
                if !add(dirent) {
                    return Ok(());
                }
            }
        }
    }

    fn releasedir(&self, _ctx: Context, _inode: Inode, handle: Handle) -> Result<()> {
        self.handles.remove(handle)
    }

    fn fsyncdir(&self, _ctx: Context, _inode: Inode, datasync: bool, handle: Handle) -> Result<()> {
        self.sync_handle(handle, datasync)
    }

    fn setxattr(
        &self,
        _ctx: Context,
        inode: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> Result<()> {
        self.xattr_enabled()?;
        self.writable()?;
        self.with_xattr_target(inode, |target| {
            xattr::set(target, name, value, flags as i32)
        })
    }

    fn getxattr(&self, _ctx: Context, inode: Inode, name: &CStr, size: u32) -> Result<XattrReply> {
        self.read_xattr(inode, Some(name), size)
    }

    fn listxattr(&self, _ctx: Context, inode: Inode, size: u32) -> Result<XattrReply> {
        self.read_xattr(inode, None, size)
    }

    fn removexattr(&self, _ctx: Context, inode: Inode, name: &CStr) -> Result<()> {
        self.xattr_enabled()?;
        self.writable()?;
        self.with_xattr_target(inode, |target| xattr::remove(target, name))
    }

    fn access(&self, _ctx: Context, inode: Inode, mask: u32) -> Result<()> {
        if mask & libc::W_OK as u32 != 0 {
            self.writable()?;
        }
        sys::access_fd(self.node(inode)?.fd.as_raw_fd(), mask)
    }

    /// CREATE: makes a regular file and opens it. The file is created
    /// exclusively, so the open is of the new regular file; if the name exists and
    /// the guest did not ask for `O_EXCL`, the existing node is looked up and opened
    /// through [`Self::reopen`] (as virtiofsd does), which refuses anything but a
    /// regular file or folder, and here a folder too (EISDIR): a CREATE answers a
    /// regular file. That open runs with the requester's credentials, as the
    /// creating open does: the guest kernel skips its own permission check for a
    /// file its CREATE made, so the host must check that this one may be opened
    /// (and truncated) by that user. A plain `O_CREAT` open would open whatever
    /// node sits at the name, a device node or a FIFO included.
    fn create(
        &self,
        ctx: Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        flags: u32,
    ) -> Result<(Entry, Handle, OpenOptions)> {
        self.writable()?;
        let dir = self.node(parent)?;
        let guest_flags = self.host_open_flags(flags);
        let flags = (guest_flags | libc::O_CREAT | libc::O_EXCL)
            & !(libc::O_NOCTTY | libc::O_PATH | O_TMPFILE_ONLY | libc::O_DIRECTORY);
        let created = {
            let _creds = Credentials::switch(ctx);
            sys::openat2(
                dir.fd.as_raw_fd(),
                name,
                flags,
                mode & 0o7777,
                libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_SYMLINKS,
            )
        };
        let (entry, file) = match created {
            Ok(fd) => (self.do_lookup(parent, name)?, File::from(fd)),
            Err(Errno(libc::EEXIST)) if guest_flags & libc::O_EXCL == 0 => {
                let entry = self.do_lookup(parent, name)?;
                let opened = self.node(entry.inode).and_then(|node| {
                    if entry.attr.file_type() == libc::S_IFDIR {
                        return Err(Errno(libc::EISDIR));
                    }
                    let _creds = Credentials::switch(ctx);
                    self.reopen(&node, guest_flags & !(libc::O_EXCL | libc::O_DIRECTORY))
                });
                match opened {
                    Ok(file) => (entry, file),
                    Err(e) => {
                        // The guest learns no node from a failed CREATE.
                        self.inodes.forget(entry.inode, 1);
                        return Err(e);
                    }
                }
            }
            Err(e) => return Err(e),
        };
        let handle = self.handles.insert(file);
        Ok((entry, handle, self.open_options()))
    }

    fn fallocate(
        &self,
        _ctx: Context,
        _inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> Result<()> {
        self.writable()?;
        let open = self.handles.get(handle)?;
        let offset = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let length = i64::try_from(length).map_err(|_| Errno::EINVAL)?;
        sys::fallocate(open.file.as_raw_fd(), mode as i32, offset, length)
    }

    fn lseek(
        &self,
        _ctx: Context,
        _inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> Result<u64> {
        let open = self.handles.get(handle)?;
        let offset = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let whence = i32::try_from(whence).map_err(|_| Errno::EINVAL)?;
        let at = sys::lseek(open.file.as_raw_fd(), offset, whence)?;
        u64::try_from(at).map_err(|_| Errno::EINVAL)
    }

    fn copy_file_range(&self, _ctx: Context, range: CopyRange) -> Result<usize> {
        self.writable()?;
        let (input, output) = (
            self.handles.get(range.handle_in)?,
            self.handles.get(range.handle_out)?,
        );
        let mut off_in = i64::try_from(range.offset_in).map_err(|_| Errno::EINVAL)?;
        let mut off_out = i64::try_from(range.offset_out).map_err(|_| Errno::EINVAL)?;
        // At most MAX_COPY per request: the guest's copy_file_range goes on from
        // where a short copy stopped, and the queue thread never copies gigabytes
        // in one request.
        let len = usize::try_from(range.len)
            .map_err(|_| Errno::EINVAL)?
            .min(MAX_COPY);
        sys::copy_file_range(
            input.file.as_raw_fd(),
            &mut off_in,
            output.file.as_raw_fd(),
            &mut off_out,
            len,
            u32::try_from(range.flags).map_err(|_| Errno::EINVAL)?,
        )
    }

    fn syncfs(&self, _ctx: Context, inode: Inode) -> Result<()> {
        let file = self.reopen(&self.node(inode)?, libc::O_RDONLY)?;
        sys::syncfs(file.as_raw_fd())
    }
}
