//! A new user's first run: vhost-user-blk in its default configuration (only
//! `--socket-path` and `--path`) under QEMU's default vhost-user-blk-pci options
//! (`-device vhost-user-blk-pci,chardev=c1`: no `num-queues=`, so QEMU asks for one
//! queue per vCPU, two here, and refuses a backend that offers fewer). The guest
//! writes 256 KiB to the disk with O_DIRECT, reads it back and compares; the test
//! checks the image holds the same bytes.
//!
//! Needs qemu-system-x86_64 and the guest image (`scripts/build-guest-image.sh`,
//! run by the harness when missing); otherwise SKIPPED. About 10 s under TCG.
//!
//!     cargo build -p vhost-blk --bins
//!     cargo test -p vhost-blk --test guest_default -- --nocapture

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use vhostkit_tests::daemon::DaemonProcess;
use vhostkit_tests::guest::{qemu_guest_image, Guest, Initrd};
use vhostkit_tests::launch::blk::BlkArgs;
use vhostkit_tests::launch::Launch;
use vhostkit_tests::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-blk");
const GUEST_TIMEOUT: Duration = Duration::from_secs(90);
const DATA_OFFSET: u64 = 1 << 20;

/// The guest's run.sh: 256 KiB of a pattern written at 1 MiB, read back, compared.
const SCRIPT: &str = r#"
dev=/dev/vda
if [ ! -b $dev ]; then echo "VHOSTKIT-RESULT error no $dev"; exit 1; fi
echo "VHOSTKIT-RESULT queues $(ls /sys/block/vda/mq | wc -l)"
i=0; : > /tmp/pattern
while [ $i -lt 256 ]; do printf 'vhostkit-default-%06d-' $i | dd bs=1024 count=1 conv=sync 2>/dev/null >> /tmp/pattern; i=$((i+1)); done
dd if=/tmp/pattern of=$dev bs=4096 seek=256 oflag=direct conv=fsync 2>/dev/null || { echo "VHOSTKIT-RESULT error write"; exit 2; }
echo 3 > /proc/sys/vm/drop_caches
dd if=$dev of=/tmp/back bs=4096 skip=256 count=64 iflag=direct 2>/dev/null || { echo "VHOSTKIT-RESULT error read"; exit 3; }
if cmp -s /tmp/pattern /tmp/back; then echo "VHOSTKIT-RESULT same yes"; else echo "VHOSTKIT-RESULT same no"; fi
exit 0
"#;

#[test]
fn default_daemon_under_default_qemu_device() {
    let Some(image) = qemu_guest_image("guest_default") else {
        return;
    };
    let dir = TempDir::new("blk-guest-default").unwrap();
    let disk = dir.image(16 << 20).unwrap();
    let socket = dir.join("blk.sock");
    let log_path = dir.join("daemon.log");
    // Nothing but where to listen and what to serve.
    let mut cmd = Launch::on_socket(&socket, BlkArgs::new(&disk)).command(Path::new(BIN));
    cmd.env_remove("RUST_LOG")
        .stderr(Stdio::from(File::create(&log_path).unwrap()));
    let _daemon = DaemonProcess::spawn("vhost-user-blk", cmd, &socket, Duration::from_secs(10))
        .expect("vhost-user-blk starts");
    let out = Guest::new(&image, SCRIPT)
        .initrd(Initrd::Mini)
        .cpus(2)
        .qemu_args([
            "-chardev".to_string(),
            format!("socket,id=c1,path={}", socket.display()),
            "-device".to_string(),
            "vhost-user-blk-pci,chardev=c1".to_string(),
        ])
        .timeout(GUEST_TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    let context = out.context("vhost-user-blk", &log_path);
    assert_eq!(out.result("error"), None, "{context}");
    assert_eq!(
        out.result("same"),
        Some("yes"),
        "read back differs{context}"
    );
    assert_eq!(
        out.result("queues"),
        Some("2"),
        "one queue per vCPU{context}"
    );
    out.check_run_ok()
        .unwrap_or_else(|e| panic!("{e}{context}"));
    let on_disk = std::fs::read(&disk).unwrap();
    let first = b"vhostkit-default-000000-";
    let at = DATA_OFFSET as usize;
    assert_eq!(
        &on_disk[at..at + first.len()],
        first,
        "the image holds the data"
    );
    eprintln!("vhost-user-blk defaults, QEMU default vhost-user-blk-pci: 2 queues, data intact");
}
