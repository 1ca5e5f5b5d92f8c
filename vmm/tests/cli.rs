//! The `vhostkit run` command line and `--config` file, through the built binary:
//! help text, and one clear error line with exit status 2 for bad configurations.

use std::process::Command;
use std::time::Duration;

use vhostkit_tests::util::{run_to_end, Finished, TempDir};

const VHOSTKIT: &str = env!("CARGO_BIN_EXE_vhostkit");
/// An existing regular file to name as a kernel: configuration errors come before
/// the kernel is read.
const HELLO: &str = env!("VHOSTKIT_TEST_GUEST");

fn vhostkit(args: &[&str]) -> Finished {
    run_to_end(
        Command::new(VHOSTKIT).args(args).env_remove("RUST_LOG"),
        Duration::from_secs(30),
    )
}

/// Exit status 2, exactly one line on stderr containing every needle, no panic,
/// nothing on stdout.
fn assert_config_error(o: &Finished, needles: &[&str]) {
    assert_eq!(o.code, Some(2), "stderr: {}", o.stderr);
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one error line, got: {:?}", o.stderr);
    for needle in needles {
        assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
    }
    assert!(o.stdout.is_empty(), "{}", o.stdout);
}

#[test]
fn help_lists_every_option() {
    let o = vhostkit(&["run", "--help"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    for option in [
        "--kernel <PATH>",
        "--initrd <PATH>",
        "--cmdline <STR>",
        "--cpus <N>",
        "--memory <SIZE>",
        "--disk <SPEC>",
        "--net <SPEC>",
        "--fs <SPEC>",
        "--config <FILE>",
        "--log-level <LEVEL>",
    ] {
        assert!(o.stdout.contains(option), "--help lacks {option}");
    }
    // The syntax of each device and of the file is spelled out.
    for syntax in [
        "socket=PATH[,num-queues=N][,queue-size=N]",
        "path=IMG[,readonly=on|off][,num-queues=N][,queue-size=N][,direct=on|off]",
        "tap=NAME[,host-ip=ADDR/PREFIX][,mac=MAC][,num-queue-pairs=N][,queue-size=N]",
        "dir=DIR,tag=TAG[,num-queues=N][,queue-size=N]",
        "[[disk]]",
        "[[net]]",
        "[[fs]]",
    ] {
        assert!(o.stdout.contains(syntax), "--help lacks {syntax}");
    }
}

#[test]
fn missing_kernel() {
    assert_config_error(
        &vhostkit(&["run"]),
        &["no kernel: give --kernel or kernel in the --config file"],
    );
    assert_config_error(
        &vhostkit(&["run", "--kernel", "/nonexistent/vmlinux"]),
        &["--kernel /nonexistent/vmlinux: No such file"],
    );
}

#[test]
fn missing_initrd() {
    assert_config_error(
        &vhostkit(&["run", "--kernel", HELLO, "--initrd", "/nonexistent/initrd"]),
        &["--initrd /nonexistent/initrd: No such file"],
    );
}

#[test]
fn bad_device_specs() {
    let with = |option: &str, spec: &str| vhostkit(&["run", "--kernel", HELLO, option, spec]);
    assert_config_error(
        &with("--disk", "socket=/a.sock,bogus=1"),
        &["--disk \"socket=/a.sock,bogus=1\": unknown key \"bogus\""],
    );
    assert_config_error(
        &with("--disk", "path=/nonexistent/x.img"),
        &["--disk \"path=/nonexistent/x.img\": path=/nonexistent/x.img: No such file"],
    );
    assert_config_error(
        &with("--net", "tap=vk0,mac=ff:ff:ff:ff:ff:ff"),
        &["--net \"tap=vk0,mac=ff:ff:ff:ff:ff:ff\"", "multicast"],
    );
    assert_config_error(&with("--fs", "socket=/f.sock"), &["--fs", "needs tag=TAG"]);
}

#[test]
fn bad_config_files() {
    let dir = TempDir::new("cli-toml").unwrap();
    let toml = dir.join("vm.toml");
    let t = toml.to_str().unwrap();
    std::fs::write(&toml, "cpus = 2\n[[disk]]\nsocket = \"/a\"\nsize = 3\n").unwrap();
    assert_config_error(
        &vhostkit(&["run", "--kernel", HELLO, "--config", t]),
        &[&format!("--config {t}: line 4: unknown field `size`")],
    );
    assert_config_error(
        &vhostkit(&["run", "--config", "/nonexistent/vm.toml"]),
        &["--config /nonexistent/vm.toml: No such file"],
    );
    std::fs::write(&toml, "cpus = 2\n").unwrap();
    assert_config_error(
        &vhostkit(&["run", "--config", t]),
        &["no kernel: give --kernel or kernel in the --config file"],
    );
}
