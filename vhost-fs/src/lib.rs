//! vhost-user-fs: a virtio-fs device backend, a FUSE passthrough server sharing a
//! host folder over vhost-user.
//!
//! - [`config`]: command line to validated configuration (virtiofsd's flag names);
//! - [`fuse`]: the FUSE protocol (messages, parsing, replies), knowing nothing of
//!   vhost-user;
//! - [`server`]: FUSE requests decoded into calls on a [`filesystem::FileSystem`]
//!   and its answers encoded as replies;
//! - [`filesystem`]: the file-system trait, typed (inodes, handles, attributes),
//!   knowing nothing of the wire format;
//! - [`passthrough`]: the file system on the shared folder (inode store, handles,
//!   credentials, system calls, extended attributes);
//! - [`backend`]: the vhost-user device (features, config space, dispatch);
//! - [`worker`]: the per-queue request loop;
//! - [`sandbox`] and [`seccomp`]: confinement (`--sandbox`, `--seccomp`).

// A cast that could truncate a value or lose its sign is a bug waiting for a
// large or hostile input: convert instead, or say at the cast why it holds.
// (Serving code only: unit tests cast their fixtures' small constants freely.)
#![cfg_attr(
    not(test),
    warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)
)]

pub mod backend;
pub mod config;
pub mod filesystem;
pub mod fuse;
pub mod passthrough;
pub mod sandbox;
pub mod seccomp;
pub mod server;
pub mod worker;

pub use backend::{FsBackend, Share};
pub use config::{Args, FsConfig};

use std::ffi::OsString;
use std::os::fd::IntoRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use log::{info, warn};
use vhostkit_common::cli::ListenAddr;
use vhostkit_common::cli::LogArgs;
use vhostkit_common::daemon::{Service, EXIT_USAGE};
use vhostkit_common::lifecycle::{self, StopHandle};
use vhostkit_common::socket::SocketFile;

/// What start-up leaves for serving: the bound socket, the shared folder as the
/// (possibly sandboxed) process sees it.
pub struct Started {
    config: Arc<FsConfig>,
    /// The listening socket (owned; handed to the serve loop).
    listener: std::os::fd::RawFd,
    share: Arc<Share>,
    socket_to_remove: Option<Arc<SocketFile>>,
}

impl Started {
    /// The socket file this process removes at a stop: None for an inherited
    /// socket, and in a sandbox, where the supervising parent removes it.
    pub fn socket_to_remove(&self) -> Option<Arc<SocketFile>> {
        self.socket_to_remove.clone()
    }
}

/// Start-up, while the process has a single thread (before the signal thread):
/// binds the vhost-user socket, enters the sandbox (in a sandbox only the
/// sandboxed child returns; the supervising parent exits with the child's status)
/// and installs the seccomp filter. An error is a start-up failure (exit 1).
pub fn start(config: FsConfig) -> Result<Started, String> {
    sandbox::check_privileges(config.sandbox)?;
    info!(
        "sharing {}{} with {} request queue(s), cache {:?}{}",
        config.shared_dir.display(),
        if config.readonly { " read-only" } else { "" },
        config.num_request_queues,
        config.cache,
        if config.xattr { ", xattr" } else { "" },
    );
    if let Some(n) = config.thread_pool_size {
        info!("--thread-pool-size {n} ignored: each request queue is served by its own thread");
    }
    raise_open_file_limit();
    let shared_dir = std::fs::canonicalize(&config.shared_dir)
        .map_err(|e| format!("--shared-dir {}: {e}", config.shared_dir.display()))?;
    let mut config = config;
    config.inode_file_handles = check_file_handles(config.inode_file_handles, &shared_dir)?;
    let (listener, mut socket_to_remove) = match &config.listen {
        ListenAddr::Path { path, group } => {
            let (listener, file) = vhostkit_common::socket::bind(path, *group)
                .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
            info!("listening on {}", path.display());
            (listener.into_raw_fd(), Some(Arc::new(file)))
        }
        ListenAddr::Fd(fd) => (*fd, None),
    };
    // After the socket exists (it keeps the umask's mode). The guest kernel has already applied the guest process's umask to the modes of
    // MKDIR, MKNOD, CREATE and SYMLINK (FUSE_DONT_MASK is not negotiated): the files
    // must get exactly those modes, not ours masked again, as with virtiofsd.
    // SAFETY: umask only sets this process's file mode creation mask.
    unsafe { libc::umask(0) };
    let confined = sandbox::enter(
        config.sandbox,
        &shared_dir,
        socket_to_remove.as_deref(),
        &[listener],
    )?;
    if config.sandbox != config::Sandbox::None {
        socket_to_remove = None;
    }
    let root = passthrough::open_shared_dir(&confined.root)
        .map_err(|e| format!("--shared-dir {}: {e}", config.shared_dir.display()))?;
    passthrough::reserve_fd_table(std::os::fd::AsRawFd::as_raw_fd(&confined.proc_self_fd));
    vhostkit_common::caps::keep_only(&capabilities(config.xattr))
        .map_err(|e| format!("cannot drop capabilities: {e}"))?;
    seccomp::install(
        config.seccomp,
        config.inode_file_handles != config::InodeFileHandles::Never,
    )?;
    Ok(Started {
        share: Arc::new(Share {
            root,
            proc_self_fd: confined.proc_self_fd,
        }),
        config: Arc::new(config),
        listener,
        socket_to_remove,
    })
}

/// Serves frontends until `stop` is requested; each connection gets a fresh FUSE
/// session on the shared folder.
pub fn serve(started: Started, stop: &StopHandle) -> Result<(), String> {
    let Started {
        config,
        listener,
        share,
        socket_to_remove,
    } = started;
    let result = lifecycle::serve("vhost-user-fs", &ListenAddr::Fd(listener), stop, || {
        FsBackend::new(config.clone(), &share)
    })
    .map_err(vhostkit_common::daemon::error_chain);
    if let Some(socket) = socket_to_remove {
        socket.remove();
    }
    result
}

/// The daemon for `daemon_main::<ServiceDaemon<FsConfig>>()` ([`FsDaemon`]).
impl Service for FsConfig {
    type Args = Args;
    type Prepared = Started;

    fn log_args(args: &Args) -> &LogArgs {
        &args.log
    }

    fn from_args(args: Args) -> Result<Self, String> {
        FsConfig::try_from(args)
    }

    fn listen(&self) -> &ListenAddr {
        &self.listen
    }

    /// `--print-capabilities` (before anything else is checked, as virtiofsd),
    /// and virtiofsd flags this daemon does not implement, refused by name.
    fn early_exit(argv: &[OsString]) -> Option<ExitCode> {
        if argv.iter().skip(1).any(|a| a == "--print-capabilities") {
            println!("{}", config::capabilities_json());
            return Some(ExitCode::SUCCESS);
        }
        if let Err(e) = config::refuse_unsupported_flags(argv) {
            vhostkit_common::logging::init("info");
            log::error!("{e}");
            return Some(ExitCode::from(EXIT_USAGE));
        }
        None
    }

    fn prepare(self) -> Result<Started, String> {
        start(self)
    }

    fn socket(prepared: &Started) -> Option<Arc<SocketFile>> {
        prepared.socket_to_remove()
    }

    fn serve(prepared: Started, stop: &StopHandle) -> Result<(), String> {
        serve(prepared, stop)
    }
}

/// The vhost-user-fs daemon.
pub type FsDaemon = vhostkit_common::daemon::ServiceDaemon<FsConfig>;

/// The capabilities the serving process keeps (of those it has), as virtiofsd's:
/// the file operations of a root daemon that serves files of any owner (chown,
/// permission and ownership overrides, set-id bits, switching fsuid and fsgid,
/// device nodes, file capabilities, `linkat` of a descriptor and file handles),
/// and with `--xattr` CAP_SYS_ADMIN, which `trusted.*` and `security.*` attributes
/// need. Every other (namespaces, mounts, networking, modules, raw I/O...) goes once
/// the sandbox is set up.
pub fn capabilities(xattr: bool) -> Vec<u32> {
    use vhostkit_common::caps::*;
    let mut keep = vec![
        CAP_CHOWN,
        CAP_DAC_OVERRIDE,
        CAP_DAC_READ_SEARCH,
        CAP_FOWNER,
        CAP_FSETID,
        CAP_SETGID,
        CAP_SETUID,
        CAP_MKNOD,
        CAP_SETFCAP,
    ];
    if xattr {
        keep.push(CAP_SYS_ADMIN);
    }
    keep
}

/// What `--inode-file-handles` comes to here: file handles need
/// CAP_DAC_READ_SEARCH (open_by_handle_at) and a file system that gives them;
/// `prefer` falls back to descriptors without them, `mandatory` refuses to start.
fn check_file_handles(
    mode: config::InodeFileHandles,
    shared_dir: &Path,
) -> Result<config::InodeFileHandles, String> {
    use config::InodeFileHandles::{Mandatory, Never, Prefer};
    if mode == Never {
        return Ok(Never);
    }
    let problem = if !sandbox::has_capability(sandbox::CAP_DAC_READ_SEARCH) {
        Some("open_by_handle_at needs CAP_DAC_READ_SEARCH".to_string())
    } else {
        passthrough::file_handles_supported(shared_dir)
            .err()
            .map(|e| format!("{}: no file handles: {e}", shared_dir.display()))
    };
    match (problem, mode) {
        (None, mode) => {
            info!("inodes are kept as file handles");
            Ok(mode)
        }
        (Some(p), Mandatory) => Err(format!("--inode-file-handles=mandatory: {p}")),
        (Some(p), _) => {
            warn!("--inode-file-handles=prefer: {p}; keeping descriptors");
            debug_assert_eq!(mode, Prefer);
            Ok(Never)
        }
    }
}

/// Every inode the guest looks up holds a descriptor: raise the soft limit on
/// open files to the hard one, as virtiofsd does.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the rlimit we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                log::warn!(
                    "cannot raise the open file limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}
