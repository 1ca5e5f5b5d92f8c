//! Scratch folders for the targets that need files (a shared folder, a disk
//! image, config files). Each target of each process gets its own,
//! `<base>/<target>-<pid>`: afl-fuzz runs two copies of a target at once (`cargo
//! afl fuzz` passes `-c0`, a second forkserver for the CMPLOG stage), one stopped
//! while the other runs, so a folder (or the socket of an in-process daemon) must
//! never be shared. The base is `$VHOSTKIT_FUZZ_SCRATCH` when set (scripts/fuzz.sh
//! sets it to a folder it removes afterwards; folders of processes that are gone,
//! killed by afl-fuzz after a crash or a timeout, are removed when a new one is
//! made), else /dev/shm (a tmpfs: no disk I/O, and fsync or syncfs from a fuzzed
//! request cost nothing) or the temporary folder. [`cleanup`] removes them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

static MADE: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

/// A fresh, empty scratch folder for `target` in this process.
pub fn fresh(target: &str) -> PathBuf {
    let base = match std::env::var_os("VHOSTKIT_FUZZ_SCRATCH") {
        Some(base) => PathBuf::from(base),
        None => {
            let shm = Path::new("/dev/shm");
            if shm.is_dir() {
                shm.to_path_buf()
            } else {
                std::env::temp_dir()
            }
        }
    };
    let prefix = format!("vhostkit-fuzz-{target}-");
    remove_orphans(&base, &prefix);
    let dir = base.join(format!("{prefix}{}", std::process::id()));
    wipe(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot make scratch folder {}: {e}", dir.display()));
    MADE.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((target.to_string(), dir.clone()));
    dir
}

/// Removes the scratch folders `<prefix><pid>` in `base` of processes that no
/// longer exist.
fn remove_orphans(base: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = try_wipe(&entry.path());
        }
    }
}

/// Removes `dir` and everything in it, whatever modes a fuzzed request left on
/// its folders; nothing to do if it does not exist. Panics if it cannot.
pub fn wipe(dir: &Path) {
    if let Err(e) = try_wipe(dir) {
        panic!("cannot remove scratch folder {}: {e}", dir.display());
    }
}

fn try_wipe(dir: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(dir).is_err() || std::fs::remove_dir_all(dir).is_ok() {
        return Ok(());
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
    std::fs::remove_dir_all(dir)
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
