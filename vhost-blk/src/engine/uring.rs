use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};
use log::debug;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Completion, IoEngine, IoOp};

/// One io_uring per queue: operations are queued as SQEs, started with one
/// `io_uring_enter` per batch, and completions are announced on an eventfd.
pub struct UringEngine {
    ring: IoUring,
    file: Arc<File>,
    eventfd: EventFd,
    in_flight: usize,
    queued: usize,
}

impl UringEngine {
    pub fn new(file: Arc<File>, depth: u32) -> io::Result<Self> {
        let depth = depth.clamp(1, 4096);
        // Cooperative task running saves an interrupt per completion (Linux 5.19+);
        // fall back to a plain ring on older kernels.
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_cqsize(depth * 2)
            .build(depth)
            .or_else(|e| {
                debug!("io_uring with COOP_TASKRUN refused ({e}); using a plain ring");
                IoUring::builder().setup_cqsize(depth * 2).build(depth)
            })?;
        let eventfd = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        Ok(UringEngine {
            ring,
            file,
            eventfd,
            in_flight: 0,
            queued: 0,
        })
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
        let fd = types::Fd(self.file.as_raw_fd());
        let entry = match op {
            IoOp::Read { offset, iovecs } => {
                opcode::Readv::new(fd, iovecs.as_ptr(), iovecs.len() as u32)
                    .offset(offset)
                    .build()
            }
            IoOp::Write {
                offset,
                iovecs,
                sync,
            } => opcode::Writev::new(fd, iovecs.as_ptr(), iovecs.len() as u32)
                .offset(offset)
                .rw_flags(if sync { libc::RWF_DSYNC } else { 0 })
                .build(),
            IoOp::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        };
        self.push(entry.user_data(tag))?;
        self.in_flight += 1;
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
        for cqe in self.ring.completion() {
            self.in_flight = self.in_flight.saturating_sub(1);
            let result = cqe.result();
            let outcome = if result >= 0 {
                Ok(result as usize)
            } else {
                Err(io::Error::from_raw_os_error(-result))
            };
            out.push((cqe.user_data(), outcome));
        }
    }

    fn wait(&mut self) -> io::Result<()> {
        if self.in_flight == 0 {
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
        self.in_flight
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
        while self.in_flight > 0 {
            if self.wait().is_err() {
                break;
            }
            self.reap(&mut sink);
            sink.clear();
        }
    }
}
