//! The daemon through the user-space vhost-user driver: FUSE sessions on a shared
//! folder in a temporary directory, checked against the host files themselves.
//!
//! Each test runs its own daemon (a child process) on its own folder.

mod common;

use std::os::unix::fs::MetadataExt;

use common::*;
use vhost_fs::fuse::*;
use vhostkit_tests::launch::fs::{Cache, FsArgs, InodeFileHandles};
use zerocopy::{FromBytes, IntoBytes};

#[test]
fn config_space_and_init() {
    let fx = Fixture::new(
        "fs-init",
        FsArgs {
            num_request_queues: Some(2),
            ..FsArgs::default()
        },
    );
    let (dev, _hiprio, mut requests) = fx.connect(2);
    assert_eq!(dev.config.tag_str(), "testfs");
    assert_eq!(dev.config.num_request_queues, 2);
    assert_eq!(dev.driver.num_queues(), 3);
    let reply = init(&mut requests[1]);
    assert_eq!(reply.error, 0);
    let out = InitOut::read_from_bytes(&reply.body).unwrap();
    assert_eq!((out.major, out.minor), (7, 31));
    assert_eq!(out.max_write, MAX_WRITE);
    assert_eq!(out.flags & init_flags::WRITEBACK_CACHE, 0);
    assert_ne!(out.flags & init_flags::DO_READDIRPLUS, 0);
    // Both request queues serve the one session.
    for q in requests.iter_mut() {
        let reply = q
            .call(
                Opcode::Getattr as u32,
                1,
                GetattrIn::default().as_bytes(),
                ROOM,
            )
            .unwrap();
        assert_eq!(reply.error, 0);
    }
}

#[test]
fn file_operations_round_trip() {
    file_operations_round_trip_on(&Fixture::new("fs-ops", FsArgs::default()));
}

/// The guest kernel applies the guest's umask before sending MKDIR, MKNOD and CREATE
/// (FUSE_DONT_MASK is not negotiated): the host file gets exactly the mode sent, not
/// masked again by the daemon's own umask (pjdfstest's rename/21.t found this).
#[test]
fn new_files_get_exactly_the_mode_the_guest_sent() {
    let fx = Fixture::new("fs-mode", FsArgs::default());
    let mut s = fx.session();
    let mode_of = |name: &str| std::fs::metadata(fx.share.join(name)).unwrap().mode() & 0o7777;
    let mkdir = MkdirIn {
        mode: 0o777,
        umask: 0o022,
    };
    s.ok(Opcode::Mkdir, 1, &cat(&[mkdir.as_bytes(), &cstr("dir")]));
    assert_eq!(mode_of("dir"), 0o777);
    let create = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o666,
        umask: 0o022,
        open_flags: 0,
    };
    s.ok(Opcode::Create, 1, &cat(&[create.as_bytes(), &cstr("file")]));
    assert_eq!(mode_of("file"), 0o666);
    let mknod = MknodIn {
        mode: libc::S_IFIFO | 0o646,
        rdev: 0,
        umask: 0o022,
        padding: 0,
    };
    s.ok(Opcode::Mknod, 1, &cat(&[mknod.as_bytes(), &cstr("fifo")]));
    assert_eq!(mode_of("fifo"), 0o646);
}

#[test]
fn xattrs_only_with_the_flag() {
    let fx = Fixture::new("fs-noxattr", FsArgs::default());
    let mut s = fx.session();
    let (entry, _) = s.create(1, "f", libc::O_RDWR).unwrap();
    let body = cat(&[
        GetxattrIn {
            size: 0,
            padding: 0,
        }
        .as_bytes(),
        &cstr("user.x"),
    ]);
    assert_eq!(s.errno(Opcode::Getxattr, entry.nodeid, &body), libc::ENOSYS);
    drop(s);
    drop(fx);

    xattr_round_trip(&Fixture::new(
        "fs-xattr",
        FsArgs {
            xattr: true,
            ..FsArgs::default()
        },
    ));
}

#[test]
fn escapes_from_the_shared_folder_are_refused() {
    let fx = Fixture::new("fs-escape", FsArgs::default());
    std::os::unix::fs::symlink(&fx.outside, fx.share.join("out")).unwrap();
    std::os::unix::fs::symlink(fx.outside.join("secret"), fx.share.join("secretlink")).unwrap();
    std::os::unix::fs::symlink("../outside/secret", fx.share.join("relative")).unwrap();
    std::os::unix::fs::symlink("/proc/self/fd/3", fx.share.join("magic")).unwrap();
    std::fs::create_dir(fx.share.join("sub")).unwrap();
    let mut s = fx.session();

    // Names that are not a single component.
    for name in [
        "..",
        ".",
        "a/b",
        "../outside/secret",
        "/proc/self/fd/3",
        "sub/../../outside",
    ] {
        assert_eq!(
            s.lookup(1, name).unwrap_err(),
            libc::EINVAL,
            "lookup {name:?}"
        );
    }
    let sub = s.lookup(1, "sub").unwrap();
    assert_eq!(s.lookup(sub.nodeid, "..").unwrap_err(), libc::EINVAL);
    assert_eq!(
        s.create(1, "out/x", libc::O_RDWR).unwrap_err(),
        libc::EINVAL
    );

    // Symlinks are looked up as themselves and cannot be opened or walked through.
    for link in ["out", "secretlink", "relative", "magic"] {
        let entry = s.lookup(1, link).unwrap();
        assert_eq!(entry.attr.mode & libc::S_IFMT, libc::S_IFLNK, "{link}");
        assert_eq!(
            s.open(entry.nodeid, libc::O_RDONLY).unwrap_err(),
            libc::ELOOP,
            "open {link}"
        );
        assert_eq!(
            s.open(entry.nodeid, libc::O_RDWR | libc::O_TRUNC)
                .unwrap_err(),
            libc::ELOOP
        );
        assert!(
            s.lookup(entry.nodeid, "secret").is_err(),
            "lookup through {link}"
        );
        assert!(
            s.create(entry.nodeid, "new", libc::O_RDWR).is_err(),
            "create through {link}"
        );
        assert!(
            s.mkdir(entry.nodeid, "newdir").is_err(),
            "mkdir through {link}"
        );
        let set = SetattrIn {
            valid: fattr::SIZE,
            size: 0,
            ..Default::default()
        };
        assert!(
            s.call(Opcode::Setattr, entry.nodeid, set.as_bytes()).error != 0,
            "truncate {link}"
        );
    }
    // Creating over a symlink name does not follow it.
    assert_eq!(
        s.create(1, "secretlink", libc::O_RDWR | libc::O_TRUNC)
            .unwrap_err(),
        libc::ELOOP
    );
    // Renaming into a symlink "folder" fails too.
    let out = s.lookup(1, "out").unwrap();
    std::fs::write(fx.share.join("plain"), b"p").unwrap();
    let body = cat(&[
        RenameIn { newdir: out.nodeid }.as_bytes(),
        &cstr("plain"),
        &cstr("moved"),
    ]);
    assert!(s.call(Opcode::Rename, 1, &body).error != 0);
    // READLINK only hands the target back.
    let link = s.lookup(1, "secretlink").unwrap();
    assert_eq!(
        s.ok(Opcode::Readlink, link.nodeid, &[]),
        fx.outside.join("secret").as_os_str().as_encoded_bytes()
    );
    fx.outside_untouched();
}

#[test]
fn hostile_requests_get_errno_replies_and_the_daemon_keeps_serving() {
    let fx = Fixture::new("fs-hostile", FsArgs::default());
    let (_dev, _hiprio, mut requests) = fx.connect(1);
    let q = &mut requests[0];
    // Before INIT: EIO.
    let reply = q
        .call(
            Opcode::Getattr as u32,
            1,
            GetattrIn::default().as_bytes(),
            ROOM,
        )
        .unwrap();
    assert_eq!(reply.error, -libc::EIO);
    assert_eq!(init(q).error, 0);
    let mut s = Session {
        _dev: Some(_dev),
        hiprio: Some(_hiprio),
        q: requests.remove(0),
    };

    // A header whose len disagrees with the buffer: EINVAL for that unique.
    let (mut bytes, unique) =
        s.q.build(Opcode::Getattr as u32, 1, GetattrIn::default().as_bytes());
    bytes[0..4].copy_from_slice(&1000u32.to_le_bytes());
    let (used, reply) = s.q.send_raw(&bytes, ROOM).unwrap();
    let reply = vhostkit_driver::fs::parse_reply(&reply, used).unwrap();
    assert_eq!((reply.error, reply.unique), (-libc::EINVAL, unique));
    // Too short for a header: nothing written.
    assert_eq!(s.q.send_raw(&[1, 2, 3], ROOM).unwrap().0, 0);
    // No room for a reply at all.
    let (bytes, _) =
        s.q.build(Opcode::Getattr as u32, 1, GetattrIn::default().as_bytes());
    assert_eq!(s.q.send_raw(&bytes, 8).unwrap().0, 0);
    // Room for the header only: ERANGE.
    let reply =
        s.q.call(
            Opcode::Getattr as u32,
            1,
            GetattrIn::default().as_bytes(),
            20,
        )
        .unwrap();
    assert_eq!(reply.error, -libc::ERANGE);
    // Unknown and unimplemented opcodes.
    assert_eq!(s.errno_raw(9999, 1, &[]), libc::ENOSYS);
    assert_eq!(s.errno(Opcode::Getlk, 1, &[0u8; 64]), libc::ENOSYS);
    assert_eq!(s.errno(Opcode::Ioctl, 1, &[0u8; 64]), libc::ENOSYS);
    // Bodies too short for their struct, names without NUL.
    assert_eq!(s.errno(Opcode::Getattr, 1, &[0u8; 3]), libc::EINVAL);
    assert_eq!(s.errno(Opcode::Lookup, 1, b"no-nul"), libc::EINVAL);
    assert_eq!(s.errno(Opcode::Mkdir, 1, &[0u8; 4]), libc::EINVAL);
    // WRITE whose size disagrees with its data.
    let (_, open) = s.create(1, "f", libc::O_RDWR).unwrap();
    let body = cat(&[
        WriteIn {
            fh: open.fh,
            size: 100,
            ..Default::default()
        }
        .as_bytes(),
        b"short",
    ]);
    assert_eq!(s.errno(Opcode::Write, 0, &body), libc::EINVAL);
    // Stale node ids and unknown file handles.
    assert_eq!(s.getattr(123_456).unwrap_err(), libc::ENOENT);
    assert_eq!(s.lookup(123_456, "x").unwrap_err(), libc::ENOENT);
    assert_eq!(s.read(987_654, 0, 10).unwrap_err(), libc::EBADF);
    assert_eq!(
        s.errno(
            Opcode::Release,
            0,
            ReleaseIn {
                fh: 987_654,
                ..Default::default()
            }
            .as_bytes()
        ),
        libc::EBADF
    );
    let body = cat(&[
        WriteIn {
            fh: 987_654,
            size: 1,
            ..Default::default()
        }
        .as_bytes(),
        b"x",
    ]);
    assert_eq!(s.errno(Opcode::Write, 0, &body), libc::EBADF);
    // BATCH_FORGET claiming more entries than it holds, FORGET of unknown nodes.
    let body = BatchForgetIn {
        count: u32::MAX,
        dummy: 0,
    }
    .as_bytes()
    .to_vec();
    s.hiprio()
        .send_no_reply(Opcode::BatchForget as u32, 0, &body)
        .unwrap();
    s.hiprio()
        .send_no_reply(
            Opcode::Forget as u32,
            555,
            ForgetIn { nlookup: 9 }.as_bytes(),
        )
        .unwrap();
    s.hiprio()
        .send_no_reply(
            Opcode::Forget as u32,
            1,
            ForgetIn { nlookup: 99 }.as_bytes(),
        )
        .unwrap();
    // Still serving, the root included.
    assert_eq!(s.write(open.fh, 0, b"still here"), 10);
    assert!(s.lookup(1, "f").is_ok());
    assert!(!fx.log().contains("panicked"), "{}", fx.log());
}

impl Session {
    fn errno_raw(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> i32 {
        -self.q.call(opcode, nodeid, body, ROOM).unwrap().error
    }
}

#[test]
fn readonly_refuses_modifications() {
    let fx = Fixture::new(
        "fs-ro",
        FsArgs {
            readonly: true,
            ..FsArgs::default()
        },
    );
    std::fs::write(fx.share.join("existing"), b"data").unwrap();
    let mut s = fx.session();
    assert_eq!(s.create(1, "new", libc::O_RDWR).unwrap_err(), libc::EROFS);
    assert_eq!(s.mkdir(1, "d").unwrap_err(), libc::EROFS);
    assert_eq!(s.errno(Opcode::Unlink, 1, &cstr("existing")), libc::EROFS);
    let entry = s.lookup(1, "existing").unwrap();
    assert_eq!(
        s.open(entry.nodeid, libc::O_WRONLY).unwrap_err(),
        libc::EROFS
    );
    assert_eq!(
        s.open(entry.nodeid, libc::O_RDONLY | libc::O_TRUNC)
            .unwrap_err(),
        libc::EROFS
    );
    let set = SetattrIn {
        valid: fattr::SIZE,
        size: 0,
        ..Default::default()
    };
    assert_eq!(
        s.errno(Opcode::Setattr, entry.nodeid, set.as_bytes()),
        libc::EROFS
    );
    let fh = s.open(entry.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(s.read(fh, 0, 100).unwrap(), b"data");
    assert_eq!(host_names(&fx.share), vec!["existing"]);
    assert_eq!(std::fs::read(fx.share.join("existing")).unwrap(), b"data");
}

#[test]
fn a_second_frontend_gets_a_fresh_session() {
    common::a_second_frontend_gets_a_fresh_session(&Fixture::new(
        "fs-reconnect",
        FsArgs::default(),
    ));
}

#[test]
fn data_spread_over_many_buffers_moves_intact() {
    let fx = Fixture::new("fs-split", FsArgs::default());
    let mut s = fx.session();
    let (_, open) = s.create(1, "data", libc::O_RDWR).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 253) as u8).collect();
    for indirect in [false, true] {
        // WRITE: headers cut mid-struct, data in odd-sized pieces.
        let body = cat(&[
            WriteIn {
                fh: open.fh,
                offset: 10,
                size: data.len() as u32,
                ..Default::default()
            }
            .as_bytes(),
            &data,
        ]);
        let (request, _) = s.q.build(Opcode::Write as u32, 0, &body);
        let (used, reply) =
            s.q.send_split(
                &request,
                &[7, 50, 4096, 333, 40_000, 1],
                &[10, 14],
                indirect,
            )
            .unwrap();
        assert_eq!(used, 24);
        let reply = vhostkit_driver::fs::parse_reply(&reply, used).unwrap();
        assert_eq!(reply.error, 0);
        assert_eq!(
            WriteOut::read_from_bytes(&reply.body).unwrap().size,
            data.len() as u32
        );
        let on_disk = std::fs::read(fx.share.join("data")).unwrap();
        assert!(on_disk[10..] == data[..], "indirect {indirect}");

        // READ into reply buffers that cut the out header and the data.
        let read = ReadIn {
            fh: open.fh,
            offset: 10,
            size: data.len() as u32,
            ..Default::default()
        };
        let (request, _) = s.q.build(Opcode::Read as u32, 0, read.as_bytes());
        let (used, reply) =
            s.q.send_split(
                &request,
                &[13, 100],
                &[5, 11, 999, 3, 60_000, 50_000],
                indirect,
            )
            .unwrap();
        assert_eq!(used as usize, 16 + data.len());
        let reply = vhostkit_driver::fs::parse_reply(&reply, used).unwrap();
        assert_eq!(reply.error, 0);
        assert!(reply.body == data, "indirect {indirect}");
    }
    // A READ past the end of the file: 0 bytes; a READ with a small reply room
    // is cut to the room.
    assert_eq!(s.read(open.fh, 1 << 30, 100).unwrap(), b"");
    let read = ReadIn {
        fh: open.fh,
        offset: 10,
        size: 4096,
        ..Default::default()
    };
    let reply =
        s.q.call(Opcode::Read as u32, 0, read.as_bytes(), 16 + 100)
            .unwrap();
    assert_eq!((reply.error, reply.body.len()), (0, 100));
    assert!(reply.body[..] == data[..100]);
}

#[test]
fn request_queues_are_served_concurrently() {
    let fx = Fixture::new(
        "fs-mq",
        FsArgs {
            num_request_queues: Some(3),
            ..FsArgs::default()
        },
    );
    let (dev, _hiprio, mut requests) = fx.connect(3);
    assert_eq!(init(&mut requests[0]).error, 0);
    // One thread per queue, each with its own files; every queue answers while the
    // others are busy.
    let threads: Vec<_> = requests
        .into_iter()
        .enumerate()
        .map(|(i, q)| {
            std::thread::spawn(move || {
                let mut s = Session {
                    _dev: None,
                    hiprio: None,
                    q,
                };
                for round in 0..30 {
                    let name = format!("q{i}-{round}");
                    let (_, open) = s.create(1, &name, libc::O_RDWR).unwrap();
                    let data = name.repeat(100);
                    assert_eq!(s.write(open.fh, 0, data.as_bytes()), data.len() as u32);
                    assert_eq!(s.read(open.fh, 0, 1 << 16).unwrap(), data.as_bytes());
                    s.release(open.fh, false);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(dev);
    assert_eq!(host_names(&fx.share).len(), 90);
    assert_eq!(
        std::fs::read(fx.share.join("q2-29")).unwrap(),
        "q2-29".repeat(100).as_bytes()
    );
}

#[test]
fn destroy_ends_the_session_and_init_starts_a_new_one() {
    let fx = Fixture::new("fs-destroy", FsArgs::default());
    let mut s = fx.session();
    let (entry, open) = s.create(1, "f", libc::O_RDWR).unwrap();
    s.ok(Opcode::Destroy, 0, &[]);
    assert_eq!(
        s.getattr(1).unwrap_err(),
        libc::EIO,
        "nothing but INIT after DESTROY"
    );
    assert_eq!(init(&mut s.q).error, 0);
    assert_eq!(s.getattr(entry.nodeid).unwrap_err(), libc::ENOENT);
    assert_eq!(s.read(open.fh, 0, 1).unwrap_err(), libc::EBADF);
    assert!(s.lookup(1, "f").is_ok());
}

#[test]
fn cache_policy_sets_timeouts_and_open_flags() {
    for (policy, valid, open_flags) in [
        (Cache::Never, 0, FOPEN_DIRECT_IO),
        (Cache::Auto, 1, 0),
        (Cache::Always, 86400, FOPEN_KEEP_CACHE),
    ] {
        let fx = Fixture::new(
            "fs-cache",
            FsArgs {
                cache: Some(policy),
                ..FsArgs::default()
            },
        );
        let mut s = fx.session();
        let (entry, open) = s.create(1, "f", libc::O_RDWR).unwrap();
        assert_eq!(
            (entry.entry_valid, entry.attr_valid),
            (valid, valid),
            "{policy:?}"
        );
        assert_eq!(open.open_flags, open_flags, "{policy:?}");
    }
}

#[test]
fn announce_submounts_marks_mount_points() {
    let fx = Fixture::new(
        "fs-submounts",
        FsArgs {
            announce_submounts: true,
            ..FsArgs::default()
        },
    );
    let mnt = fx.share.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    std::fs::create_dir(fx.share.join("plain")).unwrap();
    let target = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated strings; a tmpfs mount on our own temporary folder.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        vhostkit_tests::skip::skip(format_args!(
            "cannot mount a tmpfs here: {}",
            std::io::Error::last_os_error()
        ));
        return;
    }
    struct Unmount(std::ffi::CString);
    impl Drop for Unmount {
        fn drop(&mut self) {
            // SAFETY: unmounting the tmpfs this test mounted.
            unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _unmount = Unmount(target);
    let mut s = fx.session();
    assert_ne!(s.lookup(1, "mnt").unwrap().attr.flags & ATTR_SUBMOUNT, 0);
    assert_eq!(s.lookup(1, "plain").unwrap().attr.flags & ATTR_SUBMOUNT, 0);
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Descriptors the daemon holds after looking up (and keeping) 50 files.
fn descriptors_for_50_lookups(fx: &Fixture) -> usize {
    for i in 0..50 {
        std::fs::write(fx.share.join(format!("f{i:02}")), b"x").unwrap();
    }
    let mut s = fx.session();
    s.lookup(1, "f00").unwrap();
    let before = open_fds(fx.daemon.pid());
    for i in 1..50 {
        s.lookup(1, &format!("f{i:02}")).unwrap();
    }
    let after = open_fds(fx.daemon.pid());
    // Still reachable: a getattr and a read through the kept nodes.
    let last = s.lookup(1, "f49").unwrap();
    assert_eq!(s.getattr(last.nodeid).unwrap().size, 1);
    let fh = s.open(last.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(s.read(fh, 0, 10).unwrap(), b"x");
    s.release(fh, false);
    after.saturating_sub(before)
}

#[test]
fn file_handles_keep_no_descriptor_per_inode() {
    let fx = Fixture::new("fs-fds", FsArgs::default());
    let held = descriptors_for_50_lookups(&fx);
    assert!(
        held >= 49,
        "one descriptor per inode without file handles: {held}"
    );

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        vhostkit_tests::skip::skip(format_args!("file handles need CAP_DAC_READ_SEARCH (root)"));
        return;
    }
    let fx = Fixture::new(
        "fs-handles",
        FsArgs {
            inode_file_handles: Some(InodeFileHandles::Mandatory),
            ..FsArgs::default()
        },
    );
    let held = descriptors_for_50_lookups(&fx);
    assert!(
        held < 5,
        "file handles hold no descriptor per inode: {held}"
    );
    drop(fx);
    // The whole workload with file handles.
    file_operations_round_trip_on(&Fixture::new(
        "fs-handles-ops",
        FsArgs {
            inode_file_handles: Some(InodeFileHandles::Mandatory),
            ..FsArgs::default()
        },
    ));
    // The bare flag (prefer) followed by another: a form no typed field renders.
    xattr_round_trip(&Fixture::launch(
        "fs-handles-xattr",
        FsArgs::default(),
        |launch| launch.extra(["--inode-file-handles", "--xattr"]),
    ));
}

/// The flags of the host descriptor the daemon opened for `path` (from fdinfo).
fn host_open_flags(pid: u32, path: &std::path::Path) -> Option<i32> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
        let entry = entry.ok()?;
        if std::fs::read_link(entry.path()).ok().as_deref() != Some(path) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            entry.file_name().to_str()?
        ))
        .ok()?;
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
        return i32::from_str_radix(flags.trim(), 8).ok();
    }
    None
}

/// The guest's O_DIRECT reaches the host open only with --allow-direct-io (as in
/// virtiofsd): by default it is dropped, since it bypasses the guest's page cache,
/// not the host's, and some host file systems refuse it.
#[test]
fn o_direct_reaches_the_host_only_with_allow_direct_io() {
    for (allow_direct_io, wanted) in [(false, false), (true, true)] {
        let args = FsArgs {
            allow_direct_io,
            ..FsArgs::default()
        };
        let fx = Fixture::new("fs-odirect", args.clone());
        let mut s = fx.session();
        let (_, open) = s
            .create(1, "direct", libc::O_RDWR | libc::O_DIRECT)
            .unwrap();
        let path = fx.share.join("direct");
        let flags = host_open_flags(fx.daemon.pid(), &path)
            .unwrap_or_else(|| panic!("the daemon holds {} open", path.display()));
        assert_eq!(
            flags & libc::O_DIRECT != 0,
            wanted,
            "{args:?}: flags {flags:o}"
        );
        s.release(open.fh, false);
        let node = s.lookup(1, "direct").unwrap().nodeid;
        let fh = s.open(node, libc::O_RDONLY | libc::O_DIRECT).unwrap();
        let flags = host_open_flags(fx.daemon.pid(), &path).unwrap();
        assert_eq!(
            flags & libc::O_DIRECT != 0,
            wanted,
            "{args:?} OPEN: flags {flags:o}"
        );
        s.release(fh, false);
    }
}

/// With --poll-us the worker keeps watching the queue after a request, so a driver
/// sending the next one soon finds notifications off and need not kick; with
/// --poll-us 0 most requests are a kick.
#[test]
fn polling_spares_the_driver_its_kicks() {
    let kicks = |poll_us: u64| {
        let fx = Fixture::new(
            "fs-poll",
            FsArgs {
                poll_us: Some(poll_us),
                ..FsArgs::default()
            },
        );
        let mut s = fx.session();
        let before = s.q.q.stats();
        for _ in 0..200 {
            s.getattr(1).unwrap();
        }
        let after = s.q.q.stats();
        (
            after.kicks - before.kicks,
            after.kicks_suppressed - before.kicks_suppressed,
        )
    };
    let (polled_kicks, suppressed) = kicks(1_000_000);
    assert!(
        polled_kicks < 20 && suppressed > 180,
        "a polling worker wants no kicks: {polled_kicks} kicks, {suppressed} suppressed"
    );
    // Without polling a request kicks unless the worker is still finishing the last
    // one when it comes (how often depends on scheduling; under load, often).
    let (kicked, _) = kicks(0);
    assert!(
        kicked > polled_kicks,
        "without polling more requests kick: {kicked} against {polled_kicks}"
    );
}

/// With file handles the daemon holds no descriptor that pins an inode, so after
/// an unlink the host file system may give the inode number to a new file (ext4
/// does at once). The new file must get a node of its own, working on the new
/// file: a node matched on device and inode number alone would be the old one,
/// with the old file's handle (stale) and type.
#[test]
fn a_reused_inode_number_is_a_new_node_with_file_handles() {
    if !is_root() {
        vhostkit_tests::skip::skip(format_args!("file handles need CAP_DAC_READ_SEARCH (root)"));
        return;
    }
    let fx = Fixture::new(
        "fs-reuse",
        FsArgs {
            inode_file_handles: Some(InodeFileHandles::Mandatory),
            ..FsArgs::default()
        },
    );
    let mut s = fx.session();
    std::fs::write(fx.share.join("old"), b"old file").unwrap();
    let old = s.lookup(1, "old").unwrap();
    let old_ino = old.attr.ino;
    std::fs::remove_file(fx.share.join("old")).unwrap();
    // Make files until one gets the freed number back.
    let mut reused = None;
    for i in 0..100 {
        let path = fx.share.join(format!("new{i}"));
        std::fs::write(&path, b"the new file").unwrap();
        if std::fs::metadata(&path).unwrap().ino() == old_ino {
            reused = Some(format!("new{i}"));
            break;
        }
    }
    let Some(name) = reused else {
        vhostkit_tests::skip::skip(format_args!(
            "this file system did not reuse inode {old_ino}"
        ));
        return;
    };
    let new = s.lookup(1, &name).unwrap();
    assert_eq!(new.attr.ino, old_ino);
    assert_ne!(new.nodeid, old.nodeid, "the new file got the old node");
    assert_eq!(s.getattr(new.nodeid).unwrap().size, 12);
    let fh = s.open(new.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(s.read(fh, 0, 64).unwrap(), b"the new file");
    s.release(fh, false);
    // The old node is stale, not the new file.
    assert!(s.getattr(old.nodeid).is_err());
    // Forgetting the old node leaves the new one reachable by lookup.
    s.hiprio()
        .send_no_reply(
            Opcode::Forget as u32,
            old.nodeid,
            ForgetIn { nlookup: 1 }.as_bytes(),
        )
        .unwrap();
    assert_eq!(s.lookup(1, &name).unwrap().nodeid, new.nodeid);
}

/// The shared folder is opened once at start-up: a folder renamed away and
/// replaced on the host afterwards does not change what the next frontend gets
/// (a path looked up again per frontend would serve the replacement).
#[test]
fn the_shared_folder_is_held_from_start_up() {
    let fx = Fixture::new("fs-held", FsArgs::default());
    std::fs::write(fx.share.join("original"), b"o").unwrap();
    {
        let mut s = fx.session();
        assert!(s.lookup(1, "original").is_ok());
    }
    let moved = fx.dir.join("moved");
    std::fs::rename(&fx.share, &moved).unwrap();
    std::fs::create_dir(&fx.share).unwrap();
    std::fs::write(fx.share.join("replacement"), b"r").unwrap();
    vhostkit_tests::wait_for_log(
        &fx.dir.join("daemon.log"),
        "frontend 1 disconnected",
        TIMEOUT,
    );
    let mut s = fx.session();
    assert!(s.lookup(1, "original").is_ok(), "still the original folder");
    assert_eq!(s.lookup(1, "replacement").unwrap_err(), libc::ENOENT);
}

/// Heads outside the queue in a request queue's avail ring: each chain is dropped
/// with one rate-limited line of ours, never handed to the used ring (where
/// virtio-queue refuses it with an error line per entry), and the queue goes on.
#[test]
fn heads_outside_the_queue_are_dropped_before_the_used_ring() {
    let fx = Fixture::new("fs-bad-heads", FsArgs::default());
    let mut s = fx.session();
    let q = &mut s.q.q;
    for _ in 0..40 {
        q.push_avail(300);
    }
    q.publish();
    q.kick().unwrap();
    std::fs::write(fx.share.join("after"), b"served").unwrap();
    let entry = s.lookup(1, "after").unwrap();
    let fh = s.open(entry.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(s.read(fh, 0, 64).unwrap(), b"served");
    let log = fx.log();
    assert!(!log.contains("out of bounds descriptor"), "{log}");
    let ours = log
        .lines()
        .filter(|l| l.contains("outside the queue"))
        .count();
    assert!((1..=12).contains(&ours), "{ours} lines: {log}");
}

/// INIT is logged rate-limited: a guest that sends 200 of them (each one starts a
/// session) gets a burst of lines, not 200.
#[test]
fn init_log_lines_are_rate_limited() {
    let fx = Fixture::new("fs-init-flood", FsArgs::default());
    let mut s = fx.session();
    let started = std::time::Instant::now();
    for _ in 0..200 {
        assert_eq!(init(&mut s.q).error, 0);
    }
    let elapsed = started.elapsed().as_secs() as usize;
    let log = fx.log();
    let n = log
        .lines()
        .filter(|l| l.contains("FUSE session initialised"))
        .count();
    let bound = 10 + elapsed + 1;
    assert!((1..=bound).contains(&n), "{n} lines (at most {bound})");
}

/// A CREATE whose name exists opens the existing file with the requester's
/// credentials: the guest kernel does not check permissions for a file its CREATE
/// made, so the host must. A user's CREATE (O_TRUNC) landing on root's 0600 file is
/// refused and the file keeps its contents; a folder at the name is EISDIR.
#[test]
fn create_on_an_existing_name_checks_the_requesters_permissions() {
    if !is_root() {
        vhostkit_tests::skip::skip(format_args!(
            "switching to the requester's credentials needs root"
        ));
        return;
    }
    let fx = Fixture::new("fs-create-existing", FsArgs::default());
    let secret = fx.share.join("roots-file");
    std::fs::write(&secret, b"root only").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::create_dir(fx.share.join("a-folder")).unwrap();
    let mut s = fx.session();
    let create_as = |s: &mut Session, uid: u32, name: &str| -> i32 {
        let body = vhostkit_driver::fs::body::create(
            (libc::O_RDWR | libc::O_TRUNC) as u32,
            0o644,
            0,
            name,
        );
        let header = InHeader {
            len: (IN_HEADER_LEN + body.len()) as u32,
            opcode: Opcode::Create as u32,
            unique: 77,
            nodeid: 1,
            uid,
            gid: uid,
            pid: 1,
            ..Default::default()
        };
        let mut request = header.as_bytes().to_vec();
        request.extend_from_slice(&body);
        let (_, reply) = s.q.send_raw(&request, ROOM).unwrap();
        i32::from_le_bytes(reply[4..8].try_into().unwrap())
    };
    assert_eq!(create_as(&mut s, 1000, "roots-file"), -libc::EACCES);
    assert_eq!(
        std::fs::read(&secret).unwrap(),
        b"root only",
        "not truncated"
    );
    assert_eq!(create_as(&mut s, 1000, "a-folder"), -libc::EISDIR);
    assert_eq!(create_as(&mut s, 0, "a-folder"), -libc::EISDIR);
    // Root may, as on the host.
    assert_eq!(create_as(&mut s, 0, "roots-file"), 0);
    assert!(
        std::fs::read(&secret).unwrap().is_empty(),
        "truncated by root"
    );
}

/// Frontends connecting again and again cost the daemon no descriptors (the worker
/// threads' exit events, which vhost-user-backend leaves open, go with each
/// connection).
#[test]
fn reconnecting_frontends_leak_no_descriptors() {
    let fx = Fixture::new(
        "fs-fdleak",
        FsArgs {
            num_request_queues: Some(4),
            ..FsArgs::default()
        },
    );
    let mut counts = Vec::new();
    for _ in 0..30 {
        // Accepted once the last connection is over; counted while set up.
        let (_dev, _hiprio, mut requests) = fx.connect(4);
        assert_eq!(init(&mut requests[0]).error, 0);
        counts.push(open_fds(fx.daemon.pid()));
    }
    assert!(
        counts[29] <= counts[9],
        "descriptors grow with connections: after 10 {}, after 30 {}",
        counts[9],
        counts[29]
    );
}
