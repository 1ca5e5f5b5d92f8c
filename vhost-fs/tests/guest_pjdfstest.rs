//! Our vhost-user-fs in a QEMU guest (`vhost-user-fs-pci`, TCG here): the POSIX
//! suite pjdfstest on the virtiofs mount, compared with virtiofsd on the same
//! selection in the same run (we must fail no test that virtiofsd passes), and fio
//! with verify plus data crossing between host and guest.
//!
//! Needs root, QEMU, the guest image and the fs tools (scripts/build-fs-tools.sh);
//! each test prints SKIPPED with the reason when one is missing.
//!
//!     cargo test -p vhost-fs --test guest_pjdfstest -- --nocapture
//!     # the whole suite for both daemons:
//!     VHOSTKIT_PJDFSTEST=all cargo test -p vhost-fs --test guest_pjdfstest pjdfstest -- --nocapture

use std::path::Path;
use std::time::Duration;

use vhostkit_tests::fs::{
    compare, run_fio_and_data_checks, run_pjdfstest, spawn_fs_daemon, vhost_user_fs_cmd,
    virtiofsd_cmd, FsTools, PjdfsResults, Selection, VIRTIOFSD_TAG,
};
use vhostkit_tests::guest::{FsDevice, GuestImage};
use vhostkit_tests::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-fs");
const TAG: &str = "ours";
const TIMEOUT: Duration = Duration::from_secs(300);

fn prerequisites() -> Option<(GuestImage, FsTools)> {
    // SAFETY: geteuid() has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: serving files of any owner needs root");
        return None;
    }
    if std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed (scripts/setup-host.sh)");
        return None;
    }
    let image = match GuestImage::ensure() {
        Ok(image) => image,
        Err(e) => {
            eprintln!("SKIPPED: no guest image: {e}");
            return None;
        }
    };
    match FsTools::ensure() {
        Ok(tools) => Some((image, tools)),
        Err(e) => {
            eprintln!("SKIPPED: no virtiofsd/pjdfstest: {e}");
            None
        }
    }
}

/// Runs `selection` in a guest on a fresh folder served by `ours` (else virtiofsd).
fn pjdfstest_on(
    ours: bool,
    image: &GuestImage,
    tools: &FsTools,
    selection: &Selection,
) -> PjdfsResults {
    let dir = TempDir::new("fs-pjdfstest").unwrap();
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    let socket = dir.join("fs.sock");
    let (name, cmd, tag) = if ours {
        let mut cmd = vhost_user_fs_cmd(Path::new(BIN), &socket, &shared, TAG);
        cmd.args(["--log-level", "warn"]);
        ("vhost-user-fs", cmd, TAG)
    } else {
        (
            "virtiofsd",
            virtiofsd_cmd(tools, &socket, &shared),
            VIRTIOFSD_TAG,
        )
    };
    let _daemon = spawn_fs_daemon(name, cmd, &socket).expect("the daemon starts");
    let results = run_pjdfstest(
        image,
        tools,
        &FsDevice::new(&socket, tag),
        selection,
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!("{name}: pjdfstest {results}");
    if !results.failed.is_empty() {
        eprintln!("{name}: failed: {}", results.failed.join(" "));
    }
    results
}

#[test]
#[ignore = "issue 5 in progress: rename::write_access_required_subdir still fails on ours; run with --ignored"]
fn pjdfstest_fails_nothing_that_virtiofsd_passes() {
    let Some((image, tools)) = prerequisites() else {
        return;
    };
    let selection = Selection::from_env_or(Selection::ci());
    let ours = pjdfstest_on(true, &image, &tools, &selection);
    let peer = pjdfstest_on(false, &image, &tools, &selection);
    assert!(
        ours.passed.len() > 100,
        "the suite did not run on ours: {ours}"
    );
    let regressions = compare(&ours, &peer);
    assert!(
        regressions.is_empty(),
        "vhost-user-fs fails {} test(s) that virtiofsd passes: {}",
        regressions.len(),
        regressions.join(" ")
    );
}

#[test]
#[ignore = "issue 5 in progress: not yet part of CI; run with --ignored"]
fn fio_verify_and_host_data_through_vhost_user_fs() {
    let Some((image, _tools)) = prerequisites() else {
        return;
    };
    let dir = TempDir::new("fs-fio").unwrap();
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    let socket = dir.join("fs.sock");
    let mut cmd = vhost_user_fs_cmd(Path::new(BIN), &socket, &shared, TAG);
    cmd.args(["--log-level", "warn"]);
    let _daemon = spawn_fs_daemon("vhost-user-fs", cmd, &socket).expect("the daemon starts");
    let check = run_fio_and_data_checks(&image, &FsDevice::new(&socket, TAG), &shared, 16, TIMEOUT)
        .unwrap_or_else(|e| panic!("vhost-user-fs: {e}"));
    eprintln!(
        "vhost-user-fs: fio randwrite + crc32c verify of {} MiB clean; the host read the guest's \
         {} bytes back; the guest read the host's file (md5 {})",
        check.fio_bytes >> 20,
        check.guest_file_on_host.len(),
        check.host_file_md5_in_guest
    );
}
