//! QEMU boots the same hello test guest ELF that vhostkit runs, through its PVH
//! entry (the XEN_ELFNOTE_PHYS32_ENTRY note): the dual-entry guest stays valid.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use vhostkit_tests::util::run_to_end;

const HELLO: &str = env!("VHOSTKIT_TEST_GUEST");
const QEMU: &str = "qemu-system-x86_64";
const TIMEOUT: Duration = Duration::from_secs(60);

fn have_qemu_and_kvm() -> bool {
    if !Path::new("/dev/kvm").exists() {
        vhostkit_tests::skip::skip(format_args!("no /dev/kvm"));
        return false;
    }
    if Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        vhostkit_tests::skip::skip(format_args!("{QEMU} is not installed"));
        return false;
    }
    true
}

/// Runs QEMU on the hello guest with MACHINE and EXTRA arguments; returns its exit
/// code and stdout (the guest's serial port). Kills it after TIMEOUT.
fn qemu(machine: &str, extra: &[&str]) -> (Option<i32>, String) {
    let done = run_to_end(
        Command::new(QEMU)
            .args([
                "-accel",
                "kvm",
                // -cpu host and max abort on MSR 0x10a under kvm_pvm.
                "-cpu",
                "host,-arch-capabilities",
                "-machine",
                machine,
                "-m",
                "64M",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
                "-kernel",
                HELLO,
            ])
            .args(extra),
        TIMEOUT,
    );
    eprint!("{}", done.stderr);
    (done.code, done.stdout)
}

/// microvm has no i8042: the guest's second power-off write, to isa-debug-exit at
/// 0xf4 (value 0x10), ends QEMU with status (0x10 << 1) | 1.
#[test]
fn qemu_microvm_boots_the_hello_guest_through_pvh() {
    if !have_qemu_and_kvm() {
        return;
    }
    let (code, out) = qemu(
        "microvm,x-option-roms=off,pit=off,pic=off,rtc=off",
        &["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
    );
    assert!(
        out.starts_with("vhostkit test guest: hello\n"),
        "serial output: {out:?}"
    );
    assert_eq!(code, Some(33), "serial output: {out:?}");
}

/// q35 has an i8042: the guest's reset command (0xfe to port 0x64) ends QEMU
/// with status 0 under -no-reboot. The command line reaches the guest through
/// hvm_start_info.
#[test]
fn qemu_q35_boots_the_hello_guest_and_passes_the_command_line() {
    if !have_qemu_and_kvm() {
        return;
    }
    let (code, out) = qemu("q35", &["-append", "hello from qemu"]);
    assert!(
        out.contains("vhostkit test guest: hello\ncmdline: hello from qemu\n"),
        "serial output: {out:?}"
    );
    assert_eq!(code, Some(0), "serial output: {out:?}");
}
