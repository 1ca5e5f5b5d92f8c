//! Starting and stopping our vhost-user daemons for `--disk path=`, `--net tap=` and
//! `--fs dir=` devices.
//!
//! The binaries are found next to the running `vhostkit` (as cargo builds them, and
//! as they are installed together). Each daemon listens on a socket in a private
//! folder (mode 0700) under the system temporary folder; its stderr is ours, so its
//! log lines are seen; it gets SIGTERM if the thread that started it dies
//! (`PR_SET_PDEATHSIG`), and dropping [`Daemons`] stops and reaps them all.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::config::{DeviceBackend, DeviceConfig, SeccompAction};
use clap::ValueEnum;
use vhostkit_launch::{CommonArgs, Listen, LogLevel};

/// How long a daemon may take to listen on its socket.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a daemon has to exit after SIGTERM before it gets SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot find the vhostkit executable")]
    CurrentExe(#[source] io::Error),
    #[error("{program} not found next to {exe} (build it: cargo build --workspace --bins)")]
    NotFound { program: &'static str, exe: PathBuf },
    #[error("cannot create a folder for the daemons' sockets under {0}")]
    TempDir(PathBuf, #[source] io::Error),
    #[error("cannot start {0}")]
    Spawn(String, #[source] io::Error),
    #[error("{0} exited with {1} before listening")]
    ExitedEarly(String, String),
    #[error("{0} did not listen on {1} within {2} s")]
    Timeout(String, PathBuf, u64),
    #[error("waiting for {0}")]
    Wait(String, #[source] io::Error),
}

/// A started daemon.
struct Running {
    /// "vhost-user-blk for --disk path=x.img".
    what: String,
    child: Child,
    /// Whether [`Daemons::exited`] told of its exit already (or it was reaped).
    gone: bool,
}

/// Our daemons, started for the devices that need one; stopped on drop.
pub struct Daemons {
    running: Vec<Running>,
    /// The private folder of their sockets, removed on drop.
    dir: PrivateDir,
}

/// "status 2" or "signal 9".
fn status_text(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}

/// The private folder of the daemons' sockets: a fresh folder under the system
/// temporary folder, mode 0700, held open (with its parent) from its creation, so
/// that removing it at the end needs neither its path nor a general `unlinkat`
/// (the VMM's seccomp filter allows `unlinkat` on these two descriptors only).
struct PrivateDir {
    path: PathBuf,
    parent: OwnedFd,
    fd: OwnedFd,
    name: CString,
    /// The entries the daemons may leave in it (their sockets).
    entries: Vec<CString>,
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("path contains NUL"))?;
    // SAFETY: a NUL-terminated path; open returns a new descriptor or -1.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl PrivateDir {
    fn create() -> Result<PrivateDir, DaemonError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let parent_path = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "vhostkit-daemons-{}-{}-{nanos:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = parent_path.join(&name);
        let err = |e| DaemonError::TempDir(parent_path.clone(), e);
        let parent = open_dir(&parent_path).map_err(err)?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(err)?;
        let fd = open_dir(&path).map_err(err)?;
        Ok(PrivateDir {
            path,
            parent,
            fd,
            name: CString::new(name).expect("no NUL in the name"),
            entries: Vec::new(),
        })
    }

    /// A socket path in the folder, remembered for the removal.
    fn socket(&mut self, name: String) -> PathBuf {
        let path = self.path.join(&name);
        self.entries
            .push(CString::new(name).expect("no NUL in socket names"));
        path
    }

    fn remove(&self) -> io::Result<()> {
        for entry in &self.entries {
            // SAFETY: a NUL-terminated name relative to the folder's descriptor.
            if unsafe { libc::unlinkat(self.fd.as_raw_fd(), entry.as_ptr(), 0) } != 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(e);
                }
            }
        }
        // SAFETY: a NUL-terminated name relative to the parent's descriptor.
        let rc = unsafe {
            libc::unlinkat(
                self.parent.as_raw_fd(),
                self.name.as_ptr(),
                libc::AT_REMOVEDIR,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Daemons {
    /// Starts a daemon for every [`DeviceBackend::Daemon`], waits (at most 10 s
    /// each) until its socket accepts connections; returns the socket path of every
    /// device in order (`Socket` paths unchanged).
    ///
    /// The daemons get SIGTERM when the *thread* calling this exits (that is how
    /// `PR_SET_PDEATHSIG` works): call it from a thread that outlives the VM, such as
    /// the main thread.
    /// Each daemon gets `--seccomp seccomp`: the filter the VMM runs under itself.
    pub fn start(
        devices: &[DeviceConfig],
        log_level: &str,
        seccomp: SeccompAction,
    ) -> Result<(Daemons, Vec<PathBuf>), DaemonError> {
        let exe = std::env::current_exe().map_err(DaemonError::CurrentExe)?;
        Self::start_next_to(&exe, devices, log_level, seccomp)
    }

    /// [`Daemons::start`] with the binaries looked up in the folder of `exe`.
    pub(crate) fn start_next_to(
        exe: &Path,
        devices: &[DeviceConfig],
        log_level: &str,
        seccomp: SeccompAction,
    ) -> Result<(Daemons, Vec<PathBuf>), DaemonError> {
        let bin_dir = exe.parent().unwrap_or(Path::new("."));
        // Every binary first, so a missing one fails before anything starts.
        for dev in devices {
            if let DeviceBackend::Daemon { program, .. } = &dev.backend {
                if !bin_dir.join(program).is_file() {
                    return Err(DaemonError::NotFound {
                        program,
                        exe: exe.to_path_buf(),
                    });
                }
            }
        }
        let mut daemons = Daemons {
            running: Vec::new(),
            dir: PrivateDir::create()?,
        };
        let mut sockets = Vec::with_capacity(devices.len());
        for (i, dev) in devices.iter().enumerate() {
            match &dev.backend {
                DeviceBackend::Socket(path) => sockets.push(path.clone()),
                DeviceBackend::Daemon { program, args } => {
                    let socket = daemons.dir.socket(format!("{i}-{program}.sock"));
                    let what = format!("{program} for {}", dev.describe());
                    let common = CommonArgs {
                        seccomp: Some(seccomp),
                        // The VMM's parser took its level from the same names.
                        log_level: LogLevel::from_str(log_level, false).ok(),
                        ..CommonArgs::new(Listen::Path(socket.clone()))
                    };
                    // On error, dropping `daemons` stops those started so far.
                    daemons.spawn(&bin_dir.join(program), args, &common, &socket, what)?;
                    sockets.push(socket);
                }
            }
        }
        Ok((daemons, sockets))
    }

    fn spawn(
        &mut self,
        bin: &Path,
        args: &[OsString],
        common: &CommonArgs,
        socket: &Path,
        what: String,
    ) -> Result<(), DaemonError> {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .args(common.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs in the child between fork and exec and makes only
        // async-signal-safe calls (prctl, getppid); it allocates nothing: building an
        // io::Error from an OS error number does not allocate.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent died before the prctl: the signal would never come.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            })
        };
        let child = cmd
            .spawn()
            .map_err(|e| DaemonError::Spawn(what.clone(), e))?;
        info!(
            "started {what}: pid {}, socket {}",
            child.id(),
            socket.display()
        );
        self.running.push(Running {
            what,
            child,
            gone: false,
        });
        let daemon = self.running.last_mut().expect("just pushed");
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        loop {
            match daemon.child.try_wait() {
                Ok(Some(status)) => {
                    daemon.gone = true;
                    return Err(DaemonError::ExitedEarly(
                        daemon.what.clone(),
                        status_text(status),
                    ));
                }
                Ok(None) => {}
                Err(e) => return Err(DaemonError::Wait(daemon.what.clone(), e)),
            }
            // Our daemons go back to listening when this probe hangs up.
            if UnixStream::connect(socket).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(DaemonError::Timeout(
                    daemon.what.clone(),
                    socket.to_path_buf(),
                    LISTEN_TIMEOUT.as_secs(),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A daemon that has exited since start, as one line ("vhost-user-blk for
    /// --disk path=x.img exited with status 1"), without blocking; each exit is told
    /// once.
    pub fn exited(&mut self) -> Option<String> {
        for daemon in self.running.iter_mut().filter(|d| !d.gone) {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                daemon.gone = true;
                return Some(format!(
                    "{} exited with {}",
                    daemon.what,
                    status_text(status)
                ));
            }
        }
        None
    }

    /// The process ids of the daemons, in start order.
    pub fn pids(&self) -> Vec<u32> {
        self.running.iter().map(|d| d.child.id()).collect()
    }

    /// The private folder holding the daemons' sockets.
    pub fn socket_dir(&self) -> &Path {
        &self.dir.path
    }

    /// The descriptors `unlinkat` works on to remove the socket folder at the end:
    /// the folder's and its parent's.
    pub fn dir_fds(&self) -> [RawFd; 2] {
        [self.dir.fd.as_raw_fd(), self.dir.parent.as_raw_fd()]
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        let mut live: Vec<&mut Running> = Vec::new();
        for daemon in self.running.iter_mut() {
            if let Ok(None) = daemon.child.try_wait() {
                // SAFETY: kill() on our own, not yet reaped child's pid has no
                // memory-safety preconditions, and the pid cannot have been reused.
                unsafe { libc::kill(daemon.child.id() as libc::pid_t, libc::SIGTERM) };
                live.push(daemon);
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !live.is_empty() && Instant::now() < deadline {
            live.retain_mut(|d| matches!(d.child.try_wait(), Ok(None)));
            std::thread::sleep(Duration::from_millis(5));
        }
        for daemon in live {
            warn!("{} did not exit on SIGTERM: killing it", daemon.what);
            let _ = daemon.child.kill();
            let _ = daemon.child.wait();
        }
        if let Err(e) = self.dir.remove() {
            warn!("cannot remove {}: {e}", self.dir.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeviceKind;
    use vhostkit_tests::daemon::workspace_bin;
    use vhostkit_tests::TempDir;

    fn blk(args: &[&str]) -> DeviceConfig {
        DeviceConfig {
            kind: DeviceKind::Block,
            backend: DeviceBackend::Daemon {
                program: "vhost-user-blk",
                args: args.iter().map(OsString::from).collect(),
            },
            num_queues: None,
            queue_size: crate::config::DEFAULT_QUEUE_SIZE,
        }
    }

    /// A path in the folder of the workspace's binaries, or None (SKIPPED printed)
    /// if vhost-user-blk is not built.
    fn exe_in_bin_dir() -> Option<PathBuf> {
        let bin = workspace_bin("vhost-user-blk");
        if !bin.exists() {
            vhostkit_tests::skip::skip(format_args!(
                "{} not built (run `cargo build --workspace --bins` first)",
                bin.display()
            ));
            return None;
        }
        Some(bin.with_file_name("vhostkit"))
    }

    fn alive(pid: u32) -> bool {
        // SAFETY: signal 0 only checks the pid; no memory is involved.
        unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
    }

    #[test]
    fn starts_vhost_user_blk_and_stops_it_on_drop() {
        let Some(exe) = exe_in_bin_dir() else { return };
        let dir = TempDir::new("daemons").unwrap();
        let image = dir.image(1 << 20).unwrap();
        let devices = [
            DeviceConfig {
                kind: DeviceKind::Block,
                backend: DeviceBackend::Socket("/elsewhere.sock".into()),
                num_queues: None,
                queue_size: crate::config::DEFAULT_QUEUE_SIZE,
            },
            blk(&["--path", image.to_str().unwrap()]),
        ];
        let (mut daemons, sockets) =
            Daemons::start_next_to(&exe, &devices, "warn", SeccompAction::Kill).unwrap();
        assert_eq!(sockets.len(), 2);
        assert_eq!(sockets[0], PathBuf::from("/elsewhere.sock"));
        let socket_dir = daemons.socket_dir().to_path_buf();
        assert!(sockets[1].starts_with(&socket_dir));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&socket_dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        UnixStream::connect(&sockets[1]).unwrap();
        assert_eq!(daemons.exited(), None);
        let pids = daemons.pids();
        assert_eq!(pids.len(), 1);
        assert!(alive(pids[0]));
        drop(daemons);
        assert!(!alive(pids[0]), "daemon {} still there", pids[0]);
        assert!(!socket_dir.exists(), "{} not removed", socket_dir.display());
    }

    #[test]
    fn exited_tells_of_a_daemon_that_died() {
        let Some(exe) = exe_in_bin_dir() else { return };
        let dir = TempDir::new("daemons-exit").unwrap();
        let image = dir.image(1 << 20).unwrap();
        let img = image.to_str().unwrap();
        let (mut daemons, _) =
            Daemons::start_next_to(&exe, &[blk(&["--path", img])], "warn", SeccompAction::Kill)
                .unwrap();
        let pid = daemons.pids()[0];
        // SAFETY: kill() on our child's pid; no memory is involved.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(5);
        let line = loop {
            if let Some(line) = daemons.exited() {
                break line;
            }
            assert!(Instant::now() < deadline, "exit not seen");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            line,
            format!("vhost-user-blk for --disk path={img} exited with signal 9")
        );
        assert_eq!(daemons.exited(), None, "told twice");
    }

    #[test]
    fn missing_program_is_named() {
        let exe = PathBuf::from("/nonexistent/bin/vhostkit");
        let dev = DeviceConfig {
            kind: DeviceKind::Net { mac: None },
            backend: DeviceBackend::Daemon {
                program: "vhost-user-net",
                args: vec!["--tap".into(), "vk0".into()],
            },
            num_queues: None,
            queue_size: crate::config::DEFAULT_QUEUE_SIZE,
        };
        let e = Daemons::start_next_to(&exe, &[dev], "info", SeccompAction::Kill)
            .err()
            .expect("started without a binary")
            .to_string();
        assert_eq!(
            e,
            "vhost-user-net not found next to /nonexistent/bin/vhostkit \
             (build it: cargo build --workspace --bins)"
        );
    }

    #[test]
    fn daemon_that_fails_to_start_is_reported_with_its_status() {
        let Some(exe) = exe_in_bin_dir() else { return };
        let devices = [blk(&["--path", "/nonexistent/x.img"])];
        let start = Instant::now();
        let e = Daemons::start_next_to(&exe, &devices, "off", SeccompAction::Kill)
            .err()
            .expect("started with a missing image")
            .to_string();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(
            e.starts_with("vhost-user-blk for --disk path=/nonexistent/x.img exited with status "),
            "{e}"
        );
        assert!(e.ends_with(" before listening"), "{e}");
        assert!(!e.contains("status 0"), "{e}");
    }

    /// PR_SET_PDEATHSIG is set: the daemons get SIGTERM when the thread that started
    /// them exits (the reason to call `start` from the main thread).
    #[test]
    fn daemons_die_with_the_thread_that_started_them() {
        let Some(exe) = exe_in_bin_dir() else { return };
        let dir = TempDir::new("daemons-pdeathsig").unwrap();
        let image = dir.image(1 << 20).unwrap();
        let devices = [blk(&["--path", image.to_str().unwrap()])];
        let (mut daemons, _) = std::thread::spawn(move || {
            Daemons::start_next_to(&exe, &devices, "off", SeccompAction::Kill)
        })
        .join()
        .unwrap()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while daemons.exited().is_none() {
            assert!(Instant::now() < deadline, "daemon outlived its thread");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
