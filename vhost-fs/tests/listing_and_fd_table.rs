//! Two things fs-bench found slow, checked through the daemon: READDIRPLUS reads
//! only about one reply's worth of entries per getdents (so a reply of long names
//! takes several getdents, and every entry must still come back exactly once), and
//! the descriptor table is grown up front (every inode looked up holds a
//! descriptor; growing the table while threads run waits for RCU each time).

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use vhostkit_driver::fs::{body, opcode, reply, FsDevice};
use vhostkit_driver::DriverConfig;
use vhostkit_tests::daemon::DaemonProcess;
use vhostkit_tests::launch::fs::FsArgs;
use vhostkit_tests::launch::Launch;
use vhostkit_tests::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-fs");

fn daemon(dir: &TempDir) -> DaemonProcess {
    let sock = dir.join("fs.sock");
    let mut cmd = Launch::on_socket(&sock, FsArgs::new(dir.join("share"))).command(Path::new(BIN));
    cmd.env_remove("RUST_LOG")
        .stderr(Stdio::from(File::create(dir.join("daemon.log")).unwrap()));
    DaemonProcess::spawn("vhost-user-fs", cmd, &sock, Duration::from_secs(10)).unwrap()
}

#[test]
fn readdirplus_of_long_names_lists_each_once_and_fd_table_is_reserved() {
    let dir = TempDir::new("fs-listing").unwrap();
    let share = dir.join("share");
    std::fs::create_dir_all(share.join("d")).unwrap();
    // 240-byte names: about 280 bytes per kernel entry, 400 per READDIRPLUS entry,
    // so a 16 KiB reply needs several getdents of its 4 KiB buffer.
    let mut want: Vec<Vec<u8>> = (0..120)
        .map(|i| format!("{i:03}{}", "x".repeat(237)).into_bytes())
        .collect();
    for name in &want {
        File::create(share.join("d").join(std::str::from_utf8(name).unwrap())).unwrap();
    }
    let daemon = daemon(&dir);
    let mut dev = FsDevice::connect(dir.join("fs.sock"), &DriverConfig::default()).unwrap();
    let (_hiprio, mut requests) = dev.setup_queues(1, 64).unwrap();
    let q = &mut requests[0];
    let room = 64 * 1024;
    assert_eq!(
        q.call(opcode::INIT, 0, &body::init(31, 0, 1 << 13), room)
            .unwrap()
            .error,
        0
    );
    let r = q.call(opcode::LOOKUP, 1, &body::cstr("d"), room).unwrap();
    assert_eq!(r.error, 0);
    let d = reply::entry_nodeid(&r.body).unwrap();
    let r = q.call(opcode::OPENDIR, d, &body::open(0), room).unwrap();
    let fh = reply::open_fh(&r.body, false).unwrap();
    let mut got = Vec::new();
    let mut offset = 0;
    let mut lens = Vec::new();
    loop {
        let r = q
            .call(opcode::READDIRPLUS, d, &body::read(fh, offset, 16384), room)
            .unwrap();
        assert_eq!(r.error, 0);
        if r.body.is_empty() {
            break;
        }
        lens.push(r.body.len());
        let entries = reply::dirents(&r.body, true).unwrap();
        for e in entries {
            offset = e.off;
            if e.name != b"." && e.name != b".." {
                assert_ne!(e.nodeid, 0);
                got.push(e.name);
            }
        }
        assert!(lens.len() < 100, "no end to the listing");
    }
    // Full replies but the last: only the entry that did not fit waits for the next.
    assert!(lens.len() >= 3, "{lens:?}");
    assert!(
        lens[..lens.len() - 1].iter().all(|&n| n > 16384 - 500),
        "{lens:?}"
    );
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "entries lost or repeated");

    // The descriptor table was grown once, at connection, far past what is open.
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let fd_size: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let open = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .unwrap()
        .count() as u64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the rlimit we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(rc, 0);
    // The daemon raises its soft limit to the hard one; ours is at most that.
    let expected = limit.rlim_max.min(65536);
    assert!(
        fd_size >= expected && fd_size > 4 * open,
        "FDSize {fd_size}, {open} open, limit {expected}"
    );
}
