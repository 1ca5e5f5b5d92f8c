//! Network namespaces for tests and benchmarks that give a guest a tap: the tap,
//! its host-side address and the host's end of the traffic (iperf3, ping) live in
//! a namespace of their own, so nothing touches the host's own interfaces or
//! routes, and deleting the namespace deletes the tap.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

/// Why namespaced tap networking cannot run here, or `None` if it can: needs root,
/// /dev/net/tun and iproute2's `ip`.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces and taps)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    let ip = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(ip, Ok(s) if s.success()) {
        return Some("no `ip` (install iproute2)".into());
    }
    None
}

/// Runs a command to completion; the error carries its stderr.
fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| {
        io::Error::new(e.kind(), format!("cannot run {:?}: {e}", cmd.get_program()))
    })?;
    if out.status.success() {
        return Ok(());
    }
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    Err(io::Error::other(format!(
        "`{} {}` failed ({}): {}",
        cmd.get_program().to_string_lossy(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// A network namespace, deleted (with the interfaces in it) on drop.
///
/// Drop the processes that run inside it first: a namespace lives on while a
/// process is in it. Declare the guard before them (locals drop in reverse order).
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// `ip netns add NAME` with its loopback up. A namespace of that name left by
    /// an earlier, killed run is deleted first.
    pub fn create(name: &str) -> io::Result<NetNs> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = NetNs {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME program`: a command to run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// `ip -n NAME ARGS...`, e.g. `["addr", "add", "10.77.1.1/24", "dev", "vkt1"]`.
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// A persistent tap inside the namespace (`ip tuntap add ... [multi_queue]`),
    /// given `addr` (ADDR/PREFIX) and brought up: for a VMM started inside the
    /// namespace that attaches to it (QEMU's `-netdev tap,ifname=...`).
    pub fn add_tap(&self, tap: &str, multi_queue: bool, addr: &str) -> io::Result<()> {
        let mut args = vec!["tuntap", "add", "dev", tap, "mode", "tap"];
        if multi_queue {
            args.push("multi_queue");
        }
        self.ip(&args)?;
        self.ip(&["addr", "add", addr, "dev", tap])?;
        self.ip(&["link", "set", tap, "up"])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!(
                "WARNING: cannot delete network namespace {}: {e}",
                self.name
            );
        }
    }
}
