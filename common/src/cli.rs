//! Command-line pieces every daemon shares, flattened into each daemon's clap `Args`.

use clap::Args;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

/// Where a daemon listens for its vhost-user frontend.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct ListenArgs {
    /// Path of the vhost-user unix socket to create and listen on.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "fd",
        conflicts_with = "fd"
    )]
    pub socket_path: Option<PathBuf>,

    /// An inherited, already listening unix socket file descriptor (systemd or libvirt
    /// style socket activation) to accept frontends on instead of creating one.
    #[arg(long, value_name = "N")]
    pub fd: Option<RawFd>,

    /// Let this group (name or number) connect to the socket as well: it is
    /// created with mode 0660 and this group, instead of 0600 (owner only).
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
}

/// `--seccomp`: the system call filter a daemon installs once its start-up is over.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct SeccompArgs {
    /// What a system call outside the daemon's allow-list gets: kill (the process),
    /// log (allowed, and logged by the kernel's audit), trap (SIGSYS) or none (no
    /// filter). The filter is installed once the image or tap is open, the socket
    /// is bound and the capabilities are dropped.
    #[arg(long, value_enum, value_name = "ACTION", default_value_t = crate::seccomp::SeccompAction::None)]
    pub seccomp: crate::seccomp::SeccompAction,
}

/// `--coalesce-us`: interrupt coalescing (see [`crate::queue::Coalescer`]).
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct CoalesceArgs {
    /// Interrupt coalescing: while the guest keeps submitting, hold the signal for
    /// completed requests for windows of this many microseconds (16 at most in a
    /// row), with guest notifications off, so one interrupt answers many requests
    /// and the guest's next requests need no kick. Adaptive: a guest that waits for
    /// each answer gets it at once. 0 turns it off; at most 1000.
    #[arg(long, value_name = "US", default_value_t = DEFAULT_COALESCE_US)]
    pub coalesce_us: u64,
}

/// The default coalescing window: longer than the time a busy guest takes to send
/// its next request (a few microseconds under KVM, tens under QEMU TCG).
pub const DEFAULT_COALESCE_US: u64 = 50;

impl CoalesceArgs {
    /// The checked window; zero means no coalescing.
    pub fn window(&self) -> Result<Duration, String> {
        let us = check_range("--coalesce-us", self.coalesce_us, 0..=1000)?;
        Ok(Duration::from_micros(us))
    }
}

/// Logging options.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct LogArgs {
    /// Log level: error, warn, info, debug or trace (RUST_LOG, if set, refines it).
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = ["error", "warn", "info", "debug", "trace", "off"])]
    pub log_level: String,
}

/// The validated listening address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// Create the socket at this path (replacing a stale one) and remove it on exit;
    /// mode 0600, or 0660 owned by `group` ([`crate::socket::bind`]).
    Path {
        path: PathBuf,
        group: Option<libc::gid_t>,
    },
    /// Accept on an inherited listening socket; it is not ours to remove.
    Fd(RawFd),
}

impl TryFrom<ListenArgs> for ListenAddr {
    type Error = String;

    fn try_from(args: ListenArgs) -> Result<Self, String> {
        let group = args
            .socket_group
            .as_deref()
            .map(crate::socket::resolve_group)
            .transpose()?;
        if group.is_some() && args.fd.is_some() {
            return Err("--socket-group needs --socket-path (not --fd)".into());
        }
        match (args.socket_path, args.fd) {
            (Some(path), None) => {
                if path.as_os_str().is_empty() {
                    return Err("--socket-path must not be empty".into());
                }
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    if !parent.is_dir() {
                        return Err(format!(
                            "--socket-path {}: folder {} does not exist",
                            path.display(),
                            parent.display()
                        ));
                    }
                }
                Ok(ListenAddr::Path { path, group })
            }
            (None, Some(fd)) if fd >= 0 => Ok(ListenAddr::Fd(fd)),
            (None, Some(fd)) => Err(format!("--fd {fd}: not a file descriptor")),
            (Some(_), Some(_)) => Err("give --socket-path or --fd, not both".into()),
            (None, None) => Err("one of --socket-path or --fd is required".into()),
        }
    }
}

/// Largest virtqueue a split ring can have (virtio 1.x, 2.6).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Longest `--poll-us` a daemon accepts: a second of spinning is already far past
/// any latency gain.
pub const MAX_POLL_US: u64 = 1_000_000;

/// Checks that `--FLAG VALUE` lies in `range`; the message names the flag and the
/// bounds ("--num-queues 0: must be 1 to 64").
pub fn check_range<T>(flag: &str, value: T, range: std::ops::RangeInclusive<T>) -> Result<T, String>
where
    T: PartialOrd + std::fmt::Display,
{
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{flag} {value}: must be {} to {}",
            range.start(),
            range.end()
        ))
    }
}

/// Checks `--queue-size`: the largest queue the frontend may set up, a power of two
/// from 2 to [`MAX_QUEUE_SIZE`] as a split virtqueue needs.
pub fn check_queue_size(size: u16) -> Result<u16, String> {
    if !(2..=MAX_QUEUE_SIZE).contains(&size) || !size.is_power_of_two() {
        return Err(format!(
            "--queue-size {size}: must be a power of two from 2 to {MAX_QUEUE_SIZE}"
        ));
    }
    Ok(size)
}

/// Checks `--poll-us` (busy-poll time after a queue runs dry, at most
/// [`MAX_POLL_US`]) and turns it into a duration; zero means no polling.
pub fn poll_duration(poll_us: u64) -> Result<Duration, String> {
    if poll_us > MAX_POLL_US {
        return Err(format!(
            "--poll-us {poll_us}: at most {MAX_POLL_US} (one second)"
        ));
    }
    Ok(Duration::from_micros(poll_us))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(flatten)]
        listen: ListenArgs,
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn socket_path_or_fd_exactly_one() {
        let cli = TestCli::try_parse_from(["x", "--socket-path", "/tmp/a.sock"]).unwrap();
        assert_eq!(
            ListenAddr::try_from(cli.listen).unwrap(),
            ListenAddr::Path {
                path: "/tmp/a.sock".into(),
                group: None
            }
        );
        let cli =
            TestCli::try_parse_from(["x", "--socket-path", "/tmp/a.sock", "--socket-group", "0"])
                .unwrap();
        assert_eq!(
            ListenAddr::try_from(cli.listen).unwrap(),
            ListenAddr::Path {
                path: "/tmp/a.sock".into(),
                group: Some(0)
            }
        );
        let cli = TestCli::try_parse_from(["x", "--fd", "3", "--socket-group", "0"]).unwrap();
        assert!(ListenAddr::try_from(cli.listen).is_err());
        let cli = TestCli::try_parse_from(["x", "--fd", "3"]).unwrap();
        assert_eq!(ListenAddr::try_from(cli.listen).unwrap(), ListenAddr::Fd(3));
        assert!(TestCli::try_parse_from(["x"]).is_err());
        assert!(TestCli::try_parse_from(["x", "--fd", "3", "--socket-path", "/a"]).is_err());
        assert_eq!(cli.log.log_level, "info");
        assert!(TestCli::try_parse_from(["x", "--fd", "3", "--log-level", "loud"]).is_err());
    }

    #[test]
    fn socket_in_missing_folder_is_refused() {
        let cli =
            TestCli::try_parse_from(["x", "--socket-path", "/nonexistent-dir/x.sock"]).unwrap();
        let err = ListenAddr::try_from(cli.listen).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        let cli = TestCli::try_parse_from(["x", "--fd=-2"]).unwrap();
        assert!(ListenAddr::try_from(cli.listen).is_err());
    }

    #[test]
    fn shared_checks() {
        assert_eq!(check_range("--n", 3u16, 1..=64), Ok(3));
        assert_eq!(
            check_range("--num-queues", 0u16, 1..=64).unwrap_err(),
            "--num-queues 0: must be 1 to 64"
        );
        assert_eq!(check_queue_size(256), Ok(256));
        for bad in [0, 1, 100, 65535] {
            assert!(check_queue_size(bad).unwrap_err().contains("power of two"));
        }
        assert_eq!(poll_duration(0), Ok(Duration::ZERO));
        assert_eq!(poll_duration(1_000_000), Ok(Duration::from_secs(1)));
        assert_eq!(
            poll_duration(1_000_001).unwrap_err(),
            "--poll-us 1000001: at most 1000000 (one second)"
        );
    }
}
