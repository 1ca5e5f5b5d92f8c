//! What the driver-based benchmarks (blk-bench, net-bench, fs-bench) do
//! before they measure: find our daemon's binary, make a folder for the run, and
//! read their size arguments.

use std::path::{Path, PathBuf};

use vhostkit_tests::daemon::workspace_bin;

/// A size argument (`--size`, `--file-size`): a number with an optional K, M or G
/// suffix, a whole number of MiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let size = n
        .checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))?;
    if size < (1 << 20) || size % (1 << 20) != 0 {
        return Err(format!("size {s:?}: must be a multiple of 1 MiB"));
    }
    Ok(size)
}

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
    fn sizes_parse() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2048k"), Ok(2 << 20));
        assert!(parse_size("1000").is_err());
        assert!(parse_size("100k").is_err());
        assert!(parse_size("x").is_err());
    }

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
