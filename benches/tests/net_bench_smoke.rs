//! net-bench --quick against our daemon only: frames really cross the tap both ways
//! (tx counted by the tap's kernel counters, rx at the driver's receive queue), and
//! the JSON report says so. Needs root, /dev/net/tun and the vhost-user-net binary
//! (`cargo build -p vhost-net`); otherwise it prints SKIPPED.

use std::process::Command;

use vhostkit_tests::daemon::workspace_bin;
use vhostkit_tests::TempDir;

#[test]
fn quick_run_moves_frames_both_ways() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/net/tun").exists() {
        vhostkit_tests::skip::skip(format_args!("needs root and /dev/net/tun"));
        return;
    }
    let ours = workspace_bin("vhost-user-net");
    if !ours.exists() {
        vhostkit_tests::skip::skip(format_args!(
            "{} not built (cargo build -p vhost-net)",
            ours.display()
        ));
        return;
    }
    let dir = TempDir::new("net-bench-smoke").unwrap();
    let json = dir.join("net.json");
    let out = Command::new(env!("CARGO_BIN_EXE_net-bench"))
        .args(["--quick", "--no-peer", "--rows", "tx-1500,rx-64"])
        .arg("--ours-bin")
        .arg(&ours)
        .arg("--dir")
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "net-bench failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ours frames/s"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tx-1500", "rx-64"], "{report}");
    for (row, len) in rows.iter().zip([1514.0, 64.0]) {
        let fps = row["ours"]["ops_per_sec"].as_f64().unwrap();
        let mbps = row["ours"]["mb_per_sec"].as_f64().unwrap();
        // Thousands of frames a second at the least, each of the row's size.
        assert!(fps > 1000.0, "{row}");
        let per_frame = mbps * 1e6 / fps;
        assert!((per_frame - len).abs() < 1.0, "{per_frame} B/frame: {row}");
        assert!(
            row["ours"]["cpu_s_per_mop"].as_f64().unwrap() > 0.0,
            "{row}"
        );
        assert!(row["peer"].is_null(), "{row}");
    }
}
