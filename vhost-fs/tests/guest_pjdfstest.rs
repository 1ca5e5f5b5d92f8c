//! Our vhost-user-fs in a QEMU guest (`vhost-user-fs-pci`, TCG here): the POSIX
//! suite pjdfstest on the virtiofs mount, compared with virtiofsd on the same
//! selection in the same run (we must fail no test that virtiofsd passes), and fio
//! with verify plus data crossing between host and guest. Ours runs hardened, as
//! virtiofsd does by default (`--sandbox namespace --seccomp kill`): the whole
//! suite must stay inside the allow-list. The suite runs on ours twice, with inodes
//! held as O_PATH descriptors and with `--inode-file-handles=mandatory`.
//!
//! Needs root, QEMU, the guest image and the fs tools (scripts/build-fs-tools.sh);
//! each test prints SKIPPED with the reason when one is missing.
//!
//! The whole suite runs (about 30 s per daemon under TCG); `$VHOSTKIT_PJDFSTEST`
//! narrows it to name patterns:
//!
//!     cargo test -p vhost-fs --test guest_pjdfstest -- --nocapture
//!     VHOSTKIT_PJDFSTEST=rename::,chmod:: cargo test -p vhost-fs --test guest_pjdfstest pjdfstest -- --nocapture

use std::path::Path;
use std::time::Duration;

use vhostkit_tests::fs::{
    compare, guest_prerequisites, run_fio_and_data_checks, run_pjdfstest, spawn_fs_daemon,
    virtiofsd_cmd, FsTools, PjdfsResults, Selection, VIRTIOFSD_TAG,
};
use vhostkit_tests::guest::{FsDevice, GuestImage};
use vhostkit_tests::launch::fs::{FsArgs, InodeFileHandles, Sandbox};
use vhostkit_tests::launch::{Launch, LogLevel, SeccompAction};
use vhostkit_tests::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-fs");
const TAG: &str = "ours";
const TIMEOUT: Duration = Duration::from_secs(300);

/// Which daemon serves the folder, and how.
#[derive(Clone, Copy, PartialEq)]
enum Server {
    /// vhost-user-fs hardened (namespace sandbox, seccomp kill), inodes held as
    /// O_PATH descriptors.
    Ours,
    /// The same with `--inode-file-handles=mandatory`.
    OursWithFileHandles,
    Virtiofsd,
}

/// Runs `selection` in a guest on a fresh folder served by `server`.
fn pjdfstest_on(
    server: Server,
    image: &GuestImage,
    tools: &FsTools,
    selection: &Selection,
) -> PjdfsResults {
    let dir = TempDir::new("fs-pjdfstest").unwrap();
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    let socket = dir.join("fs.sock");
    let (name, cmd, tag) = if server != Server::Virtiofsd {
        // Hardened, as virtiofsd runs by default: a guest's whole POSIX workload
        // must stay inside the seccomp allow-list and work from inside the sandbox.
        let daemon = FsArgs {
            sandbox: Some(Sandbox::Namespace),
            inode_file_handles: (server == Server::OursWithFileHandles)
                .then_some(InodeFileHandles::Mandatory),
            ..FsArgs::tagged(&shared, TAG)
        };
        let cmd = Launch::on_socket(&socket, daemon)
            .seccomp(SeccompAction::Kill)
            .log_level(LogLevel::Warn)
            .command(Path::new(BIN));
        let name = match server {
            Server::OursWithFileHandles => "vhost-user-fs (file handles)",
            _ => "vhost-user-fs",
        };
        (name, cmd, TAG)
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
fn pjdfstest_fails_nothing_that_virtiofsd_passes() {
    let Some((image, tools)) = guest_prerequisites() else {
        return;
    };
    let selection = Selection::from_env_or(Selection::All);
    let peer = pjdfstest_on(Server::Virtiofsd, &image, &tools, &selection);
    for server in [Server::Ours, Server::OursWithFileHandles] {
        let ours = pjdfstest_on(server, &image, &tools, &selection);
        if selection == Selection::All {
            assert!(
                ours.passed.len() > 300,
                "the suite did not run on ours: {ours}"
            );
        } else {
            let ran = ours.passed.len() + ours.failed.len() + ours.skipped.len();
            assert!(ran > 0, "no test matched {selection:?}: {ours}");
        }
        let regressions = compare(&ours, &peer);
        assert!(
            regressions.is_empty(),
            "vhost-user-fs fails {} test(s) that virtiofsd passes: {}",
            regressions.len(),
            regressions.join(" ")
        );
    }
}

#[test]
fn fio_verify_and_host_data_through_vhost_user_fs() {
    let Some((image, _tools)) = guest_prerequisites() else {
        return;
    };
    let dir = TempDir::new("fs-fio").unwrap();
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    let socket = dir.join("fs.sock");
    // Hardened, as in the pjdfstest runs.
    let daemon = FsArgs {
        sandbox: Some(Sandbox::Namespace),
        ..FsArgs::tagged(&shared, TAG)
    };
    let cmd = Launch::on_socket(&socket, daemon)
        .seccomp(SeccompAction::Kill)
        .log_level(LogLevel::Warn)
        .command(Path::new(BIN));
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
