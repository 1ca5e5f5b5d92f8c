use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use super::{Completion, IoEngine, IoOp};

/// Runs each operation to completion in the calling thread.
pub struct SyncEngine {
    file: Arc<File>,
    done: VecDeque<Completion>,
}

impl SyncEngine {
    pub fn new(file: Arc<File>) -> Self {
        SyncEngine {
            file,
            done: VecDeque::new(),
        }
    }

    fn run(&self, op: IoOp<'_>) -> io::Result<usize> {
        let fd = self.file.as_raw_fd();
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
        }
    }
}

/// preadv2/pwritev2 until every byte moved (or an error, or end of file for reads,
/// which the caller's bounds check rules out).
fn rw_all(
    fd: RawFd,
    mut offset: u64,
    iovecs: &[libc::iovec],
    write: bool,
    flags: i32,
) -> io::Result<usize> {
    let mut local: Vec<libc::iovec> = iovecs.to_vec();
    let mut rest: &mut [libc::iovec] = &mut local;
    let mut total = 0usize;
    while !rest.is_empty() {
        let count = rest.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        // SAFETY: the iovecs point at guest memory that the caller keeps mapped for
        // the duration of the call (IoEngine::submit's contract); `rest` holds
        // `count` valid entries.
        let n = unsafe {
            if write {
                libc::pwritev2(fd, rest.as_ptr(), count, offset as libc::off_t, flags)
            } else {
                libc::preadv2(fd, rest.as_ptr(), count, offset as libc::off_t, flags)
            }
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short transfer",
            ));
        }
        let mut n = n as usize;
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
