//! Linux guests under QEMU, or under our own VMM `vhostkit` ([`Vmm`]), for tests and
//! benchmarks that drive our daemons from a real virtio driver.
//!
//! The guest is Debian's kernel plus an initramfs of busybox, fio and iperf3 made by
//! `scripts/build-guest-image.sh` into `build/guest/`. Its `/init` loads the virtio
//! modules, runs `/run.sh` if there is one, and powers off. Each run appends a small
//! cpio archive holding the caller's `run.sh` to the shared base image (the kernel
//! unpacks concatenated archives), so a new script needs no image rebuild.
//!
//! ```no_run
//! use vhostkit_tests::guest::{BlkDevice, Guest, GuestImage};
//! # fn main() -> Result<(), vhostkit_tests::guest::GuestError> {
//! let image = GuestImage::ensure()?;
//! let out = Guest::new(&image, "echo VHOSTKIT-RESULT answer 42")
//!     .blk(BlkDevice::new("/tmp/blk.sock", 2))
//!     .run()?;
//! out.check_run_ok()?;
//! assert_eq!(out.result("answer"), Some("42"));
//! # Ok(()) }
//! ```
//!
//! Scripts report back on the serial console: `VHOSTKIT-RESULT <key> <value>` lines
//! ([`GuestOutput::result`]) and blocks between `VHOSTKIT-BEGIN <name>` and
//! `VHOSTKIT-END <name>` lines ([`GuestOutput::section`], e.g. for fio's JSON).

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::util::TempDir;

/// Console marker lines printed by the guest's `/init`.
pub const MARK_RUN_BEGIN: &str = "VHOSTKIT-RUN-BEGIN";
pub const MARK_RUN_END: &str = "VHOSTKIT-RUN-END rc=";
pub const MARK_POWEROFF: &str = "VHOSTKIT-POWEROFF";
/// Prefix of the result lines scripts print: `VHOSTKIT-RESULT <key> <value>`.
pub const MARK_RESULT: &str = "VHOSTKIT-RESULT ";

/// Errors of the guest harness.
#[derive(Debug)]
pub enum GuestError {
    /// The guest image is not built (or not complete).
    ImageMissing { dir: PathBuf, reason: String },
    /// `scripts/build-guest-image.sh` failed.
    BuildFailed { script: PathBuf, status: String },
    /// Host-side I/O (temporary files, spawning the VMM).
    Io { what: String, source: io::Error },
    /// The guest did not power off in time; the VMM was killed.
    Timeout {
        after: Duration,
        console: String,
        stderr: String,
    },
    /// The VMM (QEMU or vhostkit) exited with an error status.
    QemuFailed {
        vmm: Vmm,
        status: ExitStatus,
        console: String,
        stderr: String,
    },
    /// The guest ran, but not as expected (no markers, `run.sh` failed, ...).
    Run { reason: String, console: String },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, GuestError>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> GuestError {
    let what = what.into();
    move |source| GuestError::Io { what, source }
}

fn fmt_console(f: &mut fmt::Formatter<'_>, console: &str, stderr: &str) -> fmt::Result {
    writeln!(f, "\n----- guest console -----")?;
    for line in console.lines() {
        writeln!(f, "| {line}")?;
    }
    writeln!(f, "----- end of console -----")?;
    if !stderr.trim().is_empty() {
        writeln!(f, "----- VMM stderr -----\n{}", stderr.trim_end())?;
    }
    Ok(())
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestError::ImageMissing { dir, reason } => write!(
                f,
                "guest image missing in {}: {reason}; build it with scripts/build-guest-image.sh",
                dir.display()
            ),
            GuestError::BuildFailed { script, status } => {
                write!(f, "{} failed ({status})", script.display())
            }
            GuestError::Io { what, .. } => write!(f, "{what}"),
            GuestError::Timeout {
                after,
                console,
                stderr,
            } => {
                write!(f, "guest timed out after {after:?}; VMM killed")?;
                fmt_console(f, console, stderr)
            }
            GuestError::QemuFailed {
                vmm,
                status,
                console,
                stderr,
            } => {
                write!(f, "{vmm} exited with {status}")?;
                fmt_console(f, console, stderr)
            }
            GuestError::Run { reason, console } => {
                write!(f, "guest run failed: {reason}")?;
                fmt_console(f, console, "")
            }
        }
    }
}

impl std::error::Error for GuestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GuestError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The image builder script.
pub fn build_script() -> PathBuf {
    workspace_root().join("scripts/build-guest-image.sh")
}

/// Which initramfs to boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initrd {
    /// busybox + fio + iperf3 (~87 MB).
    Full,
    /// busybox only (~3 MB): boots faster, for scripts that need no fio or iperf3.
    Mini,
}

/// A built guest image: kernel and initramfs files.
#[derive(Clone, Debug)]
pub struct GuestImage {
    pub dir: PathBuf,
    /// Kernel release, e.g. `6.1.0-56-amd64`.
    pub kernel_release: String,
    /// The uncompressed ELF kernel (booted through PVH; faster than the bzImage).
    pub kernel_elf: PathBuf,
    /// The package's bzImage.
    pub kernel_bzimage: PathBuf,
    pub initrd_full: PathBuf,
    pub initrd_mini: PathBuf,
}

impl GuestImage {
    /// The image folder: `$VHOSTKIT_GUEST_DIR`, else `<workspace>/build/guest`.
    pub fn default_dir() -> PathBuf {
        match std::env::var_os("VHOSTKIT_GUEST_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => workspace_root().join("build/guest"),
        }
    }

    /// Finds a complete image in [`GuestImage::default_dir`] without building anything.
    pub fn locate() -> Result<Self> {
        Self::locate_in(&Self::default_dir())
    }

    /// Finds a complete image in `dir` (as described by its `guest.env`).
    pub fn locate_in(dir: &Path) -> Result<Self> {
        let missing = |reason: String| GuestError::ImageMissing {
            dir: dir.to_path_buf(),
            reason,
        };
        let env = fs::read_to_string(dir.join("guest.env"))
            .map_err(|e| missing(format!("cannot read guest.env: {e}")))?;
        let get = |key: &str| -> Result<String> {
            env.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim().to_string())
                .ok_or_else(|| missing(format!("guest.env has no {key}")))
        };
        let image = GuestImage {
            dir: dir.to_path_buf(),
            kernel_release: get("KVER")?,
            kernel_elf: dir.join(get("KERNEL_ELF")?),
            kernel_bzimage: dir.join(get("KERNEL_BZIMAGE")?),
            initrd_full: dir.join(get("INITRD")?),
            initrd_mini: dir.join(get("INITRD_MINI")?),
        };
        for file in [
            &image.kernel_elf,
            &image.kernel_bzimage,
            &image.initrd_full,
            &image.initrd_mini,
        ] {
            if !file.is_file() {
                return Err(missing(format!("{} does not exist", file.display())));
            }
        }
        Ok(image)
    }

    /// Runs `scripts/build-guest-image.sh` (a no-op taking milliseconds when the image
    /// is current; a download and build of a few tens of seconds otherwise), then
    /// locates the image. With `$VHOSTKIT_GUEST_DIR` set, the image there is used
    /// as it is and nothing is built.
    pub fn ensure() -> Result<Self> {
        if std::env::var_os("VHOSTKIT_GUEST_DIR").is_some() {
            return Self::locate();
        }
        let script = build_script();
        if !script.is_file() {
            return Self::locate();
        }
        // The script's progress goes to our stderr; it prints nothing else.
        let status = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .map_err(io_err(format!("cannot run {}", script.display())))?;
        if !status.success() {
            return Err(GuestError::BuildFailed {
                script,
                status: status.to_string(),
            });
        }
        Self::locate()
    }
}

/// Whether this host has hardware virtualization that KVM can use: the CPU shows
/// vmx or svm in /proc/cpuinfo and /dev/kvm opens read-write. A /dev/kvm without
/// them (such as kvm_pvm, a software KVM) runs small test guests but cannot boot a
/// stock Linux kernel in useful time, so Linux through `vhostkit` needs this.
/// What a guest test under QEMU needs: qemu-system-x86_64 on the host and the
/// guest image (built if missing). None after printing `SKIPPED: <test>: why`.
pub fn qemu_guest_image(test: &str) -> Option<GuestImage> {
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if qemu.is_err() {
        crate::skip::skip(format_args!(
            "{test}: qemu-system-x86_64 is not installed (scripts/setup-host.sh)"
        ));
        return None;
    }
    match GuestImage::ensure() {
        Ok(image) => Some(image),
        Err(e) => {
            crate::skip::skip(format_args!("{test}: no guest image: {e}"));
            None
        }
    }
}

pub fn hardware_kvm() -> bool {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw_virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    hw_virt
        && fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

/// Which VMM boots the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vmm {
    /// `qemu-system-x86_64 -machine q35` with the ELF kernel (PVH), virtio-pci
    /// devices (`vhost-user-blk-pci`), KVM or TCG ([`Accel`]).
    Qemu,
    /// Our `vhostkit run` with the bzImage: always KVM, virtio-mmio devices
    /// described by ACPI (the guest's `virtio_mmio` module finds them). Needs
    /// [`hardware_kvm`] to boot Linux in useful time.
    Vhostkit,
}

impl fmt::Display for Vmm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Vmm::Qemu => "QEMU",
            Vmm::Vhostkit => "vhostkit",
        })
    }
}

/// The `vhostkit` binary: `$VHOSTKIT_BIN_DIR/vhostkit`, else next to the running
/// test or bench executable (see [`crate::daemon::workspace_bin`]).
pub fn vhostkit_bin() -> PathBuf {
    crate::daemon::workspace_bin("vhostkit")
}

/// How QEMU executes the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization (the host CPU has vmx or svm). A guest booted through
    /// [`Vmm::Vhostkit`] always runs on KVM.
    Kvm,
    /// QEMU's binary translator: slow, and the guest CPU bounds any I/O figure.
    Tcg,
}

impl Accel {
    /// KVM when the host CPU has vmx or svm and /dev/kvm opens, else TCG.
    /// `VHOSTKIT_GUEST_ACCEL=kvm|tcg` overrides. (A /dev/kvm without hardware
    /// virtualization, such as kvm_pvm, cannot boot Linux in useful time.)
    pub fn detect() -> Accel {
        match std::env::var("VHOSTKIT_GUEST_ACCEL").as_deref() {
            Ok("kvm") => return Accel::Kvm,
            Ok("tcg") => return Accel::Tcg,
            _ => {}
        }
        if hardware_kvm() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg,thread=multi", "-cpu", "max"],
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM (hardware virtualization)",
            Accel::Tcg => "TCG (software emulation, no vmx/svm on this host)",
        })
    }
}

/// A vhost-user-blk device given to the guest (`vhost-user-blk-pci` under QEMU,
/// `--disk socket=PATH,num-queues=N` under vhostkit; either way the guest sees
/// `/dev/vda`, `/dev/vdb`, ... in the order given).
#[derive(Clone, Debug)]
pub struct BlkDevice {
    pub socket: PathBuf,
    pub num_queues: u16,
    /// Extra `-device` properties, e.g. `queue-size=256` (QEMU only: a guest
    /// booted through vhostkit refuses devices that have any).
    pub props: Vec<String>,
}

impl BlkDevice {
    pub fn new(socket: impl Into<PathBuf>, num_queues: u16) -> Self {
        BlkDevice {
            socket: socket.into(),
            num_queues,
            props: Vec::new(),
        }
    }
}

/// What carries a guest network device's frames on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackend {
    /// A vhost-user-net backend listening on this socket (ours, or any other).
    VhostUser { socket: PathBuf },
    /// QEMU's own tap backend on this (existing or new) tap interface, in QEMU's
    /// user-space data path (`vhost=off`): the peer our daemon is compared with.
    /// QEMU only.
    Tap { ifname: String },
}

/// A virtio-net device given to the guest: `virtio-net-pci` under QEMU, fed by a
/// vhost-user socket (`-netdev vhost-user`) or by QEMU's tap backend; `--net
/// socket=PATH[,mac=MAC],num-queue-pairs=P` under vhostkit (vhost-user only). The guest sees
/// `eth0`, `eth1`, ... in the order given.
///
/// Under QEMU the device always gets `vectors=0` (legacy INTx, no MSI-X): QEMU 7.2
/// under TCG segfaults starting a vhost-user virtio-net-pci device with MSI-X. The
/// tap form gets the same, so both backends face the same guest device.
#[derive(Clone, Debug)]
pub struct NetDevice {
    pub backend: NetBackend,
    /// Receive/transmit queue pairs (`queues=P`; `mq=on` when more than one).
    pub queue_pairs: u16,
    /// The guest's MAC address (`52:54:00:12:34:56`); QEMU's default when `None`.
    /// A vhost-user backend may report its own in the config space; QEMU's
    /// `mac=` wins for the guest.
    pub mac: Option<String>,
}

impl NetDevice {
    /// A device served by the vhost-user-net backend listening on `socket`.
    pub fn vhost_user(socket: impl Into<PathBuf>, queue_pairs: u16) -> Self {
        NetDevice {
            backend: NetBackend::VhostUser {
                socket: socket.into(),
            },
            queue_pairs,
            mac: None,
        }
    }

    /// A device on QEMU's own tap backend (`-netdev tap,ifname=...,vhost=off`).
    /// With more than one queue pair an existing tap must be multi-queue
    /// (`ip tuntap add ... multi_queue`).
    pub fn tap(ifname: impl Into<String>, queue_pairs: u16) -> Self {
        NetDevice {
            backend: NetBackend::Tap {
                ifname: ifname.into(),
            },
            queue_pairs,
            mac: None,
        }
    }

    /// Sets the guest's MAC address.
    pub fn mac(mut self, mac: impl Into<String>) -> Self {
        self.mac = Some(mac.into());
        self
    }

    /// QEMU's arguments for this device, as device number `i`.
    fn qemu_args(&self, i: usize) -> Vec<String> {
        let mut args = Vec::new();
        let queues = self.queue_pairs.max(1);
        match &self.backend {
            NetBackend::VhostUser { socket } => {
                args.push("-chardev".into());
                args.push(format!("socket,id=net{i},path={}", socket.display()));
                args.push("-netdev".into());
                args.push(format!("vhost-user,id=n{i},chardev=net{i},queues={queues}"));
            }
            NetBackend::Tap { ifname } => {
                args.push("-netdev".into());
                let mut netdev =
                    format!("tap,id=n{i},ifname={ifname},script=no,downscript=no,vhost=off");
                if queues > 1 {
                    netdev.push_str(&format!(",queues={queues}"));
                }
                args.push(netdev);
            }
        }
        let mut device = format!("virtio-net-pci,netdev=n{i}");
        if let Some(mac) = &self.mac {
            device.push_str(&format!(",mac={mac}"));
        }
        if queues > 1 {
            device.push_str(",mq=on");
        }
        device.push_str(",vectors=0");
        args.push("-device".into());
        args.push(device);
        args
    }
}

/// A virtio-fs device given to the guest, served by a vhost-user-fs backend
/// listening on `socket` (ours, or virtiofsd): `vhost-user-fs-pci` under QEMU
/// (memfd shared memory, as for every vhost-user device here), `--fs
/// socket=PATH,tag=TAG,num-queues=N` under vhostkit. The guest mounts it with
/// `mount -t virtiofs TAG /mnt`.
#[derive(Clone, Debug)]
pub struct FsDevice {
    pub socket: PathBuf,
    /// The name the guest mounts (1 to 36 bytes).
    pub tag: String,
    /// Request queues (the hiprio queue comes on top); `None`: the VMM's default (1).
    pub num_request_queues: Option<u16>,
}

impl FsDevice {
    pub fn new(socket: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        FsDevice {
            socket: socket.into(),
            tag: tag.into(),
            num_request_queues: None,
        }
    }

    /// Sets the number of request queues.
    pub fn queues(mut self, n: u16) -> Self {
        self.num_request_queues = Some(n);
        self
    }

    /// The QEMU arguments for this device, the `i`th virtio-fs device.
    fn qemu_args(&self, i: usize) -> Vec<String> {
        let mut device = format!("vhost-user-fs-pci,chardev=fs{i},tag={}", self.tag);
        if let Some(n) = self.num_request_queues {
            device.push_str(&format!(",num-request-queues={n}"));
        }
        vec![
            "-chardev".into(),
            format!("socket,id=fs{i},path={}", self.socket.display()),
            "-device".into(),
            device,
        ]
    }
}

/// Writes a cpio archive in the "newc" format the kernel unpacks: the given files
/// (path relative to `/`, mode, contents) with their parent folders, then the trailer.
pub fn write_newc_cpio<W: Write>(out: &mut W, files: &[(&str, u32, &[u8])]) -> io::Result<()> {
    fn entry<W: Write>(
        out: &mut W,
        ino: u32,
        name: &str,
        mode: u32,
        data: &[u8],
    ) -> io::Result<()> {
        let namesize = name.len() + 1;
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            data.len(),
            0, // devmajor
            0, // devminor
            0, // rdevmajor
            0, // rdevminor
            0, // check
        );
        out.write_all(header.as_bytes())?;
        out.write_all(name.as_bytes())?;
        out.write_all(&[0])?;
        let pad = (4 - (110 + namesize) % 4) % 4;
        out.write_all(&[0u8; 3][..pad])?;
        out.write_all(data)?;
        out.write_all(&[0u8; 3][..(4 - data.len() % 4) % 4])?;
        Ok(())
    }
    let mut ino = 1u32;
    let mut dirs: Vec<String> = Vec::new();
    for (path, mode, data) in files {
        let path = path.trim_start_matches('/');
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            let dir = parts[..i].join("/");
            if !dirs.contains(&dir) {
                entry(out, ino, &dir, 0o040755, &[])?;
                ino += 1;
                dirs.push(dir);
            }
        }
        entry(out, ino, path, 0o100000 | (mode & 0o7777), data)?;
        ino += 1;
    }
    entry(out, 0, "TRAILER!!!", 0, &[])
}

/// One guest boot: what to run and with which devices. Built with [`Guest::new`] and
/// the setters, started with [`Guest::run`] or [`Guest::run_with`].
pub struct Guest<'a> {
    image: &'a GuestImage,
    script: String,
    files: Vec<(String, u32, Vec<u8>)>,
    archives: Vec<PathBuf>,
    initrd: Initrd,
    blk: Vec<BlkDevice>,
    net: Vec<NetDevice>,
    fs: Vec<FsDevice>,
    extra_args: Vec<String>,
    cmdline_extra: String,
    memory_mib: u32,
    cpus: u32,
    timeout: Duration,
    accel: Accel,
    vmm: Vmm,
    vhostkit: Option<PathBuf>,
    netns: Option<String>,
    echo: bool,
}

/// Guests run one at a time per process: under TCG each is CPU-bound, and the
/// timeouts assume the guest has the host to itself.
static ONE_GUEST_AT_A_TIME: Mutex<()> = Mutex::new(());

impl<'a> Guest<'a> {
    /// A guest that runs `script` as `/run.sh` (with busybox `sh`).
    ///
    /// Defaults: QEMU, the full initramfs (with fio), 2 vCPUs, 512 MiB, a 180 s
    /// timeout, accel from [`Accel::detect`], console echoed to stderr.
    pub fn new(image: &'a GuestImage, script: &str) -> Self {
        let echo = std::env::var_os("VHOSTKIT_GUEST_QUIET").is_none();
        Guest {
            image,
            script: script.to_string(),
            files: Vec::new(),
            archives: Vec::new(),
            initrd: Initrd::Full,
            blk: Vec::new(),
            net: Vec::new(),
            fs: Vec::new(),
            extra_args: Vec::new(),
            cmdline_extra: String::new(),
            memory_mib: 512,
            cpus: 2,
            timeout: Duration::from_secs(180),
            accel: Accel::detect(),
            vmm: Vmm::Qemu,
            vhostkit: None,
            netns: None,
            echo,
        }
    }

    /// Adds a vhost-user-blk-pci device.
    pub fn blk(mut self, dev: BlkDevice) -> Self {
        self.blk.push(dev);
        self
    }

    /// Adds a virtio-net device (`eth0`, `eth1`, ... in the order added).
    pub fn net(mut self, dev: NetDevice) -> Self {
        self.net.push(dev);
        self
    }

    /// Adds a virtio-fs device (mounted in the guest by its tag).
    pub fn fs(mut self, dev: FsDevice) -> Self {
        self.fs.push(dev);
        self
    }

    /// Starts QEMU inside this network namespace (`ip netns exec NS qemu-system-x86_64
    /// ...`), e.g. so that `-netdev tap,ifname=...` finds a tap made there
    /// ([`crate::netns::NetNs::add_tap`]). QEMU only.
    pub fn netns(mut self, name: impl Into<String>) -> Self {
        self.netns = Some(name.into());
        self
    }

    /// Adds a file to the guest's root (path relative to `/`).
    pub fn file(mut self, path: &str, mode: u32, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((path.to_string(), mode, contents.into()));
        self
    }

    /// Appends a prebuilt newc cpio archive (e.g. tools with their libraries, made
    /// by a script under `build/`) after the base image and before the archive
    /// holding `/run.sh`; the guest's root gets its files.
    pub fn archive(mut self, cpio: impl Into<PathBuf>) -> Self {
        self.archives.push(cpio.into());
        self
    }

    /// Extra QEMU arguments, appended after the harness's own (QEMU only: a guest
    /// booted through vhostkit refuses them).
    pub fn qemu_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Extra kernel command line words.
    pub fn cmdline(mut self, extra: &str) -> Self {
        self.cmdline_extra = extra.to_string();
        self
    }

    pub fn initrd(mut self, initrd: Initrd) -> Self {
        self.initrd = initrd;
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// How long the guest may run, from the VMM's start to its exit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How QEMU executes the guest (QEMU only; vhostkit always uses KVM).
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = accel;
        self
    }

    /// Which VMM boots the guest (default [`Vmm::Qemu`]).
    pub fn vmm(mut self, vmm: Vmm) -> Self {
        self.vmm = vmm;
        self
    }

    /// The `vhostkit` binary to run for [`Vmm::Vhostkit`] (default [`vhostkit_bin`]),
    /// e.g. `env!("CARGO_BIN_EXE_vhostkit")` in the VMM's own tests.
    pub fn vhostkit_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.vhostkit = Some(path.into());
        self
    }

    /// The accelerator the guest will run on: [`Accel::Kvm`] through vhostkit.
    fn effective_accel(&self) -> Accel {
        match self.vmm {
            Vmm::Qemu => self.accel,
            Vmm::Vhostkit => Accel::Kvm,
        }
    }

    /// Whether to copy console lines to stderr as they arrive (prefixed `guest| `).
    /// Default on; `VHOSTKIT_GUEST_QUIET=1` turns it off.
    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// Boots the guest, waits for it to power off, and returns its console.
    pub fn run(&self) -> Result<GuestOutput> {
        self.run_with(&mut |_| {})
    }

    /// Like [`Guest::run`], and calls `on_line` with every console line as it
    /// arrives (e.g. to sample a daemon's CPU time when a marker appears).
    pub fn run_with(&self, on_line: &mut dyn FnMut(&str)) -> Result<GuestOutput> {
        let _one = ONE_GUEST_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let tmp = TempDir::new("guest").map_err(io_err("cannot create a temporary folder"))?;
        let initrd = tmp.join("initrd.cpio");
        self.write_initrd(&initrd)?;
        let cmd = match self.vmm {
            Vmm::Qemu => self.qemu_command(&initrd),
            Vmm::Vhostkit => self.vhostkit_command(&initrd)?,
        };
        let accel = self.effective_accel();
        eprintln!(
            "guest: booting Linux {} through {} on {}, {} vCPU, {} MiB, {} vhost-user-blk device(s), {} virtio-net device(s), {} virtio-fs device(s), timeout {:?}",
            self.image.kernel_release,
            self.vmm,
            accel,
            self.cpus,
            self.memory_mib,
            self.blk.len(),
            self.net.len(),
            self.fs.len(),
            self.timeout
        );
        if self.vmm == Vmm::Vhostkit && !hardware_kvm() {
            eprintln!(
                "guest: WARNING: no hardware virtualization (vmx/svm) here; Linux through \
                 vhostkit will be far too slow to finish"
            );
        }
        run_vmm(cmd, self.timeout, self.echo, accel, self.vmm, on_line)
    }

    /// The kernel command line both VMMs give the guest.
    fn kernel_cmdline(&self) -> String {
        format!("console=ttyS0 quiet panic=-1 {}", self.cmdline_extra)
            .trim_end()
            .to_string()
    }

    fn write_initrd(&self, path: &Path) -> Result<()> {
        let base = match self.initrd {
            Initrd::Full => &self.image.initrd_full,
            Initrd::Mini => &self.image.initrd_mini,
        };
        let write = || -> io::Result<()> {
            let mut out = io::BufWriter::new(File::create(path)?);
            let mut len = 0;
            for archive in std::iter::once(base).chain(&self.archives) {
                // Each appended archive must start on a 4-byte boundary.
                out.write_all(&[0u8; 3][..((4 - len % 4) % 4) as usize])?;
                len = io::copy(&mut File::open(archive)?, &mut out)?;
            }
            out.write_all(&[0u8; 3][..((4 - len % 4) % 4) as usize])?;
            let mut files: Vec<(&str, u32, &[u8])> =
                vec![("run.sh", 0o755, self.script.as_bytes())];
            for (p, mode, data) in &self.files {
                files.push((p, *mode, data));
            }
            write_newc_cpio(&mut out, &files)?;
            out.flush()
        };
        write().map_err(io_err(format!(
            "cannot write the guest initrd {} (from {})",
            path.display(),
            base.display()
        )))
    }

    /// The QEMU command line for this guest.
    fn qemu_command(&self, initrd: &Path) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, "qemu-system-x86_64"]);
                cmd
            }
            None => Command::new("qemu-system-x86_64"),
        };
        cmd.args(["-machine", "q35"])
            .args(self.accel.qemu_args())
            .args(["-smp", &self.cpus.to_string()])
            .args(["-m", &format!("{}M", self.memory_mib)])
            .arg("-object")
            .arg(format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                self.memory_mib
            ))
            .args(["-numa", "node,memdev=mem"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-vga", "none", "-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(&self.image.kernel_elf)
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(self.kernel_cmdline());
        for (i, dev) in self.blk.iter().enumerate() {
            cmd.arg("-chardev")
                .arg(format!("socket,id=blk{i},path={}", dev.socket.display()));
            let mut device = format!(
                "vhost-user-blk-pci,chardev=blk{i},num-queues={}",
                dev.num_queues
            );
            for p in &dev.props {
                device.push(',');
                device.push_str(p);
            }
            cmd.arg("-device").arg(device);
        }
        for (i, dev) in self.net.iter().enumerate() {
            cmd.args(dev.qemu_args(i));
        }
        for (i, dev) in self.fs.iter().enumerate() {
            cmd.args(dev.qemu_args(i));
        }
        cmd.args(&self.extra_args);
        cmd
    }

    /// The `vhostkit run` command line for this guest: the bzImage, the same
    /// per-test initrd and kernel command line as under QEMU, one `--disk
    /// socket=PATH,num-queues=N` per [`BlkDevice`] (virtio-mmio, found by the guest
    /// through ACPI). Guest poweroff ends vhostkit with status 0.
    fn vhostkit_command(&self, initrd: &Path) -> Result<Command> {
        let refuse = |reason: String| GuestError::Run {
            reason,
            console: String::new(),
        };
        if !self.extra_args.is_empty() {
            return Err(refuse(format!(
                "QEMU arguments {:?} given for a guest booted through vhostkit",
                self.extra_args
            )));
        }
        if let Some(ns) = &self.netns {
            return Err(refuse(format!(
                "network namespace {ns} given for a guest booted through vhostkit (QEMU only)"
            )));
        }
        let program = self.vhostkit.clone().unwrap_or_else(vhostkit_bin);
        let mut cmd = Command::new(program);
        cmd.arg("run")
            .arg("--kernel")
            .arg(&self.image.kernel_bzimage)
            .arg("--initrd")
            .arg(initrd)
            .arg("--cmdline")
            .arg(self.kernel_cmdline())
            .args(["--cpus", &self.cpus.to_string()])
            .args(["--memory", &format!("{}M", self.memory_mib)]);
        for dev in &self.blk {
            if !dev.props.is_empty() {
                return Err(refuse(format!(
                    "device properties {:?} of {} are QEMU-only",
                    dev.props,
                    dev.socket.display()
                )));
            }
            let socket = dev.socket.to_str().ok_or_else(|| {
                refuse(format!("socket path {} is not UTF-8", dev.socket.display()))
            })?;
            if socket.contains(',') {
                return Err(refuse(format!(
                    "socket path {socket} contains a comma (vhostkit's --disk separator)"
                )));
            }
            cmd.arg("--disk")
                .arg(format!("socket={socket},num-queues={}", dev.num_queues));
        }
        for dev in &self.net {
            let NetBackend::VhostUser { socket } = &dev.backend else {
                return Err(refuse(format!(
                    "{:?}: QEMU's tap backend is QEMU-only (vhostkit serves vhost-user-net)",
                    dev.backend
                )));
            };
            let socket = socket
                .to_str()
                .ok_or_else(|| refuse(format!("socket path {} is not UTF-8", socket.display())))?;
            if socket.contains(',') {
                return Err(refuse(format!(
                    "socket path {socket} contains a comma (vhostkit's --net separator)"
                )));
            }
            let mut net = format!("socket={socket}");
            if let Some(mac) = &dev.mac {
                net.push_str(&format!(",mac={mac}"));
            }
            net.push_str(&format!(",num-queue-pairs={}", dev.queue_pairs.max(1)));
            cmd.arg("--net").arg(net);
        }
        for dev in &self.fs {
            let socket = dev.socket.to_str().ok_or_else(|| {
                refuse(format!("socket path {} is not UTF-8", dev.socket.display()))
            })?;
            if socket.contains(',') || dev.tag.contains(',') {
                return Err(refuse(format!(
                    "socket path {socket} or tag {} contains a comma (vhostkit's --fs separator)",
                    dev.tag
                )));
            }
            let mut fs = format!("socket={socket},tag={}", dev.tag);
            if let Some(n) = dev.num_request_queues {
                fs.push_str(&format!(",num-queues={n}"));
            }
            cmd.arg("--fs").arg(fs);
        }
        Ok(cmd)
    }

    /// The VMM's command line as one shell-quoted string, for logs and reports
    /// (`initrd` stands for the per-test initrd the run writes).
    pub fn command_line(&self, initrd: &Path) -> Result<String> {
        let cmd = match self.vmm {
            Vmm::Qemu => self.qemu_command(initrd),
            Vmm::Vhostkit => self.vhostkit_command(initrd)?,
        };
        let quote = |s: &std::ffi::OsStr| {
            let s = s.to_string_lossy();
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@+".contains(c))
            {
                s.into_owned()
            } else {
                format!("'{}'", s.replace('\'', "'\\''"))
            }
        };
        let mut words = vec![quote(cmd.get_program())];
        words.extend(cmd.get_args().map(quote));
        Ok(words.join(" "))
    }

    /// Writes the per-test initrd (the base image plus a cpio with `/run.sh` and
    /// the added files) to `path`, as a run does. For running the VMM by hand.
    pub fn write_initrd_to(&self, path: &Path) -> Result<()> {
        self.write_initrd(path)
    }
}

enum Event {
    Line(String),
    Eof,
}

fn run_vmm(
    mut cmd: Command,
    timeout: Duration,
    echo: bool,
    accel: Accel,
    vmm: Vmm,
    on_line: &mut dyn FnMut(&str),
) -> Result<GuestOutput> {
    let start = Instant::now();
    let spawn_error = match vmm {
        Vmm::Qemu => "cannot start qemu-system-x86_64 (install qemu-system-x86)".to_string(),
        Vmm::Vhostkit => format!(
            "cannot start {} (build it: cargo build --workspace --bins)",
            Path::new(cmd.get_program()).display()
        ),
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(spawn_error))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr_pipe = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']).to_string();
                    if tx.send(Event::Line(line)).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Event::Eof);
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });

    let deadline = start + timeout;
    let mut console = String::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Line(line)) => {
                if echo {
                    eprintln!("guest| {line}");
                }
                on_line(&line);
                console.push_str(&line);
                console.push('\n');
            }
            Ok(Event::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
        }
    }
    if timed_out {
        let _ = child.kill();
    }
    // stdout is closed: the VMM is exiting; give it a moment, then insist.
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline + Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().map_err(io_err("cannot wait for the VMM"))?;
            }
            Err(e) => return Err(io_err("cannot wait for the VMM")(e)),
        }
    };
    let _ = reader.join();
    // Lines the reader queued after we stopped listening (on timeout).
    while let Ok(Event::Line(line)) = rx.try_recv() {
        console.push_str(&line);
        console.push('\n');
    }
    let stderr = stderr_reader.join().unwrap_or_default();
    let elapsed = start.elapsed();
    if timed_out {
        return Err(GuestError::Timeout {
            after: elapsed,
            console,
            stderr,
        });
    }
    if !status.success() {
        return Err(GuestError::QemuFailed {
            vmm,
            status,
            console,
            stderr,
        });
    }
    eprintln!(
        "guest: powered off after {:.1} s ({vmm}, {}); {vmm} exited with {status}",
        elapsed.as_secs_f64(),
        match accel {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        }
    );
    Ok(GuestOutput {
        console,
        stderr,
        accel,
        vmm,
        exit_code: status.code(),
        elapsed,
    })
}

/// What a guest printed, and how it ran.
#[derive(Clone, Debug)]
pub struct GuestOutput {
    /// The serial console, one line per line, `\r` removed.
    pub console: String,
    /// The VMM's own stderr (warnings, vhostkit's log).
    pub stderr: String,
    pub accel: Accel,
    /// The VMM that ran the guest.
    pub vmm: Vmm,
    /// The VMM's exit code (0: the guest powered off; anything else is an error).
    pub exit_code: Option<i32>,
    /// From the VMM's start to its exit.
    pub elapsed: Duration,
}

impl GuestOutput {
    /// `run.sh`'s exit status, if `/init` reported one.
    pub fn run_rc(&self) -> Option<i32> {
        self.console
            .lines()
            .find_map(|l| after_marker(l, MARK_RUN_END))
            .and_then(|rc| rc.trim().parse().ok())
    }

    /// Checks that `/init` started `run.sh`, that it exited with 0, and that the
    /// guest powered off by itself.
    /// The console and a daemon's log (`what`, from `log_path`), for a failing
    /// assertion's message.
    pub fn context(&self, what: &str, log_path: &Path) -> String {
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        format!(
            "\n----- guest console -----\n{}\n----- {what} log -----\n{log}",
            self.console
        )
    }

    pub fn check_run_ok(&self) -> Result<()> {
        let has = |mark: &str| {
            self.console
                .lines()
                .any(|l| after_marker(l, mark).is_some())
        };
        let fail = |reason: String| {
            Err(GuestError::Run {
                reason,
                console: self.console.clone(),
            })
        };
        if !has(MARK_RUN_BEGIN) {
            return fail(format!(
                "no {MARK_RUN_BEGIN} marker: /init did not reach run.sh"
            ));
        }
        match self.run_rc() {
            Some(0) => {}
            Some(rc) => return fail(format!("run.sh exited with status {rc}")),
            None => return fail("run.sh did not finish (no VHOSTKIT-RUN-END marker)".into()),
        }
        if !has(MARK_POWEROFF) {
            return fail(format!("no {MARK_POWEROFF} marker"));
        }
        Ok(())
    }

    /// All `VHOSTKIT-RESULT <key> <value>` lines, in order.
    pub fn results(&self) -> Vec<(String, String)> {
        parse_results(&self.console)
    }

    /// The value of the last `VHOSTKIT-RESULT <key> ...` line.
    pub fn result(&self, key: &str) -> Option<&str> {
        self.console
            .lines()
            .rev()
            .filter_map(|l| after_marker(l, MARK_RESULT))
            .find_map(|rest| {
                let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
                (k == key).then_some(v.trim())
            })
    }

    /// [`GuestOutput::result`], or a [`GuestError::Run`] naming the missing key.
    pub fn require(&self, key: &str) -> Result<&str> {
        self.result(key).ok_or_else(|| GuestError::Run {
            reason: format!("no `VHOSTKIT-RESULT {key}` line"),
            console: self.console.clone(),
        })
    }

    /// The lines between `VHOSTKIT-BEGIN <name>` and `VHOSTKIT-END <name>`.
    pub fn section(&self, name: &str) -> Option<String> {
        section(&self.console, name)
    }

    /// All sections called `name`, in order (a script may print one per fio job).
    pub fn sections(&self, name: &str) -> Vec<String> {
        sections(&self.console, name)
    }
}

/// The rest of `line` after `mark`, wherever the mark starts: a guest program's
/// progress output (fio's ETA line ends in `\r`, not `\n`) may precede it.
fn after_marker<'l>(line: &'l str, mark: &str) -> Option<&'l str> {
    line.find(mark).map(|at| &line[at + mark.len()..])
}

/// All `VHOSTKIT-RESULT <key> <value>` lines of `console`.
pub fn parse_results(console: &str) -> Vec<(String, String)> {
    console
        .lines()
        .filter_map(|l| after_marker(l, MARK_RESULT))
        .map(|rest| {
            let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
            (k.to_string(), v.trim().to_string())
        })
        .collect()
}

/// The first block between `VHOSTKIT-BEGIN <name>` and `VHOSTKIT-END <name>` lines.
pub fn section(console: &str, name: &str) -> Option<String> {
    sections(console, name).into_iter().next()
}

/// Every block between `VHOSTKIT-BEGIN <name>` and `VHOSTKIT-END <name>` lines.
/// A block without its end line is left out.
pub fn sections(console: &str, name: &str) -> Vec<String> {
    let begin = format!("VHOSTKIT-BEGIN {name}");
    let end = format!("VHOSTKIT-END {name}");
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in console.lines() {
        if after_marker(line, &begin).is_some_and(|rest| rest.trim().is_empty()) {
            current = Some(String::new());
        } else if after_marker(line, &end).is_some_and(|rest| rest.trim().is_empty()) {
            if let Some(block) = current.take() {
                out.push(block);
            }
        } else if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "VHOSTKIT-INIT kernel 6.1\r\nVHOSTKIT-RUN-BEGIN\nVHOSTKIT-RESULT fio_rc 0\n\
VHOSTKIT-BEGIN fio\n{\"a\": 1}\nVHOSTKIT-END fio\nVHOSTKIT-RESULT mq_queues 2\nVHOSTKIT-RESULT fio_rc 3\n\
VHOSTKIT-BEGIN fio\n{\"b\": 2}\nVHOSTKIT-END fio\nJobs: 1 (f=1)\rVHOSTKIT-RESULT late 1\n\
VHOSTKIT-RUN-END rc=0\nVHOSTKIT-POWEROFF\n";

    fn output(console: &str) -> GuestOutput {
        GuestOutput {
            console: console.replace('\r', ""),
            stderr: String::new(),
            accel: Accel::Tcg,
            vmm: Vmm::Qemu,
            exit_code: Some(0),
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn results_and_sections() {
        let out = output(CONSOLE);
        assert_eq!(out.result("mq_queues"), Some("2"));
        assert_eq!(out.result("fio_rc"), Some("3"), "the last line wins");
        assert_eq!(out.result("absent"), None);
        assert!(out.require("absent").is_err());
        assert_eq!(
            out.result("late"),
            Some("1"),
            "a marker after progress output"
        );
        assert_eq!(out.results().len(), 4);
        assert_eq!(out.section("fio").as_deref(), Some("{\"a\": 1}\n"));
        assert_eq!(out.sections("fio").len(), 2);
        assert_eq!(out.run_rc(), Some(0));
        out.check_run_ok().unwrap();
    }

    #[test]
    fn check_run_ok_catches_failures() {
        let failed = output(&CONSOLE.replace("rc=0", "rc=1"));
        let err = failed.check_run_ok().unwrap_err().to_string();
        assert!(err.contains("status 1"), "{err}");
        let no_poweroff = output(&CONSOLE.replace(MARK_POWEROFF, ""));
        assert!(no_poweroff.check_run_ok().is_err());
        let no_run = output("VHOSTKIT-INIT kernel 6.1\n");
        assert!(no_run.check_run_ok().is_err());
    }

    fn fake_image() -> GuestImage {
        GuestImage {
            dir: PathBuf::from("/img"),
            kernel_release: "6.1.0-test".into(),
            kernel_elf: PathBuf::from("/img/vmlinux"),
            kernel_bzimage: PathBuf::from("/img/vmlinuz"),
            initrd_full: PathBuf::from("/img/initramfs.cpio"),
            initrd_mini: PathBuf::from("/img/initramfs-mini.cpio"),
        }
    }

    #[test]
    fn vhostkit_command_line() {
        let image = fake_image();
        let guest = Guest::new(&image, "true")
            .vmm(Vmm::Vhostkit)
            .vhostkit_path("/bin/vhostkit")
            .cpus(2)
            .memory_mib(1024)
            .cmdline("foo=1")
            .blk(BlkDevice::new("/tmp/a.sock", 2))
            .blk(BlkDevice::new("/tmp/b.sock", 1))
            .net(NetDevice::vhost_user("/tmp/n.sock", 2))
            .net(NetDevice::vhost_user("/tmp/m.sock", 1).mac("52:54:00:00:00:02"))
            .fs(FsDevice::new("/tmp/f.sock", "share").queues(2))
            .fs(FsDevice::new("/tmp/g.sock", "other"));
        let line = guest.command_line(Path::new("/tmp/initrd.cpio")).unwrap();
        assert_eq!(
            line,
            "/bin/vhostkit run --kernel /img/vmlinuz --initrd /tmp/initrd.cpio \
             --cmdline 'console=ttyS0 quiet panic=-1 foo=1' --cpus 2 --memory 1024M \
             --disk socket=/tmp/a.sock,num-queues=2 --disk socket=/tmp/b.sock,num-queues=1 \
             --net socket=/tmp/n.sock,num-queue-pairs=2 \
             --net socket=/tmp/m.sock,mac=52:54:00:00:00:02,num-queue-pairs=1 \
             --fs socket=/tmp/f.sock,tag=share,num-queues=2 --fs socket=/tmp/g.sock,tag=other"
        );
        // QEMU's tap backend has no vhostkit form.
        let tap = Guest::new(&image, "true")
            .vmm(Vmm::Vhostkit)
            .net(NetDevice::tap("vkt0", 1));
        assert!(tap.command_line(Path::new("/i")).is_err());
        assert_eq!(guest.effective_accel(), Accel::Kvm);
        // QEMU-only settings are refused, not silently dropped.
        let mut dev = BlkDevice::new("/tmp/a.sock", 1);
        dev.props.push("queue-size=256".into());
        let with_props = Guest::new(&image, "true").vmm(Vmm::Vhostkit).blk(dev);
        assert!(with_props.command_line(Path::new("/i")).is_err());
        let with_args = Guest::new(&image, "true")
            .vmm(Vmm::Vhostkit)
            .qemu_args(["-s"]);
        assert!(with_args.command_line(Path::new("/i")).is_err());
        let comma = Guest::new(&image, "true")
            .vmm(Vmm::Vhostkit)
            .blk(BlkDevice::new("/tmp/a,b.sock", 1));
        assert!(comma.command_line(Path::new("/i")).is_err());
    }

    #[test]
    fn qemu_command_line_unchanged() {
        let image = fake_image();
        let line = Guest::new(&image, "true")
            .accel(Accel::Tcg)
            .blk(BlkDevice::new("/tmp/a.sock", 2))
            .command_line(Path::new("/tmp/initrd.cpio"))
            .unwrap();
        assert!(line.starts_with("qemu-system-x86_64 -machine q35 -accel tcg,thread=multi"));
        assert!(line.contains("-kernel /img/vmlinux -initrd /tmp/initrd.cpio"));
        assert!(line.contains("-append 'console=ttyS0 quiet panic=-1'"));
        assert!(line.contains("vhost-user-blk-pci,chardev=blk0,num-queues=2"));
        assert!(!line.contains("netdev"));
    }

    #[test]
    fn qemu_net_command_line() {
        let image = fake_image();
        let line = Guest::new(&image, "true")
            .accel(Accel::Tcg)
            .net(NetDevice::vhost_user("/tmp/n.sock", 2).mac("52:54:00:12:34:56"))
            .net(NetDevice::tap("vkt7", 2))
            .net(NetDevice::tap("vkt8", 1))
            .command_line(Path::new("/tmp/initrd.cpio"))
            .unwrap();
        assert!(
            line.contains(
                "-chardev socket,id=net0,path=/tmp/n.sock \
                 -netdev vhost-user,id=n0,chardev=net0,queues=2 \
                 -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,mq=on,vectors=0"
            ),
            "{line}"
        );
        assert!(
            line.contains(
                "-netdev tap,id=n1,ifname=vkt7,script=no,downscript=no,vhost=off,queues=2 \
                 -device virtio-net-pci,netdev=n1,mq=on,vectors=0"
            ),
            "{line}"
        );
        assert!(
            line.contains(
                "-netdev tap,id=n2,ifname=vkt8,script=no,downscript=no,vhost=off \
                 -device virtio-net-pci,netdev=n2,vectors=0"
            ),
            "{line}"
        );
    }

    #[test]
    fn qemu_fs_command_line() {
        let image = fake_image();
        let line = Guest::new(&image, "true")
            .accel(Accel::Tcg)
            .fs(FsDevice::new("/tmp/f.sock", "share"))
            .fs(FsDevice::new("/tmp/g.sock", "two").queues(2))
            .command_line(Path::new("/tmp/initrd.cpio"))
            .unwrap();
        assert!(
            line.contains(
                "-chardev socket,id=fs0,path=/tmp/f.sock \
                 -device vhost-user-fs-pci,chardev=fs0,tag=share \
                 -chardev socket,id=fs1,path=/tmp/g.sock \
                 -device vhost-user-fs-pci,chardev=fs1,tag=two,num-request-queues=2"
            ),
            "{line}"
        );
        assert!(line.contains("memory-backend-memfd,id=mem,size=512M,share=on"));
        let comma = Guest::new(&image, "true")
            .vmm(Vmm::Vhostkit)
            .fs(FsDevice::new("/tmp/f.sock", "a,b"));
        assert!(comma.command_line(Path::new("/i")).is_err());
    }

    #[test]
    fn cpio_is_newc_and_aligned() {
        let mut buf = Vec::new();
        write_newc_cpio(
            &mut buf,
            &[("run.sh", 0o755, b"echo hi\n"), ("etc/x/y", 0o644, b"1")],
        )
        .unwrap();
        assert_eq!(buf.len() % 4, 0);
        assert!(buf.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&buf);
        for name in ["run.sh\0", "etc\0", "etc/x\0", "etc/x/y\0", "TRAILER!!!\0"] {
            assert!(text.contains(name), "{name} missing");
        }
        // The file header carries mode 0100755 and size 8.
        let at = text.find("run.sh").unwrap() - 110;
        assert_eq!(&text[at + 14..at + 22], "000081ed");
        assert_eq!(&text[at + 54..at + 62], "00000008");
    }

    #[test]
    fn cpio_unpacks_with_gnu_cpio() {
        if Command::new("cpio").arg("--version").output().is_err() {
            crate::skip::skip(format_args!("no cpio on this host"));
            return;
        }
        let dir = TempDir::new("cpio-test").unwrap();
        let mut buf = Vec::new();
        write_newc_cpio(
            &mut buf,
            &[("run.sh", 0o755, b"echo hi\n"), ("a/b", 0o600, b"xyz")],
        )
        .unwrap();
        let mut child = Command::new("cpio")
            .args(["-idm", "--quiet"])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&buf).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(fs::read(dir.join("run.sh")).unwrap(), b"echo hi\n");
        assert_eq!(fs::read(dir.join("a/b")).unwrap(), b"xyz");
    }
}
