//! [`IoVecs`]: guest buffers as host iovecs, the one way a device hands guest memory
//! to a system call (preadv/pwritev, readv/writev on a tap, io_uring) or copies into
//! it. Built from descriptors (or the parts of them a device protocol leaves for
//! data), bounds-checked against the memory regions, capped at [`IOV_MAX`] entries.
//!
//! # Safety contract
//!
//! Every entry of an `IoVecs` points into a mapping of one guest memory (a
//! [`GuestMemoryMmap`]), checked by `get_slices` to lie wholly inside one of its
//! regions, or into the list's own spill byte. The list holds an `Arc` of that
//! memory for as long as it holds entries, so the mappings stay valid for the
//! life of every pointer in it, whatever the frontend does meanwhile (a new memory
//! table makes a new `GuestMemoryMmap`; the old mappings go only when the last
//! `Arc` does). The guest may write the same bytes concurrently: that is in the
//! nature of shared memory and harmless to us, as we never form Rust references to
//! guest bytes, only raw pointers handed to the kernel or to
//! `copy_nonoverlapping`. Which buffers a device reads and which it writes is the
//! device's choice (readable and writable descriptors go in separate lists).

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use thiserror::Error;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Most entries in one list: IOV_MAX, what one readv/writev/preadv/pwritev takes.
pub const IOV_MAX: usize = 1024;

/// Why a guest buffer cannot join an [`IoVecs`].
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum IoVecError {
    #[error("buffer at {:#x} ({len} bytes) outside guest memory", .addr.0)]
    OutsideMemory { addr: GuestAddress, len: usize },
    #[error("more than {IOV_MAX} buffers")]
    TooMany,
    #[error("buffers from two different memory tables")]
    OtherMemory,
}

/// The length of an iovec array as readv and its siblings take it: every list
/// holds at most IOV_MAX entries, which fits.
fn count(iovecs: &[libc::iovec]) -> libc::c_int {
    libc::c_int::try_from(iovecs.len().min(IOV_MAX)).unwrap_or(0)
}

/// Guest buffers as host iovecs, in order. See the module's safety contract.
#[derive(Default)]
pub struct IoVecs {
    iovecs: Vec<libc::iovec>,
    /// Total bytes.
    len: usize,
    /// The guest memory the entries point into, held while there are entries.
    memory: Option<Arc<GuestMemoryMmap<()>>>,
    /// A byte of our own a list may end with (see [`Self::push_spill_byte`]),
    /// allocated the first time one is asked for.
    spill: Option<Box<[u8; 1]>>,
}

// SAFETY: the raw pointers point into guest memory that `memory` keeps mapped (or
// into `spill`, owned by the list), so they stay valid wherever the list goes; a
// list is used by one thread at a time (it is not Sync).
unsafe impl Send for IoVecs {}

impl std::fmt::Debug for IoVecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoVecs")
            .field("entries", &self.iovecs.len())
            .field("len", &self.len)
            .finish()
    }
}

impl IoVecs {
    /// An empty list with room for `entries` without allocating.
    pub fn with_capacity(entries: usize) -> Self {
        IoVecs {
            iovecs: Vec::with_capacity(entries),
            ..Default::default()
        }
    }

    /// Empties the list (and lets go of the guest memory), keeping its allocation.
    pub fn clear(&mut self) {
        self.iovecs.clear();
        self.len = 0;
        self.memory = None;
    }

    /// Adds guest bytes `addr..addr + len`, refusing any byte outside guest memory.
    /// A buffer that crosses a region boundary becomes several entries. On error
    /// the list is as it was.
    pub fn push_guest(
        &mut self,
        mem: &Arc<GuestMemoryMmap<()>>,
        addr: GuestAddress,
        len: usize,
    ) -> Result<(), IoVecError> {
        match &self.memory {
            Some(held) if !Arc::ptr_eq(held, mem) => return Err(IoVecError::OtherMemory),
            _ => {}
        }
        if len == 0 {
            return Ok(());
        }
        let before = self.iovecs.len();
        for slice in mem.get_slices(addr, len) {
            let pushed = match slice {
                Ok(slice) if self.iovecs.len() < IOV_MAX => {
                    self.iovecs.push(libc::iovec {
                        iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                        iov_len: slice.len(),
                    });
                    Ok(())
                }
                Ok(_) => Err(IoVecError::TooMany),
                Err(_) => Err(IoVecError::OutsideMemory { addr, len }),
            };
            if let Err(e) = pushed {
                self.iovecs.truncate(before);
                return Err(e);
            }
        }
        self.len += len;
        if self.memory.is_none() {
            self.memory = Some(mem.clone());
        }
        Ok(())
    }

    /// Adds the buffer of one descriptor.
    pub fn push_descriptor(
        &mut self,
        mem: &Arc<GuestMemoryMmap<()>>,
        desc: &Descriptor,
    ) -> Result<(), IoVecError> {
        self.push_guest(mem, desc.addr(), desc.len() as usize)
    }

    /// Ends the list with one byte of its own, past the guest's buffers: a read
    /// into the list that reaches it did not fit them (a tap read gives no other
    /// sign of truncation). Not counted in [`Self::len`].
    pub fn push_spill_byte(&mut self) -> Result<(), IoVecError> {
        if self.iovecs.len() >= IOV_MAX {
            return Err(IoVecError::TooMany);
        }
        let spill = self.spill.get_or_insert_with(|| Box::new([0]));
        self.iovecs.push(libc::iovec {
            iov_base: spill.as_mut_ptr().cast(),
            iov_len: 1,
        });
        Ok(())
    }

    /// Keeps the first `entries` entries (undoing pushes made after
    /// [`Self::entries`] said `entries`).
    pub fn truncate(&mut self, entries: usize) {
        for iov in self.iovecs.drain(entries.min(self.iovecs.len())..) {
            self.len = self.len.saturating_sub(iov.iov_len);
        }
        if self.iovecs.is_empty() {
            self.memory = None;
        }
    }

    /// Total bytes of the guest buffers.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries, for a system call or an I/O engine. They stay valid while the
    /// list is neither changed nor dropped.
    pub fn as_slice(&self) -> &[libc::iovec] {
        &self.iovecs
    }

    /// Number of entries.
    pub fn entries(&self) -> usize {
        self.iovecs.len()
    }

    /// The number of entries as a system call takes it.
    fn count(&self) -> libc::c_int {
        count(&self.iovecs)
    }

    /// Drops the first `n` bytes (what a short transfer moved).
    pub fn advance(&mut self, mut n: usize) {
        let mut consumed = 0;
        for iov in self.iovecs.iter_mut() {
            if n < iov.iov_len {
                // SAFETY: n < iov_len, so the pointer stays inside the same buffer.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
                iov.iov_len -= n;
                self.len = self.len.saturating_sub(n);
                break;
            }
            n -= iov.iov_len;
            self.len = self.len.saturating_sub(iov.iov_len);
            consumed += 1;
        }
        self.iovecs.drain(..consumed);
        if self.iovecs.is_empty() {
            self.memory = None;
        }
    }

    /// Puts bytes `skip..skip + len` of this list into `out` (as far as this list
    /// reaches, and at most [`IOV_MAX`] entries): a view for one system call.
    pub fn sub_range(&self, skip: usize, len: usize, out: &mut IoVecs) {
        out.clear();
        out.len = self.range_entries(skip, len, &mut out.iovecs);
        if !out.iovecs.is_empty() {
            out.memory = self.memory.clone();
        }
    }

    /// The entries of bytes `skip..skip + len` into `out` (cleared first, at most
    /// IOV_MAX); returns their total length. Valid while `self` is.
    fn range_entries(&self, mut skip: usize, mut len: usize, out: &mut Vec<libc::iovec>) -> usize {
        out.clear();
        let mut total = 0;
        for iov in &self.iovecs {
            if len == 0 || out.len() == IOV_MAX {
                break;
            }
            if skip >= iov.iov_len {
                skip -= iov.iov_len;
                continue;
            }
            let take = (iov.iov_len - skip).min(len);
            out.push(libc::iovec {
                // SAFETY: `skip < iov_len`, so the pointer stays inside the buffer.
                iov_base: unsafe { iov.iov_base.cast::<u8>().add(skip) }.cast(),
                iov_len: take,
            });
            total += take;
            skip = 0;
            len -= take;
        }
        total
    }

    /// Copies `data` into the front of the buffers, as far as they reach; returns
    /// the bytes copied. The caller must have built the list from buffers the
    /// device may write (device-writable descriptors).
    pub fn copy_from_slice(&mut self, data: &[u8]) -> usize {
        let mut done = 0;
        for iov in &self.iovecs {
            if done == data.len() {
                break;
            }
            let take = iov.iov_len.min(data.len() - done);
            // SAFETY: the entry points to `iov_len` bytes of mapped memory (module
            // contract); `data` is a host buffer, which cannot overlap guest memory.
            unsafe {
                std::ptr::copy_nonoverlapping(data[done..].as_ptr(), iov.iov_base.cast(), take)
            };
            done += take;
        }
        done
    }

    /// Copies bytes `skip..skip + buf.len()` of the buffers into `buf`; false (and
    /// `buf` partly filled) if the list is shorter.
    pub fn copy_to_slice(&self, mut skip: usize, buf: &mut [u8]) -> bool {
        let mut done = 0;
        for iov in &self.iovecs {
            if done == buf.len() {
                break;
            }
            if skip >= iov.iov_len {
                skip -= iov.iov_len;
                continue;
            }
            let take = (iov.iov_len - skip).min(buf.len() - done);
            // SAFETY: `skip + take <= iov_len`: the source lies inside the entry's
            // mapped bytes (module contract); `buf` is a host buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    iov.iov_base.cast::<u8>().add(skip),
                    buf[done..].as_mut_ptr(),
                    take,
                )
            };
            done += take;
            skip = 0;
        }
        done == buf.len()
    }

    /// One writev of the whole list to `fd` (a tap takes a frame per call).
    pub fn writev(&self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: the entries point into mapped memory (module contract); writev
        // only reads them. The count is at most IOV_MAX, which fits a c_int.
        let n = unsafe { libc::writev(fd, self.iovecs.as_ptr(), self.count()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// One readv from `fd` into the whole list (spill byte included).
    pub fn readv(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: the entries point into mapped memory the device may write (module
        // contract); readv writes at most their total length.
        let n = unsafe { libc::readv(fd, self.iovecs.as_ptr(), self.count()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Reads file `fd` at `offset` into bytes `skip..skip + len` of the buffers,
    /// going on after short reads until all of it moved or the file ended; returns
    /// the bytes moved. An error after some progress ends it with that progress.
    pub fn read_file_at(
        &self,
        fd: RawFd,
        skip: usize,
        len: usize,
        offset: i64,
    ) -> io::Result<usize> {
        self.transfer(skip, len, offset, |iov, off| {
            // SAFETY: the entries point into mapped memory the device may write
            // (module contract); preadv writes only within them.
            unsafe { libc::preadv64(fd, iov.as_ptr(), count(iov), off) }
        })
    }

    /// Writes bytes `skip..skip + len` of the buffers to file `fd` at `offset`,
    /// going on after short writes; returns the bytes moved.
    pub fn write_file_at(
        &self,
        fd: RawFd,
        skip: usize,
        len: usize,
        offset: i64,
    ) -> io::Result<usize> {
        self.transfer(skip, len, offset, |iov, off| {
            // SAFETY: the entries point into mapped memory (module contract);
            // pwritev only reads them.
            unsafe { libc::pwritev64(fd, iov.as_ptr(), count(iov), off) }
        })
    }

    fn transfer(
        &self,
        skip: usize,
        len: usize,
        offset: i64,
        mut op: impl FnMut(&[libc::iovec], i64) -> isize,
    ) -> io::Result<usize> {
        // A view of the entries for each call: no guest memory of its own to hold
        // (`self` holds it throughout).
        let mut view = Vec::with_capacity(self.iovecs.len().min(IOV_MAX));
        let mut done = 0usize;
        while done < len {
            self.range_entries(skip + done, len - done, &mut view);
            if view.is_empty() {
                break;
            }
            let at = i64::try_from(done)
                .ok()
                .and_then(|d| offset.checked_add(d))
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            let n = op(&view, at);
            let Ok(n) = usize::try_from(n) else {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if done > 0 {
                    break;
                }
                return Err(err);
            };
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn mem() -> Arc<GuestMemoryMmap<()>> {
        // Two regions with a hole between them: 0..64 KiB and 128..192 KiB.
        Arc::new(
            GuestMemoryMmap::from_ranges(&[
                (GuestAddress(0), 0x10000),
                (GuestAddress(0x20000), 0x10000),
            ])
            .unwrap(),
        )
    }

    #[test]
    fn buffers_outside_memory_are_refused_and_leave_the_list_as_it_was() {
        let m = mem();
        let mut v = IoVecs::default();
        v.push_guest(&m, GuestAddress(0x100), 16).unwrap();
        for (addr, len) in [
            (0xfff0, 0x20),    // runs into the hole
            (0x18000, 1),      // in the hole
            (0x2fff0, 0x11),   // past the end
            (u64::MAX - 3, 8), // wraps
            (0x30000, 1),      // just past the end
        ] {
            assert_eq!(
                v.push_guest(&m, GuestAddress(addr), len),
                Err(IoVecError::OutsideMemory {
                    addr: GuestAddress(addr),
                    len
                }),
                "{addr:#x}+{len}"
            );
            assert_eq!((v.entries(), v.len()), (1, 16));
        }
        let other = mem();
        assert_eq!(
            v.push_guest(&other, GuestAddress(0), 1),
            Err(IoVecError::OtherMemory)
        );
    }

    #[test]
    fn the_list_holds_at_most_iov_max_entries() {
        let m = mem();
        let mut v = IoVecs::default();
        for i in 0..IOV_MAX {
            v.push_guest(&m, GuestAddress(i as u64 * 2), 1).unwrap();
        }
        assert_eq!(
            v.push_guest(&m, GuestAddress(0), 1),
            Err(IoVecError::TooMany)
        );
        assert_eq!(v.push_spill_byte(), Err(IoVecError::TooMany));
        assert_eq!(v.len(), IOV_MAX);
    }

    #[test]
    fn copies_and_ranges_cover_exactly_the_asked_bytes() {
        let m = mem();
        let mut v = IoVecs::default();
        v.push_guest(&m, GuestAddress(0x100), 10).unwrap();
        v.push_guest(&m, GuestAddress(0x20000), 20).unwrap();
        let data: Vec<u8> = (1..=40).collect();
        assert_eq!(v.copy_from_slice(&data), 30);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x109)).unwrap(), 10);
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0x10a)).unwrap(),
            0,
            "no byte past the buffer"
        );
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x20013)).unwrap(), 30);
        let mut buf = [0u8; 8];
        assert!(v.copy_to_slice(6, &mut buf));
        assert_eq!(buf, [7, 8, 9, 10, 11, 12, 13, 14]);
        assert!(!v.copy_to_slice(25, &mut buf));

        let mut view = IoVecs::default();
        v.sub_range(4, 10, &mut view);
        assert_eq!((view.entries(), view.len()), (2, 10));
        assert_eq!(view.as_slice()[0].iov_len, 6);
        assert_eq!(view.as_slice()[1].iov_len, 4);
        v.sub_range(12, 100, &mut view);
        assert_eq!((view.entries(), view.len()), (1, 18));
        v.sub_range(30, 5, &mut view);
        assert!(view.is_empty());

        v.advance(13);
        assert_eq!((v.entries(), v.len()), (1, 17));
        assert!(v.copy_to_slice(0, &mut buf[..1]));
        assert_eq!(buf[0], 14);
        v.advance(17);
        assert!(v.is_empty());
        assert_eq!(v.entries(), 0);
    }

    #[test]
    fn file_transfers_go_on_after_short_ones() {
        let m = mem();
        let mut v = IoVecs::default();
        v.push_guest(&m, GuestAddress(0), 100).unwrap();
        // An op that moves at most 7 bytes per call, as a pipe or a signal might.
        let mut calls = Vec::new();
        let done = v
            .transfer(10, 50, 1000, |iov, offset| {
                calls.push((iov[0].iov_len, offset));
                iov[0].iov_len.min(7) as isize
            })
            .unwrap();
        assert_eq!(done, 50);
        assert_eq!(calls.len(), 8);
        assert_eq!(calls[1], (43, 1007));
        // End of file (0 bytes) stops early; an error after progress keeps the progress.
        assert_eq!(v.transfer(0, 50, 0, |_, _| 0).unwrap(), 0);
        let mut first = true;
        let n = v
            .transfer(0, 50, 0, |_, _| {
                if std::mem::take(&mut first) {
                    5
                } else {
                    // SAFETY: errno is this thread's; setting it is what a failing call does.
                    unsafe { *libc::__errno_location() = libc::EIO };
                    -1
                }
            })
            .unwrap();
        assert_eq!(n, 5);
    }

    #[test]
    fn real_files_move_through_guest_buffers() {
        let m = mem();
        let mut v = IoVecs::default();
        // A buffer split by nothing but our own two pushes, across both regions.
        v.push_guest(&m, GuestAddress(0xfffc), 4).unwrap();
        v.push_guest(&m, GuestAddress(0x20000), 4).unwrap();
        v.copy_from_slice(b"abcdefgh");
        let file = tempfile_in_memory();
        use std::os::fd::AsRawFd;
        assert_eq!(v.write_file_at(file.as_raw_fd(), 2, 5, 3).unwrap(), 5);
        let mut back = IoVecs::default();
        back.push_guest(&m, GuestAddress(0x20100), 8).unwrap();
        assert_eq!(back.read_file_at(file.as_raw_fd(), 0, 8, 0).unwrap(), 8);
        let mut buf = [0u8; 8];
        assert!(back.copy_to_slice(0, &mut buf));
        assert_eq!(&buf, b"\0\0\0cdefg");
    }

    fn tempfile_in_memory() -> std::fs::File {
        // SAFETY: a valid NUL-terminated name and flags; the result is checked.
        let fd = unsafe { libc::memfd_create(c"iovec-test".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor we own.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(8).unwrap();
        file
    }
}
