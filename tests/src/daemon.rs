//! Backend daemons (ours and peers) run as child processes for a test or a benchmark.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A daemon child process serving a vhost-user socket; killed and reaped on drop.
pub struct DaemonProcess {
    name: String,
    child: Child,
    socket: PathBuf,
}

impl DaemonProcess {
    /// Starts `cmd` and waits until `socket` accepts connections, or fails if the
    /// process exits first or `timeout` passes.
    ///
    /// The probe connection is closed at once; our daemons and qemu-storage-daemon
    /// both go back to listening after a frontend hangs up.
    pub fn spawn(name: &str, cmd: Command, socket: &Path, timeout: Duration) -> io::Result<Self> {
        // A stale socket from an earlier run would make the readiness check pass early.
        let _ = std::fs::remove_file(socket);
        Self::spawn_on_inherited_socket(name, cmd, socket, timeout)
    }

    /// Like [`DaemonProcess::spawn`] for a daemon handed an already bound socket
    /// (`--fd`): the socket file is the caller's and is left alone.
    pub fn spawn_on_inherited_socket(
        name: &str,
        mut cmd: Command,
        socket: &Path,
        timeout: Duration,
    ) -> io::Result<Self> {
        cmd.stdin(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {name}: {e}")))?;
        let mut daemon = DaemonProcess {
            name: name.to_string(),
            child,
            socket: socket.to_path_buf(),
        };
        daemon.wait_for_socket(timeout)?;
        Ok(daemon)
    }

    /// Like [`DaemonProcess::spawn`] for a daemon that serves a single frontend and
    /// exits when it hangs up (virtiofsd): readiness is seen in /proc/net/unix (the
    /// socket path in the listening state), without connecting.
    pub fn spawn_single_client(
        name: &str,
        mut cmd: Command,
        socket: &Path,
        timeout: Duration,
    ) -> io::Result<Self> {
        let _ = std::fs::remove_file(socket);
        cmd.stdin(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {name}: {e}")))?;
        let mut daemon = DaemonProcess {
            name: name.to_string(),
            child,
            socket: socket.to_path_buf(),
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = daemon.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "{name} exited with {status} before listening on {}",
                    socket.display()
                )));
            }
            let table = std::fs::read_to_string("/proc/net/unix")?;
            if unix_socket_listening(&table, socket) {
                return Ok(daemon);
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{name} did not listen on {}", socket.display()),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_for_socket(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "{} exited with {status} before listening on {}",
                    self.name,
                    self.socket.display()
                )));
            }
            if self.socket.exists() && UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} did not listen on {}", self.name, self.socket.display()),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` and waits up to `timeout` for the process to exit.
    pub fn signal_and_wait(
        &mut self,
        signal: i32,
        timeout: Duration,
    ) -> io::Result<Option<std::process::ExitStatus>> {
        // SAFETY: kill() on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(None)
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether /proc/net/unix (`table`) lists `socket` as a listening socket: fields
/// `Num RefCount Protocol Flags Type St Inode Path`, with `__SO_ACCEPTCON`
/// (0x10000) in Flags.
pub fn unix_socket_listening(table: &str, socket: &Path) -> bool {
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() >= 8
            && Path::new(fields[7]) == socket
            && u32::from_str_radix(fields[3], 16).is_ok_and(|flags| flags & 0x10000 != 0)
    })
}

/// Finds a binary of this workspace (e.g. `vhost-user-blk`) next to the running test
/// or bench executable (`target/<profile>/` or its `deps/` folder), or in
/// `$VHOSTKIT_BIN_DIR`. Build the binaries first: `cargo build --workspace --bins`.
pub fn workspace_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("VHOSTKIT_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe has a folder").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// A qemu-storage-daemon exporting `image` over vhost-user-blk: the peer users run today.
pub fn qemu_storage_daemon_cmd(image: &Path, socket: &Path, num_queues: u16, aio: &str) -> Command {
    let mut cmd = Command::new("qemu-storage-daemon");
    cmd.arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={},cache.direct=off,aio={aio}",
            image.display()
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={},writable=on,num-queues={num_queues}",
            socket.display()
        ));
    cmd
}

/// The version line of qemu-storage-daemon, for reports ("qemu-storage-daemon 7.2.22").
pub fn qemu_storage_daemon_version() -> Option<String> {
    let out = Command::new("qemu-storage-daemon")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next()?;
    let version = first.split_whitespace().nth(2)?;
    Some(format!("qemu-storage-daemon {version}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_socket_seen_in_proc_net_unix() {
        let dir = crate::TempDir::new("listen").unwrap();
        let path = dir.join("s.sock");
        let table = || std::fs::read_to_string("/proc/net/unix").unwrap();
        assert!(!unix_socket_listening(&table(), &path));
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(unix_socket_listening(&table(), &path));
        let sample = "Num       RefCount Protocol Flags    Type St Inode Path\n\
                      0000: 00000002 00000000 00010000 0001 01 1234 /a.sock\n\
                      0000: 00000002 00000000 00000000 0001 03 1235 /b.sock\n";
        assert!(unix_socket_listening(sample, Path::new("/a.sock")));
        assert!(!unix_socket_listening(sample, Path::new("/b.sock")));
    }
}
