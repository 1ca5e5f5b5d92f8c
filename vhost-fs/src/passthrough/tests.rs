//! File-system operations on a scratch folder, called on the [`FileSystem`] trait
//! directly: no FUSE message is encoded or decoded.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{FsOptions, PassthroughFs};
use crate::config::CachePolicy;
use crate::filesystem::*;

const CTX: Context = Context {
    uid: 0,
    gid: 0,
    pid: 1,
};
const ROOT: Inode = Inode::ROOT;

/// `base/share` (the shared folder, holding `file` = "contents" and the folder
/// `sub`) and `base/outside`, removed on drop.
pub(crate) struct Scratch {
    base: PathBuf,
    pub(crate) share: PathBuf,
}

impl Scratch {
    pub(crate) fn new(tag: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir().join(format!(
            "vhost-fs-passthrough-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let share = base.join("share");
        std::fs::create_dir_all(share.join("sub")).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        std::fs::write(share.join("file"), b"contents").unwrap();
        Scratch { base, share }
    }

    fn fs(&self) -> PassthroughFs {
        self.fs_with(options())
    }

    fn fs_with(&self, options: FsOptions) -> PassthroughFs {
        let fs = PassthroughFs::new(&self.share, options).unwrap();
        fs.init().unwrap();
        fs
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

pub(crate) fn options() -> FsOptions {
    FsOptions {
        readonly: false,
        xattr: true,
        cache: CachePolicy::Auto,
        announce_submounts: true,
        file_handles: false,
        allow_direct_io: false,
    }
}

fn c(name: &str) -> CString {
    CString::new(name).unwrap()
}

/// File data through plain buffers: WRITE takes `write`, READ fills `read`.
#[derive(Default)]
struct Buffers {
    write: Vec<u8>,
    read: Vec<u8>,
}

impl FileData for Buffers {
    fn read_from(&mut self, file: &File, offset: i64, len: usize) -> std::io::Result<usize> {
        self.read.resize(len, 0);
        let n = file.read_at(&mut self.read, offset as u64)?;
        self.read.truncate(n);
        Ok(n)
    }

    fn write_to(&mut self, file: &File, offset: i64, len: usize) -> std::io::Result<usize> {
        file.write_at(&self.write[..len.min(self.write.len())], offset as u64)
    }
}

fn read(fs: &PassthroughFs, handle: Handle, offset: u64, size: usize) -> Result<Vec<u8>> {
    let mut data = Buffers::default();
    let n = fs.read(CTX, ROOT, handle, offset, size, &mut data)?;
    assert_eq!(n, data.read.len());
    Ok(data.read)
}

fn write(fs: &PassthroughFs, handle: Handle, offset: u64, bytes: &[u8]) -> Result<usize> {
    let mut data = Buffers {
        write: bytes.to_vec(),
        read: Vec::new(),
    };
    fs.write(CTX, ROOT, handle, offset, bytes.len(), &mut data)
}

/// Every entry of the folder `handle` from `offset`: (name, offset of the next).
fn list(fs: &PassthroughFs, dir: Inode, handle: Handle, offset: u64) -> Vec<(String, u64)> {
    let mut names = Vec::new();
    fs.readdir(CTX, dir, handle, offset, 4096, &mut |e: DirEntry<'_>| {
        names.push((e.name.to_string_lossy().into_owned(), e.offset));
        true
    })
    .unwrap();
    names
}

fn sorted(names: &[(String, u64)]) -> Vec<&str> {
    let mut v: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
    v.sort();
    v
}

#[test]
fn lookups_are_counted_per_inode_and_forgotten() {
    let s = Scratch::new("lookup");
    let fs = s.fs();
    let a = fs.lookup(CTX, ROOT, &c("file")).unwrap();
    let b = fs.lookup(CTX, ROOT, &c("file")).unwrap();
    assert_eq!(a.inode, b.inode, "one inode for two lookups");
    assert_ne!(a.inode, ROOT);
    assert_eq!(a.attr.file_type(), libc::S_IFREG);
    assert_eq!(a.attr.size, 8);
    assert_eq!(
        a.attr.ino,
        std::fs::metadata(s.share.join("file")).unwrap().ino()
    );
    assert!(!a.submount);
    assert_eq!(a.entry_timeout, std::time::Duration::from_secs(1));
    assert_eq!(fs.node_count(), 2);
    fs.forget(a.inode, 1);
    assert!(fs.getattr(CTX, a.inode, None).is_ok(), "one lookup left");
    fs.forget(a.inode, 1);
    assert_eq!(fs.node_count(), 1);
    assert_eq!(fs.getattr(CTX, a.inode, None), Err(Errno::ENOENT));
    // The root is never forgotten; unknown inodes are ENOENT.
    fs.forget(ROOT, 100);
    assert!(fs.getattr(CTX, ROOT, None).is_ok());
    assert_eq!(fs.lookup(CTX, Inode(999), &c("file")), Err(Errno::ENOENT));
    assert_eq!(fs.lookup(CTX, ROOT, &c("missing")), Err(Errno::ENOENT));
    // A new lookup after the forget is a new inode number.
    let again = fs.lookup(CTX, ROOT, &c("file")).unwrap();
    assert_ne!(again.inode, a.inode);
}

#[test]
fn create_write_read_and_release() {
    let s = Scratch::new("create");
    let fs = s.fs();
    let (entry, handle, options) = fs
        .create(CTX, ROOT, &c("new"), 0o640, libc::O_RDWR as u32)
        .unwrap();
    assert_eq!(options, OpenOptions::default());
    assert_eq!(entry.attr.file_type(), libc::S_IFREG);
    assert_eq!(entry.attr.mode & 0o7777, 0o640);
    assert_eq!(write(&fs, handle, 0, b"hello world"), Ok(11));
    assert_eq!(read(&fs, handle, 6, 100).unwrap(), b"world");
    assert_eq!(read(&fs, handle, 100, 10).unwrap(), b"");
    assert_eq!(read(&fs, handle, u64::MAX, 10), Err(Errno::EINVAL));
    assert_eq!(std::fs::read(s.share.join("new")).unwrap(), b"hello world");
    let (attr, _) = fs.getattr(CTX, entry.inode, Some(handle)).unwrap();
    assert_eq!(attr.size, 11);
    assert_eq!(
        fs.lseek(CTX, entry.inode, handle, 0, libc::SEEK_END as u32),
        Ok(11)
    );
    assert_eq!(fs.flush(CTX, entry.inode, handle), Ok(()));
    assert_eq!(fs.fsync(CTX, entry.inode, true, handle), Ok(()));
    assert_eq!(fs.handle_count(), 1);
    assert_eq!(fs.release(CTX, entry.inode, handle), Ok(()));
    assert_eq!(fs.release(CTX, entry.inode, handle), Err(Errno::EBADF));
    assert_eq!(read(&fs, handle, 0, 1), Err(Errno::EBADF));
    assert_eq!(fs.handle_count(), 0);

    // The name exists: O_EXCL refuses, without it the file is opened (and truncated).
    let excl = (libc::O_RDWR | libc::O_EXCL) as u32;
    assert_eq!(
        fs.create(CTX, ROOT, &c("new"), 0o600, excl).map(drop),
        Err(Errno(libc::EEXIST))
    );
    let trunc = (libc::O_RDWR | libc::O_TRUNC) as u32;
    let (again, handle, _) = fs.create(CTX, ROOT, &c("new"), 0o600, trunc).unwrap();
    assert_eq!(again.inode, entry.inode);
    assert_eq!(
        again.attr.mode & 0o7777,
        0o640,
        "the mode of the existing file"
    );
    assert_eq!(read(&fs, handle, 0, 100).unwrap(), b"");
    // A folder is not what a CREATE answers.
    assert_eq!(
        fs.create(CTX, ROOT, &c("sub"), 0o600, libc::O_RDWR as u32)
            .map(drop),
        Err(Errno(libc::EISDIR))
    );
}

#[test]
fn open_read_write_copy_and_allocate() {
    let s = Scratch::new("open");
    let fs = s.fs();
    let file = fs.lookup(CTX, ROOT, &c("file")).unwrap().inode;
    let (rd, _) = fs.open(CTX, file, libc::O_RDONLY as u32).unwrap();
    assert_eq!(read(&fs, rd, 0, 4).unwrap(), b"cont");
    let (copy, out, _) = fs
        .create(CTX, ROOT, &c("copy"), 0o600, libc::O_RDWR as u32)
        .unwrap();
    let range = CopyRange {
        inode_in: file,
        handle_in: rd,
        offset_in: 3,
        inode_out: copy.inode,
        handle_out: out,
        offset_out: 0,
        len: 100,
        flags: 0,
    };
    assert_eq!(fs.copy_file_range(CTX, range), Ok(5));
    assert_eq!(std::fs::read(s.share.join("copy")).unwrap(), b"tents");
    assert_eq!(fs.fallocate(CTX, copy.inode, out, 0, 0, 4096), Ok(()));
    assert_eq!(std::fs::metadata(s.share.join("copy")).unwrap().len(), 4096);
    // Folders open read-only, and only through OPENDIR for listing.
    let sub = fs.lookup(CTX, ROOT, &c("sub")).unwrap().inode;
    assert_eq!(
        fs.open(CTX, sub, libc::O_RDWR as u32).map(drop),
        Err(Errno(libc::EISDIR))
    );
    assert_eq!(fs.access(CTX, file, libc::R_OK as u32), Ok(()));
    assert_eq!(fs.statfs(CTX, ROOT).map(|s| s.namelen), Ok(255));
}

#[test]
fn readdir_lists_every_entry_and_resumes_at_an_offset() {
    let s = Scratch::new("readdir");
    let fs = s.fs();
    let dir = fs.mkdir(CTX, ROOT, &c("d"), 0o755).unwrap().inode;
    for name in ["a", "b", "c"] {
        let (_, h, _) = fs.create(CTX, dir, &c(name), 0o644, 0).unwrap();
        fs.release(CTX, dir, h).unwrap();
    }
    let handle = fs.opendir(CTX, dir, libc::O_RDONLY as u32).unwrap();
    let all = list(&fs, dir, handle, 0);
    assert_eq!(sorted(&all), [".", "..", "a", "b", "c"]);
    // Stop after the first entry (not taking the second), then go on from it.
    let mut first = Vec::new();
    fs.readdir(CTX, dir, handle, 0, 4096, &mut |e: DirEntry<'_>| {
        if !first.is_empty() {
            return false;
        }
        first.push((e.name.to_string_lossy().into_owned(), e.offset));
        true
    })
    .unwrap();
    let rest = list(&fs, dir, handle, first[0].1);
    assert_eq!(rest.len(), 4);
    assert_eq!(sorted(&[first, rest].concat()), sorted(&all));
    assert_eq!(fs.fsyncdir(CTX, dir, false, handle), Ok(()));
    assert_eq!(fs.releasedir(CTX, dir, handle), Ok(()));
    assert_eq!(
        fs.readdir(CTX, dir, handle, 0, 4096, &mut |_: DirEntry<'_>| true),
        Err(Errno::EBADF)
    );
}

#[test]
fn rename_link_unlink_and_rmdir() {
    let s = Scratch::new("rename");
    let fs = s.fs();
    let sub = fs.lookup(CTX, ROOT, &c("sub")).unwrap().inode;
    fs.rename(CTX, ROOT, &c("file"), sub, &c("moved"), 0)
        .unwrap();
    assert_eq!(fs.lookup(CTX, ROOT, &c("file")), Err(Errno::ENOENT));
    assert_eq!(
        std::fs::read(s.share.join("sub/moved")).unwrap(),
        b"contents"
    );
    std::fs::write(s.share.join("other"), b"x").unwrap();
    assert_eq!(
        fs.rename(
            CTX,
            ROOT,
            &c("other"),
            sub,
            &c("moved"),
            libc::RENAME_NOREPLACE
        ),
        Err(Errno(libc::EEXIST))
    );
    let moved = fs.lookup(CTX, sub, &c("moved")).unwrap();
    let linked = fs.link(CTX, moved.inode, ROOT, &c("hard")).unwrap();
    assert_eq!(linked.inode, moved.inode);
    assert_eq!(linked.attr.nlink, 2);
    let target = fs.symlink(CTX, ROOT, &c("soft"), &c("sub/moved")).unwrap();
    assert_eq!(target.attr.file_type(), libc::S_IFLNK);
    assert_eq!(fs.readlink(CTX, target.inode).unwrap(), b"sub/moved");
    assert_eq!(
        fs.symlink(CTX, ROOT, &c("empty"), &c("")).map(drop),
        Err(Errno::EINVAL)
    );
    assert_eq!(fs.rmdir(CTX, ROOT, &c("sub")), Err(Errno(libc::ENOTEMPTY)));
    assert_eq!(fs.unlink(CTX, ROOT, &c("sub")), Err(Errno(libc::EISDIR)));
    fs.unlink(CTX, sub, &c("moved")).unwrap();
    fs.rmdir(CTX, ROOT, &c("sub")).unwrap();
    // The inode looked up stays usable through its descriptor.
    assert_eq!(fs.getattr(CTX, moved.inode, None).unwrap().0.nlink, 1);
    let mut names: Vec<_> = std::fs::read_dir(&s.share)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["hard", "other", "soft"]);
}

#[test]
fn setattr_changes_mode_size_times_and_owner() {
    let s = Scratch::new("setattr");
    let fs = s.fs();
    let file = fs.lookup(CTX, ROOT, &c("file")).unwrap().inode;
    let set = SetAttr {
        mode: Some(0o600),
        size: Some(3),
        atime: Some(SetTime::To {
            sec: 1_000_000,
            nsec: 5,
        }),
        mtime: Some(SetTime::To {
            sec: 2_000_000,
            nsec: 0,
        }),
        uid: Some(1234),
        gid: Some(5678),
    };
    let (attr, _) = fs.setattr(CTX, file, set, None).unwrap();
    assert_eq!(attr.mode, libc::S_IFREG | 0o600);
    assert_eq!((attr.size, attr.uid, attr.gid), (3, 1234, 5678));
    assert_eq!(
        (attr.atime, attr.atime_nsec, attr.mtime),
        (1_000_000, 5, 2_000_000)
    );
    assert_eq!(std::fs::read(s.share.join("file")).unwrap(), b"con");
    // Through a handle, and extending.
    let (h, _) = fs.open(CTX, file, libc::O_RDWR as u32).unwrap();
    let grow = SetAttr {
        size: Some(10),
        ..SetAttr::default()
    };
    assert_eq!(fs.setattr(CTX, file, grow, Some(h)).unwrap().0.size, 10);
    assert_eq!(
        fs.setattr(CTX, file, grow, Some(Handle(999))).map(drop),
        Err(Errno::EBADF)
    );
    let too_big = SetAttr {
        size: Some(u64::MAX),
        ..SetAttr::default()
    };
    assert_eq!(
        fs.setattr(CTX, file, too_big, None).map(drop),
        Err(Errno::EINVAL)
    );
    // A folder opens, but not for writing.
    let sub = fs.lookup(CTX, ROOT, &c("sub")).unwrap().inode;
    let truncate = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    assert_eq!(
        fs.setattr(CTX, sub, truncate, None).map(drop),
        Err(Errno(libc::EISDIR))
    );
    let before = fs.getattr(CTX, file, None).unwrap().0;
    let now = SetAttr {
        mtime: Some(SetTime::Now),
        ..SetAttr::default()
    };
    let (attr, _) = fs.setattr(CTX, file, now, None).unwrap();
    assert!(attr.mtime > 2_000_000);
    assert_eq!(
        (attr.atime, attr.atime_nsec),
        (before.atime, before.atime_nsec),
        "atime left alone"
    );
}

#[test]
fn extended_attributes_round_trip() {
    let s = Scratch::new("xattr");
    let fs = s.fs();
    let file = fs.lookup(CTX, ROOT, &c("file")).unwrap().inode;
    let name = c("trusted.vhostkit");
    fs.setxattr(CTX, file, &name, b"value", 0).unwrap();
    assert_eq!(fs.getxattr(CTX, file, &name, 0), Ok(XattrReply::Size(5)));
    assert_eq!(
        fs.getxattr(CTX, file, &name, 64),
        Ok(XattrReply::Value(b"value".to_vec()))
    );
    assert_eq!(fs.getxattr(CTX, file, &name, 2), Err(Errno::ERANGE));
    match fs.listxattr(CTX, file, 1024).unwrap() {
        XattrReply::Value(names) => assert!(
            names.split(|&b| b == 0).any(|n| n == name.to_bytes()),
            "{names:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fs.setxattr(CTX, file, &name, b"x", libc::XATTR_CREATE as u32),
        Err(Errno(libc::EEXIST))
    );
    fs.removexattr(CTX, file, &name).unwrap();
    assert_eq!(fs.getxattr(CTX, file, &name, 64), Err(Errno(libc::ENODATA)));

    // Without --xattr: ENOSYS; read-only: EROFS for changes.
    let off = s.fs_with(FsOptions {
        xattr: false,
        ..options()
    });
    let file = off.lookup(CTX, ROOT, &c("file")).unwrap().inode;
    assert_eq!(off.getxattr(CTX, file, &name, 64), Err(Errno::ENOSYS));
    assert_eq!(off.setxattr(CTX, file, &name, b"v", 0), Err(Errno::ENOSYS));
    let ro = s.fs_with(FsOptions {
        readonly: true,
        ..options()
    });
    let file = ro.lookup(CTX, ROOT, &c("file")).unwrap().inode;
    assert_eq!(ro.setxattr(CTX, file, &name, b"v", 0), Err(Errno::EROFS));
    assert_eq!(ro.removexattr(CTX, file, &name), Err(Errno::EROFS));
}

#[test]
fn readonly_refuses_every_change() {
    let s = Scratch::new("readonly");
    let fs = s.fs_with(FsOptions {
        readonly: true,
        ..options()
    });
    let file = fs.lookup(CTX, ROOT, &c("file")).unwrap().inode;
    let rw = libc::O_RDWR as u32;
    assert_eq!(
        fs.create(CTX, ROOT, &c("n"), 0o644, rw).map(drop),
        Err(Errno::EROFS)
    );
    assert_eq!(
        fs.mkdir(CTX, ROOT, &c("n"), 0o755).map(drop),
        Err(Errno::EROFS)
    );
    assert_eq!(
        fs.mknod(CTX, ROOT, &c("n"), libc::S_IFIFO | 0o644, 0)
            .map(drop),
        Err(Errno::EROFS)
    );
    assert_eq!(
        fs.symlink(CTX, ROOT, &c("n"), &c("file")).map(drop),
        Err(Errno::EROFS)
    );
    assert_eq!(
        fs.link(CTX, file, ROOT, &c("n")).map(drop),
        Err(Errno::EROFS)
    );
    assert_eq!(fs.unlink(CTX, ROOT, &c("file")), Err(Errno::EROFS));
    assert_eq!(fs.rmdir(CTX, ROOT, &c("sub")), Err(Errno::EROFS));
    assert_eq!(
        fs.rename(CTX, ROOT, &c("file"), ROOT, &c("n"), 0),
        Err(Errno::EROFS)
    );
    assert_eq!(
        fs.setattr(CTX, file, SetAttr::default(), None).map(drop),
        Err(Errno::EROFS)
    );
    assert_eq!(fs.open(CTX, file, rw).map(drop), Err(Errno::EROFS));
    let trunc = (libc::O_RDONLY | libc::O_TRUNC) as u32;
    assert_eq!(fs.open(CTX, file, trunc).map(drop), Err(Errno::EROFS));
    assert_eq!(fs.access(CTX, file, libc::W_OK as u32), Err(Errno::EROFS));
    let (h, _) = fs.open(CTX, file, libc::O_RDONLY as u32).unwrap();
    assert_eq!(write(&fs, h, 0, b"x"), Err(Errno::EROFS));
    assert_eq!(read(&fs, h, 0, 100).unwrap(), b"contents");
    assert_eq!(std::fs::read_dir(&s.share).unwrap().count(), 2);
}

#[test]
fn symlinks_are_never_followed() {
    let s = Scratch::new("symlink");
    std::os::unix::fs::symlink("../outside", s.share.join("escape")).unwrap();
    std::os::unix::fs::symlink(s.base.join("outside"), s.share.join("abs")).unwrap();
    let fs = s.fs();
    for name in ["escape", "abs"] {
        let link = fs.lookup(CTX, ROOT, &c(name)).unwrap();
        assert_eq!(link.attr.file_type(), libc::S_IFLNK, "{name}");
        let rw = libc::O_RDWR as u32;
        assert_eq!(
            fs.open(CTX, link.inode, rw).map(drop),
            Err(Errno(libc::ELOOP))
        );
        assert_eq!(
            fs.opendir(CTX, link.inode, 0).map(drop),
            Err(Errno(libc::ELOOP))
        );
        assert_eq!(
            fs.create(CTX, ROOT, &c(name), 0o644, rw).map(drop),
            Err(Errno(libc::ELOOP))
        );
        assert_eq!(
            fs.lookup(CTX, link.inode, &c("x")).map(drop),
            Err(Errno(libc::ENOTDIR))
        );
        assert_eq!(
            fs.mkdir(CTX, link.inode, &c("x"), 0o755).map(drop),
            Err(Errno(libc::ENOTDIR))
        );
    }
    assert_eq!(
        std::fs::read_dir(s.base.join("outside")).unwrap().count(),
        0
    );
}

/// The special files of the scratch folder: made on the host (a FIFO, a socket,
/// /dev/null's device numbers) and by the guest (MKNOD through the trait).
fn special_files(s: &Scratch, fs: &PassthroughFs) -> (Vec<(String, Inode)>, UnixListener) {
    let fifo = CString::new(
        s.share
            .join("host-fifo")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
    let socket = UnixListener::bind(s.share.join("host-socket")).unwrap();
    let mut names = vec!["host-fifo".to_string(), "host-socket".to_string()];
    let kinds = [
        ("guest-fifo", libc::S_IFIFO, 0),
        ("guest-socket", libc::S_IFSOCK, 0),
        ("guest-char", libc::S_IFCHR, libc::makedev(1, 3) as u32),
    ];
    for (name, kind, rdev) in kinds {
        match fs.mknod(CTX, ROOT, &c(name), kind | 0o666, rdev) {
            Ok(entry) => {
                assert_eq!(entry.attr.file_type(), kind, "{name}");
                names.push(name.to_string());
            }
            // Device nodes need CAP_MKNOD.
            Err(Errno(libc::EPERM)) if kind == libc::S_IFCHR => {}
            Err(e) => panic!("mknod {name}: {e}"),
        }
    }
    let nodes = names
        .into_iter()
        .map(|name| {
            let inode = fs.lookup(CTX, ROOT, &c(&name)).unwrap().inode;
            (name, inode)
        })
        .collect();
    (nodes, socket)
}

/// Device nodes, FIFOs and sockets are never opened, by any route: OPEN with
/// every access mode, OPENDIR, CREATE without O_EXCL over the name, a SETATTR
/// truncate, SYNCFS, and (on a kernel without `*xattrat`) the xattr fallback.
/// The opens come first and none would block if the type check were gone (a
/// FIFO opened O_RDWR or O_NONBLOCK does not wait for a peer), so without it this
/// test fails instead of hanging.
#[test]
fn special_files_are_never_opened() {
    let s = Scratch::new("special");
    let fs = s.fs();
    let (nodes, _socket) = special_files(&s, &fs);
    let nodes_before = fs.node_count();
    for (name, inode) in &nodes {
        let ft = std::fs::symlink_metadata(s.share.join(name))
            .unwrap()
            .file_type();
        assert!(
            ft.is_fifo() || ft.is_socket() || ft.is_char_device(),
            "{name}"
        );
        for flags in [
            libc::O_RDONLY | libc::O_NONBLOCK,
            libc::O_WRONLY | libc::O_NONBLOCK,
            libc::O_RDWR,
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_TRUNC,
        ] {
            assert_eq!(
                fs.open(CTX, *inode, flags as u32).map(drop),
                Err(Errno(libc::ENXIO)),
                "open {name} {flags:#o}"
            );
        }
        assert_eq!(
            fs.opendir(CTX, *inode, libc::O_RDONLY as u32).map(drop),
            Err(Errno(libc::ENXIO)),
            "opendir {name}"
        );
        assert_eq!(
            fs.create(CTX, ROOT, &c(name), 0o644, libc::O_RDWR as u32)
                .map(drop),
            Err(Errno(libc::ENXIO)),
            "create {name}"
        );
        let excl = (libc::O_RDWR | libc::O_EXCL) as u32;
        assert_eq!(
            fs.create(CTX, ROOT, &c(name), 0o644, excl).map(drop),
            Err(Errno(libc::EEXIST)),
            "create O_EXCL {name}"
        );
        let truncate = SetAttr {
            size: Some(0),
            ..SetAttr::default()
        };
        assert_eq!(
            fs.setattr(CTX, *inode, truncate, None).map(drop),
            Err(Errno::EINVAL),
            "truncate {name}"
        );
        assert_eq!(
            fs.syncfs(CTX, *inode),
            Err(Errno(libc::ENXIO)),
            "syncfs {name}"
        );
        // What needs no open works: stat, mode, times, xattrs (without opening).
        let (attr, _) = fs.getattr(CTX, *inode, None).unwrap();
        assert_ne!(attr.file_type(), libc::S_IFREG);
        let chmod = SetAttr {
            mode: Some(0o600),
            mtime: Some(SetTime::Now),
            ..SetAttr::default()
        };
        assert_eq!(
            fs.setattr(CTX, *inode, chmod, None).unwrap().0.mode & 0o7777,
            0o600
        );
        let xattr = fs.setxattr(CTX, *inode, &c("trusted.t"), b"v", 0);
        assert!(
            matches!(xattr, Ok(()) | Err(Errno(libc::EOPNOTSUPP))),
            "{name}: {xattr:?}"
        );
    }
    assert_eq!(fs.handle_count(), 0, "no handle was ever made");
    assert_eq!(
        fs.node_count(),
        nodes_before,
        "failed CREATEs leave no lookup"
    );
    // The fallback of a kernel without *xattrat opens regular files and folders
    // only.
    let fs = fs.without_xattrat();
    for (name, inode) in &nodes {
        assert_eq!(
            fs.getxattr(CTX, *inode, &c("trusted.t"), 64),
            Err(Errno(libc::EOPNOTSUPP)),
            "{name}"
        );
    }
    let file = fs.lookup(CTX, ROOT, &c("file")).unwrap().inode;
    fs.setxattr(CTX, file, &c("trusted.t"), b"v", 0).unwrap();
    assert_eq!(
        fs.getxattr(CTX, file, &c("trusted.t"), 64),
        Ok(XattrReply::Value(b"v".to_vec()))
    );
    // Renamed, linked and removed like any file.
    let (name, inode) = &nodes[0];
    fs.rename(CTX, ROOT, &c(name), ROOT, &c("renamed"), 0)
        .unwrap();
    fs.link(CTX, *inode, ROOT, &c("linked")).unwrap();
    fs.unlink(CTX, ROOT, &c("renamed")).unwrap();
    fs.unlink(CTX, ROOT, &c("linked")).unwrap();
}

#[test]
fn destroy_closes_handles_and_forgets_inodes() {
    let s = Scratch::new("destroy");
    let fs = s.fs();
    let file = fs.lookup(CTX, ROOT, &c("file")).unwrap().inode;
    let (h, _) = fs.open(CTX, file, libc::O_RDONLY as u32).unwrap();
    fs.destroy();
    assert_eq!((fs.node_count(), fs.handle_count()), (1, 0));
    assert_eq!(read(&fs, h, 0, 1), Err(Errno::EBADF));
    assert_eq!(fs.getattr(CTX, file, None).map(drop), Err(Errno::ENOENT));
    assert!(fs.lookup(CTX, ROOT, &c("file")).is_ok(), "the root is kept");
}

#[test]
fn names_reach_the_kernel_as_one_component() {
    // The server checks names; the file system must still never resolve more than
    // one component below its folder.
    let s = Scratch::new("names");
    let fs = s.fs();
    let sub = fs.lookup(CTX, ROOT, &c("sub")).unwrap().inode;
    assert_eq!(
        fs.lookup(CTX, sub, &c("..")).map(drop),
        Err(Errno(libc::EXDEV)),
        "RESOLVE_BENEATH"
    );
    let name: &CStr = c"../outside";
    assert!(fs.lookup(CTX, sub, name).is_err());
    assert!(fs
        .create(CTX, sub, c"../../outside/x", 0o644, libc::O_RDWR as u32)
        .is_err());
    assert_eq!(
        std::fs::read_dir(s.base.join("outside")).unwrap().count(),
        0
    );
}
