//! The FUSE protocol as virtio-fs carries it (linux include/uapi/linux/fuse.h,
//! protocol 7.31): message layouts, opcodes, request parsing with strict length
//! checks, and reply encoding. Knows nothing of vhost-user: requests are read from
//! any `io::Read` (a descriptor chain's Reader) and replies written to any
//! `io::Write` (its Writer).
//!
//! All structs are `repr(C)` with zerocopy derives: converting from and to bytes is
//! safe and checked for size; guest bytes are never reinterpreted in place.

use std::ffi::CStr;
use std::io;

use thiserror::Error;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The protocol version we speak.
pub const KERNEL_VERSION: u32 = 7;
pub const KERNEL_MINOR_VERSION: u32 = 31;
/// Oldest minor version we accept from the guest (fuse_init_out grew to its
/// current 64 bytes in 7.23).
pub const MIN_KERNEL_MINOR_VERSION: u32 = 23;

/// Largest WRITE payload we announce (max_write) and so the largest request.
pub const MAX_WRITE: u32 = 1 << 20;
/// Pages of max_pages (MAX_WRITE / 4 KiB).
#[allow(clippy::cast_possible_truncation)] // 256: fits.
pub const MAX_PAGES: u16 = (MAX_WRITE / 4096) as u16;
/// Largest request we read: a full write plus its headers.
pub const MAX_REQUEST_LEN: usize = MAX_WRITE as usize + 4096;
/// Longest name component (NAME_MAX) and path (PATH_MAX) we accept.
pub const NAME_MAX: usize = 255;
pub const PATH_MAX: usize = 4096;

pub use crate::filesystem::Errno;

macro_rules! fuse_struct {
    ($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name { $(pub $field: $ty),* }
    };
}

fuse_struct!(/// `struct fuse_in_header`.
    InHeader { len: u32, opcode: u32, unique: u64, nodeid: u64, uid: u32, gid: u32, pid: u32, total_extlen: u16, padding: u16 });
fuse_struct!(/// `struct fuse_out_header`.
    OutHeader { len: u32, error: i32, unique: u64 });
fuse_struct!(/// `struct fuse_attr`.
    Attr { ino: u64, size: u64, blocks: u64, atime: u64, mtime: u64, ctime: u64,
        atimensec: u32, mtimensec: u32, ctimensec: u32, mode: u32, nlink: u32, uid: u32, gid: u32,
        rdev: u32, blksize: u32, flags: u32 });
fuse_struct!(/// `struct fuse_entry_out`.
    EntryOut { nodeid: u64, generation: u64, entry_valid: u64, attr_valid: u64,
        entry_valid_nsec: u32, attr_valid_nsec: u32, attr: Attr });
fuse_struct!(/// `struct fuse_attr_out`.
    AttrOut { attr_valid: u64, attr_valid_nsec: u32, dummy: u32, attr: Attr });
fuse_struct!(/// `struct fuse_getattr_in`.
    GetattrIn { getattr_flags: u32, dummy: u32, fh: u64 });
fuse_struct!(/// `struct fuse_setattr_in`.
    SetattrIn { valid: u32, padding: u32, fh: u64, size: u64, lock_owner: u64, atime: u64,
        mtime: u64, ctime: u64, atimensec: u32, mtimensec: u32, ctimensec: u32, mode: u32,
        unused4: u32, uid: u32, gid: u32, unused5: u32 });
fuse_struct!(/// `struct fuse_forget_in`.
    ForgetIn { nlookup: u64 });
fuse_struct!(/// `struct fuse_batch_forget_in`, followed by `count` [`ForgetOne`].
    BatchForgetIn { count: u32, dummy: u32 });
fuse_struct!(/// `struct fuse_forget_one`.
    ForgetOne { nodeid: u64, nlookup: u64 });
fuse_struct!(/// `struct fuse_mknod_in`, followed by the name.
    MknodIn { mode: u32, rdev: u32, umask: u32, padding: u32 });
fuse_struct!(/// `struct fuse_mkdir_in`, followed by the name.
    MkdirIn { mode: u32, umask: u32 });
fuse_struct!(/// `struct fuse_rename_in`, followed by the old and new names.
    RenameIn { newdir: u64 });
fuse_struct!(/// `struct fuse_rename2_in`, followed by the old and new names.
    Rename2In { newdir: u64, flags: u32, padding: u32 });
fuse_struct!(/// `struct fuse_link_in`, followed by the new name.
    LinkIn { oldnodeid: u64 });
fuse_struct!(/// `struct fuse_open_in`.
    OpenIn { flags: u32, open_flags: u32 });
fuse_struct!(/// `struct fuse_create_in`, followed by the name.
    CreateIn { flags: u32, mode: u32, umask: u32, open_flags: u32 });
fuse_struct!(/// `struct fuse_open_out`.
    OpenOut { fh: u64, open_flags: u32, padding: u32 });
fuse_struct!(/// `struct fuse_release_in`.
    ReleaseIn { fh: u64, flags: u32, release_flags: u32, lock_owner: u64 });
fuse_struct!(/// `struct fuse_flush_in`.
    FlushIn { fh: u64, unused: u32, padding: u32, lock_owner: u64 });
fuse_struct!(/// `struct fuse_read_in`.
    ReadIn { fh: u64, offset: u64, size: u32, read_flags: u32, lock_owner: u64, flags: u32, padding: u32 });
fuse_struct!(/// `struct fuse_write_in`, followed by the data.
    WriteIn { fh: u64, offset: u64, size: u32, write_flags: u32, lock_owner: u64, flags: u32, padding: u32 });
fuse_struct!(/// `struct fuse_write_out`.
    WriteOut { size: u32, padding: u32 });
fuse_struct!(/// `struct fuse_kstatfs` (the whole of `fuse_statfs_out`).
    StatfsOut { blocks: u64, bfree: u64, bavail: u64, files: u64, ffree: u64, bsize: u32,
        namelen: u32, frsize: u32, padding: u32, spare: [u32; 6] });
fuse_struct!(/// `struct fuse_fsync_in`.
    FsyncIn { fh: u64, fsync_flags: u32, padding: u32 });
fuse_struct!(/// `struct fuse_setxattr_in` (without SETXATTR_EXT), then name and value.
    SetxattrIn { size: u32, flags: u32 });
fuse_struct!(/// `struct fuse_getxattr_in`, followed by the name (GETXATTR).
    GetxattrIn { size: u32, padding: u32 });
fuse_struct!(/// `struct fuse_getxattr_out`.
    GetxattrOut { size: u32, padding: u32 });
fuse_struct!(/// `struct fuse_access_in`.
    AccessIn { mask: u32, padding: u32 });
fuse_struct!(/// `struct fuse_init_in` up to `flags` (7.36 appends flags2 and padding).
    InitIn { major: u32, minor: u32, max_readahead: u32, flags: u32 });
fuse_struct!(/// `struct fuse_init_out`.
    InitOut { major: u32, minor: u32, max_readahead: u32, flags: u32, max_background: u16,
        congestion_threshold: u16, max_write: u32, time_gran: u32, max_pages: u16,
        map_alignment: u16, flags2: u32, unused: [u32; 7] });
fuse_struct!(/// `struct fuse_fallocate_in`.
    FallocateIn { fh: u64, offset: u64, length: u64, mode: u32, padding: u32 });
fuse_struct!(/// `struct fuse_lseek_in`.
    LseekIn { fh: u64, offset: u64, whence: u32, padding: u32 });
fuse_struct!(/// `struct fuse_lseek_out`.
    LseekOut { offset: u64 });
fuse_struct!(/// `struct fuse_copy_file_range_in`.
    CopyFileRangeIn { fh_in: u64, off_in: u64, nodeid_out: u64, fh_out: u64, off_out: u64, len: u64, flags: u64 });
fuse_struct!(/// `struct fuse_dirent` without its name.
    Dirent { ino: u64, off: u64, namelen: u32, typ: u32 });

pub const IN_HEADER_LEN: usize = std::mem::size_of::<InHeader>();
pub const OUT_HEADER_LEN: usize = std::mem::size_of::<OutHeader>();

/// `FATTR_*` bits of `fuse_setattr_in.valid`.
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
}

/// `FUSE_*` flags of INIT.
pub mod init_flags {
    pub const ASYNC_READ: u32 = 1 << 0;
    pub const ATOMIC_O_TRUNC: u32 = 1 << 3;
    pub const BIG_WRITES: u32 = 1 << 5;
    pub const DO_READDIRPLUS: u32 = 1 << 13;
    pub const READDIRPLUS_AUTO: u32 = 1 << 14;
    pub const ASYNC_DIO: u32 = 1 << 15;
    pub const WRITEBACK_CACHE: u32 = 1 << 16;
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    pub const MAX_PAGES: u32 = 1 << 22;
    pub const SUBMOUNTS: u32 = 1 << 27;
}

/// `FOPEN_*` flags of open replies.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// `FUSE_ATTR_SUBMOUNT` in `fuse_attr.flags`.
pub const ATTR_SUBMOUNT: u32 = 1 << 0;
/// `FUSE_GETATTR_FH` in `fuse_getattr_in.getattr_flags`.
pub const GETATTR_FH: u32 = 1 << 0;

macro_rules! opcodes {
    ($($name:ident = $value:expr),* $(,)?) => {
        /// FUSE opcodes (`enum fuse_opcode`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Opcode { $($name = $value),* }

        impl Opcode {
            pub fn from_u32(value: u32) -> Option<Opcode> {
                match value {
                    $($value => Some(Opcode::$name),)*
                    _ => None,
                }
            }
        }
    };
}

opcodes! {
    Lookup = 1, Forget = 2, Getattr = 3, Setattr = 4, Readlink = 5, Symlink = 6, Mknod = 8,
    Mkdir = 9, Unlink = 10, Rmdir = 11, Rename = 12, Link = 13, Open = 14, Read = 15,
    Write = 16, Statfs = 17, Release = 18, Fsync = 20, Setxattr = 21, Getxattr = 22,
    Listxattr = 23, Removexattr = 24, Flush = 25, Init = 26, Opendir = 27, Readdir = 28,
    Releasedir = 29, Fsyncdir = 30, Getlk = 31, Setlk = 32, Setlkw = 33, Access = 34,
    Create = 35, Interrupt = 36, Bmap = 37, Destroy = 38, Ioctl = 39, Poll = 40,
    NotifyReply = 41, BatchForget = 42, Fallocate = 43, Readdirplus = 44, Rename2 = 45,
    Lseek = 46, CopyFileRange = 47, SetupMapping = 48, RemoveMapping = 49, Syncfs = 50,
    Tmpfile = 51, Statx = 52,
}

/// Why a request could not be read at all.
#[derive(Debug, Error)]
pub enum ParseError {
    #[error("request of {0} bytes is shorter than the FUSE header")]
    ShortHeader(usize),
    #[error("header says {header} bytes, the request has {available}")]
    LengthMismatch { header: u32, available: usize },
    #[error("request of {0} bytes exceeds the limit of {MAX_REQUEST_LEN}")]
    TooLong(usize),
    #[error("cannot read the request from guest memory")]
    Read(#[source] io::Error),
}

/// A request: its header and the bytes after it. For WRITE only the
/// `fuse_write_in` is copied; its data stays in guest memory (`data_len` bytes)
/// and goes to the file from there.
#[derive(Debug)]
pub struct Request {
    pub header: InHeader,
    pub body: Vec<u8>,
    /// Bytes after `body` left in guest memory (WRITE data).
    pub data_len: usize,
}

/// Reads one request of exactly `available` bytes (the readable part of the
/// chain). The header's `len` must match; a header that cannot even be read is an
/// error with no `unique` to answer to. For the other errors the header is
/// returned too, so the caller can answer EINVAL.
pub fn read_request<R: io::Read>(
    reader: &mut R,
    available: usize,
) -> Result<Request, (Option<InHeader>, ParseError)> {
    if available < IN_HEADER_LEN {
        return Err((None, ParseError::ShortHeader(available)));
    }
    let mut raw = [0u8; IN_HEADER_LEN];
    reader
        .read_exact(&mut raw)
        .map_err(|e| (None, ParseError::Read(e)))?;
    let header =
        InHeader::read_from_bytes(&raw).map_err(|_| (None, ParseError::ShortHeader(available)))?;
    if header.len as usize != available {
        return Err((
            Some(header),
            ParseError::LengthMismatch {
                header: header.len,
                available,
            },
        ));
    }
    if available > MAX_REQUEST_LEN {
        return Err((Some(header), ParseError::TooLong(available)));
    }
    let body_len = available - IN_HEADER_LEN;
    let copy_len = if header.opcode == Opcode::Write as u32 {
        body_len.min(std::mem::size_of::<WriteIn>())
    } else {
        body_len
    };
    let mut body = vec![0u8; copy_len];
    reader
        .read_exact(&mut body)
        .map_err(|e| (Some(header), ParseError::Read(e)))?;
    Ok(Request {
        header,
        body,
        data_len: body_len - copy_len,
    })
}

/// A cursor over a request body: fixed structs, NUL-terminated names, the rest.
/// Every take checks the length and answers EINVAL when the body is too short.
pub struct Body<'a> {
    bytes: &'a [u8],
}

impl<'a> Body<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Body { bytes }
    }

    /// The next `T`.
    pub fn take<T: FromBytes + KnownLayout + Immutable>(&mut self) -> Result<T, Errno> {
        let (value, rest) = T::read_from_prefix(self.bytes).map_err(|_| Errno::EINVAL)?;
        self.bytes = rest;
        Ok(value)
    }

    /// The next `len` bytes.
    pub fn take_bytes(&mut self, len: usize) -> Result<&'a [u8], Errno> {
        if len > self.bytes.len() {
            return Err(Errno::EINVAL);
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    /// The next NUL-terminated string (without its NUL); EINVAL without a NUL.
    pub fn take_cstr(&mut self) -> Result<&'a [u8], Errno> {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or(Errno::EINVAL)?;
        let s = &self.bytes[..end];
        self.bytes = &self.bytes[end + 1..];
        Ok(s)
    }

    /// The next NUL-terminated string, its NUL included; EINVAL without a NUL.
    pub fn take_c_str(&mut self) -> Result<&'a CStr, Errno> {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or(Errno::EINVAL)?;
        let (s, rest) = self.bytes.split_at(end + 1);
        self.bytes = rest;
        CStr::from_bytes_with_nul(s).map_err(|_| Errno::EINVAL)
    }

    /// [`Self::take_name`], its NUL included.
    pub fn take_name_c_str(&mut self) -> Result<&'a CStr, Errno> {
        let name = self.take_c_str()?;
        check_name(name.to_bytes())?;
        Ok(name)
    }

    /// The next name of a directory entry: NUL-terminated, not empty, no '/',
    /// at most NAME_MAX bytes; "." and ".." are not names of entries either.
    pub fn take_name(&mut self) -> Result<&'a [u8], Errno> {
        let name = self.take_cstr()?;
        check_name(name)?;
        Ok(name)
    }

    /// Whatever is left.
    pub fn rest(&self) -> &'a [u8] {
        self.bytes
    }
}

/// A single path component that stays in its directory.
pub fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.len() > NAME_MAX {
        // What a local file system says, and what POSIX suites expect.
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// What to answer a request with.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Success with this body after the out header.
    Ok(Vec<u8>),
    /// An error: only the out header, carrying `-errno`.
    Err(Errno),
    /// Success whose body, this many bytes, is already in place in the reply's
    /// buffers right after the out header (READ data moved there by the kernel).
    InPlace(usize),
    /// No reply at all (FORGET, BATCH_FORGET).
    None,
}

impl Reply {
    /// A success reply carrying one struct.
    pub fn with<T: IntoBytes + Immutable>(value: &T) -> Reply {
        Reply::Ok(value.as_bytes().to_vec())
    }
}

impl From<Result<Vec<u8>, Errno>> for Reply {
    fn from(r: Result<Vec<u8>, Errno>) -> Self {
        match r {
            Ok(body) => Reply::Ok(body),
            Err(e) => Reply::Err(e),
        }
    }
}

/// A reply's length as its header carries it. Replies are at most a chain's
/// writable bytes, which a 32-bit descriptor length bounds per descriptor; a
/// longer one is refused rather than announced wrong.
fn reply_len(len: usize) -> io::Result<u32> {
    u32::try_from(len).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a reply of {len} bytes"),
        )
    })
}

/// Writes `reply` for request `unique` into a writer with `capacity` bytes of
/// room. A body that does not fit is answered with ERANGE instead; with no room
/// for even the header nothing is written. Returns the bytes written.
pub fn write_reply<W: io::Write>(
    writer: &mut W,
    capacity: usize,
    unique: u64,
    reply: &Reply,
) -> io::Result<usize> {
    let (error, body): (i32, &[u8]) = match reply {
        Reply::None => return Ok(0),
        Reply::InPlace(n) if OUT_HEADER_LEN + n <= capacity => {
            let len = OUT_HEADER_LEN + n;
            let header = OutHeader {
                len: reply_len(len)?,
                error: 0,
                unique,
            };
            writer.write_all(header.as_bytes())?;
            return Ok(len);
        }
        Reply::InPlace(_) => (-Errno::ERANGE.0, &[]),
        Reply::Ok(body) if OUT_HEADER_LEN + body.len() <= capacity => (0, body),
        Reply::Ok(_) => (-Errno::ERANGE.0, &[]),
        Reply::Err(e) => (-e.0.abs(), &[]),
    };
    if capacity < OUT_HEADER_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no room for a reply: {capacity} writable bytes"),
        ));
    }
    let len = OUT_HEADER_LEN + body.len();
    let header = OutHeader {
        len: reply_len(len)?,
        error,
        unique,
    };
    writer.write_all(header.as_bytes())?;
    writer.write_all(body)?;
    Ok(len)
}

/// Appends one `fuse_dirent` (name padded to 8 bytes) to `out` if it fits in
/// `limit` bytes in total; false if it does not.
pub fn push_dirent(out: &mut Vec<u8>, limit: usize, dirent: Dirent, name: &[u8]) -> bool {
    let unpadded = std::mem::size_of::<Dirent>() + name.len();
    let padded = (unpadded + 7) & !7;
    if out.len() + padded > limit {
        return false;
    }
    out.extend_from_slice(dirent.as_bytes());
    out.extend_from_slice(name);
    out.resize(out.len() + padded - unpadded, 0);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn request_bytes(opcode: u32, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let header = InHeader {
            len: (IN_HEADER_LEN + body.len()) as u32,
            opcode,
            unique: 7,
            nodeid,
            ..Default::default()
        };
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn struct_sizes_match_fuse_h() {
        assert_eq!(IN_HEADER_LEN, 40);
        assert_eq!(OUT_HEADER_LEN, 16);
        assert_eq!(std::mem::size_of::<Attr>(), 88);
        assert_eq!(std::mem::size_of::<EntryOut>(), 128);
        assert_eq!(std::mem::size_of::<AttrOut>(), 104);
        assert_eq!(std::mem::size_of::<SetattrIn>(), 88);
        assert_eq!(std::mem::size_of::<InitOut>(), 64);
        assert_eq!(std::mem::size_of::<ReadIn>(), 40);
        assert_eq!(std::mem::size_of::<WriteIn>(), 40);
        assert_eq!(std::mem::size_of::<StatfsOut>(), 80);
        assert_eq!(std::mem::size_of::<CopyFileRangeIn>(), 56);
        assert_eq!(std::mem::size_of::<Dirent>(), 24);
        assert_eq!(std::mem::size_of::<ReleaseIn>(), 24);
    }

    #[test]
    fn a_request_parses_and_its_length_is_checked() {
        let bytes = request_bytes(Opcode::Lookup as u32, 1, b"name\0");
        let req = read_request(&mut &bytes[..], bytes.len()).unwrap();
        assert_eq!(req.header.opcode, 1);
        assert_eq!(Body::new(&req.body).take_name().unwrap(), b"name");
        // The header claims more than the chain holds, or less.
        assert!(matches!(
            read_request(&mut &bytes[..], bytes.len() + 1),
            Err((Some(_), ParseError::LengthMismatch { .. }))
        ));
        let mut short = bytes.clone();
        short[0] = 41;
        assert!(read_request(&mut &short[..], short.len()).is_err());
        assert!(matches!(
            read_request(&mut &bytes[..10], 10),
            Err((None, ParseError::ShortHeader(10)))
        ));
    }

    #[test]
    fn names_are_checked() {
        for bad in [&b"a/b\0"[..], b"\0", b"..\0", b".\0", b"no-nul"] {
            assert_eq!(Body::new(bad).take_name(), Err(Errno::EINVAL), "{bad:?}");
        }
        let long = [vec![b'x'; 256], vec![0]].concat();
        assert_eq!(Body::new(&long).take_name(), Err(Errno::ENAMETOOLONG));
        let mut body = Body::new(b"old\0new\0");
        assert_eq!(body.take_name().unwrap(), b"old");
        assert_eq!(body.take_name().unwrap(), b"new");
        assert!(body.rest().is_empty());
        assert_eq!(Body::new(&[1, 2, 3]).take::<OpenIn>(), Err(Errno::EINVAL));
    }

    #[test]
    fn replies_are_encoded() {
        let mut out = Vec::new();
        let n = write_reply(&mut out, 100, 9, &Reply::Ok(vec![1, 2, 3])).unwrap();
        assert_eq!(n, 19);
        let header = OutHeader::read_from_prefix(&out).unwrap().0;
        assert_eq!((header.len, header.error, header.unique), (19, 0, 9));
        out.clear();
        write_reply(&mut out, 100, 9, &Reply::Err(Errno::ENOENT)).unwrap();
        assert_eq!(
            OutHeader::read_from_prefix(&out).unwrap().0.error,
            -libc::ENOENT
        );
        // Too big for the writable part: ERANGE, header only.
        out.clear();
        assert_eq!(
            write_reply(&mut out, 17, 9, &Reply::Ok(vec![0; 2])).unwrap(),
            16
        );
        assert_eq!(
            OutHeader::read_from_prefix(&out).unwrap().0.error,
            -libc::ERANGE
        );
        assert!(write_reply(&mut out, 15, 9, &Reply::Err(Errno::EIO)).is_err());
        assert_eq!(write_reply(&mut out, 0, 9, &Reply::None).unwrap(), 0);
    }

    #[test]
    fn dirents_are_padded_and_bounded() {
        let mut out = Vec::new();
        let d = Dirent {
            ino: 1,
            off: 1,
            namelen: 1,
            typ: 4,
        };
        assert!(push_dirent(&mut out, 64, d, b"a"));
        assert_eq!(out.len(), 32);
        assert!(!push_dirent(&mut out, 63, d, b"b"));
        assert_eq!(out.len(), 32);
    }

    proptest! {
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), extra in 0usize..64) {
            let available = bytes.len().saturating_sub(extra);
            if let Ok(req) = read_request(&mut &bytes[..], available) {
                prop_assert_eq!(req.header.len as usize, available);
                let mut body = Body::new(&req.body);
                let _ = body.take::<SetattrIn>();
                let _ = body.take_name();
                let _ = body.take_cstr();
                let _ = body.take_bytes(extra);
                let _ = Opcode::from_u32(req.header.opcode);
            }
        }

        #[test]
        fn well_formed_requests_round_trip(opcode in 0u32..64, nodeid: u64, body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let bytes = request_bytes(opcode, nodeid, &body);
            let req = read_request(&mut &bytes[..], bytes.len()).unwrap();
            prop_assert_eq!(req.header.nodeid, nodeid);
            prop_assert_eq!(req.body.len() + req.data_len, body.len());
            prop_assert_eq!(&req.body[..], &body[..req.body.len()]);
        }
    }
}
