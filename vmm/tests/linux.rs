//! A stock Debian kernel booted through `vhostkit`: the project's guest image
//! (`scripts/build-guest-image.sh`), the bzImage, the busybox initramfs whose /init
//! loads the virtio modules (virtio_mmio finds our disks through the ACPI DSDT) and
//! runs /run.sh, then powers off. The harness is `vhostkit_tests::guest` with
//! `Vmm::Vhostkit`, the same one that boots this image under QEMU.
//!
//! Linux boots through vhostkit in useful time only where the host has hardware
//! virtualization (vmx or svm). On a host whose /dev/kvm is software (kvm_pvm) these
//! tests print `SKIPPED:` and pass.
//!
//!     cargo build --workspace --bins
//!     cargo test -p vhostkit-vmm --test linux -- --nocapture

use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use vhostkit_tests::daemon::{workspace_bin, DaemonProcess};
use vhostkit_tests::guest::{BlkDevice, Guest, GuestImage, Initrd, Vmm, MARK_POWEROFF};
use vhostkit_tests::launch::blk::BlkArgs;
use vhostkit_tests::launch::Launch;
use vhostkit_tests::TempDir;

const VHOSTKIT: &str = env!("CARGO_BIN_EXE_vhostkit");
const IMAGE_BYTES: u64 = 256 << 20;
const NUM_QUEUES: u16 = 2;
const GUEST_TIMEOUT: Duration = Duration::from_secs(240);

/// fio random writes with crc32c verify over the whole disk (32 MiB of 4 KiB
/// blocks), as in vhost-blk/tests/guest_fio.rs; every step reports a line.
const FIO_VERIFY_SCRIPT: &str = r#"
dev=/dev/vda
echo "VHOSTKIT-RESULT block_devices $(ls /sys/block | tr '\n' ' ')"
if [ ! -b "$dev" ]; then echo "VHOSTKIT-RESULT error no block device $dev"; exit 1; fi
echo "VHOSTKIT-RESULT size_bytes $(blockdev --getsize64 $dev)"
echo "VHOSTKIT-RESULT mq_queues $(ls /sys/block/vda/mq | wc -l)"
fio --name=randwrite-verify --filename=$dev --ioengine=libaio --direct=1 \
    --rw=randwrite --bs=4k --iodepth=16 --size=100% --io_size=32M \
    --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --eta=never --output-format=json --output=/tmp/fio.json
rc=$?
echo "VHOSTKIT-RESULT fio_rc $rc"
echo "VHOSTKIT-BEGIN fio"; cat /tmp/fio.json; echo "VHOSTKIT-END fio"
[ "$rc" = 0 ] || exit 2
sync || exit 3
echo "VHOSTKIT-RESULT done ok"
"#;

/// Prints the SKIPPED line and returns false where Linux cannot boot through
/// vhostkit in useful time; then also prints the command line the test would run
/// (`guest` builds it; the initrd is the per-test one a run writes), if the guest
/// image is there.
fn can_boot_linux(guest: impl FnOnce(&GuestImage) -> Guest<'_>) -> bool {
    if vhostkit_tests::skip::skip_without_hardware_virtualization(
        "Linux through vhostkit needs hardware virtualization (vmx/svm); \
         /dev/kvm here is kvm_pvm, which cannot boot a stock kernel in useful time",
    ) {
        return true;
    }
    if let Ok(image) = GuestImage::locate() {
        if let Ok(line) = guest(&image).command_line(std::path::Path::new("INITRD")) {
            println!("  would run: {line}");
        }
    }
    false
}

fn guest_image() -> Option<GuestImage> {
    match GuestImage::ensure() {
        Ok(image) => Some(image),
        Err(e) => {
            vhostkit_tests::skip::skip(format_args!("no guest image: {e}"));
            None
        }
    }
}

fn daemon_bin() -> PathBuf {
    workspace_bin("vhost-user-blk")
}

/// The bytes fio wrote and verified (read back), from its JSON; fails on a job error.
fn fio_bytes(json: &str) -> Result<(u64, u64), String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("fio JSON: {e}"))?;
    let job = &v["jobs"][0];
    match job["error"].as_i64() {
        Some(0) => {}
        Some(e) => return Err(format!("fio job error {e}")),
        None => return Err("fio JSON has no jobs[0].error".into()),
    }
    let bytes = |dir: &str| {
        job[dir]["io_bytes"]
            .as_u64()
            .ok_or_else(|| format!("fio JSON has no jobs[0].{dir}.io_bytes"))
    };
    Ok((bytes("write")?, bytes("read")?))
}

#[test]
fn fio_bytes_parses_fio_json() {
    let json = r#"{"jobs" : [ { "error" : 0, "read" : { "io_bytes" : 33554432, "iops" : 1.0 },
        "write" : { "io_bytes" : 33554432 } } ] }"#;
    assert_eq!(fio_bytes(json), Ok((32 << 20, 32 << 20)));
    assert!(fio_bytes(r#"{"jobs":[{"error":84}]}"#).is_err());
    assert!(fio_bytes("{}").is_err());
}

/// The fio guest: full initramfs, 2 vCPUs, 1 GiB, one disk served on `socket`.
fn fio_guest<'a>(image: &'a GuestImage, socket: &std::path::Path) -> Guest<'a> {
    Guest::new(image, FIO_VERIFY_SCRIPT)
        .vmm(Vmm::Vhostkit)
        .vhostkit_path(VHOSTKIT)
        .cpus(2)
        .memory_mib(1024)
        .blk(BlkDevice::new(socket, NUM_QUEUES))
        .timeout(GUEST_TIMEOUT)
}

/// The smallest guest: the busybox-only initramfs; run.sh prints a line and powers
/// off.
fn poweroff_guest(image: &GuestImage) -> Guest<'_> {
    Guest::new(image, "echo VHOSTKIT-RESULT hello vhostkit\npoweroff -f\n")
        .vmm(Vmm::Vhostkit)
        .vhostkit_path(VHOSTKIT)
        .initrd(Initrd::Mini)
        .cpus(1)
        .memory_mib(256)
        .timeout(Duration::from_secs(120))
}

#[test]
fn linux_boots_through_vhostkit_and_runs_fio_with_verify() {
    if !can_boot_linux(|image| fio_guest(image, std::path::Path::new("SOCKET"))) {
        return;
    }
    let Some(image) = guest_image() else { return };
    let daemon = daemon_bin();
    assert!(
        daemon.is_file(),
        "{} not built: cargo build --workspace --bins",
        daemon.display()
    );
    let dir = TempDir::new("vmm-linux-fio").unwrap();
    let disk = dir.join("disk.img");
    File::create(&disk)
        .and_then(|f| f.set_len(IMAGE_BYTES))
        .expect("create the disk image");
    let socket = dir.join("blk.sock");
    let options = BlkArgs {
        num_queues: Some(NUM_QUEUES),
        ..BlkArgs::new(&disk)
    };
    let cmd = Launch::on_socket(&socket, options).command(&daemon);
    let mut daemon = DaemonProcess::spawn("vhost-user-blk", cmd, &socket, Duration::from_secs(10))
        .expect("start vhost-user-blk");

    let out = fio_guest(&image, &socket)
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    // run() returns Ok only when vhostkit exited with status 0 (guest poweroff).
    assert_eq!(out.vmm, Vmm::Vhostkit);
    assert_eq!(out.exit_code, Some(0));
    let console = &out.console;
    assert_eq!(out.result("error"), None, "{console}");
    assert_eq!(out.result("fio_rc"), Some("0"), "{console}");
    assert_eq!(
        out.result("size_bytes"),
        Some(IMAGE_BYTES.to_string().as_str()),
        "{console}"
    );
    assert_eq!(
        out.result("mq_queues"),
        Some(NUM_QUEUES.to_string().as_str()),
        "{console}"
    );
    let json = out.section("fio").expect("fio JSON on the console");
    let (written, verified) = fio_bytes(&json).unwrap_or_else(|e| panic!("{e}\n{json}"));
    assert_eq!(written, 32 << 20, "{json}");
    assert_eq!(verified, 32 << 20, "{json}");
    assert_eq!(out.result("done"), Some("ok"), "{console}");
    out.check_run_ok().unwrap_or_else(|e| panic!("{e}"));
    assert!(daemon.is_running(), "vhost-user-blk died during the run");
    eprintln!(
        "vhostkit: Linux {} ran fio randwrite+crc32c verify of 32 MiB clean and powered off \
         in {:.1} s",
        image.kernel_release,
        out.elapsed.as_secs_f64()
    );
}

#[test]
fn linux_poweroff_ends_vhostkit() {
    if !can_boot_linux(poweroff_guest) {
        return;
    }
    let Some(image) = guest_image() else { return };
    let out = poweroff_guest(&image)
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.exit_code, Some(0));
    let console = &out.console;
    let init: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("VHOSTKIT-INIT"))
        .collect();
    assert!(
        init.iter()
            .any(|l| l.contains(&format!("VHOSTKIT-INIT kernel {}", image.kernel_release))),
        "no VHOSTKIT-INIT kernel line: {console}"
    );
    assert!(
        init.iter()
            .any(|l| l.contains("VHOSTKIT-INIT modules loaded")),
        "{console}"
    );
    assert!(
        !init.iter().any(|l| l.contains("insmod failed")),
        "a module failed to load: {console}"
    );
    assert_eq!(out.result("hello"), Some("vhostkit"), "{console}");
    // run.sh powered off itself: /init never got to its own poweroff.
    assert!(!console.contains(MARK_POWEROFF), "{console}");
}
