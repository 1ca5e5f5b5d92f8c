//! A new user's first run: vhost-user-fs in its default configuration (only
//! `--socket-path` and `--shared-dir`) under QEMU's default vhost-user-fs-pci
//! options (`-device vhost-user-fs-pci,chardev=c1,tag=share`: the tag is the one
//! property QEMU requires). The guest mounts the share, reads a file the host
//! put there, writes one back, lists the folder; the test checks the host side.
//!
//! Needs qemu-system-x86_64 and the guest image (`scripts/build-guest-image.sh`,
//! run by the harness when missing); otherwise SKIPPED. About 10 s under TCG.
//!
//!     cargo build -p vhost-fs --bins
//!     cargo test -p vhost-fs --test guest_default -- --nocapture

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use vhostkit_tests::daemon::DaemonProcess;
use vhostkit_tests::guest::{qemu_guest_image, Guest, Initrd};
use vhostkit_tests::launch::fs::FsArgs;
use vhostkit_tests::launch::Launch;
use vhostkit_tests::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-fs");
const GUEST_TIMEOUT: Duration = Duration::from_secs(90);

const SCRIPT: &str = r#"
mkdir -p /mnt
mount -t virtiofs share /mnt || { echo "VHOSTKIT-RESULT error mount"; exit 1; }
echo "VHOSTKIT-RESULT from_host $(cat /mnt/from-host.txt)"
echo "written by the guest" > /mnt/from-guest.txt || { echo "VHOSTKIT-RESULT error write"; exit 2; }
mkdir /mnt/made-by-guest || exit 3
echo "VHOSTKIT-RESULT listing $(ls /mnt | tr '\n' ' ')"
sync
umount /mnt
exit 0
"#;

#[test]
fn default_daemon_under_default_qemu_device() {
    let Some(image) = qemu_guest_image("guest_default") else {
        return;
    };
    let dir = TempDir::new("fs-guest-default").unwrap();
    let share = dir.join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("from-host.txt"), "hello from the host").unwrap();
    let socket = dir.join("fs.sock");
    let log_path = dir.join("daemon.log");
    let mut cmd = Launch::on_socket(&socket, FsArgs::new(&share)).command(Path::new(BIN));
    cmd.env_remove("RUST_LOG")
        .stderr(Stdio::from(File::create(&log_path).unwrap()));
    let _daemon = DaemonProcess::spawn("vhost-user-fs", cmd, &socket, Duration::from_secs(10))
        .expect("vhost-user-fs starts");
    let out = Guest::new(&image, SCRIPT)
        .initrd(Initrd::Mini)
        .qemu_args([
            "-chardev".to_string(),
            format!("socket,id=c1,path={}", socket.display()),
            "-device".to_string(),
            "vhost-user-fs-pci,chardev=c1,tag=share".to_string(),
        ])
        .timeout(GUEST_TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    let context = out.context("vhost-user-fs", &log_path);
    assert_eq!(out.result("error"), None, "{context}");
    assert_eq!(
        out.result("from_host"),
        Some("hello from the host"),
        "{context}"
    );
    out.check_run_ok()
        .unwrap_or_else(|e| panic!("{e}{context}"));
    assert_eq!(
        std::fs::read_to_string(share.join("from-guest.txt")).unwrap(),
        "written by the guest\n"
    );
    assert!(share.join("made-by-guest").is_dir());
    let listing = out.result("listing").unwrap_or_default();
    assert!(listing.contains("from-host.txt"), "{listing}{context}");
    eprintln!("vhost-user-fs defaults, QEMU default vhost-user-fs-pci: mount, read, write ok");
}
