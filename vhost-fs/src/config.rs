//! Command line to validated configuration. Flag names follow virtiofsd's, so a
//! VMM set up for virtiofsd can start vhost-user-fs with the same command line
//! (for the flags implemented here; the others are refused by name).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use vhostkit_common::cli::{CoalesceArgs, ListenAddr, ListenArgs, LogArgs};

/// Bytes of the tag in the virtio-fs config space (`struct virtio_fs_config`).
pub const TAG_BYTES: usize = 36;
/// The most request queues (one worker thread each).
pub const MAX_REQUEST_QUEUES: u16 = 64;

/// How long the guest may cache entries, attributes and file data.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CachePolicy {
    /// Short timeouts (1 s), the page cache kept until the file changes.
    Auto,
    /// Long timeouts, file data kept across opens.
    Always,
    /// No caching: every access goes to the host (direct I/O).
    Never,
}

/// How the daemon confines itself (see `sandbox`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sandbox {
    Namespace,
    Chroot,
    None,
}

pub use vhostkit_common::seccomp::SeccompAction;

/// Whether inodes are tracked by file handles rather than open descriptors.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum InodeFileHandles {
    Never,
    Prefer,
    Mandatory,
}

/// vhost-user-fs: shares a host folder with a guest over virtio-fs (a FUSE
/// passthrough server behind the vhost-user protocol).
#[derive(Parser, Clone, Debug)]
#[command(name = "vhost-user-fs", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub listen: ListenArgs,

    /// The host folder to share.
    #[arg(long, value_name = "DIR")]
    pub shared_dir: Option<PathBuf>,

    /// The tag the guest mounts by (answered in the config space when the frontend
    /// asks; QEMU and cloud-hypervisor hold the tag themselves), 1 to 36 bytes.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,

    /// Cache policy: auto, always or never.
    #[arg(long, value_enum, default_value_t = CachePolicy::Auto)]
    pub cache: CachePolicy,

    /// Serve extended attributes (else the xattr requests answer ENOSYS).
    #[arg(long)]
    pub xattr: bool,

    /// Share the folder read-only: every modification answers EROFS.
    #[arg(long)]
    pub readonly: bool,

    /// Accepted for virtiofsd compatibility; requests are served on the queue
    /// threads (one per request queue), not on a pool.
    #[arg(long, value_name = "N")]
    pub thread_pool_size: Option<usize>,

    /// Number of request queues, each served by its own thread (1 to 64).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub num_request_queues: u16,

    /// Pass the guest's O_DIRECT on to the host file's open (as virtiofsd's flag;
    /// by default it is dropped: the guest's direct I/O bypasses only its own page
    /// cache, and some host file systems refuse O_DIRECT).
    #[arg(long)]
    pub allow_direct_io: bool,

    /// Busy-poll a request queue for up to this many microseconds after it runs
    /// dry before sleeping; 0 turns polling off. A guest's file system calls wait
    /// for each reply in turn, so most of a metadata request's time is two
    /// wake-ups, which a poll skips. Adaptive, like KVM's halt polling: a queue
    /// polls only while its guest sends the next request within this time, so a
    /// slow or idle guest costs no spinning.
    #[arg(long, default_value_t = 50, value_name = "US")]
    pub poll_us: u64,

    #[command(flatten)]
    pub coalesce: CoalesceArgs,

    /// Sandbox: namespace (pivot_root into the shared folder in new mount, pid
    /// and network namespaces), chroot (chroot into it) or none. Both sandboxes
    /// need root and fork a supervising parent. The default is none, unlike
    /// virtiofsd's namespace, so that the daemon also starts unprivileged.
    #[arg(long, value_enum, default_value_t = Sandbox::None)]
    pub sandbox: Sandbox,

    /// Seccomp action for a system call outside the daemon's allow-list: kill
    /// (the process), log (allow, kernel audit log), trap (SIGSYS) or none (no
    /// filter). The default is none, unlike virtiofsd's kill: the list is proven
    /// by the FUSE operations of the tests, not yet by real guests and every libc.
    #[arg(long, value_enum, default_value_t = SeccompAction::None)]
    pub seccomp: SeccompAction,

    /// Tell the guest about mount points inside the shared folder (submounts).
    #[arg(long)]
    pub announce_submounts: bool,

    /// Keep looked-up inodes as file handles (name_to_handle_at, re-opened with
    /// open_by_handle_at when a request needs them) instead of one open descriptor
    /// each: never, prefer (file handles where the folder's mount supports them,
    /// descriptors elsewhere) or mandatory (refuse to start without them; inodes
    /// on other mounts below the folder still get descriptors). Needs
    /// CAP_DAC_READ_SEARCH. A bare --inode-file-handles means prefer.
    #[arg(long, value_enum, default_value_t = InodeFileHandles::Never, num_args = 0..=1, default_missing_value = "prefer")]
    pub inode_file_handles: InodeFileHandles,

    /// Print the vhost-user backend capabilities (JSON) and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    #[command(flatten)]
    pub log: LogArgs,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct FsConfig {
    pub listen: ListenAddr,
    pub shared_dir: PathBuf,
    pub tag: Option<[u8; TAG_BYTES]>,
    pub cache: CachePolicy,
    pub xattr: bool,
    pub readonly: bool,
    pub num_request_queues: u16,
    pub announce_submounts: bool,
    pub sandbox: Sandbox,
    pub seccomp: SeccompAction,
    pub inode_file_handles: InodeFileHandles,
    pub allow_direct_io: bool,
    /// `--poll-us`: how long a queue worker spins for more requests before sleeping.
    pub poll: std::time::Duration,
    /// Interrupt-coalescing window of the request queues (`--coalesce-us`).
    pub coalesce: std::time::Duration,
    /// `--thread-pool-size`, accepted and not used (requests run on the queue threads).
    pub thread_pool_size: Option<usize>,
    pub log_level: String,
}

/// virtiofsd flags that vhost-user-fs does not implement; refused by name rather
/// than with clap's "unexpected argument".
const UNSUPPORTED_VIRTIOFSD_FLAGS: &[&str] = &[
    "--posix-acl",
    "--no-posix-acl",
    "--security-label",
    "--no-security-label",
    "--xattrmap",
    "--writeback",
    "--no-writeback",
    "--killpriv-v2",
    "--no-killpriv-v2",
    "--rlimit-nofile",
    "--modcaps",
    "--translate-uid",
    "--translate-gid",
    "--preserve-noatime",
    "--allow-mmap",
    "--migration-mode",
    "--migration-on-error",
    "--migration-verify-handles",
    "--migration-confirm-paths",
    "--no-announce-submounts",
    "--no-readdirplus",
    "--uid-map",
    "--gid-map",
    "--shared-dir-uid",
    "--syslog",
    "--daemonize",
    "--cache-size",
];

/// Refuses, by name, a virtiofsd flag this daemon does not implement (also the
/// legacy `-o` options).
pub fn refuse_unsupported_flags(argv: &[OsString]) -> Result<(), String> {
    for arg in argv.iter().skip(1) {
        let arg = arg.to_string_lossy();
        let name = arg.split('=').next().unwrap_or_default();
        if UNSUPPORTED_VIRTIOFSD_FLAGS.contains(&name) {
            return Err(format!(
                "{name}: this virtiofsd option is not supported by vhost-user-fs"
            ));
        }
        if name == "-o" || (arg.starts_with("-o") && !arg.starts_with("--")) {
            return Err(
                "-o: virtiofsd's legacy -o options are not supported; use the --long flags".into(),
            );
        }
    }
    Ok(())
}

/// The `--print-capabilities` answer (vhost-user.json, "Backend capabilities").
pub fn capabilities_json() -> &'static str {
    r#"{"type":"fs","features":[]}"#
}

impl TryFrom<Args> for FsConfig {
    type Error = String;

    fn try_from(args: Args) -> Result<Self, String> {
        let listen = ListenAddr::try_from(args.listen)?;
        let shared_dir = args
            .shared_dir
            .ok_or_else(|| "--shared-dir is required".to_string())?;
        match std::fs::metadata(&shared_dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "--shared-dir {}: not a folder",
                    shared_dir.display()
                ))
            }
            Err(e) => return Err(format!("--shared-dir {}: {e}", shared_dir.display())),
        }
        let tag = match &args.tag {
            None => None,
            Some(t) if t.is_empty() || t.len() > TAG_BYTES || t.contains('\0') => {
                return Err(format!(
                    "--tag {t:?}: must be 1 to {TAG_BYTES} bytes, without NUL"
                ));
            }
            Some(t) => {
                let mut bytes = [0u8; TAG_BYTES];
                bytes[..t.len()].copy_from_slice(t.as_bytes());
                Some(bytes)
            }
        };
        if !(1..=MAX_REQUEST_QUEUES).contains(&args.num_request_queues) {
            return Err(format!(
                "--num-request-queues {}: must be 1 to {MAX_REQUEST_QUEUES}",
                args.num_request_queues
            ));
        }
        Ok(FsConfig {
            listen,
            shared_dir,
            tag,
            cache: args.cache,
            xattr: args.xattr,
            readonly: args.readonly,
            num_request_queues: args.num_request_queues,
            announce_submounts: args.announce_submounts,
            sandbox: args.sandbox,
            seccomp: args.seccomp,
            inode_file_handles: args.inode_file_handles,
            allow_direct_io: args.allow_direct_io,
            poll: vhostkit_common::cli::poll_duration(args.poll_us)?,
            coalesce: args.coalesce.window()?,
            thread_pool_size: args.thread_pool_size,
            log_level: args.log.log_level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<FsConfig, String> {
        let mut full = vec!["vhost-user-fs"];
        full.extend_from_slice(args);
        refuse_unsupported_flags(&full.iter().map(OsString::from).collect::<Vec<_>>())?;
        let args = Args::try_parse_from(full).map_err(|e| e.to_string())?;
        FsConfig::try_from(args)
    }

    /// The launcher's typed options (vhostkit-launch, used by the VMM, the tests
    /// and the benchmarks) render flags and values this parser takes, each to the
    /// value meant: a flag renamed on either side fails here.
    #[test]
    fn launch_args_parse() {
        use vhostkit_tests::launch::fs::{self as launch_fs, FsArgs};
        use vhostkit_tests::launch::{Launch, LogLevel};
        let choices = [
            (
                launch_fs::Cache::Auto,
                launch_fs::Sandbox::Namespace,
                launch_fs::InodeFileHandles::Never,
            ),
            (
                launch_fs::Cache::Always,
                launch_fs::Sandbox::Chroot,
                launch_fs::InodeFileHandles::Prefer,
            ),
            (
                launch_fs::Cache::Never,
                launch_fs::Sandbox::None,
                launch_fs::InodeFileHandles::Mandatory,
            ),
        ];
        let meant = [
            (
                CachePolicy::Auto,
                Sandbox::Namespace,
                InodeFileHandles::Never,
            ),
            (
                CachePolicy::Always,
                Sandbox::Chroot,
                InodeFileHandles::Prefer,
            ),
            (
                CachePolicy::Never,
                Sandbox::None,
                InodeFileHandles::Mandatory,
            ),
        ];
        for ((cache, sandbox, handles), want) in choices.into_iter().zip(meant) {
            let daemon = FsArgs {
                cache: Some(cache),
                xattr: true,
                readonly: true,
                num_request_queues: Some(4),
                allow_direct_io: true,
                poll_us: Some(0),
                sandbox: Some(sandbox),
                inode_file_handles: Some(handles),
                announce_submounts: true,
                ..FsArgs::tagged("/tmp", "t1")
            };
            let launch = Launch::on_socket("/tmp/f.sock", daemon)
                .seccomp(SeccompAction::Log)
                .log_level(LogLevel::Error)
                .coalesce_us(0);
            let argv: Vec<OsString> = std::iter::once("vhost-user-fs".into())
                .chain(launch.to_args())
                .collect();
            refuse_unsupported_flags(&argv).unwrap();
            let c = FsConfig::try_from(Args::try_parse_from(argv).unwrap()).unwrap();
            assert_eq!(c.shared_dir, PathBuf::from("/tmp"));
            assert_eq!(&c.tag.unwrap()[..3], b"t1\0");
            assert_eq!((c.cache, c.sandbox, c.inode_file_handles), want);
            assert!(c.xattr && c.readonly && c.allow_direct_io && c.announce_submounts);
            assert_eq!(c.num_request_queues, 4);
            assert!(c.poll.is_zero() && c.coalesce.is_zero());
            assert_eq!(c.seccomp, SeccompAction::Log);
            assert_eq!(c.log_level, "error");
        }
    }

    #[test]
    fn defaults_and_the_vmm_command_line() {
        let c = parse(&[
            "--socket-path",
            "/tmp/f.sock",
            "--shared-dir",
            "/tmp",
            "--tag",
            "myfs",
            "--num-request-queues",
            "2",
        ])
        .unwrap();
        assert_eq!(c.num_request_queues, 2);
        assert_eq!(c.cache, CachePolicy::Auto);
        assert_eq!(&c.tag.unwrap()[..5], b"myfs\0");
        assert!(!c.xattr && !c.readonly && !c.announce_submounts);
        let c = parse(&["--socket-path=/tmp/f.sock", "--shared-dir=/tmp"]).unwrap();
        assert_eq!(c.num_request_queues, 1);
        assert!(c.tag.is_none());
        assert!(!c.allow_direct_io);
        assert_eq!(c.poll, std::time::Duration::from_micros(50));
    }

    #[test]
    fn virtiofsd_style_flags() {
        let c = parse(&[
            "--socket-path",
            "/tmp/f.sock",
            "--shared-dir",
            "/tmp",
            "--cache",
            "never",
            "--xattr",
            "--readonly",
            "--thread-pool-size",
            "64",
            "--sandbox",
            "none",
            "--seccomp",
            "none",
            "--announce-submounts",
            "--allow-direct-io",
            "--poll-us",
            "0",
            "--inode-file-handles=never",
            "--socket-group",
            "0",
            "--log-level",
            "debug",
        ])
        .unwrap();
        assert_eq!(c.cache, CachePolicy::Never);
        assert!(c.xattr && c.readonly && c.announce_submounts);
        assert!(matches!(c.listen, ListenAddr::Path { group: Some(0), .. }));
        assert_eq!(c.log_level, "debug");
        assert_eq!((c.sandbox, c.seccomp), (Sandbox::None, SeccompAction::None));
        assert!(c.allow_direct_io);
        assert_eq!(c.poll, std::time::Duration::ZERO);
        let base = ["--socket-path", "/tmp/f.sock", "--shared-dir", "/tmp"];
        for (flags, sandbox, seccomp) in [
            (
                ["--sandbox", "namespace", "--seccomp", "kill"],
                Sandbox::Namespace,
                SeccompAction::Kill,
            ),
            (
                ["--sandbox", "chroot", "--seccomp", "log"],
                Sandbox::Chroot,
                SeccompAction::Log,
            ),
            (
                ["--sandbox", "none", "--seccomp", "trap"],
                Sandbox::None,
                SeccompAction::Trap,
            ),
        ] {
            let c = parse(&[&base[..], &flags[..]].concat()).unwrap();
            assert_eq!((c.sandbox, c.seccomp), (sandbox, seccomp));
        }
    }

    #[test]
    fn bad_values_are_refused() {
        let base = ["--socket-path", "/tmp/f.sock", "--shared-dir", "/tmp"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            parse(&v)
        };
        assert!(with(&["--num-request-queues", "0"])
            .unwrap_err()
            .contains("--num-request-queues"));
        assert!(with(&["--num-request-queues", "65"]).is_err());
        assert!(with(&["--poll-us", "1000001"])
            .unwrap_err()
            .contains("--poll-us"));
        assert!(with(&["--tag", ""]).unwrap_err().contains("--tag"));
        assert!(with(&["--tag", &"x".repeat(37)]).is_err());
        assert!(with(&["--cache", "sometimes"]).is_err());
        assert!(with(&["--sandbox", "jail"]).is_err());
        assert!(with(&["--seccomp", "allow"]).is_err());
        assert_eq!(
            with(&["--inode-file-handles"]).unwrap().inode_file_handles,
            InodeFileHandles::Prefer
        );
        assert_eq!(
            with(&["--inode-file-handles=mandatory"])
                .unwrap()
                .inode_file_handles,
            InodeFileHandles::Mandatory
        );
        assert!(with(&["--inode-file-handles=always"]).is_err());
        assert!(with(&["--socket-group", "no-such-group-here"])
            .unwrap_err()
            .contains("no such group"));
        assert!(with(&["--posix-acl"])
            .unwrap_err()
            .contains("not supported"));
        assert!(with(&["--xattrmap=:map::user.virtiofs.:"]).is_err());
        assert!(with(&["-o", "cache=none"]).unwrap_err().contains("-o"));
        assert!(parse(&["--socket-path", "/tmp/f.sock"])
            .unwrap_err()
            .contains("--shared-dir"));
        assert!(parse(&[
            "--socket-path",
            "/tmp/f.sock",
            "--shared-dir",
            "/nonexistent"
        ])
        .is_err());
        assert!(parse(&[
            "--socket-path",
            "/tmp/f.sock",
            "--shared-dir",
            "/etc/hostname"
        ])
        .unwrap_err()
        .contains("not a folder"));
    }
}
