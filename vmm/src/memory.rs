//! Guest memory: one memfd mapped MAP_SHARED (so vhost-user daemons can map the same
//! pages later), registered with KVM as memory slot 0.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

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

/// Creates `size` bytes of guest memory at guest physical address 0, backed by a memfd.
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
    let len = usize::try_from(size)
        .map_err(|_| MemoryError::Resize(size, io::Error::from(io::ErrorKind::InvalidInput)))?;
    GuestMemory::from_ranges_with_files([(GuestAddress(0), len, Some(FileOffset::new(file, 0)))])
        .map_err(|e| MemoryError::Map(size, e))
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
    }
}
