//! Command-line pieces every daemon shares, flattened into each daemon's clap `Args`.

use clap::Args;
use std::os::fd::RawFd;
use std::path::PathBuf;

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
    /// Create the socket at this path (replacing a stale one) and remove it on exit.
    Path(PathBuf),
    /// Accept on an inherited listening socket; it is not ours to remove.
    Fd(RawFd),
}

impl TryFrom<ListenArgs> for ListenAddr {
    type Error = String;

    fn try_from(args: ListenArgs) -> Result<Self, String> {
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
                Ok(ListenAddr::Path(path))
            }
            (None, Some(fd)) if fd >= 0 => Ok(ListenAddr::Fd(fd)),
            (None, Some(fd)) => Err(format!("--fd {fd}: not a file descriptor")),
            (Some(_), Some(_)) => Err("give --socket-path or --fd, not both".into()),
            (None, None) => Err("one of --socket-path or --fd is required".into()),
        }
    }
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
            ListenAddr::Path("/tmp/a.sock".into())
        );
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
}
