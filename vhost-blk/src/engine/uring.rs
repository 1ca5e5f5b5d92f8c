use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};
use log::debug;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::sync::{rw_all, rw_once};
use super::{Completion, IoEngine, IoOp};

/// Whether a file takes `RWF_NOWAIT` for one direction (reads or writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nowait {
    Unknown,
    Supported,
    Unsupported,
}

/// One io_uring per queue: operations are queued as SQEs, started with one
/// `io_uring_enter` per batch, and completions are announced on an eventfd.
///
/// Fast path for an idle queue: when nothing is in flight, a buffered read or
/// write is first tried inline. io_uring hands operations on files without
/// `RWF_NOWAIT` support (tmpfs; buffered writes on many file systems) to a kernel
/// worker thread, and page-cache misses too, which costs a cross-CPU wake-up per
/// request: at queue depth 1 that wake-up is most of the latency. Inline, a
/// page-cache hit completes in the worker at once; a miss (EAGAIN under
/// `RWF_NOWAIT`) still goes to io_uring. Once requests are in flight, everything
/// goes through the ring, keeping its batching and parallelism.
pub struct UringEngine {
    ring: IoUring,
    file: Arc<File>,
    eventfd: EventFd,
    /// Operations in the ring (queued or started, not yet reaped).
    ring_in_flight: usize,
    queued: usize,
    /// Operations completed inline, not yet reaped.
    ready: Vec<Completion>,
    /// O_DIRECT: no inline path (a direct read waits for the device).
    direct: bool,
    read_nowait: Nowait,
    write_nowait: Nowait,
    /// The thread that runs block-device discards (started at the first one).
    discards: Option<DiscardThread>,
}

/// Runs BLKDISCARD ioctls, which io_uring cannot, off the queue's worker: the
/// worker goes on serving while a discard runs, and learns of its end through the
/// engine's completion eventfd, as of any other completion.
struct DiscardThread {
    requests: Option<std::sync::mpsc::Sender<(u64, u64, u64)>>,
    done: Arc<std::sync::Mutex<Vec<Completion>>>,
    in_flight: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DiscardThread {
    fn start(file: Arc<File>, eventfd: &EventFd) -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<(u64, u64, u64)>();
        let done = Arc::new(std::sync::Mutex::new(Vec::new()));
        let wake = eventfd.try_clone()?;
        let results = done.clone();
        let thread = std::thread::Builder::new()
            .name("blk-discard".into())
            .spawn(move || {
                for (tag, offset, len) in rx {
                    let result = super::blkdiscard(file.as_raw_fd(), offset, len);
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((tag, result));
                    let _ = wake.write(1);
                }
            })?;
        Ok(DiscardThread {
            requests: Some(tx),
            done,
            in_flight: 0,
            thread: Some(thread),
        })
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        self.in_flight -= done.len();
        out.append(&mut done);
    }

    fn finished(&self) -> bool {
        !self
            .done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

impl Drop for DiscardThread {
    fn drop(&mut self) {
        // The thread ends once it has run what it was sent.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The only operations the ring runs. io_uring's operations are not system calls,
/// so seccomp does not see them: without this list, code that took over the
/// daemon could open files (IORING_OP_OPENAT) or connect sockets through the ring
/// whatever `--seccomp` says. With it, anything else completes with EACCES, and no
/// register operation is allowed once the ring is enabled.
const ALLOWED_OPS: [u8; 4] = [
    opcode::Readv::CODE,
    opcode::Writev::CODE,
    opcode::Fsync::CODE,
    opcode::Fallocate::CODE,
];

/// Registers [`ALLOWED_OPS`] as the ring's restrictions and enables it.
fn restrict(ring: &IoUring) -> io::Result<()> {
    let mut restrictions: Vec<io_uring::register::Restriction> = ALLOWED_OPS
        .iter()
        .map(|&op| io_uring::register::Restriction::sqe_op(op))
        .collect();
    ring.submitter().register_restrictions(&mut restrictions)?;
    ring.submitter().register_enable_rings()
}

/// Most operations one engine keeps in flight: a split queue's largest size.
pub const MAX_IN_FLIGHT: u32 = 32768;

impl UringEngine {
    /// A ring for `depth` operations in flight (the queue size).
    pub fn new(file: Arc<File>, depth: u32) -> io::Result<Self> {
        // The completion ring holds every operation the queue can have in flight
        // (one per descriptor chain, up to the queue size): a completion that does
        // not fit would wait in the kernel's overflow list, and a submit could fail
        // with EBUSY until it is reaped. The submission ring may be smaller: a full
        // one is started (commit) to make room.
        let depth = depth.clamp(1, MAX_IN_FLIGHT);
        let sq_entries = depth.min(4096);
        let cq_entries = depth.next_power_of_two().max(sq_entries * 2);
        // Cooperative task running saves an interrupt per completion (Linux 5.19+);
        // fall back to a plain ring on older kernels. The ring starts disabled, so
        // that its restrictions are in place before it can run anything.
        let build = |coop: bool, disabled: bool| {
            let mut builder = IoUring::builder();
            if coop {
                builder.setup_coop_taskrun();
            }
            if disabled {
                builder.setup_r_disabled();
            }
            builder.setup_cqsize(cq_entries).build(sq_entries)
        };
        let (ring, restricted) = match build(true, true) {
            Ok(ring) => (ring, true),
            Err(e) => {
                debug!("io_uring with COOP_TASKRUN refused ({e}); using a plain ring");
                match build(false, true) {
                    Ok(ring) => (ring, true),
                    // Linux before 5.10 has no restrictions: an unrestricted ring.
                    Err(_) => (build(false, false)?, false),
                }
            }
        };
        let eventfd = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        if restricted {
            restrict(&ring)?;
        }
        // SAFETY: F_GETFL on an open fd has no memory-safety preconditions.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        Ok(UringEngine {
            ring,
            file,
            eventfd,
            ring_in_flight: 0,
            queued: 0,
            ready: Vec::new(),
            direct: flags >= 0 && flags & libc::O_DIRECT != 0,
            read_nowait: Nowait::Unknown,
            write_nowait: Nowait::Unknown,
            discards: None,
        })
    }

    /// Runs `op` in the calling thread if the queue is idle and that is cheap;
    /// returns the bytes moved, or None to go through the ring.
    fn try_inline(&mut self, op: &IoOp<'_>) -> Option<usize> {
        if self.direct || self.ring_in_flight > 0 || !self.ready.is_empty() {
            return None;
        }
        let (offset, iovecs, write) = match *op {
            IoOp::Read { offset, iovecs } => (offset, iovecs, false),
            // Write-through waits for the device: leave it to the ring.
            IoOp::Write {
                offset,
                iovecs,
                sync: false,
            } => (offset, iovecs, true),
            _ => return None,
        };
        if iovecs.len() > libc::UIO_MAXIOV as usize {
            return None;
        }
        let len: usize = iovecs.iter().map(|v| v.iov_len).sum();
        let fd = self.file.as_raw_fd();
        let state = if write {
            &mut self.write_nowait
        } else {
            &mut self.read_nowait
        };
        if *state != Nowait::Unsupported {
            match rw_once(fd, offset, iovecs, write, libc::RWF_NOWAIT) {
                Ok(n) if n == len => {
                    *state = Nowait::Supported;
                    return Some(n);
                }
                // Would block (not in the page cache) or partly done: the ring does
                // the whole operation, asynchronously.
                Ok(_) => return None,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    *state = Nowait::Supported;
                    return None;
                }
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    debug!(
                        "RWF_NOWAIT {} unsupported on this file; idle-queue {} run inline",
                        if write { "writes" } else { "reads" },
                        if write { "writes" } else { "reads" }
                    );
                    *state = Nowait::Unsupported;
                }
                // Let the ring try, and report its error if it fails too.
                Err(_) => return None,
            }
        }
        // No RWF_NOWAIT on this file: io_uring would run the operation in a kernel
        // worker thread anyway, so run it here while the queue has nothing else
        // to do.
        match rw_all(fd, offset, iovecs, write, 0) {
            Ok(n) if n == len => Some(n),
            _ => None,
        }
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the entry's buffers stay valid until its completion is reaped
            // (the caller's contract on IoEngine::submit).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                self.queued += 1;
                return Ok(());
            }
            // Submission queue full: start what is queued to make room.
            self.commit()?;
        }
    }
}

impl IoEngine for UringEngine {
    unsafe fn submit(&mut self, tag: u64, op: IoOp<'_>) -> io::Result<()> {
        if let IoOp::Discard { offset, len } = op {
            if self.discards.is_none() {
                self.discards = Some(DiscardThread::start(self.file.clone(), &self.eventfd)?);
            }
            let discards = self.discards.as_mut().expect("started above");
            let sent = discards
                .requests
                .as_ref()
                .is_some_and(|tx| tx.send((tag, offset, len)).is_ok());
            if !sent {
                return Err(io::Error::other("the discard thread is gone"));
            }
            discards.in_flight += 1;
            return Ok(());
        }
        if let Some(n) = self.try_inline(&op) {
            self.ready.push((tag, Ok(n)));
            return Ok(());
        }
        let fd = types::Fd(self.file.as_raw_fd());
        let entry = match op {
            IoOp::Read { offset, iovecs } => {
                opcode::Readv::new(fd, iovecs.as_ptr(), iovec_count(iovecs))
                    .offset(offset)
                    .build()
            }
            IoOp::Write {
                offset,
                iovecs,
                sync,
            } => opcode::Writev::new(fd, iovecs.as_ptr(), iovec_count(iovecs))
                .offset(offset)
                .rw_flags(if sync { libc::RWF_DSYNC } else { 0 })
                .build(),
            IoOp::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            IoOp::Fallocate { mode, offset, len } => opcode::Fallocate::new(fd, len)
                .offset(offset)
                .mode(mode)
                .build(),
            IoOp::Discard { .. } => unreachable!("handled above"),
        };
        self.push(entry.user_data(tag))?;
        self.ring_in_flight += 1;
        Ok(())
    }

    fn commit(&mut self) -> io::Result<()> {
        if self.queued == 0 {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => {
                    self.queued = 0;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The completion queue is full: the caller reaps, then commits again.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.ready);
        if let Some(discards) = &mut self.discards {
            discards.reap(out);
        }
        for cqe in self.ring.completion() {
            self.ring_in_flight = self.ring_in_flight.saturating_sub(1);
            let result = cqe.result();
            let outcome =
                usize::try_from(result).map_err(|_| io::Error::from_raw_os_error(-result));
            out.push((cqe.user_data(), outcome));
        }
    }

    fn wait(&mut self) -> io::Result<()> {
        if self.ring_in_flight == 0 {
            // Only discards (if anything) in flight: sleep until the thread says one
            // ended. Clear the eventfd first, then look: the thread posts a result
            // before it writes the eventfd, so none is missed.
            if let Some(discards) = &self.discards {
                if discards.in_flight > 0 {
                    let _ = self.eventfd.read();
                    if !discards.finished() {
                        let mut pfd = libc::pollfd {
                            fd: self.eventfd.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd for the length given.
                        unsafe { libc::poll(&mut pfd, 1, -1) };
                    }
                }
            }
            return Ok(());
        }
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {
                    self.queued = 0;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.ring_in_flight + self.ready.len() + self.discards.as_ref().map_or(0, |d| d.in_flight)
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.eventfd.as_raw_fd())
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        // The kernel may still be writing into guest buffers: wait for everything in
        // flight before the ring (and then the guest memory mapping) goes away.
        let mut sink = Vec::new();
        while self.ring_in_flight > 0 {
            if self.wait().is_err() {
                break;
            }
            self.reap(&mut sink);
            sink.clear();
        }
    }
}

/// An iovec array's length as an io_uring entry takes it. Requests have at most
/// UIO_MAXIOV buffers (the worker refuses more), far below u32::MAX.
fn iovec_count(iovecs: &[libc::iovec]) -> u32 {
    u32::try_from(iovecs.len()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn temp_file(dir: &Path, name: &str, data: &[u8]) -> (PathBuf, Arc<File>) {
        let path = dir.join(format!("vhostkit-uring-{name}-{}", std::process::id()));
        std::fs::write(&path, data).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (path, Arc::new(file))
    }

    fn iov(buf: &mut [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    /// On an idle ring the first read completes inside submit (no commit, no
    /// wait); a second one submitted before the first is reaped goes through the
    /// ring. Both read the right bytes, on tmpfs (no RWF_NOWAIT) and on the root
    /// file system.
    fn idle_inline_then_ring(dir: &Path) {
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let (path, file) = temp_file(dir, "inline", &data);
        let mut engine = UringEngine::new(file, 8).unwrap();
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        let iov_a = [iov(&mut a)];
        let iov_b = [iov(&mut b)];
        let mut done = Vec::new();
        // SAFETY: the buffers outlive the engine's use of them: both operations
        // are reaped below before the buffers are read or dropped.
        unsafe {
            engine
                .submit(
                    1,
                    IoOp::Read {
                        offset: 0,
                        iovecs: &iov_a,
                    },
                )
                .unwrap();
        }
        engine.reap(&mut done);
        assert_eq!(done.len(), 1, "idle-queue read done inline");
        assert_eq!(done[0].0, 1);
        assert_eq!(*done[0].1.as_ref().unwrap(), 4096);

        // SAFETY: as above.
        unsafe {
            engine
                .submit(
                    2,
                    IoOp::Read {
                        offset: 4096,
                        iovecs: &iov_b,
                    },
                )
                .unwrap();
            engine.submit(3, IoOp::Flush).unwrap();
        }
        // Not idle any more (tag 2 is in the ring before the commit).
        assert_eq!(engine.in_flight(), 2);
        engine.commit().unwrap();
        let mut rest = Vec::new();
        while rest.len() < 2 {
            engine.wait().unwrap();
            engine.reap(&mut rest);
        }
        rest.sort_by_key(|c| c.0);
        assert_eq!(rest[0].0, 2);
        assert_eq!(*rest[0].1.as_ref().unwrap(), 4096);
        assert!(rest[1].1.is_ok(), "flush");
        assert_eq!(&a[..], &data[..4096]);
        assert_eq!(&b[..], &data[4096..]);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn idle_read_inline_on_tmpfs() {
        idle_inline_then_ring(Path::new("/dev/shm"));
    }

    #[test]
    fn idle_read_inline_on_root_fs() {
        idle_inline_then_ring(&std::env::temp_dir());
    }

    /// The ring runs the engine's operations and nothing else: an operation off
    /// the list (opening a file, a no-op) completes with EACCES.
    #[test]
    fn the_ring_runs_only_the_engines_operations() {
        let dir = std::env::temp_dir();
        let (path, file) = temp_file(&dir, "restricted", &[7u8; 4096]);
        let mut engine = UringEngine::new(file, 8).unwrap();
        let name = c"/etc/hostname";
        let forbidden = [
            opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), name.as_ptr())
                .build()
                .user_data(1),
            opcode::Nop::new().build().user_data(2),
        ];
        let mut results = Vec::new();
        for entry in &forbidden {
            // SAFETY: the OpenAt path is a static string; Nop has no buffers.
            unsafe { engine.ring.submission().push(entry).unwrap() };
            engine.ring.submit_and_wait(1).unwrap();
            results.extend(
                engine
                    .ring
                    .completion()
                    .map(|c| (c.user_data(), c.result())),
            );
        }
        assert_eq!(results, [(1, -libc::EACCES), (2, -libc::EACCES)]);
        // The engine's own operations still run.
        let mut buf = vec![0u8; 4096];
        let v = [iov(&mut buf)];
        // SAFETY: the buffer outlives the operations, which are reaped below.
        unsafe {
            engine
                .submit(
                    3,
                    IoOp::Fallocate {
                        mode: 0,
                        offset: 0,
                        len: 8192,
                    },
                )
                .unwrap();
            engine
                .submit(
                    4,
                    IoOp::Read {
                        offset: 0,
                        iovecs: &v,
                    },
                )
                .unwrap();
        }
        engine.commit().unwrap();
        let mut done = Vec::new();
        while done.len() < 2 {
            engine.wait().unwrap();
            engine.reap(&mut done);
        }
        assert!(done.iter().all(|(_, r)| r.is_ok()), "{done:?}");
        assert_eq!(buf, vec![7u8; 4096]);
        std::fs::remove_file(path).unwrap();
    }

    /// A discard runs on the engine's thread: submit returns at once, wait sleeps
    /// until it ended, the eventfd says so, and reap hands its result (here ENOTTY:
    /// BLKDISCARD on a file) with its tag.
    #[test]
    fn discards_run_off_the_worker() {
        let dir = std::env::temp_dir();
        let (path, file) = temp_file(&dir, "discard", &[0u8; 4096]);
        let mut engine = UringEngine::new(file, 8).unwrap();
        // SAFETY: a discard touches no memory of ours.
        unsafe {
            engine.submit(
                5,
                IoOp::Discard {
                    offset: 0,
                    len: 4096,
                },
            )
        }
        .unwrap();
        assert_eq!(engine.in_flight(), 1);
        let mut done = Vec::new();
        while done.is_empty() {
            engine.wait().unwrap();
            engine.reap(&mut done);
        }
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0, 5);
        let err = done[0].1.as_ref().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY), "{err}");
        assert_eq!(engine.in_flight(), 0);
        drop(engine);
        std::fs::remove_file(path).unwrap();
    }

    /// Every request a queue of the largest size can have in flight has room in the
    /// completion ring.
    #[test]
    fn the_completion_ring_holds_a_whole_queue() {
        let dir = std::env::temp_dir();
        let (path, file) = temp_file(&dir, "cq", &[0u8; 512]);
        for depth in [1, 256, 1024, 4096, 16384, MAX_IN_FLIGHT] {
            let mut engine = UringEngine::new(file.clone(), depth).unwrap();
            let capacity = engine.ring.completion().capacity();
            assert!(
                capacity >= depth as usize,
                "queue {depth}: {capacity} completions"
            );
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn write_through_never_runs_inline() {
        let dir = std::env::temp_dir();
        let (path, file) = temp_file(&dir, "wt", &[0u8; 4096]);
        let mut engine = UringEngine::new(file, 4).unwrap();
        let mut buf = vec![7u8; 4096];
        let v = [iov(&mut buf)];
        // SAFETY: the buffer outlives the operation, which is reaped below.
        unsafe {
            engine
                .submit(
                    9,
                    IoOp::Write {
                        offset: 0,
                        iovecs: &v,
                        sync: true,
                    },
                )
                .unwrap();
        }
        let mut done = Vec::new();
        engine.reap(&mut done);
        assert!(done.is_empty(), "write-through went through the ring");
        engine.commit().unwrap();
        while done.is_empty() {
            engine.wait().unwrap();
            engine.reap(&mut done);
        }
        assert_eq!(*done[0].1.as_ref().unwrap(), 4096);
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 4096]);
        std::fs::remove_file(path).unwrap();
    }
}
