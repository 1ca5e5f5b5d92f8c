use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use super::{Completion, IoEngine, IoOp};

/// Runs each operation to completion in the calling thread, at submit time: the
/// `sync` engine with a file, the `null` engine without one (every operation
/// succeeds at once, touching neither the disk nor the guest's buffers).
pub struct SyncEngine {
    file: Option<Arc<File>>,
    done: VecDeque<Completion>,
}

impl SyncEngine {
    pub fn new(file: Arc<File>) -> Self {
        SyncEngine {
            file: Some(file),
            done: VecDeque::new(),
        }
    }

    /// The null engine: what the transport costs on its own.
    pub fn null() -> Self {
        SyncEngine {
            file: None,
            done: VecDeque::new(),
        }
    }

    fn run(&self, op: IoOp<'_>) -> io::Result<usize> {
        let Some(file) = &self.file else {
            return Ok(match op {
                IoOp::Read { iovecs, .. } | IoOp::Write { iovecs, .. } => {
                    iovecs.iter().map(|v| v.iov_len).sum()
                }
                IoOp::Flush | IoOp::Fallocate { .. } | IoOp::Discard { .. } => 0,
            });
        };
        let fd = file.as_raw_fd();
        match op {
            IoOp::Read { offset, iovecs } => rw_all(fd, offset, iovecs, false, 0),
            IoOp::Write {
                offset,
                iovecs,
                sync,
            } => {
                let flags = if sync { libc::RWF_DSYNC } else { 0 };
                rw_all(fd, offset, iovecs, true, flags)
            }
            IoOp::Flush => {
                // SAFETY: fdatasync on an fd we own.
                if unsafe { libc::fdatasync(fd) } == 0 {
                    Ok(0)
                } else {
                    Err(io::Error::last_os_error())
                }
            }
            IoOp::Discard { offset, len } => super::blkdiscard(fd, offset, len),
            IoOp::Fallocate { mode, offset, len } => {
                let (offset, len) = (
                    i64::try_from(offset)
                        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
                    i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
                );
                // SAFETY: fallocate on an fd we own with plain integer arguments.
                if unsafe { libc::fallocate64(fd, mode, offset, len) } == 0 {
                    Ok(0)
                } else {
                    Err(io::Error::last_os_error())
                }
            }
        }
    }
}

/// One preadv2/pwritev2 call with `flags`; returns what it moved.
pub(super) fn rw_once(
    fd: RawFd,
    offset: u64,
    iovecs: &[libc::iovec],
    write: bool,
    flags: i32,
) -> io::Result<usize> {
    let count = libc::c_int::try_from(iovecs.len())
        .unwrap_or(libc::UIO_MAXIOV)
        .min(libc::UIO_MAXIOV);
    // SAFETY: the iovecs point at guest memory that the caller keeps mapped for the
    // duration of the call (IoEngine::submit's contract); `count` entries are valid.
    let n = unsafe {
        if write {
            libc::pwritev2(fd, iovecs.as_ptr(), count, offset as libc::off_t, flags)
        } else {
            libc::preadv2(fd, iovecs.as_ptr(), count, offset as libc::off_t, flags)
        }
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// preadv2/pwritev2 until every byte moved (or an error; end of file for reads,
/// which the caller's bounds check rules out, is reported as UnexpectedEof).
pub(super) fn rw_all(
    fd: RawFd,
    mut offset: u64,
    iovecs: &[libc::iovec],
    write: bool,
    flags: i32,
) -> io::Result<usize> {
    // The usual case moves everything at once; only a short transfer needs a
    // copy of the iovecs to advance through.
    let len: usize = iovecs.iter().map(|v| v.iov_len).sum();
    if iovecs.len() <= libc::UIO_MAXIOV as usize {
        match rw_once(fd, offset, iovecs, write, flags) {
            Ok(n) if n == len => return Ok(n),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        // Redo the whole transfer below: rereading or rewriting the same bytes
        // at the same offset is harmless, and the slow path stays simple.
    }
    let mut local: Vec<libc::iovec> = iovecs.to_vec();
    let mut rest: &mut [libc::iovec] = &mut local;
    let mut total = 0usize;
    while !rest.is_empty() {
        let mut n = match rw_once(fd, offset, rest, write, flags) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "short transfer",
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += n;
        offset += n as u64;
        // Advance past what was transferred.
        while let Some(first) = rest.first_mut() {
            if n >= first.iov_len {
                n -= first.iov_len;
                rest = &mut rest[1..];
            } else {
                // SAFETY: n < iov_len, so the pointer stays inside the same buffer.
                first.iov_base = unsafe { first.iov_base.cast::<u8>().add(n) }.cast();
                first.iov_len -= n;
                break;
            }
        }
    }
    Ok(total)
}

impl IoEngine for SyncEngine {
    unsafe fn submit(&mut self, tag: u64, op: IoOp<'_>) -> io::Result<()> {
        let result = self.run(op);
        self.done.push_back((tag, result));
        Ok(())
    }

    fn commit(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.done.drain(..));
    }

    fn wait(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn completion_fd(&self) -> Option<RawFd> {
        None
    }
}
