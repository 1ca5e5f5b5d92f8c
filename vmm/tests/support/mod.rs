//! What the VMM's integration tests share: running the `vhostkit` binary on the
//! test guests built by build.rs, the checks that say whether a test can run here
//! (each prints a loud SKIPPED line when not), a vhost-user-blk daemon, and the
//! assertions on a run's outcome. Each test file uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vhostkit_tests::daemon::{workspace_bin, DaemonProcess};
use vhostkit_tests::launch::blk::BlkArgs;
use vhostkit_tests::launch::{Launch, LogLevel};
use vhostkit_tests::util::{run_to_end, Finished, TempDir};

pub const VHOSTKIT: &str = env!("CARGO_BIN_EXE_vhostkit");
pub const HELLO: &str = env!("VHOSTKIT_TEST_GUEST");
pub const FAULT: &str = env!("VHOSTKIT_FAULT_GUEST");
pub const VIRTIO: &str = env!("VHOSTKIT_VIRTIO_GUEST");
pub const BLK: &str = env!("VHOSTKIT_BLK_GUEST");
pub const NET: &str = env!("VHOSTKIT_NET_GUEST");
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `vhostkit ARGS` (RUST_LOG unset, so `--log-level` decides); kills it after
/// TIMEOUT.
pub fn vhostkit(args: &[&str]) -> Finished {
    run_to_end(
        Command::new(VHOSTKIT).args(args).env_remove("RUST_LOG"),
        TIMEOUT,
    )
}

/// Whether each path exists; prints SKIPPED for the first that does not.
pub fn have_paths(paths: &[&str]) -> bool {
    for p in paths {
        if !Path::new(p).exists() {
            vhostkit_tests::skip::skip(format_args!("no {p}"));
            return false;
        }
    }
    true
}

pub fn have_kvm() -> bool {
    have_paths(&["/dev/kvm"])
}

/// The workspace binary `name` if it is built; prints SKIPPED if not.
pub fn built(name: &str) -> Option<PathBuf> {
    let bin = workspace_bin(name);
    if bin.exists() {
        return Some(bin);
    }
    vhostkit_tests::skip::skip(format_args!(
        "{} not built (cargo build --workspace --bins)",
        bin.display()
    ));
    None
}

/// vhost-user-blk serving `image` on `dir`/blk.sock (warnings only).
pub fn blk_daemon(dir: &TempDir, image: &Path) -> DaemonProcess {
    let sock = dir.join("blk.sock");
    let cmd = Launch::on_socket(&sock, BlkArgs::new(image))
        .log_level(LogLevel::Warn)
        .command(&workspace_bin("vhost-user-blk"));
    DaemonProcess::spawn("vhost-user-blk", cmd, &sock, Duration::from_secs(10))
        .expect("vhost-user-blk starts")
}

/// The run powered off cleanly: status 0, no panic.
pub fn assert_powered_off(o: &Finished) {
    assert_eq!(
        o.code,
        Some(0),
        "stdout: {}\nstderr: {}",
        o.stdout,
        o.stderr
    );
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
}

/// No kick and no call passed through the VMM (needs `--log-level info`): kicks
/// went through ioeventfds, calls through irqfds.
pub fn assert_no_vmm_notifications(o: &Finished) {
    assert!(
        o.stderr
            .contains("virtio notifications through the VMM: 0 kicks, 0 calls"),
        "{}",
        o.stderr
    );
}

/// The error lines of a run's stderr (everything but INFO).
pub fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| !l.contains(" INFO ")).collect()
}

/// Exactly one error line on stderr, containing `needle`, no panic, and the given
/// exit status.
pub fn assert_one_error(code: Option<i32>, stderr: &str, want_code: i32, needle: &str) {
    assert_eq!(code, Some(want_code), "stderr: {stderr}");
    let lines = error_lines(stderr);
    assert_eq!(lines.len(), 1, "want one error line, got: {stderr:?}");
    assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
