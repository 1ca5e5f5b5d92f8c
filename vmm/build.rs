//! Builds the test guests (guest/*.S) into freestanding x86_64 ELFs with the
//! system's `as` and `ld`; their paths reach the crate as `VHOSTKIT_TEST_GUEST`
//! (prints a hello line, powers off; it also has a PVH entry note, so QEMU's
//! `-kernel` boots the same ELF), `VHOSTKIT_FAULT_GUEST` (triple-faults) and
//! `VHOSTKIT_VIRTIO_GUEST` (probes the first virtio-mmio window). guest/blk.c, a
//! virtio-blk driver (writes and reads back a sector), and guest/net.c, a virtio-net
//! driver (sends a frame, waits for the reply), both on guest/virtio_guest.h, are
//! built with the system's `cc` as freestanding C into `VHOSTKIT_BLK_GUEST` and
//! `VHOSTKIT_NET_GUEST`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// Assembles guest/NAME.S and links it with guest/hello.ld into OUT_DIR/NAME.elf.
fn guest(out: &Path, name: &str) -> PathBuf {
    let obj = out.join(format!("{name}.o"));
    let src = format!("guest/{name}.S");
    println!("cargo:rerun-if-changed={src}");
    run(Command::new("as").args(["--64", "-o"]).arg(&obj).arg(&src));
    link(out, name, &obj)
}

/// Compiles guest/NAME.c as freestanding code (no SSE, no red zone: no FPU set-up
/// and no interrupt stack switch in the guest) and links it like the others.
fn c_guest(out: &Path, name: &str) -> PathBuf {
    let obj = out.join(format!("{name}.o"));
    let src = format!("guest/{name}.c");
    println!("cargo:rerun-if-changed={src}");
    run(Command::new("cc")
        .args([
            "-m64",
            "-std=gnu11",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-ffreestanding",
            "-fno-builtin",
            "-fno-tree-loop-distribute-patterns",
            "-fno-pic",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-fcf-protection=none",
            "-mgeneral-regs-only",
            "-mno-red-zone",
            "-c",
            "-o",
        ])
        .arg(&obj)
        .arg(&src));
    link(out, name, &obj)
}

/// Links OBJ with guest/hello.ld into OUT_DIR/NAME.elf.
fn link(out: &Path, name: &str, obj: &Path) -> PathBuf {
    let elf = out.join(format!("{name}.elf"));
    run(Command::new("ld")
        .args([
            "-nostdlib",
            "-static",
            "--build-id=none",
            "-T",
            "guest/hello.ld",
            "-o",
        ])
        .arg(&elf)
        .arg(obj));
    elf
}

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed=guest/hello.ld");
    println!("cargo:rerun-if-changed=guest/virtio_guest.h");
    let hello = guest(&out, "hello");
    let fault = guest(&out, "fault");
    let virtio = guest(&out, "virtio");
    let blk = c_guest(&out, "blk");
    let net = c_guest(&out, "net");
    println!("cargo:rustc-env=VHOSTKIT_TEST_GUEST={}", hello.display());
    println!("cargo:rustc-env=VHOSTKIT_FAULT_GUEST={}", fault.display());
    println!("cargo:rustc-env=VHOSTKIT_VIRTIO_GUEST={}", virtio.display());
    println!("cargo:rustc-env=VHOSTKIT_BLK_GUEST={}", blk.display());
    println!("cargo:rustc-env=VHOSTKIT_NET_GUEST={}", net.display());
}
