//! Device nodes, FIFOs and sockets in the shared folder are files a guest may make,
//! list, stat, rename, relabel and remove, but never open: an open of a device node
//! would reach the host's device (the block device below is the host disk that holds
//! the shared folder), and an open of a FIFO would block the queue thread.
//!
//! Every route that turns a node into an open file is tried on every kind of special
//! file, both made by the guest (MKNOD) and already in the folder, with the daemon
//! plain, sandboxed (namespace, chroot) under `--seccomp kill`, and with inodes kept
//! as file handles: CREATE (with and without O_EXCL), OPEN with every access mode,
//! OPENDIR, SETATTR with a size, SYNCFS, and the handle operations (READ, WRITE,
//! FALLOCATE, LSEEK, COPY_FILE_RANGE, FSYNC) that only an open could have granted.
//! Each answers an errno at once; the daemon's descriptors are checked from
//! outside: any descriptor of a special file is an `O_PATH` one.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

use common::*;
use vhost_fs::fuse::*;
use vhostkit_driver::fs::{body, FsReply};
use vhostkit_tests::launch::fs::{FsArgs, InodeFileHandles, Sandbox};
use vhostkit_tests::launch::SeccompAction;
use zerocopy::{FromBytes, IntoBytes};

/// A special file of each kind, by name suffix.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// /dev/zero's numbers (1:5).
    Char,
    /// The host disk holding the shared folder.
    Block,
    Fifo,
    Socket,
}

const KINDS: [Kind; 4] = [Kind::Char, Kind::Block, Kind::Fifo, Kind::Socket];

impl Kind {
    fn name(self, origin: &str) -> String {
        format!("{origin}-{self:?}").to_lowercase()
    }

    fn mode(self) -> u32 {
        match self {
            Kind::Char => libc::S_IFCHR,
            Kind::Block => libc::S_IFBLK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
        }
    }

    fn rdev(self, share: &Path) -> libc::dev_t {
        match self {
            Kind::Char => libc::makedev(1, 5),
            Kind::Block => {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(share).unwrap().dev()
            }
            _ => 0,
        }
    }
}

/// Makes the host's own special files in `share` (a bound socket for the socket
/// kind, kept open by the returned listener).
fn host_nodes(share: &Path) -> UnixListener {
    for kind in [Kind::Char, Kind::Block, Kind::Fifo] {
        let path = std::ffi::CString::new(
            share
                .join(kind.name("host"))
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: a NUL-terminated path; mknod only creates the node.
        let rc = unsafe { libc::mknod(path.as_ptr(), kind.mode() | 0o666, kind.rdev(share)) };
        assert_eq!(rc, 0, "mknod {kind:?}: {}", std::io::Error::last_os_error());
    }
    UnixListener::bind(share.join(Kind::Socket.name("host"))).unwrap()
}

fn mknod(s: &mut Session, kind: Kind, share: &Path) -> EntryOut {
    let body = cat(&[
        MknodIn {
            mode: kind.mode() | 0o666,
            rdev: kind.rdev(share) as u32,
            ..Default::default()
        }
        .as_bytes(),
        &cstr(&kind.name("guest")),
    ]);
    EntryOut::read_from_bytes(&s.ok(Opcode::Mknod, 1, &body)).unwrap()
}

fn xattr(s: &mut Session, op: Opcode, nodeid: u64, size: u32, name: &str) -> FsReply {
    let mut body = GetxattrIn { size, padding: 0 }.as_bytes().to_vec();
    if op != Opcode::Listxattr {
        body.extend_from_slice(&cstr(name));
    }
    s.call(op, nodeid, &body)
}

/// Every route to an open file, tried on the special file `name` (node `entry`):
/// each answers an errno, none grants a handle.
fn never_opened(s: &mut Session, name: &str, entry: &EntryOut) {
    let nodeid = entry.nodeid;
    let flag_sets = [
        libc::O_RDONLY,
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_RDONLY | libc::O_NONBLOCK,
        libc::O_WRONLY | libc::O_NONBLOCK | libc::O_TRUNC,
        libc::O_RDWR | libc::O_DIRECT | libc::O_SYNC,
    ];
    for flags in flag_sets {
        assert_eq!(
            s.open(nodeid, flags),
            Err(libc::ENXIO),
            "OPEN {name} {flags:#o}"
        );
        assert_eq!(
            s.create(1, name, flags).map(|(e, o)| (e.nodeid, o.fh)),
            Err(libc::ENXIO),
            "CREATE {name} {flags:#o} (exists)"
        );
    }
    assert_eq!(
        s.create(1, name, libc::O_RDWR | libc::O_EXCL)
            .map(|(e, o)| (e.nodeid, o.fh)),
        Err(libc::EEXIST),
        "CREATE {name} O_EXCL"
    );
    assert_eq!(
        s.errno(Opcode::Opendir, nodeid, &body::open(0)),
        libc::ENXIO,
        "OPENDIR {name}"
    );
    let truncate = SetattrIn {
        valid: fattr::SIZE,
        size: 0,
        ..Default::default()
    };
    assert_eq!(
        s.errno(Opcode::Setattr, nodeid, truncate.as_bytes()),
        libc::EINVAL,
        "SETATTR size {name}"
    );
    assert_eq!(
        s.errno(Opcode::Syncfs, nodeid, &[0u8; 8]),
        libc::ENXIO,
        "SYNCFS {name}"
    );
    // What is not opened can still be changed and labelled.
    let chmod = SetattrIn {
        valid: fattr::MODE,
        mode: 0o600,
        ..Default::default()
    };
    let attr = AttrOut::read_from_bytes(&s.ok(Opcode::Setattr, nodeid, chmod.as_bytes()))
        .unwrap()
        .attr;
    assert_eq!(attr.mode & 0o7777, 0o600, "{name}");
    assert_eq!(attr.mode & libc::S_IFMT, entry.attr.mode & libc::S_IFMT);
    let set = cat(&[
        SetxattrIn {
            size: name.len() as u32,
            flags: 0,
        }
        .as_bytes(),
        &cstr("trusted.vhostkit"),
        name.as_bytes(),
    ]);
    s.ok(Opcode::Setxattr, nodeid, &set);
    let got = xattr(s, Opcode::Getxattr, nodeid, 64, "trusted.vhostkit");
    assert_eq!((got.error, &got.body[..]), (0, name.as_bytes()), "{name}");
    let list = xattr(s, Opcode::Listxattr, nodeid, 256, "");
    assert!(
        list.body
            .split(|&b| b == 0)
            .any(|n| n == b"trusted.vhostkit"),
        "{name}: {list:?}"
    );
    s.ok(Opcode::Removexattr, nodeid, &cstr("trusted.vhostkit"));
    let gone = xattr(s, Opcode::Getxattr, nodeid, 64, "trusted.vhostkit");
    assert_eq!(-gone.error, libc::ENODATA, "{name}");
}

/// The handle operations with handles no open granted: EBADF, nothing reached.
fn no_handle_operations(s: &mut Session) {
    for fh in [0u64, 1, 2, 3, 1000] {
        assert_eq!(s.read(fh, 0, 512), Err(libc::EBADF));
        let write = body::write(fh, 0, b"data");
        assert_eq!(s.errno(Opcode::Write, 0, &write), libc::EBADF);
        let falloc = FallocateIn {
            fh,
            length: 4096,
            ..Default::default()
        };
        assert_eq!(
            s.errno(Opcode::Fallocate, 0, falloc.as_bytes()),
            libc::EBADF
        );
        let seek = LseekIn {
            fh,
            whence: libc::SEEK_END as u32,
            ..Default::default()
        };
        assert_eq!(s.errno(Opcode::Lseek, 0, seek.as_bytes()), libc::EBADF);
        let copy = CopyFileRangeIn {
            fh_in: fh,
            fh_out: fh,
            len: 4096,
            ..Default::default()
        };
        assert_eq!(
            s.errno(Opcode::CopyFileRange, 0, copy.as_bytes()),
            libc::EBADF
        );
        let fsync = FsyncIn {
            fh,
            ..Default::default()
        };
        assert_eq!(s.errno(Opcode::Fsync, 0, fsync.as_bytes()), libc::EBADF);
    }
}

/// Every descriptor `pid` holds on one of the special files is `O_PATH` (held as
/// an inode, never opened); returns how many there are.
fn only_o_path_descriptors(pid: u32, names: &[String]) -> usize {
    let mut held = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if !names.iter().any(|n| target.ends_with(&format!("/{n}"))) {
            continue;
        }
        let fdinfo = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let flags = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| i32::from_str_radix(v.trim(), 8).ok())
            .unwrap_or(0);
        assert_ne!(
            flags & libc::O_PATH,
            0,
            "{target} is open with flags {flags:#o} in {pid}"
        );
        held += 1;
    }
    held
}

/// With `--xattr` and `daemon`'s options, under `seccomp` if given; `sandboxed`:
/// the files are served by the sandbox's child.
fn special_files_are_never_opened(
    tag: &str,
    daemon: FsArgs,
    seccomp: Option<SeccompAction>,
    sandboxed: bool,
) {
    if !is_root() {
        vhostkit_tests::skip::skip(format_args!("making device nodes needs root"));
        return;
    }
    let file_handles = daemon.inode_file_handles.is_some();
    let daemon = FsArgs {
        xattr: true,
        ..daemon
    };
    let fx = Fixture::launch(tag, daemon, |launch| match seccomp {
        Some(action) => launch.seccomp(action),
        None => launch,
    });
    let _host_socket = host_nodes(&fx.share);
    let mut s = fx.session();
    let mut names = Vec::new();
    for kind in KINDS {
        let made = mknod(&mut s, kind, &fx.share);
        assert_eq!(made.attr.mode & libc::S_IFMT, kind.mode(), "{kind:?}");
        names.push(kind.name("guest"));
        names.push(kind.name("host"));
    }
    let meta = std::fs::symlink_metadata(fx.share.join("guest-block")).unwrap();
    assert!(meta.file_type().is_block_device(), "MKNOD made a real node");

    // Listed and stat'ed.
    let listed: Vec<String> = s.readdir(1, true).into_iter().map(|(n, _)| n).collect();
    for name in &names {
        assert!(listed.contains(name), "{name} in {listed:?}");
    }
    for name in &names {
        let entry = s.lookup(1, name).unwrap();
        assert_eq!(s.getattr(entry.nodeid).unwrap().ino, entry.attr.ino);
        never_opened(&mut s, name, &entry);
    }
    no_handle_operations(&mut s);
    let pid = serving_process(&fx, sandboxed);
    let held = only_o_path_descriptors(pid, &names);
    if file_handles {
        assert_eq!(held, 0, "file handles hold no descriptors");
    } else {
        assert_eq!(
            held,
            names.len(),
            "one O_PATH descriptor per looked-up node"
        );
    }

    // Renamed and removed.
    for name in &names {
        let body = cat(&[
            RenameIn { newdir: 1 }.as_bytes(),
            &cstr(name),
            &cstr(&format!("{name}.moved")),
        ]);
        s.ok(Opcode::Rename, 1, &body);
        s.ok(Opcode::Unlink, 1, &cstr(&format!("{name}.moved")));
    }
    assert!(
        host_names(&fx.share).is_empty(),
        "{:?}",
        host_names(&fx.share)
    );

    // The queue was never blocked: the session goes on.
    let (_, open) = s.create(1, "regular", libc::O_RDWR).unwrap();
    assert_eq!(s.write(open.fh, 0, b"still serving"), 13);
    assert_eq!(s.read(open.fh, 0, 64).unwrap(), b"still serving");
    fx.outside_untouched();
    let log = fx.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn special_files_plain() {
    special_files_are_never_opened("fs-special", FsArgs::default(), None, false);
}

#[test]
fn special_files_namespace_sandbox_seccomp_kill() {
    special_files_are_never_opened(
        "fs-special-ns",
        FsArgs {
            sandbox: Some(Sandbox::Namespace),
            ..FsArgs::default()
        },
        Some(SeccompAction::Kill),
        true,
    );
}

#[test]
fn special_files_chroot_sandbox_seccomp_kill() {
    special_files_are_never_opened(
        "fs-special-chroot",
        FsArgs {
            sandbox: Some(Sandbox::Chroot),
            ..FsArgs::default()
        },
        Some(SeccompAction::Kill),
        true,
    );
}

#[test]
fn special_files_with_file_handles() {
    special_files_are_never_opened(
        "fs-special-fh",
        FsArgs {
            inode_file_handles: Some(InodeFileHandles::Mandatory),
            sandbox: Some(Sandbox::Namespace),
            ..FsArgs::default()
        },
        Some(SeccompAction::Kill),
        true,
    );
}
