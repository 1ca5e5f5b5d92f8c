//! The daemon as a process: configuration errors give one clear line and exit
//! code 2; a tap that cannot be set up gives exit code 1.

use std::ffi::OsStr;
use std::fmt::Debug;
use std::process::Command;

use vhostkit_tests::launch::net::NetArgs;
use vhostkit_tests::launch::Launch;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-net");

fn run_expecting_failure(args: &[impl AsRef<OsStr> + Debug]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} should have failed");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!text.contains("panicked"), "{text}");
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn configuration_errors_give_one_line_and_exit_code_2() {
    let sock = "/tmp/vhostkit-net-cli.sock";
    let base = ["--socket-path", sock, "--tap", "vkcli0"];
    for (extra, needle) in [
        (&["--mac", "52:54:00:12:34"][..], "--mac"),
        (&["--mac", "not-a-mac"][..], "--mac"),
        (&["--mac", "01:00:5e:00:00:01"][..], "multicast"),
        (&["--mtu", "67"][..], "--mtu"),
        (&["--mtu", "65536"][..], "--mtu"),
        (&["--num-queue-pairs", "0"][..], "--num-queue-pairs"),
        (&["--num-queue-pairs", "32"][..], "--num-queue-pairs"),
        (&["--queue-size", "100"][..], "power of two"),
        (&["--host-ip", "10.0.0.1"][..], "--host-ip"),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let (code, text) = run_expecting_failure(&args);
        assert_eq!(code, 2, "{extra:?}: {text}");
        assert!(text.contains(needle), "{extra:?}: {text}");
        assert_eq!(text.trim_end().lines().count(), 1, "{extra:?}: {text}");
    }
    // Missing --tap, and a name the kernel cannot take: clap's own usage error
    // (also exit code 2) and ours.
    let (code, text) = run_expecting_failure(&["--socket-path", sock]);
    assert_eq!(code, 2);
    assert!(text.contains("--tap"), "{text}");
    let (code, text) =
        run_expecting_failure(&["--socket-path", sock, "--tap", "a-name-far-too-long"]);
    assert_eq!(code, 2);
    assert!(text.contains("--tap"), "{text}");
    let (code, text) = run_expecting_failure(&["--tap", "vkcli0"]);
    assert_eq!(code, 2);
    assert!(text.contains("--socket-path"), "{text}");
}

#[test]
fn a_tap_that_cannot_be_opened_fails_with_exit_code_1() {
    if std::path::Path::new("/dev/net/tun").exists() {
        // An MTU the tap refuses (taps take at most 65521) fails after the open.
        let daemon = NetArgs {
            mtu: Some(65535),
            ..NetArgs::new("vkcli1")
        };
        let launch = Launch::on_socket("/tmp/vhostkit-net-cli2.sock", daemon);
        let (code, text) = run_expecting_failure(&launch.to_args());
        assert_eq!(code, 1, "{text}");
        assert!(text.contains("MTU of tap vkcli1"), "{text}");
    } else {
        vhostkit_tests::skip::skip(format_args!("no /dev/net/tun"));
    }
}
