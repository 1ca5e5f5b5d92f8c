//! virtio-fs in a guest: pjdfstest (the POSIX file system suite, Rust rewrite) on a
//! virtiofs mount, fio with verify on a file of the mount, and a check that data
//! written by the guest is on the host afterwards, for any vhost-user-fs backend
//! (ours, or virtiofsd as the peer).
//!
//! The tools come from `scripts/build-fs-tools.sh` ([`FsTools::ensure`]): virtiofsd
//! and pjdfstest installed with `cargo install` into `build/tools/`, and
//! `guest-pjdfstest.cpio` (pjdfstest, its libraries, users `nobody` and `tests`)
//! appended to the guest image.
//!
//! ```no_run
//! use std::time::Duration;
//! use vhostkit_tests::fs::{compare, run_pjdfstest, FsTools, Selection};
//! use vhostkit_tests::guest::{FsDevice, GuestImage};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let image = GuestImage::ensure()?;
//! let tools = FsTools::ensure()?;
//! let sel = Selection::from_env_or(Selection::All);
//! let timeout = Duration::from_secs(300);
//! // ours: a vhost-user-fs listening on /tmp/ours.sock with tag "ours"; peer: virtiofsd
//! let ours = run_pjdfstest(&image, &tools, &FsDevice::new("/tmp/ours.sock", "ours"), &sel, timeout)?;
//! let peer = run_pjdfstest(&image, &tools, &FsDevice::new("/tmp/vfsd.sock", "vfsd"), &sel, timeout)?;
//! for name in compare(&ours, &peer) {
//!     eprintln!("regression against virtiofsd: {name}");
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::daemon::DaemonProcess;
use crate::guest::{FsDevice, Guest, GuestError, GuestImage, GuestOutput, Initrd};

/// What a virtio-fs guest test needs: root (the daemons serve files of any owner),
/// QEMU, the guest image and the fs tools. `None` after a loud SKIPPED line naming
/// what is missing.
pub fn guest_prerequisites() -> Option<(GuestImage, FsTools)> {
    // SAFETY: geteuid() has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        crate::skip::skip(format_args!(
            "serving files of any owner (as virtiofsd and vhost-user-fs do) needs root"
        ));
        return None;
    }
    let image = crate::guest::qemu_guest_image("fs guest test")?;
    match FsTools::ensure() {
        Ok(tools) => Some((image, tools)),
        Err(e) => {
            crate::skip::skip(format_args!("no virtiofsd/pjdfstest: {e}"));
            None
        }
    }
}

/// The tools script.
pub fn tools_script() -> PathBuf {
    crate::guest::workspace_root().join("scripts/build-fs-tools.sh")
}

/// virtiofsd, pjdfstest and the guest archive, as installed by
/// `scripts/build-fs-tools.sh`.
#[derive(Clone, Debug)]
pub struct FsTools {
    pub dir: PathBuf,
    pub virtiofsd: PathBuf,
    pub pjdfstest: PathBuf,
    /// pjdfstest with its libraries and `/etc/passwd` entries, for [`Guest::archive`].
    pub guest_cpio: PathBuf,
}

impl FsTools {
    /// The tools folder: `$VHOSTKIT_TOOLS_DIR`, else `<workspace>/build/tools`.
    pub fn default_dir() -> PathBuf {
        match std::env::var_os("VHOSTKIT_TOOLS_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => crate::guest::workspace_root().join("build/tools"),
        }
    }

    /// Finds the tools in `dir` without installing anything.
    pub fn locate_in(dir: &Path) -> Result<Self, String> {
        let tools = FsTools {
            dir: dir.to_path_buf(),
            virtiofsd: dir.join("bin/virtiofsd"),
            pjdfstest: dir.join("bin/pjdfstest"),
            guest_cpio: dir.join("guest-pjdfstest.cpio"),
        };
        for file in [&tools.virtiofsd, &tools.pjdfstest, &tools.guest_cpio] {
            if !file.is_file() {
                return Err(format!(
                    "{} does not exist (run scripts/build-fs-tools.sh)",
                    file.display()
                ));
            }
        }
        Ok(tools)
    }

    /// Runs `scripts/build-fs-tools.sh` (a no-op when the tools are current; a few
    /// minutes of `cargo install` the first time on a machine), then locates the
    /// tools. With `$VHOSTKIT_TOOLS_DIR` set, the tools there are used as they are.
    /// `VHOSTKIT_NO_TOOL_BUILD=1` only locates them (for a quick SKIP on a machine
    /// without them).
    pub fn ensure() -> Result<Self, String> {
        let dir = Self::default_dir();
        if std::env::var_os("VHOSTKIT_TOOLS_DIR").is_some()
            || std::env::var_os("VHOSTKIT_NO_TOOL_BUILD").is_some()
        {
            return Self::locate_in(&dir);
        }
        let script = tools_script();
        let status = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !status.success() {
            return Err(format!("{} failed ({status})", script.display()));
        }
        Self::locate_in(&dir)
    }
}

/// The tag virtiofsd's device gets in these tests.
pub const VIRTIOFSD_TAG: &str = "vfsd";

/// virtiofsd serving `shared_dir` on `socket`, as root without a sandbox (the
/// default namespace sandbox needs user namespaces and is not what is under test),
/// with `--cache auto`, one thread pool per queue as it chooses.
pub fn virtiofsd_cmd(tools: &FsTools, socket: &Path, shared_dir: &Path) -> Command {
    virtiofsd_cmd_with(&tools.virtiofsd, socket, shared_dir, "auto")
}

/// Where `scripts/build-fs-tools.sh` installs virtiofsd ([`FsTools::default_dir`]),
/// whether or not it is there: for a caller that needs only virtiofsd.
pub fn virtiofsd_bin() -> PathBuf {
    FsTools::default_dir().join("bin/virtiofsd")
}

/// [`virtiofsd_cmd`] with the binary `bin` and the cache policy `cache` (`auto`,
/// `always`, `never`, `metadata`): as root without a sandbox, virtiofsd's other
/// defaults (no xattr, no writeback cache, thread pool off).
pub fn virtiofsd_cmd_with(bin: &Path, socket: &Path, shared_dir: &Path, cache: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--socket-path")
        .arg(socket)
        .arg("--shared-dir")
        .arg(shared_dir)
        .args(["--cache", cache, "--sandbox", "none"])
        .env("RUST_LOG", "warn");
    cmd
}

/// Starts a daemon command from [`virtiofsd_cmd`] or for our vhost-user-fs
/// ([`crate::launch::Launch`] of [`crate::launch::fs::FsArgs`]) and
/// waits until its socket listens, without connecting to it (virtiofsd serves one
/// frontend and exits when it hangs up, so a probe connection would end it): start
/// one per guest. Killed and reaped when dropped.
pub fn spawn_fs_daemon(name: &str, cmd: Command, socket: &Path) -> std::io::Result<DaemonProcess> {
    DaemonProcess::spawn_single_client(name, cmd, socket, Duration::from_secs(20))
}

/// Which pjdfstest cases to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The whole suite.
    All,
    /// Test names containing any of these (pjdfstest's own filter).
    Patterns(Vec<String>),
    /// These exact test names (`pjdfstest -e`).
    Exact(Vec<String>),
}

impl Selection {
    /// `$VHOSTKIT_PJDFSTEST` if set (`all`, or comma-separated name patterns such as
    /// `open::etxtbsy,chmod::`), else `default`.
    pub fn from_env_or(default: Selection) -> Self {
        match std::env::var("VHOSTKIT_PJDFSTEST") {
            Ok(v) if v.trim() == "all" => Selection::All,
            Ok(v) if !v.trim().is_empty() => Selection::Patterns(
                v.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect(),
            ),
            _ => default,
        }
    }

    fn args(&self) -> String {
        let quote = |s: &String| format!("'{}'", s.replace('\'', "'\\''"));
        match self {
            Selection::All => String::new(),
            Selection::Patterns(p) => p.iter().map(quote).collect::<Vec<_>>().join(" "),
            Selection::Exact(p) => {
                let names = p.iter().map(quote).collect::<Vec<_>>().join(" ");
                format!("-e {names}")
            }
        }
    }
}

/// pjdfstest's configuration inside the guest: the features Linux on virtiofs
/// has, a short nap (the host file systems' timestamps are finer than 20 ms),
/// the two unprivileged users the guest archive defines.
pub const PJDFSTEST_CONFIG: &str = r#"[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.02
allow_remount = false

[dummy_auth]
entries = [["nobody", "nobody"], ["tests", "tests"]]
"#;

/// The counts and names of one pjdfstest run, parsed from its output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PjdfsResults {
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    pub skipped: Vec<String>,
    /// Listed as expected failures in the configuration (none in ours) and failed.
    pub expected_failures: Vec<String>,
    /// Expected to fail, but passed (pjdfstest counts them as failed).
    pub unexpected_passes: Vec<String>,
    /// pjdfstest's own `Summary:` line (colours removed), if it got that far.
    pub summary: Option<String>,
    /// What the guest measured around the pjdfstest run.
    pub elapsed: Duration,
    /// pjdfstest's exit status (1 when a test failed).
    pub exit_code: Option<i32>,
}

impl PjdfsResults {
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.passed.len(), self.failed.len(), self.skipped.len())
    }
}

impl fmt::Display for PjdfsResults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped in {:.1} s",
            self.passed.len(),
            self.failed.len() + self.unexpected_passes.len(),
            self.skipped.len(),
            self.elapsed.as_secs_f64()
        )?;
        if !self.failed.is_empty() {
            write!(f, "; failed: {}", self.failed.join(" "))?;
        }
        Ok(())
    }
}

/// Removes ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses pjdfstest's output: one line per test, `<name> <padding> <status>` with
/// status `ok`, `FAILED`, `skipped`, `failed as expected` or `PASSED UNEXPECTEDLY`;
/// failure messages and skip reasons follow on lines that start with a tab.
pub fn parse_pjdfstest(output: &str) -> PjdfsResults {
    let mut r = PjdfsResults::default();
    for raw in output.lines() {
        if raw.starts_with('\t') || raw.starts_with(' ') {
            continue;
        }
        let line = strip_ansi(raw);
        let line = line.trim_end();
        if let Some(summary) = line.strip_prefix("Summary: ") {
            r.summary = Some(summary.to_string());
            continue;
        }
        let Some((name, status)) = line.split_once(' ') else {
            continue;
        };
        if !name.contains("::") {
            continue;
        }
        let list = match status.trim() {
            "ok" => &mut r.passed,
            "FAILED" => &mut r.failed,
            "skipped" => &mut r.skipped,
            "failed as expected" => &mut r.expected_failures,
            "PASSED UNEXPECTEDLY" => &mut r.unexpected_passes,
            _ => continue,
        };
        list.push(name.to_string());
    }
    r
}

/// Tests seen to fail now and then on virtiofsd, which [`compare`] leaves out.
/// `open::etxtbsy` (an open for writing of a file being executed succeeds): failed
/// in about 1 of 5 runs of the CI subset, never when run alone (0 of 25, on the
/// virtiofs mount and on the guest's tmpfs alike).
pub const KNOWN_FLAKY: &[&str] = &["open::etxtbsy"];

/// The tests `ours` fails (or did not run to a result) that `peer` passes: what a
/// backend must fix to be as POSIX as the peer. Sorted; [`KNOWN_FLAKY`] left out.
pub fn compare(ours: &PjdfsResults, peer: &PjdfsResults) -> Vec<String> {
    let mut out: Vec<String> = peer
        .passed
        .iter()
        .filter(|name| !ours.passed.contains(name))
        .filter(|name| !KNOWN_FLAKY.contains(&name.as_str()))
        .cloned()
        .collect();
    out.sort();
    out
}

/// The guest script for pjdfstest on the virtiofs mount `tag`.
pub fn pjdfstest_script(tag: &str, selection: &Selection) -> String {
    format!(
        r#"
mkdir -p /mnt
if ! mount -t virtiofs {tag} /mnt; then echo "VHOSTKIT-RESULT error mount -t virtiofs {tag} failed"; exit 1; fi
echo "VHOSTKIT-RESULT mounted $(grep virtiofs /proc/mounts | head -n1)"
mkdir -p /mnt/pjdfstest
start=$(cut -d' ' -f1 /proc/uptime)
echo "VHOSTKIT-BEGIN pjdfstest"
NO_COLOR=1 CLICOLOR=0 pjdfstest -c /etc/pjdfstest.toml -p /mnt/pjdfstest {args} 2>&1
rc=$?
echo "VHOSTKIT-END pjdfstest"
end=$(cut -d' ' -f1 /proc/uptime)
echo "VHOSTKIT-RESULT pjdfstest_rc $rc"
echo "VHOSTKIT-RESULT pjdfstest_seconds $(awk "BEGIN {{ print $end - $start }}")"
rm -rf /mnt/pjdfstest
umount /mnt || {{ echo "VHOSTKIT-RESULT error umount failed"; exit 2; }}
echo "VHOSTKIT-RESULT done ok"
"#,
        args = selection.args()
    )
}

/// Boots a guest with `dev` (whose backend must be listening), runs pjdfstest on
/// its mount, and returns the parsed results. A guest that cannot mount, or whose
/// pjdfstest prints no summary (crashed, timed out), is an error; failed tests
/// are not (see [`PjdfsResults::failed`]).
pub fn run_pjdfstest(
    image: &GuestImage,
    tools: &FsTools,
    dev: &FsDevice,
    selection: &Selection,
    timeout: Duration,
) -> Result<PjdfsResults, GuestError> {
    let out = pjdfstest_guest(image, tools, dev, selection)
        .timeout(timeout)
        .run()?;
    pjdfstest_results(&out)
}

/// The guest [`run_pjdfstest`] boots (busybox-only image, pjdfstest's archive and
/// configuration, `dev`, 1 GiB), for callers that change it before
/// [`Guest::run`] (e.g. `.vmm(Vmm::Vhostkit)`), then read it with
/// [`pjdfstest_results`].
pub fn pjdfstest_guest<'a>(
    image: &'a GuestImage,
    tools: &FsTools,
    dev: &FsDevice,
    selection: &Selection,
) -> Guest<'a> {
    Guest::new(image, &pjdfstest_script(&dev.tag, selection))
        .initrd(Initrd::Mini)
        .archive(&tools.guest_cpio)
        .file("etc/pjdfstest.toml", 0o644, PJDFSTEST_CONFIG)
        .fs(dev.clone())
        .memory_mib(1024)
}

/// The results of a guest that ran [`pjdfstest_script`].
pub fn pjdfstest_results(out: &GuestOutput) -> Result<PjdfsResults, GuestError> {
    let fail = |reason: String| GuestError::Run {
        reason,
        console: out.console.clone(),
    };
    if let Some(error) = out.result("error") {
        return Err(fail(format!("the guest script reports: {error}")));
    }
    let text = out
        .section("pjdfstest")
        .ok_or_else(|| fail("no pjdfstest output between markers".into()))?;
    let mut r = parse_pjdfstest(&text);
    if r.summary.is_none() {
        return Err(fail("pjdfstest printed no Summary line".into()));
    }
    r.exit_code = out.result("pjdfstest_rc").and_then(|v| v.parse().ok());
    r.elapsed = out
        .result("pjdfstest_seconds")
        .and_then(|v| v.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or(out.elapsed);
    out.check_run_ok().map_err(|e| match e {
        GuestError::Run { reason, .. } => fail(reason),
        other => other,
    })?;
    Ok(r)
}

/// What [`run_fio_and_data_checks`] established.
#[derive(Clone, Debug)]
pub struct FsDataCheck {
    /// Bytes fio wrote and then verified (crc32c, after dropping the guest's cache).
    pub fio_bytes: u64,
    /// The file the guest copied onto the mount, as the host reads it afterwards.
    pub guest_file_on_host: Vec<u8>,
    /// The md5 the guest computed of the file the host put in the shared folder.
    pub host_file_md5_in_guest: String,
    pub console: String,
}

/// Name of the file the guest writes, relative to the shared folder.
pub const GUEST_WRITTEN: &str = "from-guest.bin";
/// Name of the file the host puts in the shared folder for the guest to read.
pub const HOST_WRITTEN: &str = "from-host.bin";

/// The guest script for [`run_fio_and_data_checks`].
pub fn fio_script(tag: &str, fio_size_mib: u32) -> String {
    fio_script_with(tag, fio_size_mib, "")
}

/// [`fio_script`] with `between` (shell) run between fio's write and verify
/// passes, e.g. to prove that a changed block fails the check.
pub fn fio_script_with(tag: &str, fio_size_mib: u32, between: &str) -> String {
    format!(
        r#"
mkdir -p /mnt
if ! mount -t virtiofs {tag} /mnt; then echo "VHOSTKIT-RESULT error mount -t virtiofs {tag} failed"; exit 1; fi
echo "VHOSTKIT-RESULT host_file_md5 $(md5sum /mnt/{HOST_WRITTEN} | cut -d' ' -f1)"
cp /data.bin /mnt/{GUEST_WRITTEN} && sync || {{ echo "VHOSTKIT-RESULT error copy to the mount failed"; exit 2; }}
job="--name=verify --filename=/mnt/fio.dat --ioengine=psync --rw=randwrite --bs=4k --size={fio_size_mib}M --verify=crc32c --verify_fatal=1 --eta=never"
fio $job --do_verify=0 --end_fsync=1 --output=/tmp/write.txt
rc=$?
echo "VHOSTKIT-RESULT fio_write_rc $rc"
[ "$rc" = 0 ] || {{ cat /tmp/write.txt; exit 3; }}
{between}
echo 3 > /proc/sys/vm/drop_caches
fio $job --verify_only --output=/tmp/verify.txt
rc=$?
echo "VHOSTKIT-RESULT fio_verify_rc $rc"
echo "VHOSTKIT-BEGIN fio"; cat /tmp/verify.txt; echo "VHOSTKIT-END fio"
[ "$rc" = 0 ] || exit 4
rm -f /mnt/fio.dat
umount /mnt || {{ echo "VHOSTKIT-RESULT error umount failed"; exit 5; }}
echo "VHOSTKIT-RESULT done ok"
"#
    )
}

/// Boots a guest with `dev` over the host folder `shared_dir` (the backend's), and
/// checks data both ways: the host's file read in the guest (md5), a guest file
/// copied onto the mount and read on the host afterwards, and fio random writes
/// of `fio_size_mib` MiB verified with crc32c after the guest's page cache is
/// dropped (so the reads go to the backend). Errors name the first thing wrong.
pub fn run_fio_and_data_checks(
    image: &GuestImage,
    dev: &FsDevice,
    shared_dir: &Path,
    fio_size_mib: u32,
    timeout: Duration,
) -> Result<FsDataCheck, String> {
    run_fio_and_data_checks_with(image, dev, shared_dir, fio_size_mib, timeout, "")
}

/// [`run_fio_and_data_checks`] with `between` run in the guest between fio's
/// write and verify passes ([`fio_script_with`]).
pub fn run_fio_and_data_checks_with(
    image: &GuestImage,
    dev: &FsDevice,
    shared_dir: &Path,
    fio_size_mib: u32,
    timeout: Duration,
    between: &str,
) -> Result<FsDataCheck, String> {
    let mut rng = crate::Rng::new(0x5f5f_0001);
    let guest_data = rng.bytes(1 << 20);
    let host_data = rng.bytes((1 << 20) + 4097);
    let host_file = shared_dir.join(HOST_WRITTEN);
    fs::write(&host_file, &host_data).map_err(|e| format!("{}: {e}", host_file.display()))?;
    let out = Guest::new(image, &fio_script_with(&dev.tag, fio_size_mib, between))
        .file("data.bin", 0o644, guest_data.clone())
        .fs(dev.clone())
        .memory_mib(1024)
        .timeout(timeout)
        .run()
        .map_err(|e| e.to_string())?;
    let console = out.console.clone();
    let with_console = |reason: String| format!("{reason}\n----- guest console -----\n{console}");
    if let Some(error) = out.result("error") {
        return Err(with_console(format!("the guest script reports: {error}")));
    }
    for key in ["fio_write_rc", "fio_verify_rc"] {
        match out.result(key) {
            Some("0") => {}
            Some(rc) => return Err(with_console(format!("{key} {rc}"))),
            None => return Err(with_console(format!("no `VHOSTKIT-RESULT {key}` line"))),
        }
    }
    out.check_run_ok().map_err(|e| e.to_string())?;
    let host_file_md5_in_guest = out.require("host_file_md5").map_err(|e| e.to_string())?;
    let want_md5 = md5_hex_of(&host_file)?;
    if host_file_md5_in_guest != want_md5 {
        return Err(with_console(format!(
            "the guest read {HOST_WRITTEN} as md5 {host_file_md5_in_guest}, the host has {want_md5}"
        )));
    }
    let written = shared_dir.join(GUEST_WRITTEN);
    let on_host = fs::read(&written).map_err(|e| format!("{}: {e}", written.display()))?;
    if on_host != guest_data {
        let first = on_host
            .iter()
            .zip(&guest_data)
            .position(|(a, b)| a != b)
            .unwrap_or(on_host.len().min(guest_data.len()));
        return Err(format!(
            "{GUEST_WRITTEN} on the host differs from what the guest wrote: {} bytes vs {}, \
             first difference at {first}",
            on_host.len(),
            guest_data.len()
        ));
    }
    let verify = out.section("fio").unwrap_or_default();
    if !verify.contains("verify") {
        return Err(with_console(
            "fio's verify pass printed no verify job".into(),
        ));
    }
    Ok(FsDataCheck {
        fio_bytes: u64::from(fio_size_mib) << 20,
        guest_file_on_host: on_host,
        host_file_md5_in_guest: host_file_md5_in_guest.to_string(),
        console,
    })
}

/// The host's md5sum of `path`, in hex.
fn md5_hex_of(path: &Path) -> Result<String, String> {
    let out = Command::new("md5sum")
        .arg(path)
        .output()
        .map_err(|e| format!("md5sum: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| format!("md5sum {}: no output", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "\
chmod::permission::ctime_update                                          ok\n\
\u{1b}[34mopen::flags::trunc\u{1b}[0m                                          \u{1b}[31mFAILED\u{1b}[0m\n\
\tassertion failed: ctime changed\n\
chflags::set_flags                                                       skipped\n\
\trequires features: chflags\n\
utimensat::y2038                                             failed as expected\n\
rename::ok                                                    PASSED UNEXPECTEDLY\n\
\n\
Summary: 2 failed, 1 skipped, 1 passed, 1 expected failures, 5 total\n";

    #[test]
    fn parses_results_and_summary() {
        let r = parse_pjdfstest(OUTPUT);
        assert_eq!(r.passed, ["chmod::permission::ctime_update"]);
        assert_eq!(r.failed, ["open::flags::trunc"]);
        assert_eq!(r.skipped, ["chflags::set_flags"]);
        assert_eq!(r.expected_failures, ["utimensat::y2038"]);
        assert_eq!(r.unexpected_passes, ["rename::ok"]);
        assert_eq!(
            r.summary.as_deref(),
            Some("2 failed, 1 skipped, 1 passed, 1 expected failures, 5 total")
        );
        assert_eq!(r.counts(), (1, 1, 1));
    }

    #[test]
    fn compare_lists_what_only_the_peer_passes() {
        let peer = parse_pjdfstest("a::x ok\nb::y ok\nc::z FAILED\nd::w ok\n");
        let ours = parse_pjdfstest("a::x ok\nb::y FAILED\nc::z ok\n");
        assert_eq!(compare(&ours, &peer), ["b::y", "d::w"]);
        let flaky = parse_pjdfstest("open::etxtbsy ok\n");
        assert!(compare(&PjdfsResults::default(), &flaky).is_empty());
        assert!(compare(&peer, &peer).is_empty());
    }

    #[test]
    fn virtiofsd_command_line() {
        let cmd = virtiofsd_cmd_with(
            Path::new("/x/virtiofsd"),
            Path::new("/s.sock"),
            Path::new("/d"),
            "never",
        );
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--socket-path",
                "/s.sock",
                "--shared-dir",
                "/d",
                "--cache",
                "never",
                "--sandbox",
                "none"
            ]
        );
        assert_eq!(cmd.get_program(), "/x/virtiofsd");
        assert!(virtiofsd_bin().ends_with("bin/virtiofsd"));
    }

    #[test]
    fn selection_arguments() {
        assert_eq!(Selection::All.args(), "");
        assert_eq!(
            Selection::Patterns(vec!["mkdir::".into(), "it's".into()]).args(),
            "'mkdir::' 'it'\\''s'"
        );
        assert_eq!(Selection::Exact(vec!["a::b".into()]).args(), "-e 'a::b'");
        let script = pjdfstest_script("share", &Selection::Patterns(vec!["chmod::".into()]));
        assert!(script.contains("mount -t virtiofs share /mnt"));
        assert!(script.contains("'chmod::'"));
    }
}
