//! Small things every test and benchmark needs: a temporary folder removed on drop,
//! a reproducible pseudo-random generator, and waiting for a daemon's log to say
//! something.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A fresh folder, removed with everything in it on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A new folder under the system temporary folder.
    pub fn new(tag: &str) -> io::Result<Self> {
        Self::new_in(&std::env::temp_dir(), tag)
    }

    /// A new folder under `parent` (e.g. `/dev/shm` for images in memory).
    pub fn new_in(parent: &Path, tag: &str) -> io::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = parent.join(format!(
            "vhostkit-{tag}-{}-{n}-{nanos:08x}",
            std::process::id()
        ));
        fs::create_dir(&path)?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// A sparse (all-zero) file `disk.img` of `size` bytes in the folder.
    pub fn image(&self, size: u64) -> io::Result<PathBuf> {
        let path = self.join("disk.img");
        fs::File::create(&path)?.set_len(size)?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// xorshift64*: reproducible data and offsets without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi` (close enough for test data).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n.div_ceil(8))
            .flat_map(|_| self.next_u64().to_le_bytes())
            .take(n)
            .collect()
    }
}

/// What a child process run to completion printed and how it ended.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `cmd` with stdin closed and stdout and stderr captured (drained in threads,
/// so a chatty child cannot block on a full pipe); kills it and panics after
/// `timeout`.
pub fn run_to_end(cmd: &mut std::process::Command, timeout: Duration) -> Finished {
    use std::io::Read;
    use std::process::Stdio;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Finished {
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// Waits until the file at `log` contains `needle` and returns its text; panics
/// with the text after `timeout`.
pub fn wait_for_log(log: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never said {needle:?}:\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dir_is_unique_and_removed() {
        let a = TempDir::new("util").unwrap();
        let b = TempDir::new("util").unwrap();
        assert_ne!(a.path(), b.path());
        let image = a.image(4096).unwrap();
        assert_eq!(fs::metadata(&image).unwrap().len(), 4096);
        let kept = a.path().to_path_buf();
        drop(a);
        assert!(!kept.exists());
    }

    #[test]
    fn run_to_end_collects_output_and_code() {
        let done = run_to_end(
            std::process::Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        );
        assert_eq!(done.code, Some(3));
        assert_eq!(done.stdout, "out\n");
        assert_eq!(done.stderr, "err\n");
    }

    #[test]
    fn rng_is_reproducible_and_in_range() {
        let mut a = Rng::new(5);
        let mut b = Rng::new(5);
        assert_eq!(a.bytes(33), b.bytes(33));
        assert!((0..1000).all(|_| (10..=20).contains(&a.range(10, 20))));
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
