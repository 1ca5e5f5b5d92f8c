//! Our daemons' command lines, built from typed values: each daemon's options are a
//! struct (in its kind's module) that implements [`DaemonArgs`]; this module renders
//! every one of them, and the options all daemons get ([`CommonArgs`]), to
//! arguments. A flag is spelled once, in the struct's `render`.

use std::ffi::OsString;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use vhostkit_common::seccomp::SeccompAction;

/// Arguments under construction: one call per option.
#[derive(Debug, Default)]
pub struct ArgList(Vec<String>);

impl ArgList {
    /// `--flag VALUE`.
    pub fn value(&mut self, flag: &str, value: impl Display) -> &mut Self {
        self.0.push(flag.into());
        self.0.push(value.to_string());
        self
    }

    /// `--flag VALUE` if `value` is there.
    pub fn opt_value(&mut self, flag: &str, value: Option<impl Display>) -> &mut Self {
        if let Some(v) = value {
            self.value(flag, v);
        }
        self
    }

    /// `--flag PATH`; the path must be UTF-8 (checked when the spec was validated:
    /// [`super::check_utf8`]).
    pub fn path(&mut self, flag: &str, path: &Path) -> &mut Self {
        self.value(flag, path.to_string_lossy())
    }

    /// `--flag` when `on`.
    pub fn switch(&mut self, flag: &str, on: bool) -> &mut Self {
        if on {
            self.0.push(flag.into());
        }
        self
    }

    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

/// A daemon's own options (the socket and the like are [`CommonArgs`]).
pub trait DaemonArgs {
    /// The binary, found next to `vhostkit`.
    const PROGRAM: &'static str;

    /// Adds the options to `args`, each with its flag.
    fn render(&self, args: &mut ArgList);

    /// The options as arguments.
    fn to_args(&self) -> Vec<String> {
        let mut args = ArgList::default();
        self.render(&mut args);
        args.into_vec()
    }
}

/// What every daemon the VMM starts gets after its own options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommonArgs {
    /// `--seccomp`: the filter the VMM runs under itself.
    pub seccomp: SeccompAction,
    /// `--socket-path`: in the VMM's private folder.
    pub socket_path: PathBuf,
    /// `--log-level`: the VMM's.
    pub log_level: String,
}

impl CommonArgs {
    /// The arguments (OS strings: the socket's folder is the system temporary
    /// folder, whatever its name).
    pub fn to_args(&self) -> Vec<OsString> {
        let seccomp = self
            .seccomp
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_else(|| "none".into());
        vec![
            "--seccomp".into(),
            seccomp.into(),
            "--socket-path".into(),
            self.socket_path.clone().into_os_string(),
            "--log-level".into(),
            self.log_level.clone().into(),
        ]
    }
}
