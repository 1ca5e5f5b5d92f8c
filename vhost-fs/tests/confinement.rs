//! The daemon confined (`--sandbox namespace|chroot`, `--seccomp kill`) still serves
//! a whole FUSE session through the user-space driver, reconnects included, and the
//! confinement is real: checked from outside through /proc.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use vhostkit_tests::launch::fs::{FsArgs, InodeFileHandles, Sandbox};
use vhostkit_tests::launch::SeccompAction;

fn gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists()
            || status_field(pid, "State").is_some_and(|s| s.starts_with('Z'))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Seccomp mode 2 (filter) and two filters (clone3 answered ENOSYS, then the
/// allow-list), as the kernel reports it. The serving process installs them just
/// after its socket appears (a loaded machine can show it in between): wait a
/// little for mode 2 first.
fn assert_filtered(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_field(pid, "Seccomp").as_deref() != Some("2") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        status_field(pid, "Seccomp").as_deref(),
        Some("2"),
        "pid {pid}"
    );
    if let Some(filters) = status_field(pid, "Seccomp_filters") {
        assert_eq!(filters, "2", "pid {pid}");
    }
}

/// A whole session (every FUSE operation, xattrs), then a second frontend.
fn full_workload(fx: &Fixture) {
    file_operations_round_trip_on(fx);
    xattr_round_trip(fx);
    a_second_frontend_gets_a_fresh_session(fx);
    fx.outside_untouched();
    assert!(!fx.log().contains("panicked"), "{}", fx.log());
}

/// SIGTERM ends the daemon cleanly (exit 0) and its socket is removed.
fn stops_cleanly(mut fx: Fixture) {
    let status = fx
        .daemon
        .signal_and_wait(libc::SIGTERM, TIMEOUT)
        .unwrap()
        .expect("the daemon stops on SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}: {}", fx.log());
    assert!(!fx.dir.join("fs.sock").exists(), "the socket is removed");
}

#[test]
fn seccomp_kill_serves_a_whole_session_with_the_filter_active() {
    let fx = Fixture::launch(
        "fs-seccomp",
        FsArgs {
            xattr: true,
            ..FsArgs::default()
        },
        |launch| launch.seccomp(SeccompAction::Kill),
    );
    let pid = fx.daemon.pid();
    assert_filtered(pid);
    full_workload(&fx);
    // The threads started after the filter (signal, connection, queue workers of
    // the open session) all carry it.
    let session = fx.session();
    let mut filtered = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // a thread that just ended
        };
        assert!(status.contains("Seccomp:\t2"), "{status}");
        filtered += 1;
    }
    assert!(
        filtered > 3,
        "main, signal and the session's threads: {filtered}"
    );
    // Every thread holds the file-serving capabilities only (with --xattr also
    // CAP_SYS_ADMIN), none of root's others.
    let keep = vhost_fs::capabilities(true)
        .iter()
        .fold(0u64, |m, &c| m | 1 << c);
    for (effective, permitted, bounding) in vhostkit_common::caps::sets_of_threads(pid).unwrap() {
        assert_eq!((effective, permitted, bounding), (keep, keep, keep));
    }
    drop(session);
    stops_cleanly(fx);
}

#[test]
fn without_seccomp_no_filter_is_installed() {
    let fx = Fixture::new("fs-noseccomp", FsArgs::default());
    assert_eq!(
        status_field(fx.daemon.pid(), "Seccomp").as_deref(),
        Some("0")
    );
}

#[test]
fn sandbox_namespace_pivots_into_the_shared_folder() {
    if !is_root() {
        vhostkit_tests::skip::skip(format_args!("--sandbox namespace needs root"));
        return;
    }
    let fx = Fixture::launch(
        "fs-namespace",
        FsArgs {
            sandbox: Some(Sandbox::Namespace),
            xattr: true,
            inode_file_handles: Some(InodeFileHandles::Mandatory),
            ..FsArgs::default()
        },
        |launch| launch.seccomp(SeccompAction::Kill),
    );
    let child = sandboxed_child(fx.daemon.pid());
    vhostkit_tests::wait_for_log(&fx.dir.join("daemon.log"), "sandbox namespace", TIMEOUT);
    // Its root is the shared folder, and its mount table holds that alone.
    let root = std::fs::metadata(format!("/proc/{child}/root")).unwrap();
    let share = std::fs::metadata(&fx.share).unwrap();
    assert_eq!((root.dev(), root.ino()), (share.dev(), share.ino()));
    let mountinfo = std::fs::read_to_string(format!("/proc/{child}/mountinfo")).unwrap();
    let mounts: Vec<Vec<&str>> = mountinfo
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(mounts.len(), 1, "{mountinfo}");
    assert_eq!(mounts[0][4], "/", "{mountinfo}");
    assert!(mounts[0][3].ends_with("/share"), "{mountinfo}");
    // Own pid (it is 1 there) and network namespaces.
    let nspid = status_field(child, "NSpid").unwrap();
    assert!(nspid.ends_with("\t1"), "{nspid:?}");
    for ns in ["pid", "net", "mnt"] {
        assert_ne!(
            std::fs::read_link(format!("/proc/{child}/ns/{ns}")).unwrap(),
            std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap(),
            "{ns} namespace"
        );
    }
    assert_filtered(child);
    full_workload(&fx);
    stops_cleanly(fx);
    assert!(gone(child, TIMEOUT));
}

#[test]
fn sandbox_chroot_serves_from_inside_the_shared_folder() {
    if !is_root() {
        vhostkit_tests::skip::skip(format_args!("--sandbox chroot needs root"));
        return;
    }
    let mut fx = Fixture::new(
        "fs-chroot",
        FsArgs {
            sandbox: Some(Sandbox::Chroot),
            xattr: true,
            ..FsArgs::default()
        },
    );
    let child = sandboxed_child(fx.daemon.pid());
    vhostkit_tests::wait_for_log(&fx.dir.join("daemon.log"), "sandbox chroot", TIMEOUT);
    assert_eq!(
        std::fs::read_link(format!("/proc/{child}/root")).unwrap(),
        std::fs::canonicalize(&fx.share).unwrap()
    );
    full_workload(&fx);
    // The child dies with its supervisor, even killed outright.
    let _ = fx.daemon.signal_and_wait(libc::SIGKILL, TIMEOUT);
    let orphan = !gone(child, TIMEOUT);
    if orphan {
        // SAFETY: kill() has no memory-safety preconditions; `child` is the daemon.
        unsafe { libc::kill(child as libc::pid_t, libc::SIGKILL) };
    }
    assert!(!orphan, "the sandboxed child outlived its supervisor");
}
