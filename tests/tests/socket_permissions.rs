//! Who may connect to a daemon's vhost-user socket: its owner, and with
//! `--socket-group` that group, whatever umask the daemon was started with (here
//! 000, as a service manager may set). Checked for all three daemons by connecting
//! from forked children with other user and group ids.
//!
//! Needs root (to switch ids, and for the net daemon's tap); the daemons are built
//! by `cargo build --workspace --bins` (scripts/test.sh does).

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use vhostkit_tests::daemon::{workspace_bin, DaemonProcess};
use vhostkit_tests::launch::blk::BlkArgs;
use vhostkit_tests::launch::fs::FsArgs;
use vhostkit_tests::launch::net::NetArgs;
use vhostkit_tests::launch::{DaemonArgs, Launch};
use vhostkit_tests::TempDir;

const TIMEOUT: Duration = Duration::from_secs(10);
const NOBODY: libc::uid_t = 65534;
const SOCKET_GROUP: libc::gid_t = 4242;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a process with user `uid` and group `gid` (no supplementary groups) can
/// connect to the unix socket at `path`.
fn can_connect(path: &Path, uid: libc::uid_t, gid: libc::gid_t) -> bool {
    let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(cpath.as_bytes_with_nul()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: the child only makes async-signal-safe system calls on data prepared
    // before the fork, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: as above; every pointer is to memory of this (copied) frame.
        unsafe {
            let ok = libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(gid) == 0
                && libc::setuid(uid) == 0;
            if !ok {
                libc::_exit(3);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let rc = libc::connect(
                fd,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            libc::_exit(if rc == 0 { 0 } else { 1 });
        }
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "{status}");
    match libc::WEXITSTATUS(status) {
        0 => true,
        1 => false,
        other => panic!("the child could not switch ids ({other})"),
    }
}

/// Starts `launch` under umask 000, its stderr in `dir/daemon.log`.
fn start<A: DaemonArgs>(dir: &TempDir, launch: &Launch<A>) -> DaemonProcess {
    let sock = launch.socket_path().expect("a daemon creating its socket");
    let mut cmd = launch.command(&workspace_bin(A::PROGRAM));
    cmd.env_remove("RUST_LOG")
        .stderr(Stdio::from(File::create(dir.join("daemon.log")).unwrap()));
    // SAFETY: umask is async-signal-safe and touches only the child's mask.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    DaemonProcess::spawn(A::PROGRAM, cmd, sock, TIMEOUT).unwrap()
}

/// The daemon run with `args` on `d.sock`, without and with `--socket-group`.
fn check<A: DaemonArgs>(args: A) {
    let daemon = A::PROGRAM;
    let dir = TempDir::new("sockperm").unwrap();
    // The folder must let others reach the socket: only its mode decides.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.join("d.sock");

    let launch = Launch::on_socket(&sock, args);
    let d = start(&dir, &launch);
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{daemon}");
    assert!(can_connect(&sock, 0, 0), "{daemon}: the owner connects");
    assert!(
        !can_connect(&sock, NOBODY, NOBODY),
        "{daemon}: others do not"
    );
    assert!(
        !can_connect(&sock, NOBODY, SOCKET_GROUP),
        "{daemon}: no group without --socket-group"
    );
    drop(d);

    let d = start(&dir, &launch.socket_group(SOCKET_GROUP.to_string()));
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        (meta.permissions().mode() & 0o777, meta.gid()),
        (0o660, SOCKET_GROUP),
        "{daemon}"
    );
    assert!(
        can_connect(&sock, NOBODY, SOCKET_GROUP),
        "{daemon}: the group connects"
    );
    assert!(
        !can_connect(&sock, NOBODY, NOBODY),
        "{daemon}: others do not"
    );
    drop(d);
}

#[test]
fn blk_socket_is_owner_only_or_group() {
    if !is_root() {
        vhostkit_tests::skip::skip(format_args!("switching user ids needs root"));
        return;
    }
    let dir = TempDir::new("sockperm-img").unwrap();
    let image = dir.image(1 << 20).unwrap();
    check(BlkArgs::new(&image));
}

#[test]
fn fs_socket_is_owner_only_or_group() {
    if !is_root() {
        vhostkit_tests::skip::skip(format_args!("switching user ids needs root"));
        return;
    }
    let dir = TempDir::new("sockperm-share").unwrap();
    check(FsArgs::new(dir.path()));
}

#[test]
fn net_socket_is_owner_only_or_group() {
    if !is_root() || !Path::new("/dev/net/tun").exists() {
        vhostkit_tests::skip::skip(format_args!("needs root and /dev/net/tun"));
        return;
    }
    let tap = format!("vksock{}", std::process::id() % 100_000);
    check(NetArgs::new(tap));
}
