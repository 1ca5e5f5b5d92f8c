//! Open files and folders the guest holds, by handle number. Handles come only
//! from an open of a regular file or folder ([`super::PassthroughFs`]'s `reopen`),
//! so every operation that takes a handle (READ, WRITE, FALLOCATE, LSEEK,
//! COPY_FILE_RANGE, FSYNC, READDIR) works on such a file.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vhostkit_common::guest_error;

use super::lock;
use crate::filesystem::{Errno, Handle, Result};

/// An open file or folder.
pub struct OpenFile {
    pub file: File,
    /// Serialises seek + getdents of a folder handle.
    pub dir_position: Mutex<()>,
}

/// The handles of one session.
pub struct Handles {
    map: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next: AtomicU64,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            map: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }
}

impl Handles {
    /// Keeps `file` open under a new handle.
    pub fn insert(&self, file: File) -> Handle {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.map).insert(
            fh,
            Arc::new(OpenFile {
                file,
                dir_position: Mutex::new(()),
            }),
        );
        Handle(fh)
    }

    /// The open file of `handle`; EBADF (and a rate-limited log line) if unknown.
    pub fn get(&self, handle: Handle) -> Result<Arc<OpenFile>> {
        match lock(&self.map).get(&handle.0) {
            Some(h) => Ok(h.clone()),
            None => {
                guest_error!("unknown file handle {}", handle.0);
                Err(Errno::EBADF)
            }
        }
    }

    /// Forgets `handle` (the file closes once no request uses it any more).
    pub fn remove(&self, handle: Handle) -> Result<()> {
        match lock(&self.map).remove(&handle.0) {
            Some(_) => Ok(()),
            None => {
                guest_error!("RELEASE of unknown file handle {}", handle.0);
                Err(Errno::EBADF)
            }
        }
    }

    /// Forgets every handle.
    pub fn clear(&self) {
        lock(&self.map).clear();
    }

    pub fn count(&self) -> usize {
        lock(&self.map).len()
    }
}
