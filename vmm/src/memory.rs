//! Guest memory: one memfd mapped MAP_SHARED (so vhost-user daemons can map the same
//! pages later), as up to two regions around the MMIO hole below 4 GiB, each
//! registered with KVM as its own memory slot.
//!
//! | guest physical                         | memfd offset      |
//! |----------------------------------------|-------------------|
//! | [0, min(size, MMIO_HOLE_START))        | 0                 |
//! | [4 GiB, 4 GiB + size - MMIO_HOLE_START) | MMIO_HOLE_START   |

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// The guest's memory.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot create the guest memory file (memfd_create)")]
    Memfd(#[source] io::Error),
    #[error("cannot size the guest memory file to {0} bytes")]
    Resize(u64, #[source] io::Error),
    #[error("cannot map {0} bytes of guest memory")]
    Map(u64, #[source] vm_memory::mmap::FromRangesError),
    #[error("no host mapping for guest address {0:#x}")]
    HostAddress(u64, #[source] vm_memory::GuestMemoryError),
    #[error("KVM refused guest memory slot {0}")]
    Register(u32, #[source] kvm_ioctls::Error),
}

pub type Result<T> = std::result::Result<T, MemoryError>;

/// Start of the MMIO hole below 4 GiB (3.25 GiB): virtio-mmio windows, the IOAPIC at
/// 0xfec00000 and the LAPIC at 0xfee00000 live here; RAM above it moves to 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xd000_0000;
/// End of the MMIO hole: RAM continues here.
pub const MMIO_HOLE_END: u64 = 1 << 32;

/// The guest physical RAM ranges (start, length) of `size` bytes of guest memory:
/// [0, min(size, MMIO_HOLE_START)) and, when `size` is larger, the rest from
/// MMIO_HOLE_END. The same list makes the memory regions and the e820 map.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    let mut ranges = Vec::with_capacity(2);
    let low = size.min(MMIO_HOLE_START);
    if low > 0 {
        ranges.push((0, low));
    }
    if size > MMIO_HOLE_START {
        ranges.push((MMIO_HOLE_END, size - MMIO_HOLE_START));
    }
    ranges
}

/// Creates `size` bytes of guest memory backed by one memfd, laid out by
/// [`ram_ranges`]: the part above the hole maps the file from offset MMIO_HOLE_START.
pub fn create(size: u64) -> Result<GuestMemory> {
    // SAFETY: the name is a NUL-terminated C string that outlives the call; the
    // flags are valid. The result is checked before use.
    let fd = unsafe { libc::memfd_create(c"vhostkit-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(io::Error::last_os_error()));
    }
    // SAFETY: memfd_create just returned this descriptor; nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|e| MemoryError::Resize(size, e))?;
    let file = Arc::new(file);
    let mut regions = Vec::with_capacity(2);
    let mut offset = 0u64;
    for (start, len) in ram_ranges(size) {
        let len_usize = usize::try_from(len)
            .map_err(|_| MemoryError::Resize(size, io::Error::from(io::ErrorKind::InvalidInput)))?;
        regions.push((
            GuestAddress(start),
            len_usize,
            Some(FileOffset::from_arc(file.clone(), offset)),
        ));
        offset += len;
    }
    GuestMemory::from_ranges_with_files(regions).map_err(|e| MemoryError::Map(size, e))
}

/// Registers every region of `mem` with KVM, one slot each.
pub fn register(vm: &VmFd, mem: &GuestMemory) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| MemoryError::HostAddress(region.start_addr().0, e))?;
        let kvm_region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping of `region.len()` bytes owned by `mem`;
        // the caller keeps `mem` alive for as long as the VM (and its vCPUs) run.
        unsafe { vm.set_user_memory_region(kvm_region) }
            .map_err(|e| MemoryError::Register(slot, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn memfd_backed_and_shared() {
        let mem = create(4 << 20).unwrap();
        let region = mem.iter().next().unwrap();
        assert_eq!(region.len(), 4 << 20);
        let fo = region.file_offset().expect("file-backed");
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        // Visible through the file: the mapping is MAP_SHARED.
        let mut buf = [0u8; 4];
        use std::os::unix::fs::FileExt;
        fo.file().read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert_eq!(mem.iter().count(), 1);
    }

    #[test]
    fn ranges_around_the_hole() {
        assert_eq!(ram_ranges(64 << 20), vec![(0, 64 << 20)]);
        assert_eq!(ram_ranges(MMIO_HOLE_START), vec![(0, MMIO_HOLE_START)]);
        assert_eq!(
            ram_ranges(MMIO_HOLE_START + 0x1000),
            vec![(0, MMIO_HOLE_START), (MMIO_HOLE_END, 0x1000)]
        );
        assert_eq!(
            ram_ranges(8 << 30),
            vec![
                (0, MMIO_HOLE_START),
                (MMIO_HOLE_END, (8 << 30) - MMIO_HOLE_START)
            ]
        );
    }

    #[test]
    fn above_4g_maps_the_file_after_the_low_part() {
        use std::os::unix::fs::FileExt;
        let size = (4u64 << 30) + 0x1000;
        let mem = create(size).unwrap();
        let regions: Vec<_> = mem.iter().collect();
        assert_eq!(regions.len(), 2);
        let (low, high) = (&regions[0], &regions[1]);
        assert_eq!((low.start_addr().0, low.len()), (0, MMIO_HOLE_START));
        assert_eq!(
            (high.start_addr().0, high.len()),
            (MMIO_HOLE_END, size - MMIO_HOLE_START)
        );
        assert_eq!(low.file_offset().unwrap().start(), 0);
        let fo = high.file_offset().unwrap();
        assert_eq!(fo.start(), MMIO_HOLE_START);
        // Nothing is mapped in the hole.
        assert!(mem.read_obj::<u32>(GuestAddress(MMIO_HOLE_START)).is_err());
        assert!(mem.read_obj::<u32>(GuestAddress(0xfee0_0000)).is_err());
        // The first byte above 4 GiB is the memfd's byte at MMIO_HOLE_START.
        mem.write_obj(0x1234_5678_u32, GuestAddress(MMIO_HOLE_END + 0x10))
            .unwrap();
        let mut buf = [0u8; 4];
        fo.file()
            .read_exact_at(&mut buf, MMIO_HOLE_START + 0x10)
            .unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0x1234_5678);
        // And the low region's last byte is the file's byte just before it.
        mem.write_obj(0xab_u8, GuestAddress(MMIO_HOLE_START - 1))
            .unwrap();
        let mut b = [0u8; 1];
        fo.file()
            .read_exact_at(&mut b, MMIO_HOLE_START - 1)
            .unwrap();
        assert_eq!(b[0], 0xab);
        // Both regions share the one memfd.
        assert!(Arc::ptr_eq(low.file_offset().unwrap().arc(), fo.arc()));
    }
}
