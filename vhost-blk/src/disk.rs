//! The backing store: a raw image file or a block device, opened once per daemon and
//! shared by every queue and every connection.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// virtio-blk counts in 512-byte sectors, whatever the logical block size.
pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;

// Block device ioctls from linux/fs.h (not in libc).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKPBSZGET: libc::c_ulong = 0x127b;
pub const BLKDISCARD: libc::c_ulong = 0x1277;

/// fallocate modes of discard and write-zeroes ranges.
pub const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
pub const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// How one discard or write-zeroes range reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentOp {
    /// `fallocate` with this mode, through the I/O engine (asynchronously).
    Fallocate(i32),
    /// BLKDISCARD, a block device's discard, which has no fallocate mode: an ioctl
    /// the io_uring engine runs on a thread of its own.
    Discard,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskKind {
    File,
    BlockDevice,
}

/// An open disk and the geometry the guest is told about.
#[derive(Debug)]
pub struct Disk {
    pub file: File,
    pub kind: DiskKind,
    /// Size in bytes, rounded down to whole sectors.
    pub size: u64,
    /// Logical block size (what the guest must align to), bytes.
    pub logical_block_size: u32,
    /// Physical block size, bytes (>= logical).
    pub physical_block_size: u32,
    pub readonly: bool,
}

impl Disk {
    pub fn open(path: &Path, readonly: bool, direct: bool) -> io::Result<Disk> {
        let mut options = OpenOptions::new();
        options.read(true).write(!readonly);
        if direct {
            options.custom_flags(libc::O_DIRECT);
        }
        let file = options.open(path)?;
        let meta = file.metadata()?;
        let kind = if meta.file_type().is_block_device() {
            DiskKind::BlockDevice
        } else if meta.file_type().is_file() {
            DiskKind::File
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or a block device",
            ));
        };
        let (size, logical_block_size, physical_block_size) = match kind {
            DiskKind::File => (meta.len(), 512, 4096),
            DiskKind::BlockDevice => {
                let mut size: u64 = 0;
                let mut lbs: libc::c_int = 0;
                let mut pbs: libc::c_uint = 0;
                let fd = file.as_raw_fd();
                // SAFETY: these ioctls write one integer of the given type into the
                // pointed-to local, which lives for the duration of the call.
                let ok = unsafe {
                    libc::ioctl(fd, BLKGETSIZE64, &mut size as *mut u64) == 0
                        && libc::ioctl(fd, BLKSSZGET, &mut lbs as *mut libc::c_int) == 0
                        && libc::ioctl(fd, BLKPBSZGET, &mut pbs as *mut libc::c_uint) == 0
                };
                if !ok {
                    return Err(io::Error::last_os_error());
                }
                let lbs = u32::try_from(lbs).unwrap_or(0).max(512);
                (size, lbs, pbs.max(lbs))
            }
        };
        let size = size & !(SECTOR_SIZE - 1);
        if size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "disk is smaller than one sector",
            ));
        }
        Ok(Disk {
            file,
            kind,
            size,
            logical_block_size,
            physical_block_size,
            readonly,
        })
    }

    pub fn sectors(&self) -> u64 {
        self.size >> SECTOR_SHIFT
    }

    /// Deallocates a byte range: a hole in a file, BLKDISCARD on a device. Reads of
    /// the range afterwards return zeroes on files (and on most devices).
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.kind {
            DiskKind::File => self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ),
            DiskKind::BlockDevice => self.range_ioctl(BLKDISCARD, offset, len),
        }
    }

    /// How a discard (`write_zeroes` false) or write-zeroes range is done. A file:
    /// a hole for a discard or an unmapping write-zeroes, ZERO_RANGE otherwise
    /// (where the file system lacks it, the worker punches a hole instead: it reads
    /// back as zeroes too). A block device: BLKDISCARD for a discard, and for
    /// write-zeroes ZERO_RANGE, which the block layer turns into a zero-out.
    pub fn segment_op(&self, write_zeroes: bool, unmap: bool) -> SegmentOp {
        match (self.kind, write_zeroes) {
            (DiskKind::File, false) => SegmentOp::Fallocate(PUNCH_HOLE),
            (DiskKind::File, true) if unmap => SegmentOp::Fallocate(PUNCH_HOLE),
            (_, true) => SegmentOp::Fallocate(ZERO_RANGE),
            (DiskKind::BlockDevice, false) => SegmentOp::Discard,
        }
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on an owned fd with plain integer arguments.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn range_ioctl(&self, request: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: BLKDISCARD/BLKZEROOUT read a [u64; 2] from the pointer, which
        // points at a live local array.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request, range.as_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    fn temp_image(size: u64) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!(
            "vhostkit-disk-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(size).unwrap();
        (path, f)
    }

    #[test]
    fn size_rounds_down_and_discard_zeroes() {
        let (path, mut f) = temp_image(1 << 20);
        f.write_all(&[0xaa; 8192]).unwrap();
        f.set_len((1 << 20) + 100).unwrap();
        let disk = Disk::open(&path, false, false).unwrap();
        assert_eq!(disk.size, 1 << 20);
        assert_eq!(disk.sectors(), 2048);
        disk.discard(4096, 4096).unwrap();
        assert_eq!(
            disk.segment_op(true, false),
            SegmentOp::Fallocate(ZERO_RANGE)
        );
        disk.fallocate(ZERO_RANGE, 0, 512).unwrap();
        let mut back = vec![0u8; 8192];
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_exact(&mut back).unwrap();
        assert!(back[..512].iter().all(|&b| b == 0));
        assert!(back[512..4096].iter().all(|&b| b == 0xaa));
        assert!(back[4096..].iter().all(|&b| b == 0));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn tiny_or_odd_files_are_refused() {
        let (path, _f) = temp_image(100);
        assert!(Disk::open(&path, false, false).is_err());
        std::fs::remove_file(path).unwrap();
        assert!(Disk::open(Path::new("/dev/null"), true, false).is_err());
    }
}
