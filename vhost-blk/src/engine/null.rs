use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use super::{Completion, IoEngine, IoOp};

/// Completes every operation at once, successfully, without touching the disk or
/// guest buffers: what the transport costs on its own.
#[derive(Default)]
pub struct NullEngine {
    done: VecDeque<Completion>,
}

impl IoEngine for NullEngine {
    unsafe fn submit(&mut self, tag: u64, op: IoOp<'_>) -> io::Result<()> {
        let len = match op {
            IoOp::Read { iovecs, .. } | IoOp::Write { iovecs, .. } => {
                iovecs.iter().map(|v| v.iov_len).sum()
            }
            IoOp::Flush => 0,
        };
        self.done.push_back((tag, Ok(len)));
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
