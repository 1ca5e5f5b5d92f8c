//! Guest memory of the driver: one memfd mapped `MAP_SHARED` through vm-memory, which
//! the backend maps too (SET_MEM_TABLE), and an allocator that carves areas out of it.
//!
//! All addresses in this API are guest physical addresses (GPAs), plain `u64`s so that
//! tests can build hostile ones. Every access is bounds-checked against the one
//! region `[base, base + size)`; nothing here can touch memory outside the mapping.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Mutex;

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{ByteValued, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{Error, Result};

/// A first-fit allocator over offsets `[0, size)` with coalescing of freed ranges.
///
/// It works on offsets so it can be unit-tested without memory; [`GuestMem`] wraps
/// it with its base address.
#[derive(Debug)]
pub struct Allocator {
    /// Free ranges (offset, length), sorted by offset, never adjacent.
    free: Vec<(u64, u64)>,
    /// Allocated ranges: offset -> length.
    used: std::collections::BTreeMap<u64, u64>,
}

impl Allocator {
    /// An allocator with all of `[0, size)` free.
    pub fn new(size: u64) -> Self {
        let free = if size > 0 {
            vec![(0, size)]
        } else {
            Vec::new()
        };
        Allocator {
            free,
            used: Default::default(),
        }
    }

    /// Allocates `len` bytes whose absolute address `base + offset` is a multiple of
    /// `align` (a power of two; 0 counts as 1). Returns the offset.
    pub fn alloc(&mut self, base: u64, len: u64, align: u64) -> Option<u64> {
        let align = align.max(1);
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        for i in 0..self.free.len() {
            let (start, flen) = self.free[i];
            let abs = base.checked_add(start)?;
            let aligned = abs.checked_add(align - 1)? & !(align - 1);
            let pad = aligned - abs;
            if pad.checked_add(len)? > flen {
                continue;
            }
            let off = start + pad;
            let tail_start = off + len;
            let tail_len = start + flen - tail_start;
            // Replace the free range by its head padding and its tail, if any.
            let mut repl = Vec::with_capacity(2);
            if pad > 0 {
                repl.push((start, pad));
            }
            if tail_len > 0 {
                repl.push((tail_start, tail_len));
            }
            self.free.splice(i..=i, repl);
            self.used.insert(off, len);
            return Some(off);
        }
        None
    }

    /// Frees the allocation starting at `offset`. Returns false if there is none.
    pub fn free(&mut self, offset: u64) -> bool {
        let Some(len) = self.used.remove(&offset) else {
            return false;
        };
        let pos = self.free.partition_point(|&(s, _)| s < offset);
        self.free.insert(pos, (offset, len));
        // Merge with the next range, then with the previous one.
        if pos + 1 < self.free.len() && self.free[pos].0 + self.free[pos].1 == self.free[pos + 1].0
        {
            self.free[pos].1 += self.free[pos + 1].1;
            self.free.remove(pos + 1);
        }
        if pos > 0 && self.free[pos - 1].0 + self.free[pos - 1].1 == self.free[pos].0 {
            self.free[pos - 1].1 += self.free[pos].1;
            self.free.remove(pos);
        }
        true
    }

    /// Bytes currently free (not counting fragmentation).
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|r| r.1).sum()
    }

    /// Number of live allocations.
    pub fn allocations(&self) -> usize {
        self.used.len()
    }
}

/// The driver's guest memory: a memfd of `size` bytes at guest physical `base`.
///
/// `GuestMem` is `Send + Sync`; share it with `Arc` (the [`super::Driver`] and every
/// [`super::Queue`] hold one, so the mapping outlives them all).
pub struct GuestMem {
    mmap: GuestMemoryMmap,
    base: u64,
    size: u64,
    /// Host virtual address of the start of the mapping.
    host: usize,
    alloc: Mutex<Allocator>,
}

impl std::fmt::Debug for GuestMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestMem")
            .field("base", &format_args!("{:#x}", self.base))
            .field("size", &format_args!("{:#x}", self.size))
            .field("host", &format_args!("{:#x}", self.host))
            .finish()
    }
}

/// Default guest physical base: 1 GiB, so that small addresses (0, a zeroed
/// descriptor) are outside guest memory.
pub const DEFAULT_BASE: u64 = 1 << 30;

impl GuestMem {
    /// Creates a zero-filled memfd of `size` bytes (a multiple of 4 KiB) and maps it
    /// shared at guest physical address `base` (4 KiB aligned).
    pub fn new(size: u64, base: u64) -> Result<Self> {
        if size == 0
            || !size.is_multiple_of(4096)
            || !base.is_multiple_of(4096)
            || base.checked_add(size).is_none()
        {
            return Err(Error::MemorySize(size));
        }
        let len = usize::try_from(size).map_err(|_| Error::MemorySize(size))?;
        // SAFETY: memfd_create takes a NUL-terminated name, which the literal is; the
        // return value is checked.
        let fd = unsafe { libc::memfd_create(c"vhostkit-guest".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::Memfd(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a freshly created descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).map_err(Error::Memfd)?;
        let mmap = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(base),
            len,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(Error::MapMemory)?;
        let host = mmap
            .iter()
            .next()
            .map(|r| r.as_ptr() as usize)
            .ok_or(Error::MemorySize(size))?;
        Ok(GuestMem {
            mmap,
            base,
            size,
            host,
            alloc: Mutex::new(Allocator::new(size)),
        })
    }

    /// Guest physical address of the first byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// First guest physical address past the end.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    /// Whether `[addr, addr + len)` lies inside guest memory.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.base && addr.checked_add(len).is_some_and(|end| end <= self.end())
    }

    fn check(&self, addr: u64, len: u64) -> Result<()> {
        if self.contains(addr, len) {
            Ok(())
        } else {
            Err(Error::BadAddress { addr, len })
        }
    }

    /// Host virtual address of guest address `addr`, checking `[addr, addr + len)`.
    /// This is what vhost-user ring addresses (SET_VRING_ADDR) are made of.
    pub fn host_address(&self, addr: u64, len: u64) -> Result<u64> {
        self.check(addr, len)?;
        Ok((self.host as u64) + (addr - self.base))
    }

    /// Host pointer to guest address `addr`, checking `[addr, addr + len)`. The pointer
    /// is valid for `len` bytes as long as `self` lives; the backend writes the same
    /// memory concurrently, so access it with volatile or atomic operations only.
    pub fn host_ptr(&self, addr: u64, len: u64) -> Result<*mut u8> {
        self.check(addr, len)?;
        Ok((self.host + (addr - self.base) as usize) as *mut u8)
    }

    /// The vm-memory view, for callers that want its `Bytes` API.
    pub fn mmap(&self) -> &GuestMemoryMmap {
        &self.mmap
    }

    /// The SET_MEM_TABLE entry for this memory (memfd, offset 0, our mapping address).
    pub fn region_info(&self) -> Result<VhostUserMemoryRegionInfo> {
        vhostkit_frontend::memory_regions(&self.mmap)?
            .into_iter()
            .next()
            .ok_or(Error::MemorySize(self.size))
    }

    /// Copies `buf.len()` bytes from guest memory at `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.check(addr, buf.len() as u64)?;
        self.mmap
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| Error::BadAddress {
                addr,
                len: buf.len() as u64,
            })
    }

    /// Copies `buf` into guest memory at `addr`.
    pub fn write(&self, addr: u64, buf: &[u8]) -> Result<()> {
        self.check(addr, buf.len() as u64)?;
        self.mmap
            .write_slice(buf, GuestAddress(addr))
            .map_err(|_| Error::BadAddress {
                addr,
                len: buf.len() as u64,
            })
    }

    /// Reads `len` bytes at `addr` into a new vector.
    pub fn read_vec(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read(addr, &mut v)?;
        Ok(v)
    }

    /// Fills `[addr, addr + len)` with `byte`.
    pub fn fill(&self, addr: u64, len: u64, byte: u8) -> Result<()> {
        self.check(addr, len)?;
        let chunk = [byte; 4096];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len() as u64);
            self.write(addr + done, &chunk[..n as usize])?;
            done += n;
        }
        Ok(())
    }

    /// Reads a plain-data object (in host byte order) at `addr`.
    pub fn read_obj<T: ByteValued>(&self, addr: u64) -> Result<T> {
        self.check(addr, std::mem::size_of::<T>() as u64)?;
        self.mmap
            .read_obj(GuestAddress(addr))
            .map_err(|_| Error::BadAddress {
                addr,
                len: std::mem::size_of::<T>() as u64,
            })
    }

    /// Writes a plain-data object (in host byte order) at `addr`.
    pub fn write_obj<T: ByteValued>(&self, addr: u64, val: T) -> Result<()> {
        self.check(addr, std::mem::size_of::<T>() as u64)?;
        self.mmap
            .write_obj(val, GuestAddress(addr))
            .map_err(|_| Error::BadAddress {
                addr,
                len: std::mem::size_of::<T>() as u64,
            })
    }

    /// Allocates `len` bytes aligned to `align` (a power of two) and returns their
    /// guest address. The memory keeps whatever it held before.
    pub fn alloc(&self, len: u64, align: u64) -> Result<u64> {
        let mut a = self
            .alloc
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        a.alloc(self.base, len, align)
            .map(|off| self.base + off)
            .ok_or(Error::OutOfMemory { wanted: len })
    }

    /// Like [`GuestMem::alloc`], and zeroes the area.
    pub fn alloc_zeroed(&self, len: u64, align: u64) -> Result<u64> {
        let addr = self.alloc(len, align)?;
        self.fill(addr, len, 0)?;
        Ok(addr)
    }

    /// Frees an area returned by [`GuestMem::alloc`]. Returns false if `addr` is not
    /// the start of a live allocation.
    pub fn free(&self, addr: u64) -> bool {
        if addr < self.base {
            return false;
        }
        let mut a = self
            .alloc
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        a.free(addr - self.base)
    }

    /// Bytes not allocated.
    pub fn free_bytes(&self) -> u64 {
        self.alloc
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .free_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_aligns_and_coalesces() {
        let mut a = Allocator::new(0x10000);
        let base = 0x4000_0000;
        let x = a.alloc(base, 10, 1).unwrap();
        assert_eq!(x, 0);
        let y = a.alloc(base, 100, 4096).unwrap();
        assert_eq!(y, 4096);
        let z = a.alloc(base, 16, 16).unwrap();
        assert_eq!(z, 16);
        assert_eq!(a.allocations(), 3);
        assert_eq!(a.free_bytes(), 0x10000 - 126);
        assert!(a.free(y));
        assert!(!a.free(y));
        assert!(a.free(x));
        assert!(a.free(z));
        assert_eq!(a.free_bytes(), 0x10000);
        assert_eq!(a.free, vec![(0, 0x10000)]);
        // Whole size fits again after coalescing; one byte more does not.
        assert_eq!(a.alloc(base, 0x10000, 4096), Some(0));
        assert_eq!(a.alloc(base, 1, 1), None);
    }

    #[test]
    fn allocator_rejects_bad_requests() {
        let mut a = Allocator::new(4096);
        assert_eq!(a.alloc(0, 0, 1), None);
        assert_eq!(a.alloc(0, 8, 3), None);
        assert_eq!(a.alloc(0, 4097, 1), None);
        // Alignment is of the absolute address, so an odd base shifts the offset.
        assert_eq!(a.alloc(8, 8, 16), Some(8));
    }

    #[test]
    fn guest_mem_bounds_and_io() {
        let m = GuestMem::new(1 << 20, DEFAULT_BASE).unwrap();
        assert_eq!(m.base(), DEFAULT_BASE);
        assert!(m.contains(DEFAULT_BASE, 1 << 20));
        assert!(!m.contains(DEFAULT_BASE, (1 << 20) + 1));
        assert!(!m.contains(DEFAULT_BASE - 1, 1));
        assert!(!m.contains(u64::MAX, 2));
        assert!(m.read_vec(0, 1).is_err());
        let a = m.alloc(64, 64).unwrap();
        assert_eq!(a % 64, 0);
        m.fill(a, 64, 0xa5).unwrap();
        assert_eq!(m.read_vec(a, 64).unwrap(), vec![0xa5; 64]);
        m.write_obj(a + 8, 0x1122_3344u32).unwrap();
        assert_eq!(m.read_obj::<u32>(a + 8).unwrap(), 0x1122_3344);
        let info = m.region_info().unwrap();
        assert_eq!(info.guest_phys_addr, DEFAULT_BASE);
        assert_eq!(info.memory_size, 1 << 20);
        assert_eq!(
            info.userspace_addr,
            m.host_address(DEFAULT_BASE, 1).unwrap()
        );
        assert!(m.free(a));
        assert_eq!(m.free_bytes(), 1 << 20);
    }
}
