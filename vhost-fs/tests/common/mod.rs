//! Shared by the driver tests: a daemon on a temporary folder (`Fixture`), a FUSE
//! session through the user-space vhost-user driver (`Session`), and workloads that
//! check FUSE operations against the host files.

#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use vhost_fs::fuse::*;
use vhostkit_driver::fs::{body, reply, FsDevice, FsQueue, FsReply};
use vhostkit_driver::DriverConfig;
use vhostkit_tests::daemon::DaemonProcess;
use vhostkit_tests::launch::fs::FsArgs;
use vhostkit_tests::launch::Launch;
use vhostkit_tests::TempDir;
use zerocopy::{FromBytes, IntoBytes};

pub const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-fs");
pub const TIMEOUT: Duration = Duration::from_secs(10);
pub const ROOM: u32 = 64 * 1024;

pub struct Fixture {
    pub dir: TempDir,
    pub share: PathBuf,
    pub outside: PathBuf,
    pub daemon: DaemonProcess,
}

impl Fixture {
    /// A daemon with the options `daemon` sharing `dir/share` (the fixture's folder:
    /// leave `daemon.shared_dir` empty) under the tag `testfs` unless `daemon` names
    /// one; `dir/outside` holds a file the guest must never reach.
    pub fn new(name: &str, daemon: FsArgs) -> Fixture {
        Self::launch(name, daemon, |launch| launch)
    }

    /// [`new`](Self::new) with the options every daemon takes (`--seccomp`...) set
    /// by `common` on the daemon's [`Launch`].
    pub fn launch(
        name: &str,
        daemon: FsArgs,
        common: impl FnOnce(Launch<FsArgs>) -> Launch<FsArgs>,
    ) -> Fixture {
        assert!(
            daemon.shared_dir.as_os_str().is_empty(),
            "the fixture shares its own folder, not {}",
            daemon.shared_dir.display()
        );
        let dir = TempDir::new(name).unwrap();
        let share = dir.join("share");
        let outside = dir.join("outside");
        std::fs::create_dir(&share).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"top secret").unwrap();
        let sock = dir.join("fs.sock");
        let daemon = FsArgs {
            shared_dir: share.clone(),
            tag: daemon.tag.or_else(|| Some("testfs".into())),
            ..daemon
        };
        let mut cmd = common(Launch::on_socket(&sock, daemon)).command(Path::new(BIN));
        cmd.env_remove("RUST_LOG")
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

    pub fn connect(&self, queues: u16) -> (FsDevice, FsQueue, Vec<FsQueue>) {
        let mut dev =
            FsDevice::connect(self.dir.join("fs.sock"), &DriverConfig::default()).unwrap();
        let (hiprio, requests) = dev.setup_queues(queues, 64).unwrap();
        (dev, hiprio, requests)
    }

    /// Connects with one request queue and runs INIT.
    pub fn session(&self) -> Session {
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

    pub fn outside_untouched(&self) {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

pub struct Session {
    pub _dev: Option<FsDevice>,
    pub hiprio: Option<FsQueue>,
    pub q: FsQueue,
}

pub fn init(q: &mut FsQueue) -> FsReply {
    // 7.38 with every flag, and the 7.36+ flags2 and unused words.
    let bytes = body::init(38, 1 << 17, u32::MAX);
    q.call(Opcode::Init as u32, 0, &bytes, ROOM).unwrap()
}

pub use body::cstr;

pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

impl Session {
    pub fn hiprio(&mut self) -> &mut FsQueue {
        self.hiprio
            .as_mut()
            .expect("a session with its hiprio queue")
    }

    pub fn call(&mut self, op: Opcode, nodeid: u64, body: &[u8]) -> FsReply {
        self.q.call(op as u32, nodeid, body, ROOM).unwrap()
    }

    pub fn ok(&mut self, op: Opcode, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let reply = self.call(op, nodeid, body);
        assert_eq!(
            reply.error,
            0,
            "{op:?} on {nodeid} failed: {}",
            errno_name(reply.error)
        );
        reply.body
    }

    pub fn errno(&mut self, op: Opcode, nodeid: u64, body: &[u8]) -> i32 {
        -self.call(op, nodeid, body).error
    }

    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let reply = self.call(Opcode::Lookup, parent, &cstr(name));
        if reply.error != 0 {
            return Err(-reply.error);
        }
        Ok(EntryOut::read_from_bytes(&reply.body).unwrap())
    }

    pub fn create(
        &mut self,
        parent: u64,
        name: &str,
        flags: i32,
    ) -> Result<(EntryOut, OpenOut), i32> {
        let body = body::create(flags as u32, 0o644, 0, name);
        let reply = self.call(Opcode::Create, parent, &body);
        if reply.error != 0 {
            return Err(-reply.error);
        }
        let (entry, rest) = EntryOut::read_from_prefix(&reply.body).unwrap();
        Ok((entry, OpenOut::read_from_bytes(rest).unwrap()))
    }

    pub fn open(&mut self, nodeid: u64, flags: i32) -> Result<u64, i32> {
        let reply = self.call(Opcode::Open, nodeid, &body::open(flags as u32));
        if reply.error != 0 {
            return Err(-reply.error);
        }
        Ok(reply::open_fh(&reply.body, false).unwrap())
    }

    pub fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> u32 {
        let body = body::write(fh, offset, data);
        WriteOut::read_from_bytes(&self.ok(Opcode::Write, 0, &body))
            .unwrap()
            .size
    }

    pub fn read(&mut self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let reply = self.call(Opcode::Read, 0, &body::read(fh, offset, size));
        if reply.error != 0 {
            return Err(-reply.error);
        }
        Ok(reply.body)
    }

    pub fn getattr(&mut self, nodeid: u64) -> Result<Attr, i32> {
        let reply = self.call(Opcode::Getattr, nodeid, &body::getattr());
        if reply.error != 0 {
            return Err(-reply.error);
        }
        Ok(AttrOut::read_from_bytes(&reply.body).unwrap().attr)
    }

    pub fn release(&mut self, fh: u64, dir: bool) {
        let op = if dir {
            Opcode::Releasedir
        } else {
            Opcode::Release
        };
        self.ok(op, 0, &body::release(fh));
    }

    pub fn mkdir(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
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
    pub fn readdir(&mut self, nodeid: u64, plus: bool) -> Vec<(String, u64)> {
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

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn status_field(pid: u32, name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_string())
        })
}

/// The process the supervisor `pid` forked to serve in the sandbox.
pub fn sandboxed_child(pid: u32) -> u32 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if status_field(child, "PPid").as_deref() == Some(&pid.to_string()) {
                return child;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no child of the supervisor {pid}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The process that serves: the sandboxed child of a supervisor started with
/// `--sandbox namespace|chroot`, else the daemon itself.
pub fn serving_process(fx: &Fixture, sandboxed: bool) -> u32 {
    if sandboxed {
        sandboxed_child(fx.daemon.pid())
    } else {
        fx.daemon.pid()
    }
}

pub fn errno_name(e: i32) -> String {
    std::io::Error::from_raw_os_error(-e).to_string()
}

pub fn host_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Every FUSE operation a guest uses, checked against the host files: create,
/// write, read, fsync, flush, fallocate, lseek, setattr, open, mkdir, rename,
/// readdir(plus), rename2, symlink, readlink, link, mknod, access, statfs, unlink,
/// rmdir, syncfs, forget and batch forget.
pub fn file_operations_round_trip_on(fx: &Fixture) {
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
    let batch_forget = |s: &mut Session, nlookup: u64| {
        let one = ForgetOne {
            nodeid: entry.nodeid,
            nlookup,
        };
        let body = cat(&[
            BatchForgetIn { count: 1, dummy: 0 }.as_bytes(),
            one.as_bytes(),
        ]);
        s.hiprio()
            .send_no_reply(Opcode::BatchForget as u32, 0, &body)
            .unwrap();
    };
    batch_forget(&mut s, 2);
    assert!(s.getattr(entry.nodeid).is_ok(), "one lookup left");
    batch_forget(&mut s, 1);
    assert_eq!(s.getattr(entry.nodeid).unwrap_err(), libc::ENOENT);
    fx.outside_untouched();
}

/// setxattr, getxattr (size and value), listxattr, removexattr on a daemon started
/// with --xattr. False (and SKIPPED: printed) where the folder has no user xattrs.
pub fn xattr_round_trip(fx: &Fixture) -> bool {
    let mut s = fx.session();
    let (entry, _) = s.create(1, "f", libc::O_RDWR).unwrap();
    let body = cat(&[
        SetxattrIn { size: 5, flags: 0 }.as_bytes(),
        &cstr("user.test"),
        b"value",
    ]);
    let reply = s.call(Opcode::Setxattr, entry.nodeid, &body);
    if -reply.error == libc::EOPNOTSUPP {
        vhostkit_tests::skip::skip(format_args!(
            "the temporary folder's file system has no user xattrs"
        ));
        return false;
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
    let get_value = cat(&[
        GetxattrIn {
            size: 64,
            padding: 0,
        }
        .as_bytes(),
        &cstr("user.test"),
    ]);
    assert_eq!(s.ok(Opcode::Getxattr, entry.nodeid, &get_value), b"value");
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
    assert_eq!(
        s.errno(Opcode::Getxattr, entry.nodeid, &get_value),
        libc::ENODATA
    );
    true
}

/// Two frontends one after the other: the second gets a fresh session on the same
/// folder, and sees what the first wrote.
pub fn a_second_frontend_gets_a_fresh_session(fx: &Fixture) {
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
