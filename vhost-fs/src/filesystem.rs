//! The file system as the FUSE server ([`crate::server`]) drives it: one typed call
//! per FUSE operation, on inodes and handles named by number, with an errno for an
//! answer. Nothing here knows the wire format, and nothing here knows how files are
//! kept: [`crate::passthrough`] implements [`FileSystem`] on a host folder, and its
//! operations can be called (and tested) without encoding a FUSE message.
//!
//! File data never passes through a buffer of ours: READ and WRITE hand the
//! implementation a [`FileData`], which moves the bytes between a file and the
//! request's own buffers (for the daemon, guest memory, with preadv/pwritev).

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::time::Duration;

/// An errno value to answer with (positive; the server sends it negated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const EPROTO: Errno = Errno(libc::EPROTO);

    /// The errno of the last failed libc call.
    pub fn last() -> Errno {
        Errno::from(io::Error::last_os_error())
    }
}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<Errno> for io::Error {
    fn from(e: Errno) -> Self {
        io::Error::from_raw_os_error(e.0)
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.0))
    }
}

/// What every file-system call answers: a value, or the errno for the guest.
pub type Result<T> = std::result::Result<T, Errno>;

/// A node the guest knows, by the number the file system gave it in an [`Entry`]
/// (FUSE's node id). The guest may name any number: an unknown one is an error
/// (ENOENT), never a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Inode(pub u64);

impl Inode {
    /// The shared folder itself: known from the start and never forgotten.
    pub const ROOT: Inode = Inode(1);
}

/// An open file or folder, by the number `open`, `opendir` or `create` gave it.
/// The guest may name any number: an unknown one is EBADF.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Handle(pub u64);

/// Who asks: the credentials and process of the guest thread behind a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Context {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// Attributes of a node (what `stat` tells of it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: i64,
    pub atime_nsec: i64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub ctime: i64,
    pub ctime_nsec: i64,
    /// File type and permission bits (`st_mode`).
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub blksize: i64,
}

impl Attr {
    /// The file type bits of `mode` (`S_IFREG`, `S_IFDIR`, ...).
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
}

/// A name looked up (or made) in a folder: the node it names, counted as one more
/// lookup the guest holds until it forgets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub inode: Inode,
    pub generation: u64,
    pub attr: Attr,
    /// The node is the root of another mount than its folder's (announced to the
    /// guest as a submount).
    pub submount: bool,
    /// How long the guest may keep the name and the attributes.
    pub entry_timeout: Duration,
    pub attr_timeout: Duration,
}

/// How the guest should treat the page cache of an open file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Bypass the guest's page cache.
    pub direct_io: bool,
    /// Keep what the guest cached of the file from an earlier open.
    pub keep_cache: bool,
}

/// What the file system supports, answered at INIT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InitOptions {
    /// Entries may be marked as submounts.
    pub submounts: bool,
    /// Extended attributes are served; without, the server answers every xattr
    /// request ENOSYS itself.
    pub xattr: bool,
}

/// A time to set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// The current time.
    Now,
    /// This time.
    To { sec: u64, nsec: u32 },
}

/// The attributes SETATTR changes: only those that are `Some`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// Permission bits (the file type is not changed).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Truncate or extend to this size.
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// Figures of the file system holding a node (`statvfs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u64,
    pub namelen: u64,
    pub frsize: u64,
}

/// The answer to GETXATTR and LISTXATTR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XattrReply {
    /// The value (or the list of names), when the guest gave room for it.
    Value(Vec<u8>),
    /// The size of the value (or list), when the guest asked for the size only.
    Size(u32),
}

/// One entry of a folder as READDIR reads it.
#[derive(Clone, Copy, Debug)]
pub struct DirEntry<'a> {
    pub ino: u64,
    /// Where the next entry starts: the offset a READDIR goes on from.
    pub offset: u64,
    /// `DT_*` type.
    pub kind: u8,
    pub name: &'a CStr,
}

/// Moves file data straight between a file and the request's own buffers.
pub trait FileData {
    /// Reads up to `len` bytes of `file` at `offset` into the reply's buffers,
    /// right after the out header; returns the bytes read (short at end of file).
    fn read_from(&mut self, file: &File, offset: i64, len: usize) -> io::Result<usize>;
    /// Writes the request's data (`len` bytes after the WRITE headers) to `file`
    /// at `offset`; returns the bytes written.
    fn write_to(&mut self, file: &File, offset: i64, len: usize) -> io::Result<usize>;
}

/// A file system served over FUSE: one call per operation. Names are single
/// path components the server has checked (not empty, no '/', not "." or "..",
/// at most NAME_MAX bytes); every other argument comes from the guest unchecked.
///
/// Every call that answers an [`Entry`] counts one lookup of its inode; `forget`
/// takes lookups back, and an inode whose count reaches zero is unknown again.
pub trait FileSystem: Send + Sync {
    /// A session starts (FUSE INIT, after the server checked the versions).
    fn init(&self) -> Result<InitOptions>;
    /// The session ends (FUSE DESTROY): every handle is closed and every inode but
    /// the root forgotten.
    fn destroy(&self);

    /// Looks `name` up in the folder `parent`.
    fn lookup(&self, ctx: Context, parent: Inode, name: &CStr) -> Result<Entry>;
    /// The guest drops `count` lookups of `inode`.
    fn forget(&self, inode: Inode, count: u64);
    /// Attributes of `inode`, or of the open file `handle` when given.
    fn getattr(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Option<Handle>,
    ) -> Result<(Attr, Duration)>;
    /// Changes attributes of `inode` (a size through `handle` when given); answers
    /// the attributes after the change.
    fn setattr(
        &self,
        ctx: Context,
        inode: Inode,
        attr: SetAttr,
        handle: Option<Handle>,
    ) -> Result<(Attr, Duration)>;
    /// The target of the symlink `inode`.
    fn readlink(&self, ctx: Context, inode: Inode) -> Result<Vec<u8>>;
    /// Makes the symlink `name` -> `target` in `parent`.
    fn symlink(&self, ctx: Context, parent: Inode, name: &CStr, target: &CStr) -> Result<Entry>;
    /// Makes the node `name` (a device node, FIFO, socket or regular file) in
    /// `parent` with `mode` (type and permissions) and device number `rdev`.
    fn mknod(
        &self,
        ctx: Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
    ) -> Result<Entry>;
    /// Makes the folder `name` in `parent`.
    fn mkdir(&self, ctx: Context, parent: Inode, name: &CStr, mode: u32) -> Result<Entry>;
    /// Removes the name of a non-folder.
    fn unlink(&self, ctx: Context, parent: Inode, name: &CStr) -> Result<()>;
    /// Removes an empty folder.
    fn rmdir(&self, ctx: Context, parent: Inode, name: &CStr) -> Result<()>;
    /// Renames `olddir`/`oldname` to `newdir`/`newname` (`flags`: `RENAME_*`).
    fn rename(
        &self,
        ctx: Context,
        olddir: Inode,
        oldname: &CStr,
        newdir: Inode,
        newname: &CStr,
        flags: u32,
    ) -> Result<()>;
    /// Makes `newname` in `newparent` a hard link of `inode`.
    fn link(&self, ctx: Context, inode: Inode, newparent: Inode, newname: &CStr) -> Result<Entry>;
    /// Opens `inode` with the guest's open `flags`.
    fn open(&self, ctx: Context, inode: Inode, flags: u32) -> Result<(Handle, OpenOptions)>;
    /// Reads up to `size` bytes at `offset` of `handle` into `data`; answers the
    /// bytes read.
    fn read(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        size: usize,
        data: &mut dyn FileData,
    ) -> Result<usize>;
    /// Writes the `size` bytes of `data` at `offset` of `handle`; answers the
    /// bytes written.
    fn write(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        size: usize,
        data: &mut dyn FileData,
    ) -> Result<usize>;
    /// A close(2) of a descriptor of `handle` in the guest.
    fn flush(&self, ctx: Context, inode: Inode, handle: Handle) -> Result<()>;
    /// Syncs `handle` (its data only with `datasync`).
    fn fsync(&self, ctx: Context, inode: Inode, datasync: bool, handle: Handle) -> Result<()>;
    /// The last close of `handle`.
    fn release(&self, ctx: Context, inode: Inode, handle: Handle) -> Result<()>;
    /// Figures of the file system holding `inode`.
    fn statfs(&self, ctx: Context, inode: Inode) -> Result<Statfs>;
    /// Opens the folder `inode` for reading its entries.
    fn opendir(&self, ctx: Context, inode: Inode, flags: u32) -> Result<Handle>;
    /// Reads the entries of the folder `handle` from `offset` (0: the start, else
    /// an entry's [`DirEntry::offset`]), giving each to `add` until `add` answers
    /// false (the entry it was given is then not taken) or the folder ends.
    /// `size_hint` is about how many bytes of entries the caller can take.
    fn readdir(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        size_hint: usize,
        add: &mut dyn FnMut(DirEntry<'_>) -> bool,
    ) -> Result<()>;
    /// The last close of the folder `handle`.
    fn releasedir(&self, ctx: Context, inode: Inode, handle: Handle) -> Result<()>;
    /// Syncs the folder `handle`.
    fn fsyncdir(&self, ctx: Context, inode: Inode, datasync: bool, handle: Handle) -> Result<()>;
    /// Sets the extended attribute `name` (`flags`: `XATTR_CREATE`, `XATTR_REPLACE`).
    fn setxattr(
        &self,
        ctx: Context,
        inode: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> Result<()>;
    /// The value of the extended attribute `name`: its size only when `size` is 0,
    /// else the value if it fits in `size` bytes (ERANGE if not).
    fn getxattr(&self, ctx: Context, inode: Inode, name: &CStr, size: u32) -> Result<XattrReply>;
    /// The names of the extended attributes, NUL-separated, as `getxattr` answers.
    fn listxattr(&self, ctx: Context, inode: Inode, size: u32) -> Result<XattrReply>;
    /// Removes the extended attribute `name`.
    fn removexattr(&self, ctx: Context, inode: Inode, name: &CStr) -> Result<()>;
    /// Whether the node could be accessed with `mask` (`R_OK`, `W_OK`, `X_OK`).
    fn access(&self, ctx: Context, inode: Inode, mask: u32) -> Result<()>;
    /// Makes the regular file `name` in `parent` and opens it with `flags`.
    fn create(
        &self,
        ctx: Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        flags: u32,
    ) -> Result<(Entry, Handle, OpenOptions)>;
    /// Allocates (or, by `mode`, punches or zeroes) a range of `handle`.
    fn fallocate(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> Result<()>;
    /// Seeks `handle` (`SEEK_DATA`, `SEEK_HOLE`, ...); answers the new offset.
    fn lseek(
        &self,
        ctx: Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> Result<u64>;
    /// Copies up to `range.len` bytes between two open files; answers the bytes
    /// copied.
    fn copy_file_range(&self, ctx: Context, range: CopyRange) -> Result<usize>;
    /// Syncs the whole file system holding `inode`.
    fn syncfs(&self, ctx: Context, inode: Inode) -> Result<()>;
}

/// The arguments of COPY_FILE_RANGE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyRange {
    pub inode_in: Inode,
    pub handle_in: Handle,
    pub offset_in: u64,
    pub inode_out: Inode,
    pub handle_out: Handle,
    pub offset_out: u64,
    pub len: u64,
    pub flags: u64,
}
