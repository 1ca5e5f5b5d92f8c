//! virtio-fs in a QEMU guest against virtiofsd, the peer our vhost-user-fs is
//! measured against: proves the harness of `vhostkit_tests::fs` (the `FsDevice`,
//! pjdfstest in the guest and its parsing, fio with verify on the mount, data
//! crossing between host and guest) before our daemon exists.
//!
//! Needs the guest image (scripts/build-guest-image.sh), qemu-system-x86_64 and
//! the fs tools (scripts/build-fs-tools.sh: virtiofsd and pjdfstest, built once per
//! machine with cargo install); a test prints SKIPPED with the reason when one is
//! missing. virtiofsd runs as root without a sandbox, so the tests need root.
//!
//!     cargo test -p vhostkit-tests --test virtiofsd_pjdfstest -- --nocapture
//!     # other tests in the subset's place (`all`, or comma-separated name patterns):
//!     VHOSTKIT_PJDFSTEST=open::etxtbsy,chmod:: cargo test -p vhostkit-tests \
//!         --test virtiofsd_pjdfstest subset -- --nocapture
//!     # the whole suite (several minutes under TCG):
//!     cargo test -p vhostkit-tests --test virtiofsd_pjdfstest -- --ignored --nocapture

use std::time::Duration;
use vhostkit_tests::fs::{
    run_fio_and_data_checks, run_fio_and_data_checks_with, run_pjdfstest, spawn_fs_daemon,
    virtiofsd_cmd, FsTools, PjdfsResults, Selection, VIRTIOFSD_TAG,
};
use vhostkit_tests::guest::{FsDevice, GuestImage};
use vhostkit_tests::TempDir;

/// What the subset may take (it runs in about a minute under TCG).
const SUBSET_TIMEOUT: Duration = Duration::from_secs(240);
const FULL_TIMEOUT: Duration = Duration::from_secs(900);
const FIO_TIMEOUT: Duration = Duration::from_secs(240);

/// The guest image and the fs tools, or `None` after a loud SKIPPED line.
fn prerequisites() -> Option<(GuestImage, FsTools)> {
    // SAFETY: geteuid() has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: virtiofsd --sandbox none needs root to serve files of any owner");
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
    let tools = match FsTools::ensure() {
        Ok(tools) => tools,
        Err(e) => {
            eprintln!("SKIPPED: no virtiofsd/pjdfstest: {e}");
            return None;
        }
    };
    Some((image, tools))
}

/// Runs `selection` against a fresh virtiofsd over an empty folder.
fn pjdfstest_on_virtiofsd(
    image: &GuestImage,
    tools: &FsTools,
    selection: &Selection,
    timeout: Duration,
) -> PjdfsResults {
    let dir = TempDir::new("virtiofsd-pjdfstest").unwrap();
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    let socket = dir.join("fs.sock");
    let _daemon = spawn_fs_daemon("virtiofsd", virtiofsd_cmd(tools, &socket, &shared), &socket)
        .expect("start virtiofsd");
    let dev = FsDevice::new(&socket, VIRTIOFSD_TAG);
    let results =
        run_pjdfstest(image, tools, &dev, selection, timeout).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("virtiofsd: pjdfstest {results}");
    if let Some(summary) = &results.summary {
        eprintln!("virtiofsd: pjdfstest's summary: {summary}");
    }
    eprintln!("virtiofsd: skipped: {}", results.skipped.join(" "));
    results
}

#[test]
fn pjdfstest_subset_on_virtiofsd() {
    let Some((image, tools)) = prerequisites() else {
        return;
    };
    let selection = Selection::from_env_or(Selection::ci());
    let r = pjdfstest_on_virtiofsd(&image, &tools, &selection, SUBSET_TIMEOUT);
    if selection == Selection::ci() {
        assert!(r.passed.len() > 100, "the suite did not run: {r}");
    } else {
        let ran = r.passed.len() + r.failed.len() + r.skipped.len();
        assert!(ran > 0, "no test matched {selection:?}: {r}");
    }
    assert_eq!(r.exit_code, Some(i32::from(!r.failed.is_empty())), "{r}");
}

#[test]
#[ignore = "the whole suite: several minutes under TCG; run with --ignored"]
fn pjdfstest_all_on_virtiofsd() {
    let Some((image, tools)) = prerequisites() else {
        return;
    };
    let r = pjdfstest_on_virtiofsd(&image, &tools, &Selection::All, FULL_TIMEOUT);
    assert!(r.passed.len() > 100, "the suite did not run: {r}");
}

#[test]
fn fio_verify_and_host_data_on_virtiofsd() {
    let Some((image, tools)) = prerequisites() else {
        return;
    };
    let dir = TempDir::new("virtiofsd-fio").unwrap();
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
    let check = run_fio_and_data_checks(&image, &dev, &shared, 16, FIO_TIMEOUT)
        .unwrap_or_else(|e| panic!("virtiofsd: {e}"));
    eprintln!(
        "virtiofsd: fio randwrite + crc32c verify of {} MiB clean; the host read the guest's {} \
         bytes back; the guest read the host's file (md5 {})",
        check.fio_bytes >> 20,
        check.guest_file_on_host.len(),
        check.host_file_md5_in_guest
    );
}

/// The check must be able to fail: a block of fio's file overwritten between the
/// write and verify passes is a verify mismatch that the check reports.
#[test]
fn changed_block_fails_the_fio_check() {
    let Some((image, tools)) = prerequisites() else {
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
