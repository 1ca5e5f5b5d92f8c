//! The passthrough file system: FUSE operations carried out on the shared folder.
//!
//! # Security model
//!
//! Every inode the guest knows is an `O_PATH` file descriptor held in a map keyed
//! by node id (the root, node 1, is the shared folder), or with
//! `--inode-file-handles` a file handle opened into such a descriptor for the
//! length of one request. Every operation is relative
//! to those descriptors with a single, checked name component (no '/', not "." or
//! ".."), never a path string; lookups and creates go through `openat2` with
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
//! ([`crate::xattr`]). A legitimate guest never asks to open one: its kernel
//! serves device nodes and FIFOs of a FUSE mount itself. Handles (and with them
//! READ, WRITE, FALLOCATE, LSEEK, COPY_FILE_RANGE, FSYNC, READDIR) only ever come
//! from such an open.
//!
//! Node ids and file handles come from the guest: an unknown one is answered with
//! ENOENT or EBADF (and one rate-limited log line), never a panic.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vhostkit_common::{guest_error, guest_info};
use zerocopy::IntoBytes;

use crate::config::CachePolicy;
use crate::fuse::{self, *};
use crate::xattr;

/// Moves file data straight between a file and the request's guest buffers.
pub trait FileData {
    /// Reads up to `len` bytes of `file` at `offset` into the reply's buffers,
    /// right after the out header; returns the bytes read (short at end of file).
    fn read_from(&mut self, file: &File, offset: i64, len: usize) -> std::io::Result<usize>;
    /// Writes the request's data (`len` bytes after the WRITE headers) to `file`
    /// at `offset`; returns the bytes written.
    fn write_to(&mut self, file: &File, offset: i64, len: usize) -> std::io::Result<usize>;
}

/// Node id of the shared folder.
pub const ROOT_ID: u64 = 1;

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

type FsResult<T> = Result<T, Errno>;

/// How the table keeps an inode the guest has looked up.
enum InodeRef {
    /// An `O_PATH | O_NOFOLLOW` descriptor, held open.
    Fd(Arc<OwnedFd>),
    /// A file handle (`name_to_handle_at`), opened again (`open_by_handle_at`)
    /// only while a request works on the inode: no descriptor held meanwhile.
    Handle(FileHandle),
}

/// One inode the guest has looked up.
struct Inode {
    reference: InodeRef,
    /// `st_mode & S_IFMT`.
    file_type: u32,
    dev: u64,
}

/// An inode as one request works on it: a descriptor for it (`O_PATH`), either
/// the table's or opened from its file handle for this request.
struct Node {
    fd: NodeFd,
    file_type: u32,
    dev: u64,
}

enum NodeFd {
    /// The table's descriptor.
    Kept(Arc<OwnedFd>),
    /// Opened from the file handle for this request.
    Opened(OwnedFd),
}

impl AsRawFd for NodeFd {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            NodeFd::Kept(fd) => fd.as_raw_fd(),
            NodeFd::Opened(fd) => fd.as_raw_fd(),
        }
    }
}

/// `struct file_handle` with room for the largest handle (MAX_HANDLE_SZ).
#[derive(Clone)]
struct FileHandle {
    /// handle_bytes (u32), handle_type (i32), then the handle itself.
    raw: Vec<u8>,
}

const MAX_HANDLE_SZ: usize = 128;

impl FileHandle {
    /// The handle of `fd` itself and its mount id.
    fn of(fd: RawFd) -> FsResult<(FileHandle, i32)> {
        let mut raw = vec![0u8; 8 + MAX_HANDLE_SZ];
        raw[..4].copy_from_slice(&(MAX_HANDLE_SZ as u32).to_ne_bytes());
        let mut mount_id: libc::c_int = 0;
        // SAFETY: `raw` is a struct file_handle with handle_bytes set to the room
        // after its 8-byte header; the empty path with AT_EMPTY_PATH names `fd`.
        cvt_long(unsafe {
            libc::syscall(
                libc::SYS_name_to_handle_at,
                fd,
                c"".as_ptr(),
                raw.as_mut_ptr(),
                &mut mount_id as *mut libc::c_int,
                libc::AT_EMPTY_PATH,
            )
        })?;
        let len = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        raw.truncate(8 + len.min(MAX_HANDLE_SZ));
        Ok((FileHandle { raw }, mount_id))
    }

    /// An `O_PATH` descriptor of the inode, through `mount_fd` (any descriptor
    /// on the same mount, not `O_PATH`).
    fn open(&self, mount_fd: RawFd) -> FsResult<OwnedFd> {
        // SAFETY: `raw` is the struct file_handle name_to_handle_at filled;
        // open_by_handle_at only reads it and returns a new descriptor.
        let fd = cvt_long(unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                mount_fd,
                self.raw.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: the kernel just returned this descriptor; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

/// Opens the shared folder at `path` as the `O_PATH | O_DIRECTORY` descriptor every
/// session starts from ([`PassthroughFs::with_root`]).
pub fn open_shared_dir(path: &Path) -> std::io::Result<OwnedFd> {
    let dir = cstring(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("shared folder path contains NUL"))?;
    openat2(libc::AT_FDCWD, &dir, libc::O_PATH | libc::O_DIRECTORY, 0, 0)
        .map_err(|e| std::io::Error::from_raw_os_error(e.0))
}

/// Whether the folder at `path` gives file handles (`--inode-file-handles`).
pub fn file_handles_supported(path: &Path) -> std::io::Result<()> {
    let dir = cstring(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("path contains NUL"))?;
    let fd = openat2(libc::AT_FDCWD, &dir, libc::O_PATH | libc::O_DIRECTORY, 0, 0)
        .map_err(|e| std::io::Error::from_raw_os_error(e.0))?;
    FileHandle::of(fd.as_raw_fd())
        .map(drop)
        .map_err(|e| std::io::Error::from_raw_os_error(e.0))
}

/// What identifies an inode on the host: device and inode number, and with file
/// handles the handle too. A held `O_PATH` descriptor pins its inode, so its number
/// cannot be reused while the guest knows the node; a file handle pins nothing, and
/// a file created after an unlink may get the number back (ext4 reuses them at
/// once): matching on the number alone would hand the new file the old node.
#[derive(Clone, PartialEq, Eq, Hash)]
struct InodeKey {
    dev: u64,
    ino: u64,
    handle: Option<Vec<u8>>,
}

struct InodeEntry {
    inode: Arc<Inode>,
    key: InodeKey,
    /// Lookups the guest has not forgotten yet.
    lookups: u64,
}

#[derive(Default)]
struct Inodes {
    by_id: HashMap<u64, InodeEntry>,
    by_key: HashMap<InodeKey, u64>,
    next_id: u64,
}

/// An open file or folder.
struct Handle {
    file: File,
    /// Serialises seek + getdents of a folder handle.
    dir_position: Mutex<()>,
}

/// A passthrough file system for one frontend connection.
pub struct PassthroughFs {
    options: FsOptions,
    /// `/proc/self/fd`, for re-opening `O_PATH` descriptors.
    proc_self_fd: OwnedFd,
    /// With file handles: the shared folder opened for reading (the mount
    /// descriptor of open_by_handle_at) and its mount id.
    mount: Option<(OwnedFd, i32)>,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_handle: AtomicU64,
    initialized: AtomicBool,
    /// Whether the kernel has the `*xattrat` calls (cleared at the first ENOSYS).
    xattrat: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a bug panicked mid-update; the maps stay usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn cvt(rc: libc::c_int) -> FsResult<libc::c_int> {
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc)
    }
}

fn cvt_long(rc: libc::c_long) -> FsResult<libc::c_long> {
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc)
    }
}

fn cvt_size(rc: isize) -> FsResult<usize> {
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc as usize)
    }
}

fn cstring(bytes: &[u8]) -> FsResult<CString> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

const EMPTY: &CStr = c"";

/// The most bytes one COPY_FILE_RANGE copies.
const MAX_COPY: usize = 64 << 20;

/// The bit of `O_TMPFILE` that is not `O_DIRECTORY` (`__O_TMPFILE`).
const O_TMPFILE_ONLY: i32 = libc::O_TMPFILE & !libc::O_DIRECTORY;

/// `struct open_how` of openat2 (libc's is non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(dirfd, name, flags, mode, resolve)`.
fn openat2(dirfd: RawFd, name: &CStr, flags: i32, mode: u32, resolve: u64) -> FsResult<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
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
    let fd = cvt_long(fd)? as RawFd;
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// fstat of a descriptor (an `O_PATH` one too).
fn stat_fd(fd: RawFd) -> FsResult<libc::stat64> {
    // SAFETY: stat64 is plain data; fstatat64 fills it.
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

fn attr_from_stat(st: &libc::stat64) -> Attr {
    Attr {
        ino: st.st_ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: st.st_atime as u64,
        mtime: st.st_mtime as u64,
        ctime: st.st_ctime as u64,
        atimensec: st.st_atime_nsec as u32,
        mtimensec: st.st_mtime_nsec as u32,
        ctimensec: st.st_ctime_nsec as u32,
        mode: st.st_mode,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
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
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the rlimit we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let Ok(top) = libc::c_int::try_from(limit.rlim_cur.min(FD_TABLE_RESERVE).saturating_sub(1))
    else {
        return;
    };
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own onto the lowest free
    // number >= top (never an open one); the copy is closed at once.
    unsafe {
        let fd = libc::fcntl(any_fd, libc::F_DUPFD_CLOEXEC, top);
        if fd >= 0 {
            libc::close(fd);
        }
    }
}

fn is_write_open(flags: u32) -> bool {
    let flags = flags as i32;
    (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// Switches this thread's file-system uid and gid to the requester's while
/// creating files (so new files belong to the guest user), back on drop.
struct Credentials {
    switched: bool,
}

impl Credentials {
    fn switch(header: &InHeader) -> Credentials {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Credentials { switched: false };
        }
        // A root requester: our fs credentials are root's already (four system
        // calls saved per CREATE, MKDIR... from a root guest).
        if header.uid == 0 && header.gid == 0 {
            return Credentials { switched: false };
        }
        // SAFETY: setfsgid/setfsuid change only this thread's fs credentials.
        unsafe {
            libc::setfsgid(header.gid);
            libc::setfsuid(header.uid);
        }
        Credentials { switched: true }
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        if self.switched {
            // SAFETY: back to root's fs credentials for this thread.
            unsafe {
                libc::setfsuid(0);
                libc::setfsgid(0);
            }
        }
    }
}

impl PassthroughFs {
    /// A file system rooted at `shared_dir`.
    pub fn new(shared_dir: &Path, options: FsOptions) -> std::io::Result<Self> {
        let proc_self_fd = openat2(
            libc::AT_FDCWD,
            c"/proc/self/fd",
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            0,
        )
        .map_err(|e| std::io::Error::from_raw_os_error(e.0))?;
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
        let io_err = |e: Errno| std::io::Error::from_raw_os_error(e.0);
        let st = stat_fd(root.as_raw_fd()).map_err(io_err)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let mount = if options.file_handles {
            let (_, mount_id) = FileHandle::of(root.as_raw_fd()).map_err(io_err)?;
            // open_by_handle_at wants a descriptor that is not O_PATH.
            let name = cstring(root.as_raw_fd().to_string().as_bytes()).map_err(io_err)?;
            let mount_fd = openat2(
                proc_self_fd.as_raw_fd(),
                &name,
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
                0,
            )
            .map_err(io_err)?;
            Some((mount_fd, mount_id))
        } else {
            None
        };
        let fs = PassthroughFs {
            options,
            proc_self_fd,
            mount,
            inodes: Mutex::new(Inodes::default()),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            initialized: AtomicBool::new(false),
            xattrat: AtomicBool::new(true),
        };
        fs.reset_inodes(root, &st);
        Ok(fs)
    }

    fn reset_inodes(&self, root: OwnedFd, st: &libc::stat64) {
        let mut inodes = lock(&self.inodes);
        let key = InodeKey {
            dev: st.st_dev,
            ino: st.st_ino,
            handle: None,
        };
        inodes.by_id.clear();
        inodes.by_key.clear();
        inodes.by_id.insert(
            ROOT_ID,
            InodeEntry {
                inode: Arc::new(Inode {
                    reference: InodeRef::Fd(Arc::new(root)),
                    file_type: st.st_mode & libc::S_IFMT,
                    dev: st.st_dev,
                }),
                key: key.clone(),
                lookups: 2,
            },
        );
        inodes.by_key.insert(key, ROOT_ID);
        inodes.next_id = ROOT_ID + 1;
    }

    /// Nodes the guest currently holds (the root included), for tests and logs.
    pub fn node_count(&self) -> usize {
        lock(&self.inodes).by_id.len()
    }

    /// Open file handles, for tests and logs.
    pub fn handle_count(&self) -> usize {
        lock(&self.handles).len()
    }

    /// The inode `nodeid` with a descriptor to work on.
    fn inode(&self, nodeid: u64) -> FsResult<Node> {
        let inode = match lock(&self.inodes).by_id.get(&nodeid) {
            Some(entry) => entry.inode.clone(),
            None => {
                guest_error!("unknown node id {nodeid}");
                return Err(Errno::ENOENT);
            }
        };
        let (file_type, dev) = (inode.file_type, inode.dev);
        let fd = match (&inode.reference, &self.mount) {
            (InodeRef::Handle(handle), Some((mount_fd, _))) => {
                NodeFd::Opened(handle.open(mount_fd.as_raw_fd())?)
            }
            (InodeRef::Handle(_), None) => return Err(Errno(libc::EIO)),
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

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        match lock(&self.handles).get(&fh) {
            Some(h) => Ok(h.clone()),
            None => {
                guest_error!("unknown file handle {fh}");
                Err(Errno::EBADF)
            }
        }
    }

    fn writable(&self) -> FsResult<()> {
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

    fn open_flags_out(&self) -> u32 {
        match self.options.cache {
            CachePolicy::Never => FOPEN_DIRECT_IO,
            CachePolicy::Auto => 0,
            CachePolicy::Always => FOPEN_KEEP_CACHE,
        }
    }

    /// Re-opens an inode for I/O with `flags` through /proc/self/fd: the one place
    /// a node becomes an open file. Only regular files and folders, checked on the
    /// inode about to be opened (not on what the table remembers): a symlink is
    /// refused with ELOOP, a device node, FIFO or socket with ENXIO (what opening
    /// a device node without a device gives), so nothing the guest names ever
    /// opens a host device or blocks on a FIFO.
    fn reopen(&self, inode: &Node, flags: i32) -> FsResult<File> {
        let st = stat_fd(inode.fd.as_raw_fd())?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFDIR => {}
            libc::S_IFLNK => return Err(Errno(libc::ELOOP)),
            _ => return Err(Errno(libc::ENXIO)),
        }
        let name = cstring(inode.fd.as_raw_fd().to_string().as_bytes())?;
        // No creating, no O_TMPFILE (an unnamed file in a folder), no O_PATH.
        let flags = (flags
            & !(libc::O_NOFOLLOW
                | libc::O_CREAT
                | libc::O_EXCL
                | libc::O_NOCTTY
                | O_TMPFILE_ONLY
                | libc::O_PATH))
            | libc::O_CLOEXEC;
        // SAFETY: valid dirfd and NUL-terminated name; returns a new descriptor.
        let fd = cvt(unsafe { libc::openat(self.proc_self_fd.as_raw_fd(), name.as_ptr(), flags) })?;
        // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    fn new_handle(&self, file: File) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(
            fh,
            Arc::new(Handle {
                file,
                dir_position: Mutex::new(()),
            }),
        );
        fh
    }

    /// Looks `name` up in `parent` and counts one lookup of the result.
    fn do_lookup(&self, parent: u64, name: &[u8]) -> FsResult<EntryOut> {
        let parent_inode = self.inode(parent)?;
        let cname = cstring(name)?;
        let fd = openat2(
            parent_inode.fd.as_raw_fd(),
            &cname,
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
        )?;
        let st = stat_fd(fd.as_raw_fd())?;
        let handle = self.file_handle_of(&fd);
        let key = InodeKey {
            dev: st.st_dev,
            ino: st.st_ino,
            handle: handle.as_ref().map(|h| h.raw.clone()),
        };
        let nodeid = {
            let mut inodes = lock(&self.inodes);
            match inodes.by_key.get(&key).copied() {
                Some(id) => {
                    if let Some(entry) = inodes.by_id.get_mut(&id) {
                        entry.lookups += 1;
                    }
                    id
                }
                None => {
                    let reference = match handle {
                        Some(handle) => InodeRef::Handle(handle),
                        None => InodeRef::Fd(Arc::new(fd)),
                    };
                    let id = inodes.next_id;
                    inodes.next_id += 1;
                    inodes.by_id.insert(
                        id,
                        InodeEntry {
                            inode: Arc::new(Inode {
                                reference,
                                file_type: st.st_mode & libc::S_IFMT,
                                dev: st.st_dev,
                            }),
                            key: key.clone(),
                            lookups: 1,
                        },
                    );
                    inodes.by_key.insert(key, id);
                    id
                }
            }
        };
        let mut attr = attr_from_stat(&st);
        if self.options.announce_submounts && st.st_dev != parent_inode.dev {
            attr.flags |= ATTR_SUBMOUNT;
        }
        let timeout = self.timeout();
        Ok(EntryOut {
            nodeid,
            generation: 0,
            entry_valid: timeout.as_secs(),
            attr_valid: timeout.as_secs(),
            entry_valid_nsec: 0,
            attr_valid_nsec: 0,
            attr,
        })
    }

    fn forget_one(&self, nodeid: u64, nlookup: u64) {
        if nodeid == ROOT_ID {
            return;
        }
        let mut inodes = lock(&self.inodes);
        let Some(entry) = inodes.by_id.get_mut(&nodeid) else {
            guest_error!("FORGET of unknown node id {nodeid}");
            return;
        };
        entry.lookups = entry.lookups.saturating_sub(nlookup);
        if entry.lookups == 0 {
            if let Some(entry) = inodes.by_id.remove(&nodeid) {
                if inodes.by_key.get(&entry.key) == Some(&nodeid) {
                    inodes.by_key.remove(&entry.key);
                }
            }
        }
    }

    fn attr_out(&self, st: &libc::stat64) -> AttrOut {
        AttrOut {
            attr_valid: self.timeout().as_secs(),
            attr_valid_nsec: 0,
            dummy: 0,
            attr: attr_from_stat(st),
        }
    }

    /// Answers one request. `reply_room` is the writable space the reply may use
    /// (out header included).
    pub fn handle_request(
        &self,
        request: &Request,
        reply_room: usize,
        data: &mut dyn FileData,
    ) -> Reply {
        let header = &request.header;
        let body = &request.body[..];
        let Some(opcode) = Opcode::from_u32(header.opcode) else {
            guest_error!("unknown FUSE opcode {}", header.opcode);
            return Reply::Err(Errno::ENOSYS);
        };
        if opcode != Opcode::Init && !self.initialized.load(Ordering::Acquire) {
            guest_error!("FUSE {opcode:?} before INIT");
            return Reply::Err(Errno::EIO);
        }
        let mut body = Body::new(body);
        let nodeid = header.nodeid;
        let room = reply_room.saturating_sub(OUT_HEADER_LEN);
        let result: FsResult<Vec<u8>> = match opcode {
            Opcode::Init => self.init(&mut body),
            Opcode::Destroy => self.destroy(),
            Opcode::Lookup => body
                .take_name()
                .and_then(|name| self.do_lookup(nodeid, name))
                .map(|e| e.as_bytes().to_vec()),
            Opcode::Forget => {
                if let Ok(forget) = body.take::<ForgetIn>() {
                    self.forget_one(nodeid, forget.nlookup);
                }
                return Reply::None;
            }
            Opcode::BatchForget => {
                self.batch_forget(&mut body);
                return Reply::None;
            }
            Opcode::Getattr => self.getattr(nodeid, &mut body),
            Opcode::Setattr => self.setattr(nodeid, &mut body),
            Opcode::Readlink => self.readlink(nodeid),
            Opcode::Symlink => self.symlink(header, &mut body),
            Opcode::Mknod => self.mknod(header, &mut body),
            Opcode::Mkdir => self.mkdir(header, &mut body),
            Opcode::Unlink => self.unlink(nodeid, &mut body, 0),
            Opcode::Rmdir => self.unlink(nodeid, &mut body, libc::AT_REMOVEDIR),
            Opcode::Rename => body
                .take::<RenameIn>()
                .and_then(|r| self.rename(nodeid, r.newdir, 0, &mut body)),
            Opcode::Rename2 => body
                .take::<Rename2In>()
                .and_then(|r| self.rename(nodeid, r.newdir, r.flags, &mut body)),
            Opcode::Link => self.link(nodeid, &mut body),
            Opcode::Open => self.open(nodeid, &mut body, false),
            Opcode::Opendir => self.open(nodeid, &mut body, true),
            Opcode::Read => {
                return self
                    .read(&mut body, room, data)
                    .map_or_else(Reply::Err, Reply::InPlace)
            }
            Opcode::Write => self.write(&mut body, request.data_len, data),
            Opcode::Statfs => self.statfs(nodeid),
            Opcode::Release | Opcode::Releasedir => self.release(&mut body),
            Opcode::Fsync | Opcode::Fsyncdir => self.fsync(&mut body),
            Opcode::Flush => body
                .take::<FlushIn>()
                .and_then(|f| self.handle(f.fh))
                .map(|_| Vec::new()),
            Opcode::Setxattr => self.setxattr(nodeid, &mut body),
            Opcode::Getxattr => self.getxattr(nodeid, &mut body, false),
            Opcode::Listxattr => self.getxattr(nodeid, &mut body, true),
            Opcode::Removexattr => self.removexattr(nodeid, &mut body),
            Opcode::Readdir => self.readdir(nodeid, &mut body, room, false),
            Opcode::Readdirplus => self.readdir(nodeid, &mut body, room, true),
            Opcode::Access => self.access(nodeid, &mut body),
            Opcode::Create => self.create(header, &mut body),
            Opcode::Fallocate => self.fallocate(&mut body),
            Opcode::Lseek => self.lseek(&mut body),
            Opcode::CopyFileRange => self.copy_file_range(&mut body),
            Opcode::Syncfs => self.syncfs(nodeid),
            other => {
                guest_error!("FUSE {other:?} is not implemented");
                Err(Errno::ENOSYS)
            }
        };
        result.into()
    }

    fn init(&self, body: &mut Body<'_>) -> FsResult<Vec<u8>> {
        let init = body.take::<InitIn>()?;
        if init.major != KERNEL_VERSION {
            guest_error!("FUSE INIT: unsupported major version {}", init.major);
            return Err(Errno::EPROTO);
        }
        if init.minor < MIN_KERNEL_MINOR_VERSION {
            guest_error!("FUSE INIT: minor version {} too old", init.minor);
            return Err(Errno::EPROTO);
        }
        let mut wanted = init_flags::ASYNC_READ
            | init_flags::ATOMIC_O_TRUNC
            | init_flags::BIG_WRITES
            | init_flags::DO_READDIRPLUS
            | init_flags::READDIRPLUS_AUTO
            | init_flags::ASYNC_DIO
            | init_flags::PARALLEL_DIROPS
            | init_flags::MAX_PAGES;
        if self.options.announce_submounts {
            wanted |= init_flags::SUBMOUNTS;
        }
        let flags = init.flags & wanted;
        self.initialized.store(true, Ordering::Release);
        guest_info!(
            "FUSE session initialised: guest {}.{}, flags {flags:#x}",
            init.major,
            init.minor
        );
        let out = InitOut {
            major: KERNEL_VERSION,
            minor: KERNEL_MINOR_VERSION.min(init.minor),
            max_readahead: init.max_readahead,
            flags,
            max_background: 64,
            congestion_threshold: 48,
            max_write: MAX_WRITE,
            time_gran: 1,
            max_pages: MAX_PAGES,
            ..Default::default()
        };
        Ok(out.as_bytes().to_vec())
    }

    fn destroy(&self) -> FsResult<Vec<u8>> {
        lock(&self.handles).clear();
        let root = {
            let inodes = lock(&self.inodes);
            let root = inodes
                .by_id
                .get(&ROOT_ID)
                .and_then(|e| match &e.inode.reference {
                    InodeRef::Fd(fd) => Some(fd.try_clone()),
                    InodeRef::Handle(_) => None,
                });
            drop(inodes);
            root
        };
        if let Some(Ok(root)) = root {
            if let Ok(st) = stat_fd(root.as_raw_fd()) {
                self.reset_inodes(root, &st);
            }
        }
        self.initialized.store(false, Ordering::Release);
        Ok(Vec::new())
    }

    fn batch_forget(&self, body: &mut Body<'_>) {
        let Ok(batch) = body.take::<BatchForgetIn>() else {
            guest_error!("BATCH_FORGET too short");
            return;
        };
        for _ in 0..batch.count {
            let Ok(one) = body.take::<ForgetOne>() else {
                guest_error!("BATCH_FORGET: count {} exceeds the request", batch.count);
                return;
            };
            self.forget_one(one.nodeid, one.nlookup);
        }
    }

    fn getattr(&self, nodeid: u64, body: &mut Body<'_>) -> FsResult<Vec<u8>> {
        let getattr = body.take::<GetattrIn>()?;
        let st = if getattr.getattr_flags & GETATTR_FH != 0 {
            stat_fd(self.handle(getattr.fh)?.file.as_raw_fd())?
        } else {
            stat_fd(self.inode(nodeid)?.fd.as_raw_fd())?
        };
        Ok(self.attr_out(&st).as_bytes().to_vec())
    }

    fn setattr(&self, nodeid: u64, body: &mut Body<'_>) -> FsResult<Vec<u8>> {
        let set = body.take::<SetattrIn>()?;
        self.writable()?;
        let inode = self.inode(nodeid)?;
        let handle = if set.valid & fattr::FH != 0 {
            Some(self.handle(set.fh)?)
        } else {
            None
        };
        let fd = inode.fd.as_raw_fd();
        if set.valid & fattr::MODE != 0 {
            // SAFETY: fchmodat2 with AT_EMPTY_PATH changes the mode of `fd` itself
            // (an O_PATH descriptor); the empty path is NUL-terminated.
            cvt_long(unsafe {
                libc::syscall(
                    libc::SYS_fchmodat2,
                    fd,
                    EMPTY.as_ptr(),
                    set.mode & 0o7777,
                    libc::AT_EMPTY_PATH,
                )
            })?;
        }
        if set.valid & (fattr::UID | fattr::GID) != 0 {
            let uid = if set.valid & fattr::UID != 0 {
                set.uid
            } else {
                u32::MAX
            };
            let gid = if set.valid & fattr::GID != 0 {
                set.gid
            } else {
                u32::MAX
            };
            // SAFETY: AT_EMPTY_PATH makes fchownat act on `fd` itself.
            cvt(unsafe {
                libc::fchownat(
                    fd,
                    EMPTY.as_ptr(),
                    uid,
                    gid,
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        if set.valid & fattr::SIZE != 0 {
            let size = i64::try_from(set.size).map_err(|_| Errno::EINVAL)?;
            let reopened;
            let file = match &handle {
                Some(h) => &h.file,
                None => {
                    // truncate(2) of anything but a regular file is EINVAL.
                    reopened = self.reopen(&inode, libc::O_WRONLY).map_err(|e| match e.0 {
                        libc::ENXIO | libc::ELOOP => Errno::EINVAL,
                        _ => e,
                    })?;
                    &reopened
                }
            };
            // SAFETY: ftruncate on a descriptor we own.
            cvt(unsafe { libc::ftruncate(file.as_raw_fd(), size) })?;
        }
        if set.valid & (fattr::ATIME | fattr::MTIME) != 0 {
            let time = |set_it: u32, now: u32, sec: u64, nsec: u32| libc::timespec {
                tv_sec: if set.valid & set_it != 0 {
                    sec as i64
                } else {
                    0
                },
                tv_nsec: if set.valid & set_it == 0 {
                    libc::UTIME_OMIT
                } else if set.valid & now != 0 {
                    libc::UTIME_NOW
                } else {
                    i64::from(nsec)
                },
            };
            let times = [
                time(fattr::ATIME, fattr::ATIME_NOW, set.atime, set.atimensec),
                time(fattr::MTIME, fattr::MTIME_NOW, set.mtime, set.mtimensec),
            ];
            // SAFETY: two valid timespecs; AT_EMPTY_PATH makes it act on `fd`.
            cvt(unsafe {
                libc::utimensat(
                    fd,
                    EMPTY.as_ptr(),
                    times.as_ptr(),
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        let st = stat_fd(fd)?;
        Ok(self.attr_out(&st).as_bytes().to_vec())
    }

    fn readlink(&self, nodeid: u64) -> FsResult<Vec<u8>> {
        let inode = self.inode(nodeid)?;
        let mut buf = vec![0u8; PATH_MAX];
        // SAFETY: the buffer is valid for its length; AT_EMPTY_PATH-style empty
        // name reads the link `fd` itself.
        let n = cvt_size(unsafe {
            libc::readlinkat(
                inode.fd.as_raw_fd(),
                EMPTY.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })?;
        buf.truncate(n);
        Ok(buf)
    }

    fn entry(&self, parent: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        self.do_lookup(parent, name).map(|e| e.as_bytes().to_vec())
    }

    fn symlink(&self, header: &InHeader, body: &mut Body<'_>) -> FsResult<Vec<u8>> {
        let name = body.take_name()?;
        let target = body.take_cstr()?;
        self.writable()?;
        if target.is_empty() || target.len() >= PATH_MAX {
            return Err(Errno::EINVAL);
        }
        let parent = self.inode(header.nodeid)?;
        let (cname, ctarget) = (cstring(name)?, cstring(target)?);
        {
            let _creds = Credentials::switch(header);
            // SAFETY: both strings are NUL-terminated; the link is made in `parent`.
            cvt(unsafe {
                libc::symlinkat(ctarget.as_ptr(), parent.fd.as_raw_fd(), cname.as_ptr())
            })?;
        }
        self.entry(header.nodeid, name)
    }

    fn mknod(&self, header: &InHeader, body: &mut Body<'_>) -> FsResult<Vec<u8>> {
        let mknod = body.take::<MknodIn>()?;
        let name = body.take_name()?;
        self.writable()?;
        let parent = self.inode(header.nodeid)?;
        let cname = cstring(name)?;
        {
            let _creds = Credentials::switch(header);
            // SAFETY: NUL-terminated name relative to the parent's descriptor.
            cvt(unsafe {
                libc::mknodat(
                    parent.fd.as_raw_fd(),
                    cname.as_ptr(),
                    mknod.mode,
                    u64::from(mknod.rdev),
                )
            })?;
        }
        self.entry(header.nodeid, name)
    }

    fn mkdir(&self, header: &InHeader, body: &mut Body<'_>) -> FsResult<Vec<u8>> {
        let mkdir = body.take::<MkdirIn>()?;
        let name = body.take_name()?;
        self.writable()?;
        let parent = self.inode(header.nodeid)?;
        let cname = cstring(name)?;
        {
            let _creds = Credentials::switch(header);
            // SAFETY: NUL-terminated name relative to the parent's descriptor.
            cvt(unsafe { libc::mkdirat(parent.fd.as_raw_fd(), cname.as_ptr(), mkdir.mode) })?;
        }
        self.entry(header.nodeid, name)
    }

    fn unlink(&self, parent: u64, body: &mut Body<'_>, flags: i32) -> FsResult<Vec<u8>> {
        let name = body.take_name()?;
        self.writable()?;
        let parent = self.inode(parent)?;
        let cname = cstring(name)?;
        // SAFETY: NUL-terminated name relative to the parent's descriptor.
        cvt(unsafe { libc::unlinkat(parent.fd.as_raw_fd(), cname.as_ptr(), flags) })?;
        Ok(Vec::new())
    }

    fn rename(
        &self,
        olddir: u64,
        newdir: u64,
        flags: u32,
        body: &mut Body<'_>,
    ) -> FsResult<Vec<u8>> {
        let oldname = body.take_name()?;
        let newname = body.take_name()?;
        self.writable()?;
        let (olddir, newdir) = (self.inode(olddir)?, self.inode(newdir)?);
        let (oldname, newname) = (cstring(oldname)?, cstring(newname)?);
        // With the daemon's credentials, as virtiofsd: the guest kernel has checked the
        // requester's permissions (virtiofs mounts with default_permissions), and
        // switching to the requester's fsuid here would lose its supplementary groups.
        // SAFETY: NUL-terminated names relative to the two folders' descriptors.
        cvt(unsafe {
            libc::renameat2(
                olddir.fd.as_raw_fd(),
                oldname.as_ptr(),
                newdir.fd.as_raw_fd(),
                newname.as_ptr(),
                flags,
            )
        })?;
        Ok(Vec::new())
    }

    fn link(&self, newparent: u64, body: &mut Body<'_>) -> FsResult<Vec<u8>> {
        let link = body.take::<LinkIn>()?;
        let name = body.take_name()?;
        self.writable()?;
        let old = self.inode(link.oldnodeid)?;
        let parent = self.inode(newparent)?;
        let cname = cstring(name)?;
        // SAFETY: AT_EMPTY_PATH links the inode of `old.fd` itself under the
        // NUL-terminated name in the parent.
        cvt(unsafe {
            libc::linkat(
                old.fd.as_raw_fd(),
                EMPTY.as_ptr(),
                parent.fd.as_raw_fd(),
                cname.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        })?;
        self.entry(newparent, name)
    }

    fn open(&self, nodeid: u64, body: &mut Body<'_>, dir: bool) -> FsResult<Vec<u8>> {
        let open = body.take::<OpenIn>()?;
        if is_write_open(open.flags) {
            self.writable()?;
        }
        let inode = self.inode(nodeid)?;
        let flags = if dir {
            libc::O_RDONLY | libc::O_DIRECTORY
        } else {
            if inode.file_type == libc::S_IFDIR && is_write_open(open.flags) {
                return Err(Errno(libc::EISDIR));
            }
            self.host_open_flags(open.flags)
        };
        let file = self.reopen(&inode, flags)?;
        let fh = self.new_handle(file);
        let out = OpenOut {
            fh,
            open_flags: if dir { 0 } else { self.open_flags_out() },
            padding: 0,
        };
        Ok(out.as_bytes().to_vec())
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

    fn read(&self, body: &mut Body<'_>, room: usize, data: &mut dyn FileData) -> FsResult<usize> {
        let read = body.take::<ReadIn>()?;
        let handle = self.handle(read.fh)?;
        let offset = i64::try_from(read.offset).map_err(|_| Errno::EINVAL)?;
        let len = (read.size as usize).min(MAX_WRITE as usize).min(room);
        Ok(data.read_from(&handle.file, offset, len)?)
    }

    fn write(
        &self,
        body: &mut Body<'_>,
        data_len: usize,
        data: &mut dyn FileData,
    ) -> FsResult<Vec<u8>> {
        let write = body.take::<WriteIn>()?;
        if data_len != write.size as usize {
            guest_error!("WRITE: size {} but {data_len} data bytes", write.size);
            return Err(Errno::EINVAL);
        }
        self.writable()?;
        let handle = self.handle(write.fh)?;
        let offset = i64::try_from(write.offset).map_err(|_| Errno::EINVAL)?;
        let done = data.write_to(&handle.file, offset, data_len)?;
        Ok(WriteOut {
            size: done as u32,
            padding: 0,
        }
        .as_bytes()
        .to_vec())
    }

    fn statfs(&self, nodeid: u64) -> FsResult<Vec<u8>> {
        let inode = self.inode(nodeid)?;
        // SAFETY: statvfs64 is plain data that fstatvfs64 fills.
        let mut st: libc::statvfs64 = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor (O_PATH is allowed) and out buffer.
        cvt(unsafe { libc::fstatvfs64(inode.fd.as_raw_fd(), &mut st) })?;
        let out = StatfsOut {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            namelen: st.f_namemax as u32,
            frsize: st.f_frsize as u32,
            ..Default::default()
        };
        Ok(out.as_bytes().to_vec())
    }

    fn release(&self, body: &mut Body<'_>) -> FsResult<Vec<u8>> {
        let release = body.take::<ReleaseIn>()?;
        match lock(&self.handles).remove(&release.fh) {
            Some(_) => Ok(Vec::new()),
            None => {
                guest_error!("RELEASE of unknown file handle {}", release.fh);
                Err(Errno::EBADF)
            }
        }
    }

    fn fsync(&self, body: &mut Body<'_>) -> FsResult<Vec<u8>> {
        let fsync = body.take::<FsyncIn>()?;
        let handle = self.handle(fsync.fh)?;
        let fd = handle.file.as_raw_fd();
        // SAFETY: syncing a descriptor we own.
        cvt(unsafe {
            if fsync.fsync_flags & 1 != 0 {
                libc::fdatasync(fd)
            } else {
                libc::fsync(fd)
            }
        })?;
        Ok(Vec::new())
    }

    fn xattr_enabled(&self) -> FsResult<()> {
        if self.options.xattr {
            Ok(())
        } else {
            Err(Errno::ENOSYS)
        }
    }

    /// Runs `op` on the extended attributes of node `nodeid` without opening it
    /// (see [`crate::xattr`]); on a kernel without the `*xattrat` calls, on a
    /// descriptor opened for reading, for regular files and folders only.
    fn with_xattr_target<T>(
        &self,
        nodeid: u64,
        mut op: impl FnMut(xattr::Target<'_>) -> FsResult<T>,
    ) -> FsResult<T> {
        let inode = self.inode(nodeid)?;
        if self.xattrat.load(Ordering::Relaxed) {
            let name = cstring(inode.fd.as_raw_fd().to_string().as_bytes())?;
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
        let file = self.reopen(&inode, libc::O_RDONLY).map_err(|e| match e.0 {
            libc::ENXIO | libc::ELOOP => Errno(libc::EOPNOTSUPP),
            _ => e,
        })?;
        op(xattr::Target::Open(file.as_raw_fd()))
    }

    /// For tests: behave as on a kernel without the `*xattrat` calls.
    #[doc(hidden)]
    pub fn without_xattrat(self) -> Self {
        self.xattrat.store(false, Ordering::Relaxed);
        self
    }

    fn setxattr(&self, nodeid: u64, body: &mut Body<'_>) -> FsResult<Vec<u8>> {
        self.xattr_enabled()?;
        let set = body.take::<SetxattrIn>()?;
        let name = cstring(body.take_cstr()?)?;
        let value = body.take_bytes(set.size as usize)?;
        self.writable()?;
        self.with_xattr_target(nodeid, |target| {
            xattr::set(target, &name, value, set.flags as i32)
        })?;
        Ok(Vec::new())
    }

    fn getxattr(&self, nodeid: u64, body: &mut Body<'_>, list: bool) -> FsResult<Vec<u8>> {
        self.xattr_enabled()?;
        let get = body.take::<GetxattrIn>()?;
        let name = if list {
            None
        } else {
            Some(cstring(body.take_cstr()?)?)
        };
        let size = (get.size as usize).min(1 << 16);
        let mut buf = vec![0u8; size];
        let n = self.with_xattr_target(nodeid, |target| match &name {
            Some(name) => xattr::get(target, name, &mut buf),
            None => xattr::list(target, &mut buf),
        })?;
        if get.size == 0 {
            return Ok(GetxattrOut {
                size: n as u32,
                padding: 0,
            }
            .as_bytes()
            .to_vec());
        }
        buf.truncate(n);
        Ok(buf)
    }

    fn removexattr(&self, nodeid: u64, body: &mut Body<'_>) -> FsResult<Vec<u8>> {
        self.xattr_enabled()?;
        let name = cstring(body.take_cstr()?)?;
        self.writable()?;
        self.with_xattr_target(nodeid, |target| xattr::remove(target, &name))?;
        Ok(Vec::new())
    }

    fn readdir(
        &self,
        nodeid: u64,
        body: &mut Body<'_>,
        room: usize,
        plus: bool,
    ) -> FsResult<Vec<u8>> {
        let read = body.take::<ReadIn>()?;
        let handle = self.handle(read.fh)?;
        let limit = (read.size as usize).min(room).min(MAX_WRITE as usize);
        let offset = i64::try_from(read.offset).map_err(|_| Errno::EINVAL)?;
        let _position = lock(&handle.dir_position);
        let fd = handle.file.as_raw_fd();
        // SAFETY: lseek on a folder descriptor we own.
        cvt_long(unsafe { libc::lseek64(fd, offset, libc::SEEK_SET) })?;
        let mut out = Vec::with_capacity(limit);
        // Read about as many entries as the reply holds: a FUSE dirent is at least as
        // long as the kernel's (READDIRPLUS entries about 5x for short names), and
        // what is read past the reply is read again by the next request. A short
        // read only costs another getdents below.
        let raw_len = if plus { limit / 4 } else { limit };
        let mut raw = vec![0u8; raw_len.clamp(1024, 32 * 1024)];
        'fill: loop {
            // SAFETY: getdents64 writes at most `raw.len()` bytes into `raw`.
            let n = cvt_long(unsafe {
                libc::syscall(libc::SYS_getdents64, fd, raw.as_mut_ptr(), raw.len())
            })? as usize;
            if n == 0 {
                break;
            }
            let mut pos = 0;
            while pos + 19 <= n {
                // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name.
                let entry = &raw[pos..n];
                let ino = u64::from_ne_bytes(entry[0..8].try_into().unwrap_or_default());
                let off = u64::from_ne_bytes(entry[8..16].try_into().unwrap_or_default());
                let reclen = u16::from_ne_bytes([entry[16], entry[17]]) as usize;
                let typ = entry[18];
                if reclen < 19 || reclen > entry.len() {
                    break;
                }
                let name_bytes = &entry[19..reclen];
                let name_len = name_bytes
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(name_bytes.len());
                let name = &name_bytes[..name_len];
                pos += reclen;
                let dirent = Dirent {
                    ino,
                    off,
                    namelen: name.len() as u32,
                    typ: u32::from(typ),
                };
                if plus {
                    let needed = std::mem::size_of::<EntryOut>()
                        + ((std::mem::size_of::<Dirent>() + name.len() + 7) & !7);
                    if out.len() + needed > limit {
                        break 'fill;
                    }
                    let entry_out = if name == b"." || name == b".." {
                        EntryOut::default()
                    } else {
                        match self.do_lookup(nodeid, name) {
                            Ok(e) => e,
                            // Gone since getdents: leave it out.
                            Err(_) => continue,
                        }
                    };
                    out.extend_from_slice(entry_out.as_bytes());
                    fuse::push_dirent(&mut out, limit, dirent, name);
                } else if !fuse::push_dirent(&mut out, limit, dirent, name) {
                    break 'fill;
                }
            }
        }
        Ok(out)
    }

    fn access(&self, nodeid: u64, body: &mut Body<'_>) -> FsResult<Vec<u8>> {
        let access = body.take::<AccessIn>()?;
        if access.mask & libc::W_OK as u32 != 0 {
            self.writable()?;
        }
        let inode = self.inode(nodeid)?;
        // SAFETY: faccessat2 with AT_EMPTY_PATH checks `fd` itself.
        cvt_long(unsafe {
            libc::syscall(
                libc::SYS_faccessat2,
                inode.fd.as_raw_fd(),
                EMPTY.as_ptr(),
                access.mask,
                libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(Vec::new())
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
    fn create(&self, header: &InHeader, body: &mut Body<'_>) -> FsResult<Vec<u8>> {
        let create = body.take::<CreateIn>()?;
        let name = body.take_name()?;
        self.writable()?;
        let parent = self.inode(header.nodeid)?;
        let cname = cstring(name)?;
        let guest_flags = self.host_open_flags(create.flags);
        let flags = (guest_flags | libc::O_CREAT | libc::O_EXCL)
            & !(libc::O_NOCTTY | libc::O_PATH | O_TMPFILE_ONLY | libc::O_DIRECTORY);
        let created = {
            let _creds = Credentials::switch(header);
            openat2(
                parent.fd.as_raw_fd(),
                &cname,
                flags,
                create.mode & 0o7777,
                libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_SYMLINKS,
            )
        };
        let (entry, file) = match created {
            Ok(fd) => (self.do_lookup(header.nodeid, name)?, File::from(fd)),
            Err(Errno(libc::EEXIST)) if guest_flags & libc::O_EXCL == 0 => {
                let entry = self.do_lookup(header.nodeid, name)?;
                let opened = self.inode(entry.nodeid).and_then(|node| {
                    if entry.attr.mode & libc::S_IFMT == libc::S_IFDIR {
                        return Err(Errno(libc::EISDIR));
                    }
                    let _creds = Credentials::switch(header);
                    self.reopen(&node, guest_flags & !(libc::O_EXCL | libc::O_DIRECTORY))
                });
                match opened {
                    Ok(file) => (entry, file),
                    Err(e) => {
                        // The guest learns no node from a failed CREATE.
                        self.forget_one(entry.nodeid, 1);
                        return Err(e);
                    }
                }
            }
            Err(e) => return Err(e),
        };
        let fh = self.new_handle(file);
        let mut out = entry.as_bytes().to_vec();
        out.extend_from_slice(
            OpenOut {
                fh,
                open_flags: self.open_flags_out(),
                padding: 0,
            }
            .as_bytes(),
        );
        Ok(out)
    }

    fn fallocate(&self, body: &mut Body<'_>) -> FsResult<Vec<u8>> {
        let falloc = body.take::<FallocateIn>()?;
        self.writable()?;
        let handle = self.handle(falloc.fh)?;
        let offset = i64::try_from(falloc.offset).map_err(|_| Errno::EINVAL)?;
        let length = i64::try_from(falloc.length).map_err(|_| Errno::EINVAL)?;
        // SAFETY: fallocate on a descriptor we own.
        cvt(unsafe {
            libc::fallocate64(handle.file.as_raw_fd(), falloc.mode as i32, offset, length)
        })?;
        Ok(Vec::new())
    }

    fn lseek(&self, body: &mut Body<'_>) -> FsResult<Vec<u8>> {
        let seek = body.take::<LseekIn>()?;
        let handle = self.handle(seek.fh)?;
        let offset = i64::try_from(seek.offset).map_err(|_| Errno::EINVAL)?;
        // SAFETY: lseek on a descriptor we own (whence is checked by the kernel).
        let pos = cvt_long(unsafe {
            libc::lseek64(handle.file.as_raw_fd(), offset, seek.whence as i32)
        })?;
        Ok(LseekOut { offset: pos as u64 }.as_bytes().to_vec())
    }

    fn copy_file_range(&self, body: &mut Body<'_>) -> FsResult<Vec<u8>> {
        let copy = body.take::<CopyFileRangeIn>()?;
        self.writable()?;
        let (input, output) = (self.handle(copy.fh_in)?, self.handle(copy.fh_out)?);
        let mut off_in = i64::try_from(copy.off_in).map_err(|_| Errno::EINVAL)?;
        let mut off_out = i64::try_from(copy.off_out).map_err(|_| Errno::EINVAL)?;
        // At most MAX_COPY per request: the guest's copy_file_range goes on from
        // where a short copy stopped, and the queue thread never copies gigabytes
        // in one request.
        let len = usize::try_from(copy.len)
            .map_err(|_| Errno::EINVAL)?
            .min(MAX_COPY);
        // SAFETY: both offsets are valid locals; both descriptors are ours.
        let n = cvt_size(unsafe {
            libc::copy_file_range(
                input.file.as_raw_fd(),
                &mut off_in,
                output.file.as_raw_fd(),
                &mut off_out,
                len,
                copy.flags as u32,
            )
        })?;
        Ok(WriteOut {
            size: n as u32,
            padding: 0,
        }
        .as_bytes()
        .to_vec())
    }

    fn syncfs(&self, nodeid: u64) -> FsResult<Vec<u8>> {
        let file = self.reopen(&self.inode(nodeid)?, libc::O_RDONLY)?;
        // SAFETY: syncfs on a descriptor we own.
        cvt(unsafe { libc::syncfs(file.as_raw_fd()) })?;
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use zerocopy::FromBytes;

    /// File data through a plain buffer, for tests without guest memory.
    struct Bounce {
        write_data: Vec<u8>,
        read_back: Vec<u8>,
    }

    impl FileData for Bounce {
        fn read_from(&mut self, file: &File, offset: i64, len: usize) -> std::io::Result<usize> {
            use std::os::unix::fs::FileExt;
            self.read_back.resize(len, 0);
            file.read_at(&mut self.read_back, offset as u64)
        }

        fn write_to(&mut self, file: &File, offset: i64, len: usize) -> std::io::Result<usize> {
            use std::os::unix::fs::FileExt;
            let len = len.min(self.write_data.len());
            file.write_at(&self.write_data[..len], offset as u64)
        }
    }

    fn scratch_dir(tag: &str) -> std::path::PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir().join(format!(
            "vhost-fs-unit-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let dir = base.join("share");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        std::fs::write(dir.join("file"), b"contents").unwrap();
        dir
    }

    fn options() -> FsOptions {
        FsOptions {
            readonly: false,
            xattr: true,
            cache: CachePolicy::Auto,
            announce_submounts: true,
            file_handles: false,
            allow_direct_io: false,
        }
    }

    fn request(opcode: u32, nodeid: u64, body: &[u8]) -> Request {
        Request {
            header: InHeader {
                len: (IN_HEADER_LEN + body.len()) as u32,
                opcode,
                unique: 1,
                nodeid,
                ..Default::default()
            },
            body: body.to_vec(),
            data_len: 0,
        }
    }

    fn initialised(dir: &Path) -> PassthroughFs {
        let fs = PassthroughFs::new(dir, options()).unwrap();
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 0,
            flags: 0,
        };
        let reply = fs.handle_request(
            &request(Opcode::Init as u32, 0, init.as_bytes()),
            4096,
            &mut Bounce {
                write_data: Vec::new(),
                read_back: Vec::new(),
            },
        );
        assert!(matches!(reply, Reply::Ok(_)));
        fs
    }

    #[test]
    fn lookups_are_counted_and_forgotten() {
        let dir = scratch_dir("forget");
        let fs = initialised(&dir);
        let mut data = Bounce {
            write_data: Vec::new(),
            read_back: Vec::new(),
        };
        for _ in 0..3 {
            let reply = fs.handle_request(
                &request(Opcode::Lookup as u32, 1, b"file\0"),
                4096,
                &mut data,
            );
            assert!(matches!(reply, Reply::Ok(_)));
        }
        assert_eq!(fs.node_count(), 2, "one node for three lookups");
        let forget = ForgetIn { nlookup: 2 };
        fs.handle_request(
            &request(Opcode::Forget as u32, 2, forget.as_bytes()),
            0,
            &mut data,
        );
        assert_eq!(fs.node_count(), 2);
        let forget = ForgetIn { nlookup: 1 };
        fs.handle_request(
            &request(Opcode::Forget as u32, 2, forget.as_bytes()),
            0,
            &mut data,
        );
        assert_eq!(fs.node_count(), 1, "only the root is left");
        // The root is never forgotten.
        fs.handle_request(
            &request(Opcode::Forget as u32, 1, forget.as_bytes()),
            0,
            &mut data,
        );
        assert_eq!(fs.node_count(), 1);
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    fn xattr_request(op: Opcode, nodeid: u64, name: &str, value: &[u8]) -> Request {
        let mut body = Vec::new();
        match op {
            Opcode::Setxattr => {
                body.extend_from_slice(
                    SetxattrIn {
                        size: value.len() as u32,
                        flags: 0,
                    }
                    .as_bytes(),
                );
                body.extend_from_slice(name.as_bytes());
                body.push(0);
                body.extend_from_slice(value);
            }
            _ => {
                body.extend_from_slice(
                    GetxattrIn {
                        size: 64,
                        padding: 0,
                    }
                    .as_bytes(),
                );
                body.extend_from_slice(name.as_bytes());
                body.push(0);
            }
        }
        request(op as u32, nodeid, &body)
    }

    /// On a kernel without the `*xattrat` calls, the xattrs of regular files go
    /// through a descriptor opened for reading, and those of a FIFO are
    /// unsupported: it is never opened (an open would block this thread).
    #[test]
    fn xattrs_without_xattrat_never_open_a_special_file() {
        let dir = scratch_dir("xattr-fallback");
        let fifo = CString::new(dir.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let fs = initialised(&dir).without_xattrat();
        let mut data = Bounce {
            write_data: Vec::new(),
            read_back: Vec::new(),
        };
        let mut lookup = |name: &[u8]| match fs.handle_request(
            &request(Opcode::Lookup as u32, 1, name),
            4096,
            &mut data,
        ) {
            Reply::Ok(bytes) => EntryOut::read_from_bytes(&bytes).unwrap().nodeid,
            _ => panic!("lookup"),
        };
        let (file, fifo) = (lookup(b"file\0"), lookup(b"fifo\0"));
        let set = fs.handle_request(
            &xattr_request(Opcode::Setxattr, file, "trusted.t", b"v"),
            4096,
            &mut data,
        );
        assert!(matches!(set, Reply::Ok(_)), "{set:?}");
        let got = fs.handle_request(
            &xattr_request(Opcode::Getxattr, file, "trusted.t", b""),
            4096,
            &mut data,
        );
        assert!(matches!(&got, Reply::Ok(v) if v == b"v"), "{got:?}");
        for op in [Opcode::Setxattr, Opcode::Getxattr] {
            let reply =
                fs.handle_request(&xattr_request(op, fifo, "trusted.t", b"v"), 4096, &mut data);
            assert!(
                matches!(reply, Reply::Err(Errno(libc::EOPNOTSUPP))),
                "{op:?}: {reply:?}"
            );
        }
        // With the calls (this kernel permitting), the FIFO's xattrs work.
        let fs = initialised(&dir);
        let fifo = match fs.handle_request(
            &request(Opcode::Lookup as u32, 1, b"fifo\0"),
            4096,
            &mut data,
        ) {
            Reply::Ok(bytes) => EntryOut::read_from_bytes(&bytes).unwrap().nodeid,
            _ => panic!("lookup"),
        };
        let set = fs.handle_request(
            &xattr_request(Opcode::Setxattr, fifo, "trusted.t", b"v"),
            4096,
            &mut data,
        );
        assert!(
            matches!(set, Reply::Ok(_) | Reply::Err(Errno(libc::EOPNOTSUPP))),
            "{set:?}"
        );
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Arbitrary opcodes, node ids and bodies against a real folder: never a
        /// panic, and nothing appears outside the folder.
        #[test]
        fn hostile_requests_never_panic(
            requests in proptest::collection::vec(
                (0u32..60, 0u64..6, proptest::collection::vec(any::<u8>(), 0..160), 0usize..300),
                1..24,
            )
        ) {
            let dir = scratch_dir("prop");
            let fs = initialised(&dir);
            let mut data = Bounce { write_data: vec![0x5a; 64], read_back: Vec::new() };
            for (opcode, nodeid, body, room) in requests {
                let mut req = request(opcode, nodeid, &body);
                if opcode == Opcode::Write as u32 {
                    req.data_len = body.len().saturating_sub(std::mem::size_of::<WriteIn>());
                    req.body.truncate(std::mem::size_of::<WriteIn>());
                }
                let _ = fs.handle_request(&req, room, &mut data);
            }
            drop(fs);
            let base = dir.parent().unwrap().to_path_buf();
            let names = |d: &Path| -> Vec<String> {
                let mut v: Vec<String> = std::fs::read_dir(d).unwrap()
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v
            };
            let beside = names(&base);
            let outside = names(&base.join("outside"));
            std::fs::remove_dir_all(&base).unwrap();
            prop_assert_eq!(beside, vec!["outside".to_string(), "share".to_string()]);
            prop_assert!(outside.is_empty(), "{:?}", outside);
        }
    }
}
