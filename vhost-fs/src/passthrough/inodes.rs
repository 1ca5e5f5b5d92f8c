//! The inodes the guest has looked up: each a number (FUSE's node id) for a host
//! inode, with the count of lookups the guest has not forgotten.
//!
//! A host inode is kept as an `O_PATH | O_NOFOLLOW` descriptor, or with
//! `--inode-file-handles` as a file handle (`name_to_handle_at`) that is opened
//! into such a descriptor for the length of one request only. It is found again by
//! its [`InodeKey`]: device and inode number, and with file handles the handle too.
//! A held `O_PATH` descriptor pins its inode, so its number cannot be reused while
//! the guest knows the node; a file handle pins nothing, and a file created after
//! an unlink may get the number back (ext4 reuses them at once): matching on the
//! number alone would hand the new file the old node.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use vhostkit_common::guest_error;

use super::{lock, sys};
use crate::filesystem::{Errno, Inode, Result};

/// `struct file_handle` with room for the largest handle (MAX_HANDLE_SZ).
#[derive(Clone)]
pub struct FileHandle {
    /// handle_bytes (u32), handle_type (i32), then the handle itself.
    raw: Vec<u8>,
}

const MAX_HANDLE_SZ: usize = 128;

impl FileHandle {
    /// The handle of the node of `fd` itself and its mount id.
    pub fn of(fd: RawFd) -> Result<(FileHandle, i32)> {
        let mut raw = vec![0u8; 8 + MAX_HANDLE_SZ];
        // MAX_HANDLE_SZ is 128.
        let max = u32::try_from(MAX_HANDLE_SZ).unwrap_or(u32::MAX);
        raw[..4].copy_from_slice(&max.to_ne_bytes());
        let mount_id = sys::name_to_handle_fd(fd, &mut raw)?;
        let len = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        if len > MAX_HANDLE_SZ {
            return Err(Errno(libc::EOVERFLOW));
        }
        raw.truncate(8 + len);
        Ok((FileHandle { raw }, mount_id))
    }

    /// An `O_PATH` descriptor of the node, through `mount_fd` (any descriptor on
    /// the same mount, not `O_PATH`).
    pub fn open(&self, mount_fd: RawFd) -> Result<OwnedFd> {
        sys::open_by_handle(
            mount_fd,
            &self.raw,
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    }
}

/// What identifies an inode on the host (see the module documentation).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub dev: u64,
    pub ino: u64,
    pub handle: Option<Vec<u8>>,
}

impl InodeKey {
    pub fn new(st: &libc::stat64, handle: Option<&FileHandle>) -> Self {
        InodeKey {
            dev: st.st_dev,
            ino: st.st_ino,
            handle: handle.map(|h| h.raw.clone()),
        }
    }
}

/// How the store keeps a host inode.
pub enum InodeRef {
    /// An `O_PATH | O_NOFOLLOW` descriptor, held open.
    Fd(Arc<OwnedFd>),
    /// A file handle, opened again only while a request works on the inode.
    Handle(FileHandle),
}

/// One inode the guest has looked up.
pub struct InodeData {
    pub reference: InodeRef,
    /// `st_mode & S_IFMT` when it was looked up.
    pub file_type: u32,
    pub dev: u64,
}

/// An inode as one request works on it: a descriptor for it (`O_PATH`), either
/// the store's or opened from its file handle for this request.
pub struct Node {
    pub fd: NodeFd,
    pub file_type: u32,
    pub dev: u64,
}

pub enum NodeFd {
    /// The store's descriptor.
    Kept(Arc<OwnedFd>),
    /// Opened from the file handle for this request.
    Opened(OwnedFd),
}

impl AsRawFd for NodeFd {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            NodeFd::Kept(fd) => fd.as_raw_fd(),
            NodeFd::Opened(fd) => fd.as_raw_fd(),
        }
    }
}

struct Entry {
    data: Arc<InodeData>,
    key: InodeKey,
    /// Lookups the guest has not forgotten yet.
    lookups: u64,
}

#[derive(Default)]
struct Maps {
    by_id: HashMap<u64, Entry>,
    by_key: HashMap<InodeKey, u64>,
    next_id: u64,
}

/// The inodes of one session, the root ([`Inode::ROOT`]) always among them.
#[derive(Default)]
pub struct InodeStore {
    maps: Mutex<Maps>,
}

impl InodeStore {
    /// Forgets every inode and starts again from the root folder `root`
    /// (`st` its stat).
    pub fn reset(&self, root: OwnedFd, st: &libc::stat64) {
        let mut maps = lock(&self.maps);
        let key = InodeKey::new(st, None);
        maps.by_id.clear();
        maps.by_key.clear();
        maps.by_id.insert(
            Inode::ROOT.0,
            Entry {
                data: Arc::new(InodeData {
                    reference: InodeRef::Fd(Arc::new(root)),
                    file_type: st.st_mode & libc::S_IFMT,
                    dev: st.st_dev,
                }),
                key: key.clone(),
                lookups: 2,
            },
        );
        maps.by_key.insert(key, Inode::ROOT.0);
        maps.next_id = Inode::ROOT.0 + 1;
    }

    /// The inode `inode`; ENOENT (and a rate-limited log line) if the guest does
    /// not hold it.
    pub fn get(&self, inode: Inode) -> Result<Arc<InodeData>> {
        match lock(&self.maps).by_id.get(&inode.0) {
            Some(entry) => Ok(entry.data.clone()),
            None => {
                guest_error!("unknown node id {}", inode.0);
                Err(Errno::ENOENT)
            }
        }
    }

    /// The descriptor of the root folder.
    pub fn root_fd(&self) -> Option<Arc<OwnedFd>> {
        match &lock(&self.maps).by_id.get(&Inode::ROOT.0)?.data.reference {
            InodeRef::Fd(fd) => Some(fd.clone()),
            InodeRef::Handle(_) => None,
        }
    }

    /// Counts one more lookup of the inode `key`, made from `make` if the guest
    /// does not hold it yet.
    pub fn look_up(&self, key: InodeKey, make: impl FnOnce() -> InodeData) -> Inode {
        let mut maps = lock(&self.maps);
        if let Some(id) = maps.by_key.get(&key).copied() {
            if let Some(entry) = maps.by_id.get_mut(&id) {
                entry.lookups += 1;
            }
            return Inode(id);
        }
        let id = maps.next_id;
        maps.next_id += 1;
        maps.by_id.insert(
            id,
            Entry {
                data: Arc::new(make()),
                key: key.clone(),
                lookups: 1,
            },
        );
        maps.by_key.insert(key, id);
        Inode(id)
    }

    /// Takes `count` lookups of `inode` back; at zero the inode is dropped. The
    /// root is never dropped.
    pub fn forget(&self, inode: Inode, count: u64) {
        if inode == Inode::ROOT {
            return;
        }
        let mut maps = lock(&self.maps);
        let Some(entry) = maps.by_id.get_mut(&inode.0) else {
            guest_error!("FORGET of unknown node id {}", inode.0);
            return;
        };
        entry.lookups = entry.lookups.saturating_sub(count);
        if entry.lookups == 0 {
            if let Some(entry) = maps.by_id.remove(&inode.0) {
                if maps.by_key.get(&entry.key) == Some(&inode.0) {
                    maps.by_key.remove(&entry.key);
                }
            }
        }
    }

    /// Inodes held (the root included).
    pub fn count(&self) -> usize {
        lock(&self.maps).by_id.len()
    }
}
