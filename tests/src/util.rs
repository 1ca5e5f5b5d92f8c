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
    fn rng_is_reproducible_and_in_range() {
        let mut a = Rng::new(5);
        let mut b = Rng::new(5);
        assert_eq!(a.bytes(33), b.bytes(33));
        assert!((0..1000).all(|_| (10..=20).contains(&a.range(10, 20))));
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
