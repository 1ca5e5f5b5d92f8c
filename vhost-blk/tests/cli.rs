//! The daemon as a process: configuration errors, the listen/serve/accept-next
//! lifecycle, signals, and inherited sockets.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use vhostkit_tests::daemon::DaemonProcess;
use vhostkit_tests::launch::blk::BlkArgs;
use vhostkit_tests::launch::Launch;
use vhostkit_tests::TempDir;

fn wait_for_log(log: &Path, needle: &str) -> String {
    vhostkit_tests::wait_for_log(log, needle, Duration::from_secs(10))
}

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-blk");

/// Runs the daemon with `args` (raw, for a malformed command line, or a
/// [`Launch`]'s for one the daemon cannot serve) and checks that it fails.
fn run_expecting_failure<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should have failed");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!text.contains("panicked"), "{text}");
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn configuration_errors_give_a_clear_message_and_nonzero_exit() {
    let dir = TempDir::new("cli-config").unwrap();
    let image = dir.image(1 << 20).unwrap();
    let sock = dir.join("s.sock");

    // Malformed command lines, refused by the parser: written out as they are.
    let (sock_arg, image_arg) = (sock.to_str().unwrap(), image.to_str().unwrap());
    let (code, text) = run_expecting_failure(&["--socket-path", sock_arg]);
    assert_eq!(code, 2);
    assert!(text.contains("--path"), "{text}");

    let (code, text) = run_expecting_failure(&[
        "--socket-path",
        sock_arg,
        "--path",
        image_arg,
        "--queue-size",
        "100",
    ]);
    assert_eq!(code, 2);
    assert!(text.contains("power of two"), "{text}");

    // Well-formed ones the daemon cannot serve.
    let launch = |socket: &Path, image: &str| Launch::on_socket(socket, BlkArgs::new(image));
    let (code, text) = run_expecting_failure(&launch(&sock, "/nonexistent/disk.img").to_args());
    assert_eq!(code, 1);
    assert!(text.contains("cannot open /nonexistent/disk.img"), "{text}");

    let (_, text) =
        run_expecting_failure(&launch(Path::new("/nonexistent-dir/s.sock"), image_arg).to_args());
    assert!(text.contains("does not exist"), "{text}");

    // A read-write open of a file that is not a disk fails with a clear message.
    let (_, text) = run_expecting_failure(&launch(&sock, "/proc/version").to_args());
    assert!(text.contains("cannot open /proc/version"), "{text}");
    assert!(!sock.exists(), "no socket left behind after a failed start");
}

fn spawn_daemon(dir: &TempDir, image: &Path, log: &Path) -> DaemonProcess {
    let sock = dir.join("blk.sock");
    let mut cmd = Launch::on_socket(&sock, BlkArgs::new(image)).command(Path::new(BIN));
    cmd.stderr(Stdio::from(std::fs::File::create(log).unwrap()));
    DaemonProcess::spawn("vhost-user-blk", cmd, &sock, Duration::from_secs(10)).unwrap()
}

#[test]
fn accepts_the_next_frontend_and_exits_cleanly_on_sigterm() {
    let dir = TempDir::new("cli-lifecycle").unwrap();
    let image = dir.image(1 << 20).unwrap();
    let log = dir.join("daemon.log");
    let mut daemon = spawn_daemon(&dir, &image, &log);
    // DaemonProcess::spawn's readiness probe was frontend 1; two more come and go.
    for n in 2..=3 {
        let conn = UnixStream::connect(daemon.socket()).unwrap();
        wait_for_log(&log, &format!("frontend {n} connected"));
        drop(conn);
        wait_for_log(&log, &format!("frontend {n} disconnected"));
    }
    // SIGTERM while a frontend is connected: the connection is shut down, the
    // daemon exits 0 and removes its socket.
    let _conn = UnixStream::connect(daemon.socket()).unwrap();
    wait_for_log(&log, "frontend 4 connected");
    let status = daemon
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
        .unwrap()
        .expect("daemon exits after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(!daemon.socket().exists(), "socket removed on exit");
    let text = wait_for_log(&log, "stopped after 4 frontend(s)");
    assert!(
        !text.contains("exiting now"),
        "clean stop, not the fallback: {text}"
    );
}

#[test]
fn sigint_while_idle_removes_the_socket() {
    let dir = TempDir::new("cli-sigint").unwrap();
    let image = dir.image(1 << 20).unwrap();
    let log = dir.join("daemon.log");
    let mut daemon = spawn_daemon(&dir, &image, &log);
    wait_for_log(&log, "frontend 1 disconnected");
    let status = daemon
        .signal_and_wait(libc::SIGINT, Duration::from_secs(10))
        .unwrap()
        .expect("daemon exits after SIGINT");
    assert!(status.success());
    assert!(!daemon.socket().exists());
}

#[test]
fn serves_an_inherited_listening_socket_and_leaves_it_in_place() {
    let dir = TempDir::new("cli-fd").unwrap();
    let image = dir.image(1 << 20).unwrap();
    let sock = dir.join("inherited.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    // dup() gives a descriptor without FD_CLOEXEC, so the child inherits it.
    // SAFETY: dup of a listener we own; the copy is handed to the child.
    let fd = unsafe { libc::dup(listener.as_raw_fd()) };
    assert!(fd >= 0);
    let log = dir.join("daemon.log");
    let mut cmd = Launch::on_fd(fd, BlkArgs::new(&image)).command(Path::new(BIN));
    cmd.stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let mut daemon = DaemonProcess::spawn_on_inherited_socket(
        "vhost-user-blk",
        cmd,
        &sock,
        Duration::from_secs(10),
    )
    .unwrap();
    // SAFETY: closing our copy of the descriptor the child inherited.
    unsafe { libc::close(fd) };
    wait_for_log(&log, &format!("listening on inherited fd {fd}"));
    wait_for_log(&log, "frontend 1 connected");
    let status = daemon
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
        .unwrap()
        .expect("exits");
    assert!(status.success());
    assert!(
        sock.exists(),
        "an inherited socket is not the daemon's to remove"
    );

    // A descriptor that is not a socket is refused.
    let (_, text) = run_expecting_failure(&Launch::on_fd(0, BlkArgs::new(&image)).to_args());
    assert!(text.contains("not an open socket"), "{text}");
}

/// Runs the child with io_uring_setup denied (EPERM) by a seccomp filter, as a
/// kernel with io_uring disabled (sysctl or a container's seccomp profile) would.
fn deny_io_uring(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe prctl calls on data it owns.
    unsafe {
        cmd.pre_exec(|| {
            const IO_URING_SETUP: u32 = 425;
            // struct seccomp_data: nr at offset 0.
            let filter = [
                libc::sock_filter {
                    code: 0x20,
                    jt: 0,
                    jf: 0,
                    k: 0,
                }, // ld [nr]
                libc::sock_filter {
                    code: 0x15,
                    jt: 0,
                    jf: 1,
                    k: IO_URING_SETUP,
                }, // jeq
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn refused_io_uring_falls_back_to_sync_with_one_warning() {
    let dir = TempDir::new("cli-nouring").unwrap();
    let image = dir.image(1 << 20).unwrap();
    let sock = dir.join("blk.sock");
    let log = dir.join("daemon.log");
    let mut cmd = Launch::on_socket(&sock, BlkArgs::new(&image)).command(Path::new(BIN));
    cmd.stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    deny_io_uring(&mut cmd);
    let mut daemon =
        DaemonProcess::spawn("vhost-user-blk", cmd, &sock, Duration::from_secs(10)).unwrap();
    let text = wait_for_log(&log, "engine sync");
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("io_uring is not available"), "{text}");

    // And it serves I/O on the sync engine.
    use vhostkit_driver::blk::{BlkDevice, BlkRequest, VIRTIO_BLK_S_OK};
    use vhostkit_driver::DriverConfig;
    let mut dev = BlkDevice::connect(&sock, &DriverConfig::with_mem_size(1 << 20)).unwrap();
    let mut queues = dev.setup_queues(1, 16, 4).unwrap();
    let mem = dev.driver.memory().clone();
    let buf = mem.alloc(4096, 4096).unwrap();
    mem.fill(buf, 4096, 0x5a).unwrap();
    let timeout = Duration::from_secs(5);
    let done = queues[0]
        .run(&BlkRequest::write(8, &[(buf, 4096)]), timeout)
        .unwrap();
    assert_eq!(done.status, VIRTIO_BLK_S_OK);
    let on_disk = std::fs::read(&image).unwrap();
    assert!(on_disk[4096..8192].iter().all(|&b| b == 0x5a));
    assert!(daemon.is_running());
}
