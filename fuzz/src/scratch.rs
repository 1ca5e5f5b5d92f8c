//! Scratch folders for the targets that need files (a shared folder, a disk
//! image, config files). Each target of each process gets its own:
//! `$VHOSTKIT_FUZZ_SCRATCH/<target>` when that is set (scripts/fuzz.sh sets it to
//! a folder it removes afterwards: afl-fuzz restarts the target process after a
//! crash or a timeout, and the new process takes over the old one's folder), else
//! `<tmp>/vhostkit-fuzz-<target>-<pid>` on /dev/shm (a tmpfs: no disk I/O, and
//! fsync or syncfs from a fuzzed request cost nothing), removed by [`cleanup`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;

static MADE: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

/// A fresh, empty scratch folder for `target` in this process.
pub fn fresh(target: &str) -> PathBuf {
    let dir = match std::env::var_os("VHOSTKIT_FUZZ_SCRATCH") {
        Some(base) => PathBuf::from(base).join(target),
        None => {
            let shm = Path::new("/dev/shm");
            let base = if shm.is_dir() {
                shm.to_path_buf()
            } else {
                std::env::temp_dir()
            };
            base.join(format!("vhostkit-fuzz-{target}-{}", std::process::id()))
        }
    };
    wipe(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot make scratch folder {}: {e}", dir.display()));
    MADE.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((target.to_string(), dir.clone()));
    dir
}

/// Removes `dir` and everything in it, whatever modes a fuzzed request left on
/// its folders; nothing to do if it does not exist.
pub fn wipe(dir: &Path) {
    if std::fs::symlink_metadata(dir).is_err() {
        return;
    }
    if std::fs::remove_dir_all(dir).is_ok() {
        return;
    }
    // A folder without write or search permission (for a non-root run): open up
    // every folder, then try again.
    fn open_up(dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    open_up(&entry.path());
                }
            }
        }
    }
    open_up(dir);
    if let Err(e) = std::fs::remove_dir_all(dir) {
        panic!("cannot remove scratch folder {}: {e}", dir.display());
    }
}

/// Removes the scratch folders this process made for `target` (for every
/// target with None). The target must not run again in this process.
pub fn cleanup(target: Option<&str>) {
    let mut made = MADE.lock().unwrap_or_else(|p| p.into_inner());
    made.retain(|(t, dir)| {
        if target.is_none_or(|target| target == t) {
            wipe(dir);
            false
        } else {
            true
        }
    });
}
