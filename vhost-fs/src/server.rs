//! The FUSE server: decodes a request ([`fuse::Request`]) into one typed call on a
//! [`FileSystem`] and encodes what it answers as the reply. This is where guest
//! bytes become arguments: every struct is length-checked ([`Body::take`]), every
//! name is a single checked component ([`Body::take_name`]), a request before INIT
//! is refused, and anything malformed is answered with an errno (and at most a
//! rate-limited log line), never a panic. How files are kept is the file
//! system's business; nothing here touches the host.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use vhostkit_common::{guest_error, guest_info};
use zerocopy::IntoBytes;

use crate::filesystem::{
    Attr, Context, CopyRange, DirEntry, Entry, FileData, FileSystem, Handle, Inode, OpenOptions,
    Result, SetAttr, SetTime, XattrReply,
};
use crate::fuse::{self, *};

/// A FUSE session on a file system: the file system, whether INIT has come, and
/// what the file system answered to it.
pub struct Server<F> {
    fs: F,
    initialized: AtomicBool,
    /// The file system has extended attributes ([`crate::filesystem::InitOptions::xattr`]).
    xattr: AtomicBool,
}

/// The server of the daemon: FUSE on the passthrough file system.
pub type FsServer = Server<crate::passthrough::PassthroughFs>;

/// A count in a 32-bit wire field: the most it can say if it does not fit (a
/// negative one, which the kernel never gives for these, as 0).
fn wire_u32<T: TryInto<u32> + Copy + PartialOrd + Default>(v: T) -> u32 {
    if v < T::default() {
        return 0;
    }
    v.try_into().unwrap_or(u32::MAX)
}

/// A device number in FUSE's 32-bit field, in the kernel's new_encode_dev form
/// (major in bits 8-19, minor in bits 0-7 and 20-31). glibc's dev_t puts the
/// same bits in the same places for any major below 4096 and minor below 2^20,
/// so the low 32 bits are the encoding; larger numbers cannot be carried.
#[allow(clippy::cast_possible_truncation)]
fn wire_rdev(rdev: u64) -> u32 {
    rdev as u32
}

/// The wire form of a node's attributes.
fn fuse_attr(attr: &Attr, submount: bool) -> fuse::Attr {
    fuse::Attr {
        ino: attr.ino,
        size: attr.size,
        blocks: attr.blocks,
        // FUSE carries times as the bits of a signed count (the kernel reads them
        // back as s64) and nanoseconds below 10^9.
        atime: attr.atime.cast_unsigned(),
        mtime: attr.mtime.cast_unsigned(),
        ctime: attr.ctime.cast_unsigned(),
        atimensec: wire_u32(attr.atime_nsec),
        mtimensec: wire_u32(attr.mtime_nsec),
        ctimensec: wire_u32(attr.ctime_nsec),
        mode: attr.mode,
        nlink: wire_u32(attr.nlink),
        uid: attr.uid,
        gid: attr.gid,
        rdev: wire_rdev(attr.rdev),
        blksize: wire_u32(attr.blksize),
        flags: if submount { ATTR_SUBMOUNT } else { 0 },
    }
}

fn entry_out(entry: &Entry) -> EntryOut {
    EntryOut {
        nodeid: entry.inode.0,
        generation: entry.generation,
        entry_valid: entry.entry_timeout.as_secs(),
        attr_valid: entry.attr_timeout.as_secs(),
        entry_valid_nsec: entry.entry_timeout.subsec_nanos(),
        attr_valid_nsec: entry.attr_timeout.subsec_nanos(),
        attr: fuse_attr(&entry.attr, entry.submount),
    }
}

fn attr_out((attr, timeout): (Attr, Duration)) -> Vec<u8> {
    AttrOut {
        attr_valid: timeout.as_secs(),
        attr_valid_nsec: timeout.subsec_nanos(),
        dummy: 0,
        attr: fuse_attr(&attr, false),
    }
    .as_bytes()
    .to_vec()
}

fn open_flags(options: OpenOptions) -> u32 {
    let mut flags = 0;
    if options.direct_io {
        flags |= FOPEN_DIRECT_IO;
    }
    if options.keep_cache {
        flags |= FOPEN_KEEP_CACHE;
    }
    flags
}

fn open_out(handle: Handle, open_flags: u32) -> OpenOut {
    OpenOut {
        fh: handle.0,
        open_flags,
        padding: 0,
    }
}

fn xattr_out(reply: XattrReply) -> Vec<u8> {
    match reply {
        XattrReply::Value(value) => value,
        XattrReply::Size(size) => GetxattrOut { size, padding: 0 }.as_bytes().to_vec(),
    }
}

fn time(valid: u32, set: u32, now: u32, sec: u64, nsec: u32) -> Option<SetTime> {
    if valid & set == 0 {
        None
    } else if valid & now != 0 {
        Some(SetTime::Now)
    } else {
        Some(SetTime::To { sec, nsec })
    }
}

/// The attributes a `fuse_setattr_in` changes (FATTR_FH is the handle, apart).
fn set_attr(set: &SetattrIn) -> SetAttr {
    let valid = set.valid;
    let given = |bit: u32| valid & bit != 0;
    SetAttr {
        mode: given(fattr::MODE).then_some(set.mode),
        uid: given(fattr::UID).then_some(set.uid),
        gid: given(fattr::GID).then_some(set.gid),
        size: given(fattr::SIZE).then_some(set.size),
        atime: time(
            valid,
            fattr::ATIME,
            fattr::ATIME_NOW,
            set.atime,
            set.atimensec,
        ),
        mtime: time(
            valid,
            fattr::MTIME,
            fattr::MTIME_NOW,
            set.mtime,
            set.mtimensec,
        ),
    }
}

impl<F: FileSystem> Server<F> {
    pub fn new(fs: F) -> Self {
        Server {
            fs,
            initialized: AtomicBool::new(false),
            xattr: AtomicBool::new(false),
        }
    }

    /// The file system served.
    pub fn fs(&self) -> &F {
        &self.fs
    }

    /// Answers one request. `reply_room` is the writable space the reply may use
    /// (out header included); `data` moves READ and WRITE data.
    pub fn handle_request(
        &self,
        request: &Request,
        reply_room: usize,
        data: &mut dyn FileData,
    ) -> Reply {
        let header = &request.header;
        let Some(opcode) = Opcode::from_u32(header.opcode) else {
            guest_error!("unknown FUSE opcode {}", header.opcode);
            return Reply::Err(Errno::ENOSYS);
        };
        if opcode != Opcode::Init && !self.initialized.load(Ordering::Acquire) {
            guest_error!("FUSE {opcode:?} before INIT");
            return Reply::Err(Errno::EIO);
        }
        let mut body = Body::new(&request.body);
        let body = &mut body;
        let ctx = Context {
            uid: header.uid,
            gid: header.gid,
            pid: header.pid,
        };
        let inode = Inode(header.nodeid);
        let room = reply_room.saturating_sub(OUT_HEADER_LEN);
        let fs = &self.fs;
        let result: Result<Vec<u8>> = match opcode {
            Opcode::Init => self.init(body),
            Opcode::Destroy => {
                fs.destroy();
                self.initialized.store(false, Ordering::Release);
                Ok(Vec::new())
            }
            Opcode::Lookup => body
                .take_name_c_str()
                .and_then(|name| fs.lookup(ctx, inode, name))
                .map(|e| entry_out(&e).as_bytes().to_vec()),
            Opcode::Forget => {
                if let Ok(forget) = body.take::<ForgetIn>() {
                    fs.forget(inode, forget.nlookup);
                }
                return Reply::None;
            }
            Opcode::BatchForget => {
                self.batch_forget(body);
                return Reply::None;
            }
            Opcode::Getattr => body.take::<GetattrIn>().and_then(|get| {
                let handle = (get.getattr_flags & GETATTR_FH != 0).then_some(Handle(get.fh));
                fs.getattr(ctx, inode, handle).map(attr_out)
            }),
            Opcode::Setattr => body.take::<SetattrIn>().and_then(|set| {
                let handle = (set.valid & fattr::FH != 0).then_some(Handle(set.fh));
                fs.setattr(ctx, inode, set_attr(&set), handle).map(attr_out)
            }),
            Opcode::Readlink => fs.readlink(ctx, inode),
            Opcode::Symlink => self.symlink(ctx, inode, body),
            Opcode::Mknod => self.mknod(ctx, inode, body),
            Opcode::Mkdir => self.mkdir(ctx, inode, body),
            Opcode::Unlink => body
                .take_name_c_str()
                .and_then(|name| fs.unlink(ctx, inode, name))
                .map(|()| Vec::new()),
            Opcode::Rmdir => body
                .take_name_c_str()
                .and_then(|name| fs.rmdir(ctx, inode, name))
                .map(|()| Vec::new()),
            Opcode::Rename => body
                .take::<RenameIn>()
                .and_then(|r| self.rename(ctx, inode, Inode(r.newdir), 0, body)),
            Opcode::Rename2 => body
                .take::<Rename2In>()
                .and_then(|r| self.rename(ctx, inode, Inode(r.newdir), r.flags, body)),
            Opcode::Link => self.link(ctx, inode, body),
            Opcode::Open => body.take::<OpenIn>().and_then(|open| {
                let (handle, options) = fs.open(ctx, inode, open.flags)?;
                Ok(open_out(handle, open_flags(options)).as_bytes().to_vec())
            }),
            Opcode::Opendir => body.take::<OpenIn>().and_then(|open| {
                let handle = fs.opendir(ctx, inode, open.flags)?;
                Ok(open_out(handle, 0).as_bytes().to_vec())
            }),
            Opcode::Read => {
                return body
                    .take::<ReadIn>()
                    .and_then(|read| {
                        let size = (read.size as usize).min(MAX_WRITE as usize).min(room);
                        fs.read(ctx, inode, Handle(read.fh), read.offset, size, data)
                    })
                    .map_or_else(Reply::Err, Reply::InPlace)
            }
            Opcode::Write => body.take::<WriteIn>().and_then(|write| {
                if request.data_len != write.size as usize {
                    guest_error!(
                        "WRITE: size {} but {} data bytes",
                        write.size,
                        request.data_len
                    );
                    return Err(Errno::EINVAL);
                }
                let handle = Handle(write.fh);
                let done = fs.write(ctx, inode, handle, write.offset, request.data_len, data)?;
                Ok(write_out(done))
            }),
            Opcode::Statfs => fs.statfs(ctx, inode).map(|st| {
                StatfsOut {
                    blocks: st.blocks,
                    bfree: st.bfree,
                    bavail: st.bavail,
                    files: st.files,
                    ffree: st.ffree,
                    bsize: wire_u32(st.bsize),
                    namelen: wire_u32(st.namelen),
                    frsize: wire_u32(st.frsize),
                    ..Default::default()
                }
                .as_bytes()
                .to_vec()
            }),
            Opcode::Release => body
                .take::<ReleaseIn>()
                .and_then(|r| fs.release(ctx, inode, Handle(r.fh)))
                .map(|()| Vec::new()),
            Opcode::Releasedir => body
                .take::<ReleaseIn>()
                .and_then(|r| fs.releasedir(ctx, inode, Handle(r.fh)))
                .map(|()| Vec::new()),
            Opcode::Fsync => body
                .take::<FsyncIn>()
                .and_then(|f| fs.fsync(ctx, inode, f.fsync_flags & 1 != 0, Handle(f.fh)))
                .map(|()| Vec::new()),
            Opcode::Fsyncdir => body
                .take::<FsyncIn>()
                .and_then(|f| fs.fsyncdir(ctx, inode, f.fsync_flags & 1 != 0, Handle(f.fh)))
                .map(|()| Vec::new()),
            Opcode::Flush => body
                .take::<FlushIn>()
                .and_then(|f| fs.flush(ctx, inode, Handle(f.fh)))
                .map(|()| Vec::new()),
            // A file system without xattrs answers ENOSYS (and the guest stops
            // asking) whatever the body holds.
            Opcode::Setxattr | Opcode::Getxattr | Opcode::Listxattr | Opcode::Removexattr
                if !self.xattr.load(Ordering::Acquire) =>
            {
                Err(Errno::ENOSYS)
            }
            Opcode::Setxattr => self.setxattr(ctx, inode, body),
            Opcode::Getxattr => self.getxattr(ctx, inode, body),
            Opcode::Listxattr => body
                .take::<GetxattrIn>()
                .and_then(|get| fs.listxattr(ctx, inode, get.size))
                .map(xattr_out),
            Opcode::Removexattr => body
                .take_c_str()
                .and_then(|name| fs.removexattr(ctx, inode, name))
                .map(|()| Vec::new()),
            Opcode::Readdir => self.readdir(ctx, inode, body, room, false),
            Opcode::Readdirplus => self.readdir(ctx, inode, body, room, true),
            Opcode::Access => body
                .take::<AccessIn>()
                .and_then(|a| fs.access(ctx, inode, a.mask))
                .map(|()| Vec::new()),
            Opcode::Create => self.create(ctx, inode, body),
            Opcode::Fallocate => body.take::<FallocateIn>().and_then(|f| {
                fs.fallocate(ctx, inode, Handle(f.fh), f.mode, f.offset, f.length)?;
                Ok(Vec::new())
            }),
            Opcode::Lseek => body.take::<LseekIn>().and_then(|seek| {
                let offset = fs.lseek(ctx, inode, Handle(seek.fh), seek.offset, seek.whence)?;
                Ok(LseekOut { offset }.as_bytes().to_vec())
            }),
            Opcode::CopyFileRange => body.take::<CopyFileRangeIn>().and_then(|copy| {
                let range = CopyRange {
                    inode_in: inode,
                    handle_in: Handle(copy.fh_in),
                    offset_in: copy.off_in,
                    inode_out: Inode(copy.nodeid_out),
                    handle_out: Handle(copy.fh_out),
                    offset_out: copy.off_out,
                    len: copy.len,
                    flags: copy.flags,
                };
                fs.copy_file_range(ctx, range).map(write_out)
            }),
            Opcode::Syncfs => fs.syncfs(ctx, inode).map(|()| Vec::new()),
            other => {
                guest_error!("FUSE {other:?} is not implemented");
                Err(Errno::ENOSYS)
            }
        };
        result.into()
    }

    fn init(&self, body: &mut Body<'_>) -> Result<Vec<u8>> {
        let init = body.take::<InitIn>()?;
        if init.major != KERNEL_VERSION {
            guest_error!("FUSE INIT: unsupported major version {}", init.major);
            return Err(Errno::EPROTO);
        }
        if init.minor < MIN_KERNEL_MINOR_VERSION {
            guest_error!("FUSE INIT: minor version {} too old", init.minor);
            return Err(Errno::EPROTO);
        }
        let options = self.fs.init()?;
        let mut wanted = init_flags::ASYNC_READ
            | init_flags::ATOMIC_O_TRUNC
            | init_flags::BIG_WRITES
            | init_flags::DO_READDIRPLUS
            | init_flags::READDIRPLUS_AUTO
            | init_flags::ASYNC_DIO
            | init_flags::PARALLEL_DIROPS
            | init_flags::MAX_PAGES;
        if options.submounts {
            wanted |= init_flags::SUBMOUNTS;
        }
        let flags = init.flags & wanted;
        self.xattr.store(options.xattr, Ordering::Release);
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

    fn symlink(&self, ctx: Context, inode: Inode, body: &mut Body<'_>) -> Result<Vec<u8>> {
        let name = body.take_name_c_str()?;
        let target = body.take_c_str()?;
        entry(self.fs.symlink(ctx, inode, name, target))
    }

    fn mknod(&self, ctx: Context, inode: Inode, body: &mut Body<'_>) -> Result<Vec<u8>> {
        let mknod = body.take::<MknodIn>()?;
        let name = body.take_name_c_str()?;
        entry(self.fs.mknod(ctx, inode, name, mknod.mode, mknod.rdev))
    }

    fn mkdir(&self, ctx: Context, inode: Inode, body: &mut Body<'_>) -> Result<Vec<u8>> {
        let mkdir = body.take::<MkdirIn>()?;
        let name = body.take_name_c_str()?;
        entry(self.fs.mkdir(ctx, inode, name, mkdir.mode))
    }

    fn link(&self, ctx: Context, inode: Inode, body: &mut Body<'_>) -> Result<Vec<u8>> {
        let link = body.take::<LinkIn>()?;
        let name = body.take_name_c_str()?;
        entry(self.fs.link(ctx, Inode(link.oldnodeid), inode, name))
    }

    fn setxattr(&self, ctx: Context, inode: Inode, body: &mut Body<'_>) -> Result<Vec<u8>> {
        let set = body.take::<SetxattrIn>()?;
        let name = body.take_c_str()?;
        let value = body.take_bytes(set.size as usize)?;
        self.fs.setxattr(ctx, inode, name, value, set.flags)?;
        Ok(Vec::new())
    }

    fn getxattr(&self, ctx: Context, inode: Inode, body: &mut Body<'_>) -> Result<Vec<u8>> {
        let get = body.take::<GetxattrIn>()?;
        let name = body.take_c_str()?;
        self.fs.getxattr(ctx, inode, name, get.size).map(xattr_out)
    }

    fn create(&self, ctx: Context, inode: Inode, body: &mut Body<'_>) -> Result<Vec<u8>> {
        let create = body.take::<CreateIn>()?;
        let name = body.take_name_c_str()?;
        let (entry, handle, options) =
            self.fs
                .create(ctx, inode, name, create.mode, create.flags)?;
        let mut out = entry_out(&entry).as_bytes().to_vec();
        out.extend_from_slice(open_out(handle, open_flags(options)).as_bytes());
        Ok(out)
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
            self.fs.forget(Inode(one.nodeid), one.nlookup);
        }
    }

    fn rename(
        &self,
        ctx: Context,
        olddir: Inode,
        newdir: Inode,
        flags: u32,
        body: &mut Body<'_>,
    ) -> Result<Vec<u8>> {
        let oldname = body.take_name_c_str()?;
        let newname = body.take_name_c_str()?;
        self.fs
            .rename(ctx, olddir, oldname, newdir, newname, flags)
            .map(|()| Vec::new())
    }

    /// READDIR and READDIRPLUS: as many entries as fit in the reply (and in the
    /// guest's size). READDIRPLUS looks each entry up (one lookup the guest holds),
    /// but only once it is sure to fit; an entry gone since it was read is left out.
    fn readdir(
        &self,
        ctx: Context,
        inode: Inode,
        body: &mut Body<'_>,
        room: usize,
        plus: bool,
    ) -> Result<Vec<u8>> {
        let read = body.take::<ReadIn>()?;
        let limit = (read.size as usize).min(room).min(MAX_WRITE as usize);
        let mut out = Vec::with_capacity(limit);
        // A FUSE dirent is at least as long as the kernel's (READDIRPLUS entries
        // about 5x for short names): ask for about as many entries as fit.
        let hint = if plus { limit / 4 } else { limit };
        let mut add = |entry: DirEntry<'_>| -> bool {
            let name = entry.name.to_bytes();
            let dirent = Dirent {
                ino: entry.ino,
                off: entry.offset,
                namelen: wire_u32(name.len()),
                typ: u32::from(entry.kind),
            };
            if !plus {
                return fuse::push_dirent(&mut out, limit, dirent, name);
            }
            let needed = std::mem::size_of::<EntryOut>()
                + ((std::mem::size_of::<Dirent>() + name.len() + 7) & !7);
            if out.len() + needed > limit {
                return false;
            }
            let looked_up = if name == b"." || name == b".." {
                EntryOut::default()
            } else {
                match self.fs.lookup(ctx, inode, entry.name) {
                    Ok(e) => entry_out(&e),
                    // Gone since it was read: leave it out.
                    Err(_) => return true,
                }
            };
            out.extend_from_slice(looked_up.as_bytes());
            fuse::push_dirent(&mut out, limit, dirent, name);
            true
        };
        self.fs
            .readdir(ctx, inode, Handle(read.fh), read.offset, hint, &mut add)?;
        Ok(out)
    }
}

fn entry(result: Result<Entry>) -> Result<Vec<u8>> {
    result.map(|e| entry_out(&e).as_bytes().to_vec())
}

fn write_out(size: usize) -> Vec<u8> {
    WriteOut {
        size: wire_u32(size),
        padding: 0,
    }
    .as_bytes()
    .to_vec()
}

#[cfg(test)]
mod tests;
