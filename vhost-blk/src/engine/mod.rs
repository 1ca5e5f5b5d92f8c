//! I/O engines: how reads, writes and flushes reach the disk. The request code
//! submits operations and collects completions the same way whichever is chosen.
//!
//! - `io_uring`: many operations in flight per queue, one submit system call per
//!   batch, completions signalled through an eventfd.
//! - `sync`: preadv/pwritev/fdatasync in the queue's worker thread.
//! - `null`: completes every operation at once without touching the disk (shows
//!   the transport's ceiling in benchmarks).

mod sync;
mod uring;

pub use sync::SyncEngine;
pub use uring::UringEngine;

use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

/// One operation. The iovecs point into guest memory.
#[derive(Clone, Copy, Debug)]
pub enum IoOp<'a> {
    Read {
        offset: u64,
        iovecs: &'a [libc::iovec],
    },
    /// `sync`: the data must be on stable storage when it completes (write-through).
    Write {
        offset: u64,
        iovecs: &'a [libc::iovec],
        sync: bool,
    },
    Flush,
    /// `fallocate(mode, offset, len)`: a discard or write-zeroes range (punching a
    /// hole, zeroing a range), asynchronous like the others so that a large one
    /// does not hold the queue.
    Fallocate {
        mode: i32,
        offset: u64,
        len: u64,
    },
    /// BLKDISCARD of a block device's range: an ioctl, which io_uring cannot run,
    /// so the io_uring engine runs it on a thread of its own.
    Discard {
        offset: u64,
        len: u64,
    },
}

/// BLKDISCARD of `len` bytes at `offset` on the block device `fd`.
pub fn blkdiscard(fd: RawFd, offset: u64, len: u64) -> io::Result<usize> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKDISCARD reads a [u64; 2] from the pointer, a live local array.
    if unsafe { libc::ioctl(fd, crate::disk::BLKDISCARD, range.as_ptr()) } == 0 {
        Ok(0)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A finished operation: its tag and the bytes moved, or the error.
pub type Completion = (u64, io::Result<usize>);

pub trait IoEngine: Send {
    /// Queues `op`; it may start at once or at the next [`IoEngine::commit`].
    ///
    /// # Safety
    /// The iovecs, and the memory they point to, must stay valid until this tag's
    /// completion has been returned by [`IoEngine::reap`] (or the engine is dropped,
    /// which waits for everything in flight).
    unsafe fn submit(&mut self, tag: u64, op: IoOp<'_>) -> io::Result<()>;

    /// Starts everything queued since the last commit.
    fn commit(&mut self) -> io::Result<()>;

    /// Appends finished operations to `out` without blocking.
    fn reap(&mut self, out: &mut Vec<Completion>);

    /// Blocks until at least one operation in flight has finished.
    fn wait(&mut self) -> io::Result<()>;

    /// Operations submitted and not yet reaped.
    fn in_flight(&self) -> usize;

    /// An eventfd that becomes readable when completions are ready, for engines
    /// that complete asynchronously. Read it (to clear it) before reaping.
    fn completion_fd(&self) -> Option<RawFd>;
}

/// Which engine a daemon was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    #[value(name = "io_uring", alias = "io-uring")]
    IoUring,
    Sync,
    Null,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineKind::IoUring => "io_uring",
            EngineKind::Sync => "sync",
            EngineKind::Null => "null",
        })
    }
}

/// Creates an engine for one queue with room for `depth` operations in flight.
pub fn new_engine(kind: EngineKind, file: Arc<File>, depth: u32) -> io::Result<Box<dyn IoEngine>> {
    Ok(match kind {
        EngineKind::IoUring => Box::new(UringEngine::new(file, depth)?),
        EngineKind::Sync => Box::new(SyncEngine::new(file)),
        EngineKind::Null => Box::new(SyncEngine::null()),
    })
}

/// Whether this kernel lets us use io_uring (it may be disabled by sysctl or
/// seccomp): probes by creating a small ring.
pub fn io_uring_available() -> Result<(), io::Error> {
    io_uring::IoUring::new(2).map(|_| ())
}
