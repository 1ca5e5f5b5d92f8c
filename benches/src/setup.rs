//! What the driver-based benchmarks (blk-bench, net-bench, fs-bench) do
//! before they measure: find our daemon's binary and make a folder for the run.

use std::path::{Path, PathBuf};

use vhostkit_tests::daemon::workspace_bin;

/// Our daemon's binary: `given` (--ours-bin), else `name` next to this executable;
/// an error that says how to build it (`cargo build --release -p PACKAGE`) if it is
/// missing.
pub fn ours_bin(given: Option<&Path>, name: &str, package: &str) -> Result<PathBuf, String> {
    let bin = given.map_or_else(|| workspace_bin(name), Path::to_path_buf);
    if !bin.exists() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p {package}`",
            bin.display()
        ));
    }
    Ok(bin)
}

/// A run's folder (`PARENT/vhostkit-BENCH-PID`, for sockets, images and logs),
/// removed with all in it when dropped unless kept.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    /// Creates `parent/vhostkit-{bench}-{pid}`.
    pub fn create(parent: &Path, bench: &str, keep: bool) -> Result<RunDir, String> {
        let path = parent.join(format!("vhostkit-{bench}-{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(RunDir { path, keep })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dir_is_removed_unless_kept() {
        let parent = std::env::temp_dir();
        let dir = RunDir::create(&parent, "setup-test", false).unwrap();
        let path = dir.path().to_path_buf();
        assert!(path.is_dir());
        drop(dir);
        assert!(!path.exists());
        let dir = RunDir::create(&parent, "setup-test", true).unwrap();
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(path.is_dir());
        std::fs::remove_dir_all(&path).unwrap();
        assert!(ours_bin(Some(Path::new("/nonexistent/x")), "x", "pkg")
            .unwrap_err()
            .contains("cargo build --release -p pkg"));
    }
}
