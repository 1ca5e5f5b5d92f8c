//! Devices through the `vhostkit` binary: the forms that start our daemons, the
//! TOML description, and what happens when a backend fails while the guest runs
//! (it hangs up, a daemon we started dies, it never answers). Each failure must end
//! the VMM with one clear error line and a non-zero status, never a hang.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;
use vhostkit_tests::util::TempDir;

/// Enough write+read pairs that the blk guest is still busy when the test strikes.
const LONG_RUN: &str = "requests=10000000";

/// Whether the test can run: /dev/kvm and the daemon binary (prints SKIPPED if not).
fn ready() -> bool {
    have_kvm() && built("vhost-user-blk").is_some()
}

/// The pids of running processes whose command line contains `needle`.
fn pids_with_arg(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// A running `vhostkit` whose stdout lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(VHOSTKIT)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// Waits for a stdout line containing `needle`.
    fn wait_line(&self, needle: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no line with {needle:?} on the guest console");
    }

    /// Waits (bounded) for the exit; returns the status code and stderr.
    fn finish(mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status.code(), err);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("vhostkit did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn disk_path_starts_our_daemon_and_stops_it_on_exit() {
    if !ready() {
        return;
    }
    let dir = TempDir::new("vmm-disk-path").unwrap();
    let image = dir.image(1 << 20).unwrap();
    let image_s = image.display().to_string();
    let o = vhostkit(&["run", "--kernel", BLK, "--disk", &format!("path={image_s}")]);
    assert_powered_off(&o);
    assert!(
        o.stdout
            .contains("virtio-blk: capacity 2048 sectors, write+read sector 33 ok"),
        "{}",
        o.stdout
    );
    // The guest's sector reached the image through the daemon the VMM started ...
    let data = std::fs::read(&image).unwrap();
    assert_eq!(data[33 * 512], 3, "sector 33 written");
    // ... and the daemon is gone with the VMM.
    assert!(
        pids_with_arg(&image_s).is_empty(),
        "a vhost-user-blk for {image_s} is still running"
    );
}

#[test]
fn toml_description_boots_the_same_vm() {
    if !ready() {
        return;
    }
    let dir = TempDir::new("vmm-toml").unwrap();
    let image = dir.image(1 << 20).unwrap();
    let toml = dir.join("vm.toml");
    std::fs::write(
        &toml,
        format!(
            "kernel = {BLK:?}\nmemory = \"128M\"\ncpus = 2\n[[disk]]\npath = \"{}\"\n",
            image.file_name().unwrap().to_string_lossy()
        ),
    )
    .unwrap();
    let o = vhostkit(&["run", "--config", &toml.display().to_string()]);
    assert_powered_off(&o);
    assert!(o.stdout.contains("write+read sector 33 ok"), "{}", o.stdout);
    assert_eq!(std::fs::read(&image).unwrap()[33 * 512], 3);
}

#[test]
fn a_backend_that_hangs_up_ends_the_vm_with_an_error() {
    if !ready() {
        return;
    }
    let dir = TempDir::new("vmm-hangup").unwrap();
    let image = dir.image(1 << 20).unwrap();
    let mut daemon = blk_daemon(&dir, &image);
    let disk = format!("socket={}", daemon.socket().display());
    let vm = Running::start(&[
        "run",
        "--kernel",
        BLK,
        "--disk",
        &disk,
        "--cmdline",
        LONG_RUN,
    ]);
    vm.wait_line("LNRO0005");
    daemon
        .signal_and_wait(libc::SIGKILL, Duration::from_secs(5))
        .unwrap();
    let (code, stderr) = vm.finish(Duration::from_secs(10));
    let want = format!("--disk {disk}: the vhost-user backend closed the connection");
    assert_one_error(code, &stderr, 1, &want);
}

#[test]
fn a_daemon_we_started_dying_ends_the_vm_with_an_error() {
    if !ready() {
        return;
    }
    let dir = TempDir::new("vmm-daemon-dies").unwrap();
    let image = dir.image(1 << 20).unwrap();
    let image_s = image.display().to_string();
    let vm = Running::start(&[
        "run",
        "--kernel",
        BLK,
        "--disk",
        &format!("path={image_s}"),
        "--cmdline",
        LONG_RUN,
    ]);
    vm.wait_line("LNRO0005");
    let pids = pids_with_arg(&image_s)
        .into_iter()
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "vhost-user-blk")
        })
        .collect::<Vec<_>>();
    assert_eq!(pids.len(), 1, "one daemon for the disk");
    // The VMM (every thread: vCPUs, console, watch) and the daemon it started run
    // under their filters (--seccomp kill by default), the daemon without
    // capabilities.
    for pid in [vm.child.id(), pids[0]] {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
        {
            if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
                assert!(status.contains("Seccomp:\t2"), "pid {pid}: {status}");
            }
        }
    }
    for (effective, permitted, _) in vhostkit_common::caps::sets_of_threads(pids[0]).unwrap() {
        assert_eq!((effective, permitted), (0, 0), "the daemon's every thread");
    }
    // SAFETY: kill() with a pid and a signal number touches no memory of ours.
    assert_eq!(unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) }, 0);
    let (code, stderr) = vm.finish(Duration::from_secs(10));
    let want = format!("vhost-user-blk for --disk path={image_s} exited");
    assert_one_error(code, &stderr, 1, &want);
}

#[test]
fn a_backend_that_never_answers_is_an_error_not_a_hang() {
    if !have_kvm() {
        return;
    }
    let dir = TempDir::new("vmm-mute").unwrap();
    let sock = dir.join("mute.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    // Accepts the VMM's connection and then neither reads nor answers.
    let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let start = Instant::now();
    let o = vhostkit(&[
        "run",
        "--kernel",
        HELLO,
        "--disk",
        &format!("socket={}", sock.display()),
    ]);
    assert_one_error(
        o.code,
        &o.stderr,
        1,
        "GET_FEATURES: no answer from the backend within 5s",
    );
    assert!(start.elapsed() < Duration::from_secs(15));
    assert!(!o.stdout.contains("hello"), "the guest must not start");
    drop(held.join());
}
