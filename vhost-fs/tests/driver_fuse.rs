//! The daemon through the user-space vhost-user driver: FUSE sessions on a shared
//! folder in a temporary directory, checked against the host files themselves.
//!
//! Each test runs its own daemon (a child process) on its own folder.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use vhost_fs::fuse::*;
use vhostkit_common::driver::fs::{body, reply, FsDevice, FsQueue, FsReply};
use vhostkit_common::driver::DriverConfig;
use vhostkit_tests::daemon::DaemonProcess;
use vhostkit_tests::TempDir;
use zerocopy::{FromBytes, IntoBytes};

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-fs");
const TIMEOUT: Duration = Duration::from_secs(10);
const ROOM: u32 = 64 * 1024;

struct Fixture {
    dir: TempDir,
    share: PathBuf,
    outside: PathBuf,
    daemon: DaemonProcess,
}

impl Fixture {
    /// A daemon sharing `dir/share`; `dir/outside` holds a file the guest must never reach.
    fn new(name: &str, args: &[&str]) -> Fixture {
        let dir = TempDir::new(name).unwrap();
        let share = dir.join("share");
        let outside = dir.join("outside");
        std::fs::create_dir(&share).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"top secret").unwrap();
        let sock = dir.join("fs.sock");
        let mut cmd = Command::new(BIN);
        cmd.arg("--socket-path")
            .arg(&sock)
            .arg("--shared-dir")
            .arg(&share)
            .args(["--tag", "testfs"])
            .args(args)
            .env_remove("RUST_LOG")
            .stderr(Stdio::from(File::create(dir.join("daemon.log")).unwrap()));
        // The umask a shell gives: the daemon must not apply it on top of the guest's.
        // SAFETY: umask is async-signal-safe and touches only the child's mask.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
        let daemon = DaemonProcess::spawn("vhost-user-fs", cmd, &sock, TIMEOUT).unwrap();
        Fixture {
            dir,
            share,
            outside,
            daemon,
        }
    }

    fn connect(&self, queues: u16) -> (FsDevice, FsQueue, Vec<FsQueue>) {
        let mut dev =
            FsDevice::connect(self.dir.join("fs.sock"), &DriverConfig::default()).unwrap();
        let (hiprio, requests) = dev.setup_queues(queues, 64).unwrap();
        (dev, hiprio, requests)
    }

    /// Connects with one request queue and runs INIT.
    fn session(&self) -> Session {
        let (dev, hiprio, mut requests) = self.connect(1);
        let mut q = requests.remove(0);
        let init = init(&mut q);
        assert_eq!(init.error, 0, "INIT failed");
        Session {
            _dev: Some(dev),
            hiprio: Some(hiprio),
            q,
        }
    }

    fn outside_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
        assert_eq!(
            std::fs::read(self.outside.join("secret")).unwrap(),
            b"top secret"
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

struct Session {
    _dev: Option<FsDevice>,
    hiprio: Option<FsQueue>,
    q: FsQueue,
}

fn init(q: &mut FsQueue) -> FsReply {
    // 7.38 with every flag, and the 7.36+ flags2 and unused words.
    let bytes = body::init(38, 1 << 17, u32::MAX);
    q.call(Opcode::Init as u32, 0, &bytes, ROOM).unwrap()
}

use body::cstr;

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

impl Session {
    fn hiprio(&mut self) -> &mut FsQueue {
        self.hiprio
            .as_mut()
            .expect("a session with its hiprio queue")
    }

    fn call(&mut self, op: Opcode, nodeid: u64, body: &[u8]) -> FsReply {
        self.q.call(op as u32, nodeid, body, ROOM).unwrap()
    }

    fn ok(&mut self, op: Opcode, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let reply = self.call(op, nodeid, body);
        assert_eq!(
            reply.error,
            0,
            "{op:?} on {nodeid} failed: {}",
            errno_name(reply.error)
        );
        reply.body
    }

    fn errno(&mut self, op: Opcode, nodeid: u64, body: &[u8]) -> i32 {
        -self.call(op, nodeid, body).error
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let reply = self.call(Opcode::Lookup, parent, &cstr(name));
        if reply.error != 0 {
            return Err(-reply.error);
        }
        Ok(EntryOut::read_from_bytes(&reply.body).unwrap())
    }

    fn create(&mut self, parent: u64, name: &str, flags: i32) -> Result<(EntryOut, OpenOut), i32> {
        let body = body::create(flags as u32, 0o644, 0, name);
        let reply = self.call(Opcode::Create, parent, &body);
        if reply.error != 0 {
            return Err(-reply.error);
        }
        let (entry, rest) = EntryOut::read_from_prefix(&reply.body).unwrap();
        Ok((entry, OpenOut::read_from_bytes(rest).unwrap()))
    }

    fn open(&mut self, nodeid: u64, flags: i32) -> Result<u64, i32> {
        let reply = self.call(Opcode::Open, nodeid, &body::open(flags as u32));
        if reply.error != 0 {
            return Err(-reply.error);
        }
        Ok(reply::open_fh(&reply.body, false).unwrap())
    }

    fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> u32 {
        let body = body::write(fh, offset, data);
        WriteOut::read_from_bytes(&self.ok(Opcode::Write, 0, &body))
            .unwrap()
            .size
    }

    fn read(&mut self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let reply = self.call(Opcode::Read, 0, &body::read(fh, offset, size));
        if reply.error != 0 {
            return Err(-reply.error);
        }
        Ok(reply.body)
    }

    fn getattr(&mut self, nodeid: u64) -> Result<Attr, i32> {
        let reply = self.call(Opcode::Getattr, nodeid, &body::getattr());
        if reply.error != 0 {
            return Err(-reply.error);
        }
        Ok(AttrOut::read_from_bytes(&reply.body).unwrap().attr)
    }

    fn release(&mut self, fh: u64, dir: bool) {
        let op = if dir {
            Opcode::Releasedir
        } else {
            Opcode::Release
        };
        self.ok(op, 0, &body::release(fh));
    }

    fn mkdir(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let body = cat(&[
            MkdirIn {
                mode: 0o755,
                umask: 0,
            }
            .as_bytes(),
            &cstr(name),
        ]);
        let reply = self.call(Opcode::Mkdir, parent, &body);
        if reply.error != 0 {
            return Err(-reply.error);
        }
        Ok(EntryOut::read_from_bytes(&reply.body).unwrap())
    }

    /// (name, entry nodeid for READDIRPLUS) of every entry of a folder.
    fn readdir(&mut self, nodeid: u64, plus: bool) -> Vec<(String, u64)> {
        let fh = reply::open_fh(&self.ok(Opcode::Opendir, nodeid, &body::open(0)), false).unwrap();
        let mut names = Vec::new();
        let mut offset = 0;
        loop {
            let op = if plus {
                Opcode::Readdirplus
            } else {
                Opcode::Readdir
            };
            // A small size forces several calls that continue at the last offset.
            let out = self.ok(op, nodeid, &body::read(fh, offset, 300));
            if out.is_empty() {
                break;
            }
            for entry in reply::dirents(&out, plus).expect("well-formed entries") {
                offset = entry.off;
                names.push((String::from_utf8(entry.name).unwrap(), entry.nodeid));
            }
        }
        self.release(fh, true);
        names.sort();
        names
    }
}

fn errno_name(e: i32) -> String {
    std::io::Error::from_raw_os_error(-e).to_string()
}

fn host_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn config_space_and_init() {
    let fx = Fixture::new("fs-init", &["--num-request-queues", "2"]);
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
    let fx = Fixture::new("fs-ops", &[]);
    let mut s = fx.session();
    assert_eq!(s.lookup(1, "missing").unwrap_err(), libc::ENOENT);

    // create, write, read back, getattr
    let (entry, open) = s.create(1, "hello.txt", libc::O_RDWR).unwrap();
    assert_eq!(entry.attr.mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(s.write(open.fh, 0, b"hello world"), 11);
    assert_eq!(s.read(open.fh, 6, 100).unwrap(), b"world");
    assert_eq!(
        std::fs::read(fx.share.join("hello.txt")).unwrap(),
        b"hello world"
    );
    assert_eq!(s.getattr(entry.nodeid).unwrap().size, 11);
    assert_eq!(
        s.getattr(entry.nodeid).unwrap().ino,
        std::fs::metadata(fx.share.join("hello.txt")).unwrap().ino()
    );
    // A big write and read in one request each.
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    assert_eq!(s.write(open.fh, 4096, &big), big.len() as u32);
    let reply =
        s.q.call(
            Opcode::Read as u32,
            0,
            ReadIn {
                fh: open.fh,
                offset: 4096,
                size: big.len() as u32,
                ..Default::default()
            }
            .as_bytes(),
            big.len() as u32 + 16,
        )
        .unwrap();
    assert_eq!(reply.error, 0);
    assert!(reply.body == big);
    // fsync, flush, fallocate, lseek, setattr (truncate, mode)
    s.ok(
        Opcode::Fsync,
        0,
        FsyncIn {
            fh: open.fh,
            ..Default::default()
        }
        .as_bytes(),
    );
    s.ok(
        Opcode::Flush,
        0,
        FlushIn {
            fh: open.fh,
            ..Default::default()
        }
        .as_bytes(),
    );
    s.ok(
        Opcode::Fallocate,
        0,
        FallocateIn {
            fh: open.fh,
            offset: 0,
            length: 1 << 20,
            ..Default::default()
        }
        .as_bytes(),
    );
    assert_eq!(
        std::fs::metadata(fx.share.join("hello.txt")).unwrap().len(),
        1 << 20
    );
    let pos = LseekOut::read_from_bytes(
        &s.ok(
            Opcode::Lseek,
            0,
            LseekIn {
                fh: open.fh,
                offset: 0,
                whence: libc::SEEK_END as u32,
                ..Default::default()
            }
            .as_bytes(),
        ),
    )
    .unwrap();
    assert_eq!(pos.offset, 1 << 20);
    let set = SetattrIn {
        valid: fattr::SIZE | fattr::MODE,
        size: 5,
        mode: 0o600,
        ..Default::default()
    };
    let attr = AttrOut::read_from_bytes(&s.ok(Opcode::Setattr, entry.nodeid, set.as_bytes()))
        .unwrap()
        .attr;
    assert_eq!(attr.size, 5);
    let meta = std::fs::metadata(fx.share.join("hello.txt")).unwrap();
    assert_eq!((meta.len(), meta.permissions().mode() & 0o777), (5, 0o600));
    let set = SetattrIn {
        valid: fattr::MTIME,
        mtime: 1_000_000,
        ..Default::default()
    };
    s.ok(Opcode::Setattr, entry.nodeid, set.as_bytes());
    assert_eq!(
        std::fs::metadata(fx.share.join("hello.txt"))
            .unwrap()
            .mtime(),
        1_000_000
    );
    s.release(open.fh, false);

    // open an existing file read-only and read it
    let fh = s.open(entry.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(s.read(fh, 0, 10).unwrap(), b"hello");
    s.release(fh, false);

    // mkdir, rename into it, readdir and readdirplus
    let sub = s.mkdir(1, "sub").unwrap();
    let body = cat(&[
        RenameIn { newdir: sub.nodeid }.as_bytes(),
        &cstr("hello.txt"),
        &cstr("renamed.txt"),
    ]);
    s.ok(Opcode::Rename, 1, &body);
    assert_eq!(host_names(&fx.share.join("sub")), vec!["renamed.txt"]);
    for i in 0..20 {
        std::fs::write(fx.share.join(format!("many-{i:02}")), b"x").unwrap();
    }
    let names = s.readdir(1, false);
    assert_eq!(names.len(), 2 + 20 + 1, "{names:?}");
    assert!(names.iter().any(|(n, _)| n == "sub"));
    assert!(names.iter().any(|(n, _)| n == ".."));
    let plus = s.readdir(sub.nodeid, true);
    let renamed = plus.iter().find(|(n, _)| n == "renamed.txt").unwrap();
    assert_eq!(
        renamed.1, entry.nodeid,
        "readdirplus looked the same inode up"
    );
    // RENAME2 with RENAME_NOREPLACE onto an existing name fails.
    std::fs::write(fx.share.join("other"), b"o").unwrap();
    let body = cat(&[
        Rename2In {
            newdir: 1,
            flags: libc::RENAME_NOREPLACE,
            padding: 0,
        }
        .as_bytes(),
        &cstr("many-00"),
        &cstr("other"),
    ]);
    assert_eq!(s.errno(Opcode::Rename2, 1, &body), libc::EEXIST);

    // symlink, readlink, link
    let body = cat(&[&cstr("link")[..], &cstr("sub/renamed.txt")]);
    let link = EntryOut::read_from_bytes(&s.ok(Opcode::Symlink, 1, &body)).unwrap();
    assert_eq!(s.ok(Opcode::Readlink, link.nodeid, &[]), b"sub/renamed.txt");
    assert_eq!(
        std::fs::read_link(fx.share.join("link")).unwrap(),
        Path::new("sub/renamed.txt")
    );
    let body = cat(&[
        LinkIn {
            oldnodeid: entry.nodeid,
        }
        .as_bytes(),
        &cstr("hard"),
    ]);
    let hard = EntryOut::read_from_bytes(&s.ok(Opcode::Link, 1, &body)).unwrap();
    assert_eq!(hard.nodeid, entry.nodeid);
    assert_eq!(hard.attr.nlink, 2);

    // mknod (a fifo), access, statfs
    let body = cat(&[
        MknodIn {
            mode: libc::S_IFIFO | 0o644,
            ..Default::default()
        }
        .as_bytes(),
        &cstr("fifo"),
    ]);
    s.ok(Opcode::Mknod, 1, &body);
    s.ok(
        Opcode::Access,
        entry.nodeid,
        AccessIn {
            mask: libc::R_OK as u32,
            padding: 0,
        }
        .as_bytes(),
    );
    let statfs = StatfsOut::read_from_bytes(&s.ok(Opcode::Statfs, 1, &[])).unwrap();
    assert!(statfs.blocks > 0 && statfs.namelen >= 255, "{statfs:?}");

    // unlink, rmdir (not empty first)
    assert_eq!(s.errno(Opcode::Rmdir, 1, &cstr("sub")), libc::ENOTEMPTY);
    s.ok(Opcode::Unlink, sub.nodeid, &cstr("renamed.txt"));
    s.ok(Opcode::Rmdir, 1, &cstr("sub"));
    assert!(!fx.share.join("sub").exists());
    s.ok(Opcode::Syncfs, 1, &[0u8; 8]);

    // FORGET on the hiprio queue drops the node: its id is stale afterwards.
    let used = s
        .hiprio()
        .send_no_reply(
            Opcode::Forget as u32,
            sub.nodeid,
            ForgetIn { nlookup: 1 }.as_bytes(),
        )
        .unwrap();
    assert_eq!(used, 0);
    assert_eq!(s.getattr(sub.nodeid).unwrap_err(), libc::ENOENT);
    // BATCH_FORGET: the file was looked up by create, readdirplus and link.
    let body = cat(&[
        BatchForgetIn { count: 1, dummy: 0 }.as_bytes(),
        ForgetOne {
            nodeid: entry.nodeid,
            nlookup: 2,
        }
        .as_bytes(),
    ]);
    s.hiprio()
        .send_no_reply(Opcode::BatchForget as u32, 0, &body)
        .unwrap();
    assert!(s.getattr(entry.nodeid).is_ok(), "one lookup left");
    let body = cat(&[
        BatchForgetIn { count: 1, dummy: 0 }.as_bytes(),
        ForgetOne {
            nodeid: entry.nodeid,
            nlookup: 1,
        }
        .as_bytes(),
    ]);
    s.hiprio()
        .send_no_reply(Opcode::BatchForget as u32, 0, &body)
        .unwrap();
    assert_eq!(s.getattr(entry.nodeid).unwrap_err(), libc::ENOENT);
    fx.outside_untouched();
}

/// The guest kernel applies the guest's umask before sending MKDIR, MKNOD and CREATE
/// (FUSE_DONT_MASK is not negotiated): the host file gets exactly the mode sent, not
/// masked again by the daemon's own umask (pjdfstest's rename/21.t found this).
#[test]
fn new_files_get_exactly_the_mode_the_guest_sent() {
    let fx = Fixture::new("fs-mode", &[]);
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
    let fx = Fixture::new("fs-noxattr", &[]);
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

    let fx = Fixture::new("fs-xattr", &["--xattr"]);
    let mut s = fx.session();
    let (entry, _) = s.create(1, "f", libc::O_RDWR).unwrap();
    let body = cat(&[
        SetxattrIn { size: 5, flags: 0 }.as_bytes(),
        &cstr("user.test"),
        b"value",
    ]);
    let reply = s.call(Opcode::Setxattr, entry.nodeid, &body);
    if -reply.error == libc::EOPNOTSUPP {
        println!("SKIPPED: the temporary folder's file system has no user xattrs");
        return;
    }
    assert_eq!(reply.error, 0, "{}", errno_name(reply.error));
    let body = cat(&[
        GetxattrIn {
            size: 0,
            padding: 0,
        }
        .as_bytes(),
        &cstr("user.test"),
    ]);
    assert_eq!(
        GetxattrOut::read_from_bytes(&s.ok(Opcode::Getxattr, entry.nodeid, &body))
            .unwrap()
            .size,
        5
    );
    let body = cat(&[
        GetxattrIn {
            size: 64,
            padding: 0,
        }
        .as_bytes(),
        &cstr("user.test"),
    ]);
    assert_eq!(s.ok(Opcode::Getxattr, entry.nodeid, &body), b"value");
    let list = s.ok(
        Opcode::Listxattr,
        entry.nodeid,
        GetxattrIn {
            size: 256,
            padding: 0,
        }
        .as_bytes(),
    );
    assert!(
        list.split(|&b| b == 0).any(|n| n == b"user.test"),
        "{list:?}"
    );
    s.ok(Opcode::Removexattr, entry.nodeid, &cstr("user.test"));
    let body = cat(&[
        GetxattrIn {
            size: 64,
            padding: 0,
        }
        .as_bytes(),
        &cstr("user.test"),
    ]);
    assert_eq!(
        s.errno(Opcode::Getxattr, entry.nodeid, &body),
        libc::ENODATA
    );
}

#[test]
fn escapes_from_the_shared_folder_are_refused() {
    let fx = Fixture::new("fs-escape", &[]);
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
    let fx = Fixture::new("fs-hostile", &[]);
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
    let reply = vhostkit_common::driver::fs::parse_reply(&reply, used).unwrap();
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
    let fx = Fixture::new("fs-ro", &["--readonly"]);
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
    let fx = Fixture::new("fs-reconnect", &[]);
    let first_node;
    {
        let mut s = fx.session();
        let (entry, open) = s.create(1, "kept", libc::O_RDWR).unwrap();
        s.write(open.fh, 0, b"from the first frontend");
        first_node = (entry.nodeid, open.fh);
    }
    vhostkit_tests::wait_for_log(
        &fx.dir.join("daemon.log"),
        "frontend 1 disconnected",
        TIMEOUT,
    );
    let mut s = fx.session();
    // Node ids and handles of the first session mean nothing now.
    assert_eq!(s.getattr(first_node.0).unwrap_err(), libc::ENOENT);
    assert_eq!(s.read(first_node.1, 0, 10).unwrap_err(), libc::EBADF);
    let entry = s.lookup(1, "kept").unwrap();
    let fh = s.open(entry.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(s.read(fh, 0, 100).unwrap(), b"from the first frontend");
    assert!(fx.daemon.socket().exists());
}

#[test]
fn data_spread_over_many_buffers_moves_intact() {
    let fx = Fixture::new("fs-split", &[]);
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
        let reply = vhostkit_common::driver::fs::parse_reply(&reply, used).unwrap();
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
        let reply = vhostkit_common::driver::fs::parse_reply(&reply, used).unwrap();
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
    let fx = Fixture::new("fs-mq", &["--num-request-queues", "3"]);
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
    let fx = Fixture::new("fs-destroy", &[]);
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
        ("never", 0, FOPEN_DIRECT_IO),
        ("auto", 1, 0),
        ("always", 86400, FOPEN_KEEP_CACHE),
    ] {
        let fx = Fixture::new("fs-cache", &["--cache", policy]);
        let mut s = fx.session();
        let (entry, open) = s.create(1, "f", libc::O_RDWR).unwrap();
        assert_eq!(
            (entry.entry_valid, entry.attr_valid),
            (valid, valid),
            "{policy}"
        );
        assert_eq!(open.open_flags, open_flags, "{policy}");
    }
}

#[test]
fn announce_submounts_marks_mount_points() {
    let fx = Fixture::new("fs-submounts", &["--announce-submounts"]);
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
        println!(
            "SKIPPED: cannot mount a tmpfs here: {}",
            std::io::Error::last_os_error()
        );
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
