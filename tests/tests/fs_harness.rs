//! The virtio-fs guest harness of `vhostkit_tests::fs` can fail: fio's verify on a
//! virtiofs mount catches a block changed between its write and verify passes. Run
//! against virtiofsd, the peer (our vhost-user-fs runs the same checks, and
//! pjdfstest beside virtiofsd, in vhost-fs/tests/guest_pjdfstest.rs).
//!
//! Needs root, QEMU, the guest image and the fs tools (scripts/build-fs-tools.sh);
//! prints SKIPPED with the reason when one is missing.
//!
//!     cargo test -p vhostkit-tests --test fs_harness -- --nocapture

use std::time::Duration;

use vhostkit_tests::fs::{
    guest_prerequisites, run_fio_and_data_checks_with, spawn_fs_daemon, virtiofsd_cmd,
    VIRTIOFSD_TAG,
};
use vhostkit_tests::guest::FsDevice;
use vhostkit_tests::TempDir;

const FIO_TIMEOUT: Duration = Duration::from_secs(240);

/// The check must be able to fail: a block of fio's file overwritten between the
/// write and verify passes is a verify mismatch that the check reports.
#[test]
fn changed_block_fails_the_fio_check() {
    let Some((image, tools)) = guest_prerequisites() else {
        return;
    };
    let dir = TempDir::new("virtiofsd-fio-corrupt").unwrap();
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    let socket = dir.join("fs.sock");
    let _daemon = spawn_fs_daemon(
        "virtiofsd",
        virtiofsd_cmd(&tools, &socket, &shared),
        &socket,
    )
    .expect("start virtiofsd");
    let dev = FsDevice::new(&socket, VIRTIOFSD_TAG);
    let corrupt = "dd if=/dev/urandom of=/mnt/fio.dat bs=4096 seek=100 count=1 conv=notrunc 2>/dev/null && sync";
    match run_fio_and_data_checks_with(&image, &dev, &shared, 4, FIO_TIMEOUT, corrupt) {
        Ok(check) => panic!("a changed block passed the check\n{}", check.console),
        Err(e) => {
            assert!(
                e.starts_with("fio_verify_rc "),
                "failed, but not on fio's verify: {e}"
            );
            eprintln!(
                "virtiofsd: changed block detected as expected: {}",
                e.lines().next().unwrap_or("")
            );
        }
    }
}
