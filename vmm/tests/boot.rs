//! Runs the `vhostkit` binary on the test guests built by build.rs.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;
use vhostkit_tests::util::{Finished, TempDir};

/// How a `vhostkit` run ended.
type Outcome = Finished;

fn assert_error(o: &Outcome, code: i32, needle: &str) {
    assert_one_error(o.code, &o.stderr, code, needle);
}

#[test]
fn boots_the_test_guest_and_powers_off() {
    if !have_kvm() {
        return;
    }
    let o = vhostkit(&["run", "--kernel", HELLO, "--cmdline", "foo=bar quiet"]);
    println!("boot to power-off took {:?}", o.elapsed);
    assert_eq!(o.code, Some(0), "stderr: {}", o.stderr);
    assert_eq!(
        o.stdout,
        "vhostkit test guest: hello\ncmdline: foo=bar quiet\n"
    );
    assert!(o.stderr.contains("the guest asked to stop"), "{}", o.stderr);
}

#[test]
fn secondary_vcpus_park_and_do_not_block_power_off() {
    if !have_kvm() {
        return;
    }
    let o = vhostkit(&["run", "--kernel", HELLO, "--cpus", "4", "--memory", "1G"]);
    assert_eq!(o.code, Some(0), "stderr: {}", o.stderr);
    assert!(
        o.stdout.starts_with("vhostkit test guest: hello\n"),
        "{}",
        o.stdout
    );
}

#[test]
fn triple_fault_is_an_error() {
    if !have_kvm() {
        return;
    }
    let o = vhostkit(&["run", "--kernel", FAULT]);
    assert_error(&o, 1, "triple-faulted");
    assert!(o.stdout.is_empty());
}

#[test]
fn missing_kernel() {
    let o = vhostkit(&["run", "--kernel", "/nonexistent/vmlinux"]);
    assert_error(&o, 2, "--kernel /nonexistent/vmlinux: No such file");
}

#[test]
fn command_line_errors() {
    assert_error(&vhostkit(&["run"]), 2, "--kernel");
    assert_error(
        &vhostkit(&["run", "--kernel", HELLO, "--cpus", "0"]),
        2,
        "--cpus 0",
    );
    assert_error(
        &vhostkit(&["run", "--kernel", HELLO, "--memory", "12X"]),
        2,
        "--memory",
    );
}

#[test]
fn non_elf_kernel() {
    if !have_kvm() {
        return; // the VM is created before the kernel is read
    }
    let dir = TempDir::new("vmm-non-elf").unwrap();
    let path = dir.join("kernel.txt");
    std::fs::write(
        &path,
        "this is not a kernel, only a text file long enough to hold an ELF header\n".repeat(4),
    )
    .unwrap();
    let o = vhostkit(&["run", "--kernel", path.to_str().unwrap()]);
    assert_error(&o, 1, "not a loadable 64-bit ELF");
    assert!(
        o.stderr.contains("Invalid Elf magic number"),
        "{}",
        o.stderr
    );
}

#[test]
fn kernel_larger_than_memory() {
    if !have_kvm() {
        return; // the VM is created before the kernel is read
    }
    // The hello guest, moved to load (and enter) at 256 MiB: too high for 64 MiB.
    let mut elf = std::fs::read(HELLO).unwrap();
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let phoff = u64_at(&elf, 0x20) as usize;
    let phnum = u16::from_le_bytes([elf[0x38], elf[0x39]]) as usize;
    let high = 0x1000_0000u64;
    elf[0x18..0x20].copy_from_slice(&high.to_le_bytes()); // e_entry
    for i in 0..phnum {
        let ph = phoff + i * 56;
        elf[ph + 0x10..ph + 0x18].copy_from_slice(&high.to_le_bytes()); // p_vaddr
        elf[ph + 0x18..ph + 0x20].copy_from_slice(&high.to_le_bytes()); // p_paddr
    }
    let dir = TempDir::new("vmm-big").unwrap();
    let path = dir.join("high.elf");
    std::fs::write(&path, &elf).unwrap();
    let path = path.to_str().unwrap();
    let o = vhostkit(&["run", "--kernel", path, "--memory", "64M"]);
    assert_error(&o, 1, "needs guest memory up to 0x1000"); // 0x1000xxxx
    assert!(
        o.stderr.contains("--memory gives 0x4000000"),
        "{}",
        o.stderr
    );
}

/// A vhost-user-blk daemon on a 1 MiB image in `dir`, or None (SKIPPED printed).
fn blk_daemon_on_image(dir: &TempDir) -> Option<vhostkit_tests::daemon::DaemonProcess> {
    built("vhost-user-blk")?;
    let image = dir.image(1 << 20).unwrap();
    Some(blk_daemon(dir, &image))
}

#[test]
fn guest_probes_a_vhost_user_disk_over_virtio_mmio() {
    if !have_kvm() {
        return;
    }
    let dir = TempDir::new("vmm-disk").unwrap();
    let Some(daemon) = blk_daemon_on_image(&dir) else {
        return;
    };
    let disk = format!("socket={}", daemon.socket().display());
    let o = vhostkit(&["run", "--kernel", VIRTIO, "--disk", &disk]);
    assert_eq!(o.code, Some(0), "stderr: {}", o.stderr);
    // Magic "virt", version 2, block device, 2048 sectors, nothing in window 2.
    assert_eq!(
        o.stdout,
        "virtio-mmio: 74726976 00000002 00000002 00000800 ffffffff \n"
    );
    // QueueNotify 7 exited to the VMM and was refused; QueueNotify 0 matched the
    // ioeventfd of queue 0 and never left the kernel.
    assert!(
        o.stderr.contains("QueueNotify 7 before DRIVER_OK"),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains("QueueNotify 0"), "{}", o.stderr);
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);

    // The device is described in ACPI, not on the command line (a kernel with
    // VIRTIO_MMIO_CMDLINE_DEVICES would otherwise register it twice).
    let o = vhostkit(&["run", "--kernel", HELLO, "--cmdline", "x", "--disk", &disk]);
    assert_eq!(o.code, Some(0), "stderr: {}", o.stderr);
    assert!(o.stdout.contains("cmdline: x\n"), "{}", o.stdout);
}

/// The sector guest/blk.c writes and reads back, and the byte it puts at offset i.
const BLK_SECTOR: usize = 33;
fn blk_pattern(i: usize) -> u8 {
    (i * 7 + 3) as u8
}

/// Runs the blk guest on the vhost-user disk at `socket` over `image`: it must
/// print its ok line and power off, and the pattern must be in the image file.
fn blk_guest_round_trip(socket: &Path, image: &Path, capacity: u64, extra: &[&str]) {
    let disk = format!("socket={}", socket.display());
    let mut args = vec![
        "run",
        "--kernel",
        BLK,
        "--disk",
        &disk,
        "--log-level",
        "info",
    ];
    args.extend_from_slice(extra);
    let o = vhostkit(&args);
    println!("blk guest: boot to power-off took {:?}", o.elapsed);
    assert_powered_off(&o);
    assert!(!o.stdout.contains("FAIL"), "{}", o.stdout);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", o.stdout);
    // Found through ACPI (RSDP, XSDT, FADT, DSDT, LNRO0005 and its _CRS).
    assert_eq!(lines[0], "virtio-blk: LNRO0005 at 0xd0000000 GSI 5 (ACPI)");
    assert_eq!(
        lines[1],
        format!("virtio-blk: capacity {capacity} sectors, write+read sector {BLK_SECTOR} ok")
    );
    // Completions arrived as interrupts (the guest waits in `hlt`): the backend's
    // call eventfd is a KVM irqfd routed through the IOAPIC.
    let interrupts: u32 = lines[2]
        .strip_prefix("virtio-blk: 2 requests, ")
        .and_then(|r| r.strip_suffix(" interrupts"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", lines[2]));
    // Two calls before the guest takes the first interrupt merge into one.
    assert!(interrupts >= 1, "{}", lines[2]);
    assert_no_vmm_notifications(&o);
    let data = std::fs::read(image).unwrap();
    let sector = &data[BLK_SECTOR * 512..(BLK_SECTOR + 1) * 512];
    let want: Vec<u8> = (0..512).map(blk_pattern).collect();
    assert_eq!(sector, &want[..], "sector {BLK_SECTOR} of the image");
    // Nothing else was written (the image started as zeros).
    let others = data
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b != 0 && i / 512 != BLK_SECTOR)
        .count();
    assert_eq!(others, 0, "bytes written outside sector {BLK_SECTOR}");
}

#[test]
fn guest_driver_writes_and_reads_a_sector_through_vhost_user_blk() {
    if !have_kvm() {
        return;
    }
    let dir = TempDir::new("vmm-blk-ours").unwrap();
    let Some(daemon) = blk_daemon_on_image(&dir) else {
        return;
    };
    let image = dir.join("disk.img"); // blk_daemon's image (TempDir::image)
    blk_guest_round_trip(daemon.socket(), &image, 2048, &[]);
    // Again with two vCPUs (one waits for a SIPI that never comes) and guest RAM on
    // both sides of the 3.25-4 GiB hole (two memory regions in the table the daemon
    // maps).
    blk_guest_round_trip(
        daemon.socket(),
        &image,
        2048,
        &["--cpus", "2", "--memory", "5G"],
    );
}

#[test]
fn guest_driver_writes_and_reads_a_sector_through_qemu_storage_daemon() {
    if !have_kvm() {
        return;
    }
    let Some(version) = vhostkit_tests::daemon::qemu_storage_daemon_version() else {
        vhostkit_tests::skip::skip(format_args!("qemu-storage-daemon is not installed"));
        return;
    };
    println!("backend: {version}");
    let dir = TempDir::new("vmm-blk-qsd").unwrap();
    let image = dir.image(1 << 20).unwrap();
    let sock = dir.join("qsd.sock");
    let cmd = vhostkit_tests::daemon::qemu_storage_daemon_cmd(&image, &sock, 1, "threads");
    let daemon = vhostkit_tests::daemon::DaemonProcess::spawn(
        "qemu-storage-daemon",
        cmd,
        &sock,
        Duration::from_secs(10),
    )
    .unwrap();
    blk_guest_round_trip(daemon.socket(), &image, 2048, &[]);
}

#[test]
fn disk_errors() {
    assert_error(
        &vhostkit(&["run", "--kernel", HELLO, "--disk", "/x.sock"]),
        2,
        "socket=PATH",
    );
    if !have_kvm() {
        return;
    }
    let o = vhostkit(&[
        "run",
        "--kernel",
        HELLO,
        "--disk",
        "socket=/nonexistent/x.sock",
    ]);
    assert_error(&o, 1, "--disk socket=/nonexistent/x.sock");
    assert!(o.stdout.is_empty());
}
