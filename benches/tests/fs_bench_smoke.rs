//! fs-bench --quick: every row runs against our daemon, and against virtiofsd where
//! it is installed (`$VHOSTKIT_TOOLS_DIR/bin/virtiofsd` or `build/tools/bin/virtiofsd`),
//! and the table and the JSON report have every row with real figures. Needs the
//! vhost-user-fs binary (`cargo build -p vhost-fs`); otherwise it prints SKIPPED.

use std::process::Command;

use vhostkit_tests::daemon::workspace_bin;
use vhostkit_tests::fs::FsTools;
use vhostkit_tests::TempDir;

#[test]
fn quick_run_measures_every_row() {
    let ours = workspace_bin("vhost-user-fs");
    if !ours.exists() {
        vhostkit_tests::skip::skip(format_args!(
            "{} not built (cargo build -p vhost-fs)",
            ours.display()
        ));
        return;
    }
    let virtiofsd = FsTools::default_dir().join("bin/virtiofsd");
    let with_peer = virtiofsd.is_file();
    if !with_peer {
        println!(
            "virtiofsd not found at {}: our daemon only",
            virtiofsd.display()
        );
    }
    let bench = env!("CARGO_BIN_EXE_fs-bench");
    let listed = Command::new(bench)
        .args(["--quick", "--list"])
        .output()
        .unwrap();
    assert!(listed.status.success());
    let rows: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(rows.len(), 9, "{rows:?}");

    let dir = TempDir::new("fs-bench-smoke").unwrap();
    let json = dir.join("fs.json");
    let mut cmd = Command::new(bench);
    cmd.args(["--quick", "--files", "200"])
        .arg("--ours-bin")
        .arg(&ours)
        .arg("--dir")
        .arg(dir.path())
        .arg("--json")
        .arg(&json);
    if with_peer {
        cmd.arg("--virtiofsd").arg(&virtiofsd);
    } else {
        cmd.arg("--no-peer");
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fs-bench failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ours CPU s/Mop"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let got: Vec<&str> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    // --files 200 renames the metadata rows of the --list above (300 files).
    let expected: Vec<String> = rows.iter().map(|r| r.replace("300", "200")).collect();
    assert_eq!(got, expected, "{report}");
    for row in report["rows"].as_array().unwrap() {
        let name = row["workload"].as_str().unwrap();
        assert!(stdout.contains(name), "{name} not in the table:\n{stdout}");
        let ops = row["ours"]["ops_per_sec"].as_f64().unwrap();
        assert!(ops > 100.0, "{row}");
        if name.starts_with("4k") || name.starts_with("1M") {
            let bs = if name.starts_with("4k") {
                4096.0
            } else {
                1048576.0
            };
            let per_op = row["ours"]["mb_per_sec"].as_f64().unwrap() * 1e6 / ops;
            assert!((per_op - bs).abs() < 1.0, "{per_op} B/op: {row}");
        }
        if with_peer {
            assert!(
                row["peer"]["ops_per_sec"].as_f64().unwrap() > 100.0,
                "{row}"
            );
        } else {
            assert!(row["peer"].is_null(), "{row}");
        }
    }
}
