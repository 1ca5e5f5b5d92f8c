//! The daemon as a process: configuration errors (one line, exit 2), refused
//! virtiofsd flags, --print-capabilities.

use std::path::Path;
use std::process::Command;

use vhostkit_tests::launch::fs::{FsArgs, InodeFileHandles, Sandbox};
use vhostkit_tests::launch::Launch;
use vhostkit_tests::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-fs");

fn run_expecting_failure(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} should have failed");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!text.contains("panicked"), "{text}");
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn print_capabilities_prints_json_and_exits() {
    let out = Command::new(BIN)
        .arg("--print-capabilities")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.trim(), r#"{"type":"fs","features":[]}"#);
}

#[test]
fn configuration_errors_give_one_line_and_exit_2() {
    let dir = TempDir::new("fs-cli").unwrap();
    let sock = dir.join("fs.sock");
    let sock = sock.to_str().unwrap();
    let shared = dir.path().to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--socket-path", sock], "--shared-dir"),
        (
            &["--socket-path", sock, "--shared-dir", "/nonexistent-fs-dir"],
            "/nonexistent-fs-dir",
        ),
        (
            &[
                "--socket-path",
                sock,
                "--shared-dir",
                shared,
                "--tag",
                &"t".repeat(40),
            ],
            "--tag",
        ),
        (
            &[
                "--socket-path",
                sock,
                "--shared-dir",
                shared,
                "--num-request-queues",
                "0",
            ],
            "--num-request-queues",
        ),
        (
            &["--socket-path", sock, "--shared-dir", shared, "--posix-acl"],
            "--posix-acl: this virtiofsd option is not supported",
        ),
    ];
    for (args, needle) in cases {
        let (code, text) = run_expecting_failure(args);
        assert_eq!(code, 2, "{args:?}: {text}");
        assert!(text.contains(needle), "{args:?}: {text}");
        assert_eq!(text.trim().lines().count(), 1, "{args:?}: {text}");
    }
    // clap's own errors (a bad enum value) also exit 2.
    let (code, text) = run_expecting_failure(&[
        "--socket-path",
        sock,
        "--shared-dir",
        shared,
        "--cache",
        "sometimes",
    ]);
    assert_eq!(code, 2);
    assert!(text.contains("--cache"), "{text}");
}

#[test]
fn socket_group_sets_the_socket_owner_group() {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        vhostkit_tests::skip::skip(format_args!(
            "changing a socket's group to an arbitrary one needs root"
        ));
        return;
    }
    let dir = TempDir::new("fs-cli-group").unwrap();
    let sock = dir.join("fs.sock");
    let mut cmd = Launch::on_socket(&sock, FsArgs::new(dir.path()))
        .socket_group("4242")
        .command(Path::new(BIN));
    cmd.env_remove("RUST_LOG")
        .stderr(std::process::Stdio::null());
    let _daemon = vhostkit_tests::daemon::DaemonProcess::spawn(
        "vhost-user-fs",
        cmd,
        &sock,
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(std::fs::metadata(&sock).unwrap().gid(), 4242);
}

/// `launch` as an unprivileged user: nobody (65534) when the test runs as root,
/// else whoever runs the test.
fn run_unprivileged(launch: &Launch<FsArgs>) -> Option<(i32, String)> {
    use std::os::unix::process::CommandExt;
    let mut cmd = launch.command(Path::new(BIN));
    cmd.env_remove("RUST_LOG");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(65534).gid(65534);
    }
    // A daemon that starts instead of refusing is stopped, and the test fails.
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().ok()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().ok()?;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take()?, &mut text).ok()?;
    Some((status.code().unwrap_or(-1), text))
}

#[test]
fn sandboxes_without_root_are_refused_with_one_line_and_exit_1() {
    // A folder an unprivileged user can reach (the test's own may be private).
    let dir = TempDir::new("fs-cli-sandbox").unwrap();
    let perms = std::os::unix::fs::PermissionsExt::from_mode(0o777);
    std::fs::set_permissions(dir.path(), perms).unwrap();
    let sock = dir.join("fs.sock");
    for (sandbox, mode, cap) in [
        (Sandbox::Namespace, "namespace", "CAP_SYS_ADMIN"),
        (Sandbox::Chroot, "chroot", "CAP_SYS_CHROOT"),
    ] {
        let daemon = FsArgs {
            sandbox: Some(sandbox),
            ..FsArgs::new(dir.path())
        };
        let Some((code, text)) = run_unprivileged(&Launch::on_socket(&sock, daemon)) else {
            vhostkit_tests::skip::skip(format_args!(
                "cannot run the daemon as an unprivileged user"
            ));
            return;
        };
        if text.contains("Permission denied") && !text.contains("--sandbox") {
            vhostkit_tests::skip::skip(format_args!(
                "the binary is not reachable by an unprivileged user: {text}"
            ));
            return;
        }
        assert_eq!(code, 1, "{mode}: {text}");
        assert!(
            text.contains(&format!("--sandbox {mode} needs root ({cap})")),
            "{text}"
        );
        assert_eq!(text.trim().lines().count(), 1, "{text}");
        assert!(!sock.exists(), "refused before binding the socket");
    }
}

#[test]
fn mandatory_file_handles_without_the_capability_are_refused_with_exit_1() {
    let dir = TempDir::new("fs-cli-handles").unwrap();
    let perms = std::os::unix::fs::PermissionsExt::from_mode(0o777);
    std::fs::set_permissions(dir.path(), perms).unwrap();
    let sock = dir.join("fs.sock");
    let daemon = FsArgs {
        inode_file_handles: Some(InodeFileHandles::Mandatory),
        ..FsArgs::new(dir.path())
    };
    let Some((code, text)) = run_unprivileged(&Launch::on_socket(&sock, daemon)) else {
        vhostkit_tests::skip::skip(format_args!(
            "cannot run the daemon as an unprivileged user"
        ));
        return;
    };
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(
            "--inode-file-handles=mandatory: open_by_handle_at needs CAP_DAC_READ_SEARCH"
        ),
        "{text}"
    );
    assert!(!sock.exists(), "refused before binding the socket");
}
