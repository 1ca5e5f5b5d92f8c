//! Our daemons' command lines, built from typed values.
//!
//! Whoever starts a daemon (the VMM, the integration tests, the benchmarks) says
//! what it wants as a struct: [`blk::BlkArgs`], [`net::NetArgs`], [`fs::FsArgs`] for
//! a daemon's own options, [`Launch`] for those every daemon takes (where it
//! listens, `--socket-group`, `--seccomp`, `--log-level`). Each flag is spelled once,
//! in its struct's [`DaemonArgs::render`]; an option left `None` is not passed, so
//! the daemon's own default holds.
//!
//! The structs mirror the daemons' clap definitions. Each daemon's unit tests parse
//! a fully set struct's rendering with the daemon's own parser (`launch_args_parse`
//! in `vhost-blk/src/config.rs` and its siblings), so a flag renamed on one side and
//! not the other fails there, not in a test that happens to start that daemon.

use std::ffi::{OsStr, OsString};
use std::fmt::Display;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::ValueEnum;
pub use vhostkit_common::seccomp::SeccompAction;

pub mod blk;
pub mod fs;
pub mod net;

/// A command line under construction: one call per option.
#[derive(Debug, Default)]
pub struct ArgList(Vec<OsString>);

impl ArgList {
    /// `--flag VALUE`.
    pub fn value(&mut self, flag: &str, value: impl Display) -> &mut Self {
        self.0.push(flag.into());
        self.0.push(value.to_string().into());
        self
    }

    /// `--flag VALUE` if `value` is there.
    pub fn opt_value(&mut self, flag: &str, value: Option<impl Display>) -> &mut Self {
        if let Some(v) = value {
            self.value(flag, v);
        }
        self
    }

    /// `--flag PATH`, the path as it is (not necessarily UTF-8).
    pub fn path(&mut self, flag: &str, path: &Path) -> &mut Self {
        self.0.push(flag.into());
        self.0.push(path.as_os_str().to_owned());
        self
    }

    /// `--flag PATH` if `path` is there.
    pub fn opt_path(&mut self, flag: &str, path: Option<&Path>) -> &mut Self {
        if let Some(p) = path {
            self.path(flag, p);
        }
        self
    }

    /// `--flag NAME` for a clap value enum, spelled as the daemon's parser spells it.
    pub fn choice<E: ValueEnum>(&mut self, flag: &str, value: Option<E>) -> &mut Self {
        if let Some(name) = value.as_ref().and_then(ValueEnum::to_possible_value) {
            self.value(flag, name.get_name());
        }
        self
    }

    /// `--flag` when `on`.
    pub fn switch(&mut self, flag: &str, on: bool) -> &mut Self {
        if on {
            self.0.push(flag.into());
        }
        self
    }

    /// Arguments added as they are: for a test of the daemon's own refusals (a flag
    /// that does not exist, a malformed value), which no typed field can express.
    pub fn raw<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.0
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn into_vec(self) -> Vec<OsString> {
        self.0
    }
}

/// A daemon's own options (where it listens and the rest every daemon takes are
/// [`Launch`]'s).
pub trait DaemonArgs {
    /// The binary's name (`vhost-user-blk`).
    const PROGRAM: &'static str;

    /// Adds the options to `args`, each with its flag.
    fn render(&self, args: &mut ArgList);

    /// The options as arguments.
    fn to_args(&self) -> Vec<OsString> {
        let mut args = ArgList::default();
        self.render(&mut args);
        args.into_vec()
    }
}

/// Where a daemon listens for its frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// `--socket-path`: the daemon creates the socket (replacing a stale one).
    Path(PathBuf),
    /// `--fd`: an inherited listening socket.
    Fd(RawFd),
}

/// `--log-level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
    Off,
}

/// The options every daemon takes, after its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommonArgs {
    pub listen: Listen,
    /// `--socket-group`.
    pub socket_group: Option<String>,
    /// `--seccomp`; `None`: the daemon's default.
    pub seccomp: Option<SeccompAction>,
    /// `--log-level`; `None`: the daemon's default (info).
    pub log_level: Option<LogLevel>,
    /// `--coalesce-us`; `None`: the daemon's default.
    pub coalesce_us: Option<u64>,
}

impl CommonArgs {
    /// Listening on `listen`, the rest the daemon's defaults.
    pub fn new(listen: Listen) -> Self {
        CommonArgs {
            listen,
            socket_group: None,
            seccomp: None,
            log_level: None,
            coalesce_us: None,
        }
    }

    /// Adds the options to `args`, each with its flag.
    pub fn render(&self, args: &mut ArgList) {
        match &self.listen {
            Listen::Path(p) => args.path("--socket-path", p),
            Listen::Fd(fd) => args.value("--fd", fd),
        };
        args.opt_value("--socket-group", self.socket_group.as_deref())
            .choice("--seccomp", self.seccomp)
            .choice("--log-level", self.log_level)
            .opt_value("--coalesce-us", self.coalesce_us);
    }

    /// The options as arguments.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args = ArgList::default();
        self.render(&mut args);
        args.into_vec()
    }
}

/// A daemon with its own options (`A`) and those every daemon takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch<A> {
    /// The daemon's own options.
    pub daemon: A,
    pub common: CommonArgs,
    /// Arguments after all the others, as they are: see [`ArgList::raw`].
    pub extra: Vec<OsString>,
}

impl<A: DaemonArgs> Launch<A> {
    /// `daemon` listening on a socket it creates at `path`.
    pub fn on_socket(path: impl Into<PathBuf>, daemon: A) -> Self {
        Self::new(Listen::Path(path.into()), daemon)
    }

    /// `daemon` accepting on the inherited listening socket `fd`.
    pub fn on_fd(fd: RawFd, daemon: A) -> Self {
        Self::new(Listen::Fd(fd), daemon)
    }

    fn new(listen: Listen, daemon: A) -> Self {
        Launch {
            daemon,
            common: CommonArgs::new(listen),
            extra: Vec::new(),
        }
    }

    pub fn socket_group(mut self, group: impl Into<String>) -> Self {
        self.common.socket_group = Some(group.into());
        self
    }

    pub fn seccomp(mut self, action: SeccompAction) -> Self {
        self.common.seccomp = Some(action);
        self
    }

    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.common.log_level = Some(level);
        self
    }

    /// `--coalesce-us` (0: no interrupt coalescing).
    pub fn coalesce_us(mut self, us: u64) -> Self {
        self.common.coalesce_us = Some(us);
        self
    }

    /// Appends arguments as they are (see [`ArgList::raw`]).
    pub fn extra<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.extra
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// The socket path, if the daemon creates one.
    pub fn socket_path(&self) -> Option<&Path> {
        match &self.common.listen {
            Listen::Path(p) => Some(p),
            Listen::Fd(_) => None,
        }
    }

    /// The whole command line after the program: the daemon's options, then the
    /// common ones, then [`extra`](Self::extra).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args = ArgList::default();
        self.daemon.render(&mut args);
        self.common.render(&mut args);
        args.raw(&self.extra);
        args.into_vec()
    }

    /// The daemon's command: `bin` (the binary, [`DaemonArgs::PROGRAM`] in some
    /// folder) with [`to_args`](Self::to_args).
    pub fn command(&self, bin: &Path) -> Command {
        let mut cmd = Command::new(bin);
        cmd.args(self.to_args());
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl DaemonArgs for Nothing {
        const PROGRAM: &'static str = "x";
        fn render(&self, _: &mut ArgList) {}
    }

    #[test]
    fn common_options_follow_the_daemons_and_unset_ones_are_left_out() {
        let l = Launch::on_socket("/run/a.sock", Nothing);
        assert_eq!(l.to_args(), ["--socket-path", "/run/a.sock"]);
        let l = Launch::on_fd(3, Nothing)
            .seccomp(SeccompAction::Kill)
            .log_level(LogLevel::Warn)
            .coalesce_us(0)
            .extra(["--bogus"]);
        assert_eq!(
            l.to_args(),
            [
                "--fd",
                "3",
                "--seccomp",
                "kill",
                "--log-level",
                "warn",
                "--coalesce-us",
                "0",
                "--bogus"
            ]
        );
        let l = Launch::on_socket("/s", Nothing).socket_group("kvm");
        assert_eq!(
            l.to_args(),
            ["--socket-path", "/s", "--socket-group", "kvm"]
        );
    }

    #[test]
    fn paths_are_passed_as_they_are() {
        use std::os::unix::ffi::OsStrExt;
        let odd = Path::new(OsStr::from_bytes(b"/tmp/\xff.sock"));
        let args = Launch::on_socket(odd, Nothing).to_args();
        assert_eq!(args[1].as_bytes(), b"/tmp/\xff.sock");
    }
}
