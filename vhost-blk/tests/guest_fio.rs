//! A real Linux guest drives the block device: fio random writes with crc32c verify,
//! then blkdiscard and sync, on a 256 MiB image served over vhost-user-blk with two
//! queues. Run against our `vhost-user-blk` and, as a reference, against
//! qemu-storage-daemon; a third test proves that the check catches corrupted data.
//!
//! Needs the guest image (`scripts/build-guest-image.sh`, run by the harness when
//! the image is missing or stale) and qemu-system-x86_64. Under TCG (no vmx/svm on
//! the host) each guest takes about 10-20 s.
//!
//!     cargo build --workspace --bins
//!     cargo test -p vhost-blk --test guest_fio -- --nocapture

use serde_json::Value;
use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use vhostkit_tests::daemon::{qemu_storage_daemon_cmd, DaemonProcess};
use vhostkit_tests::guest::{BlkDevice, Guest, GuestError, GuestImage, GuestOutput};
use vhostkit_tests::launch::blk::BlkArgs;
use vhostkit_tests::launch::Launch;
use vhostkit_tests::TempDir;

const IMAGE_BYTES: u64 = 256 << 20;
const NUM_QUEUES: u16 = 2;
const GUEST_TIMEOUT: Duration = Duration::from_secs(240);

/// Our vhost-user-blk serving `disk` with [`NUM_QUEUES`] queues on `socket`.
fn vhost_user_blk_cmd(disk: &Path, socket: &Path) -> Command {
    let daemon = BlkArgs {
        num_queues: Some(NUM_QUEUES),
        ..BlkArgs::new(disk)
    };
    Launch::on_socket(socket, daemon).command(Path::new(env!("CARGO_BIN_EXE_vhost-user-blk")))
}

/// fio random writes over the whole device (32 MiB of 4 KiB blocks at random
/// offsets), each block read back and checked against its crc32c; then a discard of
/// the whole device and a sync. Every step reports a VHOSTKIT-RESULT line.
const FIO_VERIFY_SCRIPT: &str = r#"
dev=/dev/vda
echo "VHOSTKIT-RESULT block_devices $(ls /sys/block | tr '\n' ' ')"
if [ ! -b "$dev" ]; then echo "VHOSTKIT-RESULT error no block device $dev"; exit 1; fi
name=${dev#/dev/}
echo "VHOSTKIT-RESULT size_bytes $(blockdev --getsize64 $dev)"
echo "VHOSTKIT-RESULT mq_queues $(ls /sys/block/$name/mq | wc -l)"
echo "VHOSTKIT-RESULT discard_max_bytes $(cat /sys/block/$name/queue/discard_max_bytes)"
fio --name=randwrite-verify --filename=$dev --ioengine=libaio --direct=1 \
    --rw=randwrite --bs=4k --iodepth=16 --size=100% --io_size=32M \
    --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --eta=never --output-format=json --output=/tmp/fio.json
rc=$?
echo "VHOSTKIT-RESULT fio_rc $rc"
echo "VHOSTKIT-BEGIN fio"; cat /tmp/fio.json; echo "VHOSTKIT-END fio"
[ "$rc" = 0 ] || exit 2
blkdiscard $dev
rc=$?
echo "VHOSTKIT-RESULT blkdiscard_rc $rc"
[ "$rc" = 0 ] || exit 3
sync
rc=$?
echo "VHOSTKIT-RESULT sync_rc $rc"
[ "$rc" = 0 ] || exit 4
echo "VHOSTKIT-RESULT done ok"
"#;

/// Writes 8 MiB with crc32c headers but does not verify, overwrites one block from
/// outside fio, then verifies: fio must report the mismatch, and [`check_fio_run`]
/// must reject the run. The skeleton of FIO_VERIFY_SCRIPT's report is kept.
const CORRUPTION_SCRIPT: &str = r#"
dev=/dev/vda
name=${dev#/dev/}
echo "VHOSTKIT-RESULT size_bytes $(blockdev --getsize64 $dev)"
echo "VHOSTKIT-RESULT mq_queues $(ls /sys/block/$name/mq | wc -l)"
job="--name=seqwrite --filename=$dev --ioengine=libaio --direct=1 --rw=write --bs=4k --iodepth=16 --size=8M --verify=crc32c --eta=never"
fio $job --do_verify=0 --output-format=json --output=/tmp/write.json || exit 5
dd if=/dev/urandom of=$dev bs=4096 seek=300 count=1 conv=notrunc oflag=direct 2>/dev/null || exit 6
fio $job --verify_only --output-format=json --output=/tmp/fio.json
rc=$?
echo "VHOSTKIT-RESULT fio_rc $rc"
echo "VHOSTKIT-BEGIN fio"; cat /tmp/fio.json; echo "VHOSTKIT-END fio"
[ "$rc" = 0 ] || exit 2
echo "VHOSTKIT-RESULT blkdiscard_rc 0"
echo "VHOSTKIT-RESULT sync_rc 0"
echo "VHOSTKIT-RESULT done ok"
"#;

/// The guest image, or `None` (after printing `SKIPPED:`) when it is not built and
/// cannot be built here.
fn guest_image() -> Option<GuestImage> {
    match GuestImage::ensure() {
        Ok(image) => Some(image),
        Err(e) => {
            vhostkit_tests::skip::skip(format_args!("no guest image: {e}"));
            None
        }
    }
}

fn have(cmd: &str) -> bool {
    Command::new(cmd).arg("--version").output().is_ok()
}

fn make_image(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.join("disk.img");
    File::create(&path)
        .and_then(|f| f.set_len(IMAGE_BYTES))
        .expect("create the disk image");
    path
}

fn boot(image: &GuestImage, socket: &Path, script: &str) -> Result<GuestOutput, GuestError> {
    Guest::new(image, script)
        .blk(BlkDevice::new(socket, NUM_QUEUES))
        .timeout(GUEST_TIMEOUT)
        .run()
}

/// What a successful run established.
#[derive(Debug)]
struct FioSummary {
    written_bytes: u64,
    verified_bytes: u64,
    write_iops: f64,
}

/// Checks everything the script reports; the error names the first thing wrong.
fn check_fio_run(out: &GuestOutput) -> Result<FioSummary, String> {
    let fio_json = out.section("fio");
    // fio's JSON first: on failure it says what went wrong (e.g. a verify mismatch).
    let summary = match &fio_json {
        Some(text) => parse_fio(text),
        None => Err("no fio JSON between VHOSTKIT-BEGIN/END fio markers".to_string()),
    };
    let value = |key: &str| {
        out.result(key)
            .ok_or_else(|| format!("no `VHOSTKIT-RESULT {key}` line"))
    };
    if let Some(error) = out.result("error") {
        return Err(format!("the guest script reports: {error}"));
    }
    let fio_rc = value("fio_rc")?;
    if fio_rc != "0" {
        let detail = summary.err().unwrap_or_default();
        return Err(format!("fio exited with status {fio_rc} {detail}"));
    }
    let summary = summary?;
    let size: u64 = value("size_bytes")?
        .parse()
        .map_err(|e| format!("size: {e}"))?;
    if size != IMAGE_BYTES {
        return Err(format!(
            "guest sees {size} bytes, the image has {IMAGE_BYTES}"
        ));
    }
    let queues = value("mq_queues")?;
    if queues != NUM_QUEUES.to_string() {
        return Err(format!("guest sees {queues} queues, expected {NUM_QUEUES}"));
    }
    if value("blkdiscard_rc")? != "0" {
        return Err("blkdiscard failed".into());
    }
    if value("sync_rc")? != "0" {
        return Err("sync failed".into());
    }
    value("done")?;
    out.check_run_ok().map_err(|e| match e {
        GuestError::Run { reason, .. } => reason,
        other => other.to_string(),
    })?;
    Ok(summary)
}

fn parse_fio(text: &str) -> Result<FioSummary, String> {
    let json: Value = serde_json::from_str(text).map_err(|e| format!("fio JSON: {e}"))?;
    let job = &json["jobs"][0];
    let error = job["error"]
        .as_i64()
        .ok_or("fio JSON has no jobs[0].error")?;
    if error != 0 {
        return Err(format!(
            "fio job error {error} ({})",
            strerror(error).unwrap_or("unknown")
        ));
    }
    let written_bytes = job["write"]["io_bytes"].as_u64().unwrap_or(0);
    let verified_bytes = job["read"]["io_bytes"].as_u64().unwrap_or(0);
    if verified_bytes == 0 {
        return Err("fio verified nothing (no read phase)".into());
    }
    Ok(FioSummary {
        written_bytes,
        verified_bytes,
        write_iops: job["write"]["iops"].as_f64().unwrap_or(0.0),
    })
}

fn strerror(errno: i64) -> Option<&'static str> {
    Some(match errno {
        5 => "EIO",
        28 => "ENOSPC",
        84 => "EILSEQ: verify mismatch",
        95 => "EOPNOTSUPP",
        _ => return None,
    })
}

/// Boots the fio guest against `socket`, served by `daemon`, and checks the run.
fn fio_verify_discard(backend: &str, image: &GuestImage, daemon: &mut DaemonProcess) {
    let out = boot(image, daemon.socket(), FIO_VERIFY_SCRIPT).unwrap_or_else(|e| panic!("{e}"));
    let summary = match check_fio_run(&out) {
        Ok(s) => s,
        Err(e) => panic!("{backend}: {e}\n----- guest console -----\n{}", out.console),
    };
    assert!(daemon.is_running(), "{backend} died during the guest run");
    assert_eq!(summary.written_bytes, 32 << 20, "fio wrote {summary:?}");
    assert_eq!(summary.verified_bytes, 32 << 20, "fio verified {summary:?}");
    eprintln!(
        "{backend}: fio randwrite+crc32c verify of 32 MiB clean ({:.0} write IOPS), blkdiscard ok; \
         guest under {}, {:.1} s",
        summary.write_iops,
        out.accel,
        out.elapsed.as_secs_f64()
    );
}

#[test]
fn fio_verify_and_discard_on_vhost_user_blk() {
    let Some(image) = guest_image() else { return };
    let dir = TempDir::new("guest-fio-ours").unwrap();
    let disk = make_image(&dir);
    let socket = dir.join("blk.sock");
    let cmd = vhost_user_blk_cmd(&disk, &socket);
    let mut daemon = DaemonProcess::spawn("vhost-user-blk", cmd, &socket, Duration::from_secs(10))
        .expect("start vhost-user-blk");
    fio_verify_discard("vhost-user-blk", &image, &mut daemon);
}

#[test]
fn fio_verify_and_discard_on_qemu_storage_daemon() {
    if !have("qemu-storage-daemon") {
        vhostkit_tests::skip::skip(format_args!("qemu-storage-daemon is not installed"));
        return;
    }
    let Some(image) = guest_image() else { return };
    let dir = TempDir::new("guest-fio-qsd").unwrap();
    let disk = make_image(&dir);
    let socket = dir.join("blk.sock");
    let cmd = qemu_storage_daemon_cmd(&disk, &socket, NUM_QUEUES, "threads");
    let mut daemon =
        DaemonProcess::spawn("qemu-storage-daemon", cmd, &socket, Duration::from_secs(10))
            .expect("start qemu-storage-daemon");
    fio_verify_discard("qemu-storage-daemon", &image, &mut daemon);
}

/// The check must be able to fail: data changed behind fio's back is a verify
/// mismatch, reported by fio and rejected by `check_fio_run`. Served by
/// qemu-storage-daemon (the harness's reference), or by ours if it is missing.
#[test]
fn corrupted_data_fails_the_check() {
    let Some(image) = guest_image() else { return };
    let dir = TempDir::new("guest-fio-corrupt").unwrap();
    let disk = make_image(&dir);
    let socket = dir.join("blk.sock");
    let (name, cmd) = if have("qemu-storage-daemon") {
        let cmd = qemu_storage_daemon_cmd(&disk, &socket, NUM_QUEUES, "threads");
        ("qemu-storage-daemon", cmd)
    } else {
        ("vhost-user-blk", vhost_user_blk_cmd(&disk, &socket))
    };
    let _daemon = DaemonProcess::spawn(name, cmd, &socket, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let out = boot(&image, &socket, CORRUPTION_SCRIPT).unwrap_or_else(|e| panic!("{e}"));
    match check_fio_run(&out) {
        Ok(summary) => panic!(
            "a corrupted block passed the check ({summary:?})\n{}",
            out.console
        ),
        Err(e) => {
            assert!(
                e.contains("fio exited with status"),
                "failed, but not on fio: {e}\n{}",
                out.console
            );
            assert!(
                out.console.contains("verify") || e.contains("EILSEQ"),
                "fio failed without a verify report: {e}\n{}",
                out.console
            );
            eprintln!("{name}: corrupted block detected as expected: {e}");
        }
    }
}
