//! Loading a Linux kernel (an ELF vmlinux or a bzImage, told apart by content) and
//! an initramfs, and setting up the 64-bit boot state of the x86 64-bit boot protocol
//! (the layout Firecracker and the rust-vmm examples use).
//!
//! Guest physical layout below 1 MiB:
//!
//! | address  | what                                             |
//! |----------|--------------------------------------------------|
//! | 0x500    | GDT: null, 64-bit code, data, TSS                |
//! | 0x520    | IDT (empty)                                      |
//! | 0x7000   | zero page (`boot_params`), RSI points here       |
//! | 0x8ff0   | initial stack pointer                            |
//! | 0x9000   | PML4, PDPT at 0xa000, PD at 0xb000 (1 GiB, 2 MiB pages) |
//! | 0x20000  | kernel command line                              |
//!
//! The kernel goes at 1 MiB (an ELF's segments must lie at or above it; a bzImage's
//! protected-mode part is copied there and entered at startup_64, 0x200 further on).
//! The initramfs goes as high as allowed below the MMIO hole.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header, LOADED_HIGH, XLF_KERNEL_64};
use linux_loader::loader::{bzimage::BzImage, elf::Elf, load_cmdline, KernelLoader};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::memory::{self, GuestMemory};

pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x520;
pub const ZERO_PAGE: u64 = 0x7000;
pub const BOOT_STACK: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 2048;
/// Kernel segments start here or above; a bzImage is loaded here.
pub const HIMEM_START: u64 = 0x10_0000;
/// The boot page tables identity-map this much.
pub const IDENTITY_MAPPED: u64 = 1 << 30;
/// End of conventional memory in the e820 map.
const EBDA_START: u64 = 0x9fc00;
/// startup_64 is this far into a bzImage's protected-mode code.
pub const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Offset of the setup header in a bzImage (and in boot_params).
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// Offset of the "HdrS" magic in a bzImage.
const HDRS_OFFSET: usize = 0x202;
const HDRS: &[u8; 4] = b"HdrS";
/// Lowest boot protocol with a 64-bit entry we accept.
const MIN_BOOT_PROTOCOL: u16 = 0x0206;
/// initrd_addr_max of kernels that leave it zero (boot protocol < 2.03).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// Page size the initrd is aligned to.
const PAGE: u64 = 0x1000;

const X86_CR0_PE: u64 = 1;
const X86_CR0_PG: u64 = 1 << 31;
/// Not write-through and cache disable, both set at reset. A bzImage's decompressor
/// runs with the CR0 it is given (only the kernel proper loads its own), so they are
/// cleared.
const X86_CR0_NW: u64 = 1 << 29;
const X86_CR0_CD: u64 = 1 << 30;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const E820_RAM: u32 = 1;
/// type_of_loader for a boot loader without an assigned ID.
const LOADER_UNDEFINED: u8 = 0xff;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot read kernel {0}")]
    Open(String, #[source] io::Error),
    /// The source is the ELF loader's verdict on the magic number.
    #[error("kernel {0} is not a loadable 64-bit ELF or bzImage (no \"HdrS\" at 0x202 either)")]
    Unknown(String, #[source] linux_loader::loader::Error),
    #[error("kernel {0} is not a loadable 64-bit ELF")]
    Elf(String, #[source] linux_loader::loader::Error),
    #[error("kernel {0} is not a loadable bzImage")]
    BzImage(String, #[source] linux_loader::loader::Error),
    #[error(
        "kernel {path} is a bzImage without a 64-bit entry (boot protocol {}.{:02}{}); \
         vhostkit needs protocol 2.06 or later with XLF_KERNEL_64",
        .version >> 8, .version & 0xff,
        if *.xlf_kernel_64 { "" } else { ", no XLF_KERNEL_64" }
    )]
    NoBoot64 {
        path: String,
        version: u16,
        xlf_kernel_64: bool,
    },
    #[error(
        "kernel {path} is truncated: {len} bytes, but its setup header needs more than {need}"
    )]
    Truncated { path: String, len: u64, need: u64 },
    #[error("kernel {path} needs guest memory up to {end:#x}, but --memory gives {mem:#x} bytes")]
    TooBig { path: String, end: u64, mem: u64 },
    #[error("kernel {path}: segment at {addr:#x} is below 1 MiB (the VMM's boot area)")]
    Low { path: String, addr: u64 },
    #[error("kernel {path}: entry point {entry:#x} is outside the identity-mapped first GiB")]
    Entry { path: String, entry: u64 },
    #[error("bad kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("kernel command line is {len} bytes, kernel {path} accepts at most {max}")]
    CmdlineTooLong { path: String, len: usize, max: u32 },
    #[error("cannot write the command line to guest memory")]
    LoadCmdline(#[source] linux_loader::loader::Error),
    #[error("cannot read initrd {0}")]
    InitrdOpen(String, #[source] io::Error),
    #[error(
        "initrd {path} ({size} bytes) does not fit below {top:#x} and above the kernel's end \
         {bottom:#x} with {mem:#x} bytes of guest memory"
    )]
    InitrdTooBig {
        path: String,
        size: u64,
        top: u64,
        bottom: u64,
        mem: u64,
    },
    #[error("cannot copy initrd {0} into guest memory")]
    InitrdLoad(String, #[source] vm_memory::GuestMemoryError),
    #[error("cannot write the zero page")]
    ZeroPage(#[source] linux_loader::configurator::Error),
    #[error("cannot write boot structures to guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

pub type Result<T> = std::result::Result<T, BootError>;

/// The kind of a kernel image, by content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelImage {
    /// An ELF vmlinux, entered in 64-bit mode at its ELF entry.
    Elf,
    /// A bzImage, entered at startup_64 (64-bit boot protocol).
    BzImage,
}

impl KernelImage {
    /// The kind of the image whose first bytes are `head` (at least 0x206 of them for
    /// a bzImage), or None.
    pub fn detect(head: &[u8]) -> Option<KernelImage> {
        if head.starts_with(b"\x7fELF") {
            Some(KernelImage::Elf)
        } else if head.get(HDRS_OFFSET..HDRS_OFFSET + 4) == Some(HDRS) {
            Some(KernelImage::BzImage)
        } else {
            None
        }
    }
}

/// A kernel in guest memory.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// Where the boot vCPU starts, in 64-bit mode.
    pub entry: u64,
    pub kind: KernelImage,
    /// First guest address above the kernel image and the memory it claims while
    /// booting (for a bzImage: init_size from where it decompresses itself).
    pub end: u64,
    /// The kernel file, for messages.
    path: String,
    /// A bzImage's setup header (code32_start set to the load address).
    setup_header: Option<setup_header>,
}

impl LoadedKernel {
    /// A bzImage's setup header as copied into the zero page.
    pub fn setup_header(&self) -> Option<&setup_header> {
        self.setup_header.as_ref()
    }
}

/// Lowest and highest guest physical addresses of the PT_LOAD segments of the ELF
/// in `f`, or None if it does not parse as an ELF64 (the loader then says why).
fn elf_extent(f: &mut File) -> Option<(u64, u64)> {
    let mut ehdr = [0u8; 64];
    f.seek(SeekFrom::Start(0)).ok()?;
    f.read_exact(&mut ehdr).ok()?;
    if &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let phoff = u64_at(&ehdr, 0x20);
    let phentsize = u16_at(&ehdr, 0x36) as u64;
    let phnum = u16_at(&ehdr, 0x38) as u64;
    if phentsize < 56 || phnum > 4096 {
        return None;
    }
    let (mut low, mut high) = (u64::MAX, 0u64);
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        f.seek(SeekFrom::Start(phoff.checked_add(i * phentsize)?))
            .ok()?;
        f.read_exact(&mut ph).ok()?;
        let p_type = u32::from_le_bytes(ph[..4].try_into().unwrap());
        let (paddr, filesz, memsz) = (u64_at(&ph, 0x18), u64_at(&ph, 0x20), u64_at(&ph, 0x28));
        if p_type != 1 || filesz == 0 {
            continue; // not PT_LOAD, or skipped by the loader
        }
        low = low.min(paddr);
        high = high.max(paddr.checked_add(memsz.max(filesz))?);
    }
    (high > 0).then_some((low, high))
}

/// Loads the kernel at `path` (an ELF vmlinux or a bzImage, by content) into `mem`.
pub fn load_kernel(mem: &GuestMemory, mem_size: u64, path: &Path) -> Result<LoadedKernel> {
    let name = path.display().to_string();
    let mut f = File::open(path).map_err(|e| BootError::Open(name.clone(), e))?;
    let mut head = Vec::with_capacity(HDRS_OFFSET + 4);
    (&mut f)
        .take(HDRS_OFFSET as u64 + 4)
        .read_to_end(&mut head)
        .map_err(|e| BootError::Open(name.clone(), e))?;
    match KernelImage::detect(&head) {
        Some(KernelImage::Elf) => load_elf(mem, mem_size, f, name),
        Some(KernelImage::BzImage) => load_bzimage(mem, mem_size, f, name),
        None => Err(BootError::Unknown(
            name,
            linux_loader::loader::elf::Error::InvalidElfMagicNumber.into(),
        )),
    }
}

fn load_elf(mem: &GuestMemory, mem_size: u64, mut f: File, name: String) -> Result<LoadedKernel> {
    if let Some((low, high)) = elf_extent(&mut f) {
        if low < HIMEM_START {
            return Err(BootError::Low {
                path: name,
                addr: low,
            });
        }
        let limit = mem_size.min(memory::MMIO_HOLE_START);
        if high > limit {
            return Err(BootError::TooBig {
                path: name,
                end: high,
                mem: mem_size,
            });
        }
    }
    let loaded = Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| BootError::Elf(name.clone(), e))?;
    let entry = loaded.kernel_load.0;
    if entry >= IDENTITY_MAPPED.min(mem_size) {
        return Err(BootError::Entry { path: name, entry });
    }
    Ok(LoadedKernel {
        entry,
        kind: KernelImage::Elf,
        end: loaded.kernel_end,
        path: name,
        setup_header: None,
    })
}

fn load_bzimage(
    mem: &GuestMemory,
    mem_size: u64,
    mut f: File,
    name: String,
) -> Result<LoadedKernel> {
    let len = f
        .metadata()
        .map_err(|e| BootError::Open(name.clone(), e))?
        .len();
    let header_end = SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>() as u64;
    let truncated = |need: u64| BootError::Truncated {
        path: name.clone(),
        len,
        need,
    };
    if len < header_end {
        return Err(truncated(header_end));
    }
    let mut hdr = setup_header::default();
    f.seek(SeekFrom::Start(SETUP_HEADER_OFFSET))
        .and_then(|_| f.read_exact(hdr.as_mut_slice()))
        .map_err(|e| BootError::Open(name.clone(), e))?;
    let (version, xloadflags) = (hdr.version, hdr.xloadflags);
    let xlf_kernel_64 = xloadflags & XLF_KERNEL_64 != 0;
    if version < MIN_BOOT_PROTOCOL || !xlf_kernel_64 {
        return Err(BootError::NoBoot64 {
            path: name,
            version,
            xlf_kernel_64,
        });
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(BootError::BzImage(
            name,
            linux_loader::loader::bzimage::Error::InvalidBzImage.into(),
        ));
    }
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let setup_size = (setup_sects + 1) * 512;
    if len <= setup_size {
        return Err(truncated(setup_size));
    }
    // The protected-mode code goes at 1 MiB; with init_size the kernel also says how
    // much it needs from where it decompresses itself: the load address rounded up to
    // kernel_alignment, but not below pref_address (LOAD_PHYSICAL_ADDR, head_64.S).
    let image_end = HIMEM_START + (len - setup_size);
    let align = match u64::from(hdr.kernel_alignment) {
        a if a.is_power_of_two() => a,
        _ => 1,
    };
    let runtime_start = HIMEM_START.next_multiple_of(align).max(hdr.pref_address);
    let end = match u64::from(hdr.init_size) {
        0 => image_end,
        init_size => image_end.max(runtime_start.saturating_add(init_size)),
    };
    if end > mem_size.min(memory::MMIO_HOLE_START) {
        return Err(BootError::TooBig {
            path: name,
            end,
            mem: mem_size,
        });
    }
    f.seek(SeekFrom::Start(0))
        .map_err(|e| BootError::Open(name.clone(), e))?;
    let loaded = BzImage::load(mem, Some(GuestAddress(HIMEM_START)), &mut f, None)
        .map_err(|e| BootError::BzImage(name.clone(), e))?;
    Ok(LoadedKernel {
        entry: loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
        kind: KernelImage::BzImage,
        end: end.max(loaded.kernel_end),
        path: name,
        setup_header: loaded.setup_header,
    })
}

/// The e820 map of `mem_size` bytes of guest memory laid out by
/// [`memory::ram_ranges`]: (address, length, type).
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = Vec::with_capacity(3);
    for (start, len) in memory::ram_ranges(mem_size) {
        if start == 0 {
            // Conventional memory, then from 1 MiB: the EBDA, VGA and BIOS area between
            // is left out.
            map.push((0, len.min(EBDA_START), E820_RAM));
            if len > HIMEM_START {
                map.push((HIMEM_START, len - HIMEM_START, E820_RAM));
            }
        } else {
            map.push((start, len, E820_RAM));
        }
    }
    map
}

/// Copies the initrd at `path` into guest memory: page-aligned, as high as possible
/// below `top`, above `bottom`. Returns its guest address and size.
fn load_initrd(
    mem: &GuestMemory,
    mem_size: u64,
    path: &Path,
    top: u64,
    bottom: u64,
) -> Result<(u64, u64)> {
    let name = path.display().to_string();
    let mut f = File::open(path).map_err(|e| BootError::InitrdOpen(name.clone(), e))?;
    let size = f
        .metadata()
        .map_err(|e| BootError::InitrdOpen(name.clone(), e))?
        .len();
    let bottom = bottom.next_multiple_of(PAGE);
    let too_big = || BootError::InitrdTooBig {
        path: name.clone(),
        size,
        top,
        bottom,
        mem: mem_size,
    };
    let addr = top
        .checked_sub(size)
        .map(|a| a & !(PAGE - 1))
        .filter(|&a| a >= bottom)
        .ok_or_else(too_big)?;
    // Below the hole, so the size fits usize and u32.
    let count = usize::try_from(size).map_err(|_| too_big())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, count)
        .map_err(|e| BootError::InitrdLoad(name, e))?;
    Ok((addr, size))
}

/// Writes the command line, the zero page (a bzImage's own setup header, the e820
/// map from [`memory::ram_ranges`], the initrd's place, the ACPI RSDP), the initrd,
/// the page tables, the GDT/IDT and the secondary vCPUs' parking loop.
pub fn setup_memory(
    mem: &GuestMemory,
    mem_size: u64,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<&Path>,
    rsdp: Option<u64>,
) -> Result<()> {
    let mut cl = Cmdline::new(CMDLINE_MAX).map_err(BootError::Cmdline)?;
    if !cmdline.is_empty() {
        cl.insert_str(cmdline).map_err(BootError::Cmdline)?;
    }
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(BootError::LoadCmdline)?;

    let mut params = boot_params::default();
    match kernel.setup_header {
        Some(hdr) => {
            // A bzImage reads its own header back (alignment, init_size, ...); the
            // kernel's cmdline_size is the most it takes, without the NUL.
            let max = hdr.cmdline_size;
            if max > 0 && cmdline.len() as u64 > u64::from(max) {
                return Err(BootError::CmdlineTooLong {
                    path: kernel.path.clone(),
                    len: cmdline.len(),
                    max,
                });
            }
            params.hdr = hdr;
        }
        None => {
            params.hdr.boot_flag = 0xaa55;
            params.hdr.header = 0x5372_6448; // "HdrS"
            params.hdr.kernel_alignment = 0x0100_0000;
        }
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;
    if let Some(path) = initrd {
        let low_end = mem_size.min(memory::MMIO_HOLE_START);
        let cap = match kernel.setup_header {
            Some(hdr) => match u64::from(hdr.initrd_addr_max) {
                0 => DEFAULT_INITRD_ADDR_MAX,
                max => max,
            },
            // ELF kernels: below 4 GiB, as Firecracker does.
            None => u64::from(u32::MAX),
        };
        let top = low_end.min(cap + 1);
        let (addr, size) = load_initrd(mem, mem_size, path, top, kernel.end)?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_image = (addr >> 32) as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    if let Some(rsdp) = rsdp {
        params.acpi_rsdp_addr = rsdp;
    }
    let map = e820_map(mem_size);
    for (i, (addr, size, kind)) in map.iter().enumerate() {
        params.e820_table[i].addr = *addr;
        params.e820_table[i].size = *size;
        params.e820_table[i].r#type = *kind;
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemory>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE)),
        mem,
    )
    .map_err(BootError::ZeroPage)?;

    // Identity map of the first GiB: PML4[0] -> PDPT[0] -> PD of 512 2-MiB pages.
    let w = |v: u64, a: u64| mem.write_obj(v, GuestAddress(a)).map_err(BootError::Memory);
    w(PDPT_START | 0x03, PML4_START)?;
    w(PD_START | 0x03, PDPT_START)?;
    for i in 0..512u64 {
        w((i << 21) | 0x83, PD_START + i * 8)?; // present, writable, 2 MiB page
    }
    for (i, e) in GDT.iter().enumerate() {
        w(*e, GDT_START + i as u64 * 8)?;
    }
    w(0, IDT_START)?;
    Ok(())
}

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0xffff)
}

/// Null, 64-bit code (selector 0x8), data (0x10), TSS (0x18).
const GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

fn segment(index: u16) -> kvm_segment {
    let e = GDT[index as usize];
    let g = ((e >> 55) & 1) as u8;
    let limit = (((e >> 32) & 0xf_0000) | (e & 0xffff)) as u32;
    let present = ((e >> 47) & 1) as u8;
    kvm_segment {
        base: ((e >> 16) & 0xff_ffff) | ((e >> 32) & 0xff00_0000),
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: index * 8,
        type_: ((e >> 40) & 0xf) as u8,
        present,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Long mode with paging and caching on, flat segments from the GDT.
pub fn long_mode_sregs(sregs: &mut kvm_sregs) {
    let code = segment(1);
    let data = segment(2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(3);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.cr0 &= !(X86_CR0_CD | X86_CR0_NW);
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// General registers at the kernel entry (or the parking loop for other vCPUs).
pub fn entry_regs(rip: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE,
        ..Default::default()
    }
}

/// x87 and SSE state after reset.
pub fn initial_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_loader::loader::bootparam::boot_params;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    const MIB: u64 = 1 << 20;

    /// A file under the temp directory, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(tag: &str, bytes: &[u8]) -> TempFile {
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "vhostkit-boot-{}-{}-{tag}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, bytes).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    const SETUP_SECTS: u8 = 3;
    const SETUP_SIZE: usize = (SETUP_SECTS as usize + 1) * 512;

    fn header(version: u16, xloadflags: u16) -> setup_header {
        setup_header {
            setup_sects: SETUP_SECTS,
            boot_flag: 0xaa55,
            header: u32::from_le_bytes(*HDRS),
            version,
            loadflags: LOADED_HIGH,
            code32_start: 0x10_0000,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable_kernel: 1,
            min_alignment: 21,
            xloadflags,
            cmdline_size: 2047,
            pref_address: 0x100_0000,
            init_size: 0x10_0000,
            ..Default::default()
        }
    }

    /// A bzImage: boot sector and setup sectors with `hdr` at 0x1f1, then `payload`
    /// as the protected-mode part.
    fn bzimage(hdr: &setup_header, payload: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; SETUP_SIZE];
        let at = SETUP_HEADER_OFFSET as usize;
        image[at..at + std::mem::size_of::<setup_header>()].copy_from_slice(hdr.as_slice());
        image.extend_from_slice(payload);
        image
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn good_bzimage() -> Vec<u8> {
        bzimage(&header(0x020f, XLF_KERNEL_64), &payload(8192))
    }

    fn zero_page(mem: &GuestMemory) -> boot_params {
        mem.read_obj(GuestAddress(ZERO_PAGE)).unwrap()
    }

    fn load_err(mem_size: u64, image: &[u8]) -> String {
        let mem = memory::create(mem_size).unwrap();
        let f = TempFile::new("bad", image);
        let e = load_kernel(&mem, mem_size, &f.0).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&f.0.display().to_string()), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        msg
    }

    /// An ELF kernel as load_kernel would describe one, for the zero page tests.
    fn elf_kernel(end: u64) -> LoadedKernel {
        LoadedKernel {
            entry: HIMEM_START,
            kind: KernelImage::Elf,
            end,
            path: "vmlinux".into(),
            setup_header: None,
        }
    }

    #[test]
    fn gdt_segments() {
        let cs = segment(1);
        assert_eq!(
            (cs.selector, cs.type_, cs.l, cs.db, cs.present, cs.g),
            (8, 0xb, 1, 0, 1, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(2);
        assert_eq!(
            (ds.selector, ds.type_, ds.l, ds.db, ds.s),
            (0x10, 3, 0, 1, 1)
        );
        assert_eq!(segment(3).s, 0);
    }

    #[test]
    fn long_mode_with_caching_on() {
        let mut sregs = kvm_sregs {
            cr0: 0x6000_0010, // at reset: CD, NW, ET
            ..Default::default()
        };
        long_mode_sregs(&mut sregs);
        assert_eq!(sregs.cr0, 0x8000_0011);
        assert_eq!(sregs.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.selector, sregs.cr3), (8, PML4_START));
    }

    #[test]
    fn zero_page_and_tables() {
        let mem = memory::create(4 << 20).unwrap();
        setup_memory(
            &mem,
            4 << 20,
            &elf_kernel(2 * MIB),
            "console=ttyS0 foo=bar",
            None,
            None,
        )
        .unwrap();
        let p = zero_page(&mem);
        let hdr = p.hdr;
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.ramdisk_image }, 0);
        assert_eq!({ p.acpi_rsdp_addr }, 0);
        let mut buf = [0u8; 22];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0 foo=bar\0");
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PD_START + 8)).unwrap(),
            0x20_0083
        );
        assert_eq!(p.e820_entries, 2);
        let e = p.e820_table;
        assert_eq!(({ e[1].addr }, { e[1].size }), (HIMEM_START, 3 * MIB));
    }

    #[test]
    fn detects_by_content() {
        assert_eq!(
            KernelImage::detect(b"\x7fELF\x02\x01"),
            Some(KernelImage::Elf)
        );
        assert_eq!(
            KernelImage::detect(&good_bzimage()),
            Some(KernelImage::BzImage)
        );
        assert_eq!(KernelImage::detect(&[0u8; 0x300]), None);
        assert_eq!(KernelImage::detect(&good_bzimage()[..0x204]), None);
        // A bzImage named like an ELF is still a bzImage.
        let mem = memory::create(64 * MIB).unwrap();
        let f = TempFile::new("vmlinux.elf", &good_bzimage());
        let k = load_kernel(&mem, 64 * MIB, &f.0).unwrap();
        assert_eq!(k.kind, KernelImage::BzImage);
    }

    #[test]
    fn bzimage_loads_and_its_header_reaches_the_zero_page() {
        let mem_size = 64 * MIB;
        let mem = memory::create(mem_size).unwrap();
        let image = good_bzimage();
        let f = TempFile::new("bzImage", &image);
        let k = load_kernel(&mem, mem_size, &f.0).unwrap();
        assert_eq!(k.kind, KernelImage::BzImage);
        assert_eq!(k.entry, 0x10_0200);
        // init_size from pref_address (16 MiB), above the 8 KiB image.
        assert_eq!(k.end, 0x100_0000 + 0x10_0000);
        let mut loaded = vec![0u8; image.len() - SETUP_SIZE];
        mem.read_slice(&mut loaded, GuestAddress(HIMEM_START))
            .unwrap();
        assert_eq!(loaded, &image[SETUP_SIZE..]);
        assert_eq!({ k.setup_header().unwrap().version }, 0x020f);

        setup_memory(
            &mem,
            mem_size,
            &k,
            "console=ttyS0 root=/dev/vda",
            None,
            Some(0xe_0000),
        )
        .unwrap();
        let p = zero_page(&mem);
        let hdr = p.hdr;
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!({ hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ hdr.xloadflags }, XLF_KERNEL_64);
        assert_eq!({ hdr.init_size }, 0x10_0000);
        assert_eq!({ hdr.pref_address }, 0x100_0000);
        assert_eq!({ hdr.setup_sects }, SETUP_SECTS);
        assert_eq!({ hdr.code32_start }, 0x10_0000);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 28);
        assert_eq!(({ hdr.ramdisk_image }, { hdr.ramdisk_size }), (0, 0));
        assert_eq!({ p.acpi_rsdp_addr }, 0xe_0000);
        assert_eq!(p.e820_entries, 2);
    }

    #[test]
    fn bzimage_without_64bit_entry_is_refused() {
        let old = bzimage(&header(0x0205, XLF_KERNEL_64), &payload(4096));
        let msg = load_err(64 * MIB, &old);
        assert!(
            msg.contains("is a bzImage without a 64-bit entry (boot protocol 2.05)"),
            "{msg}"
        );
        let no_xlf = bzimage(&header(0x020f, 0), &payload(4096));
        let msg = load_err(64 * MIB, &no_xlf);
        assert!(
            msg.contains("without a 64-bit entry (boot protocol 2.15, no XLF_KERNEL_64)"),
            "{msg}"
        );
        // 2.06 with the flag is the oldest accepted.
        let mem = memory::create(64 * MIB).unwrap();
        let f = TempFile::new(
            "206",
            &bzimage(&header(0x0206, XLF_KERNEL_64), &payload(64)),
        );
        assert!(load_kernel(&mem, 64 * MIB, &f.0).is_ok());
    }

    #[test]
    fn truncated_bzimage_is_refused() {
        let image = good_bzimage();
        // Header there, protected-mode part missing.
        for len in [SETUP_SIZE, 0x300, 0x240] {
            let msg = load_err(64 * MIB, &image[..len]);
            assert!(msg.contains("is truncated"), "{len:#x}: {msg}");
        }
        // Not even the magic.
        let msg = load_err(64 * MIB, &image[..0x100]);
        assert!(
            msg.contains("not a loadable 64-bit ELF or bzImage"),
            "{msg}"
        );
        let msg = load_err(64 * MIB, &[]);
        assert!(
            msg.contains("not a loadable 64-bit ELF or bzImage"),
            "{msg}"
        );
    }

    #[test]
    fn bzimage_too_big_for_memory() {
        // init_size counts: 16 MiB + 1 MiB does not fit in 16 MiB.
        let msg = load_err(16 * MIB, &good_bzimage());
        assert!(msg.contains("needs guest memory up to 0x1100000"), "{msg}");
        // The image itself counts when there is no init_size.
        let mut hdr = header(0x020f, XLF_KERNEL_64);
        hdr.init_size = 0;
        let msg = load_err(2 * MIB, &bzimage(&hdr, &payload(MIB as usize + 1)));
        assert!(msg.contains("needs guest memory up to 0x200001"), "{msg}");
    }

    #[test]
    fn debian_bzimage() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../build/guest/vmlinuz"
        ));
        if !path.exists() {
            vhostkit_tests::skip::skip(format_args!(
                "build/guest/vmlinuz missing (scripts/build-guest-image.sh builds it)"
            ));
            return;
        }
        let mem_size = 256 * MIB;
        let mem = memory::create(mem_size).unwrap();
        let k = load_kernel(&mem, mem_size, path).unwrap();
        assert_eq!(k.kind, KernelImage::BzImage);
        assert_eq!(k.entry, 0x10_0200);
        let hdr = *k.setup_header().unwrap();
        assert!({ hdr.version } >= 0x020c, "boot protocol {:#x}", {
            hdr.version
        });
        assert_ne!({ hdr.xloadflags } & XLF_KERNEL_64, 0);
        assert!({ hdr.init_size } > 0);
        assert!(k.end <= mem_size && k.end >= HIMEM_START + u64::from(hdr.init_size));
        let file = std::fs::read(path).unwrap();
        let setup = (usize::from(hdr.setup_sects) + 1) * 512;
        let mut loaded = vec![0u8; file.len() - setup];
        mem.read_slice(&mut loaded, GuestAddress(HIMEM_START))
            .unwrap();
        assert!(
            loaded == file[setup..],
            "kernel bytes at 1 MiB differ from the file"
        );
        // A 32 MiB guest cannot hold it while it decompresses.
        let small = memory::create(32 * MIB).unwrap();
        let e = load_kernel(&small, 32 * MIB, path).unwrap_err();
        assert!(matches!(e, BootError::TooBig { .. }), "{e}");
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let mem_size = 64 * MIB;
        let mem = memory::create(mem_size).unwrap();
        let kf = TempFile::new("bzImage", &good_bzimage());
        let k = load_kernel(&mem, mem_size, &kf.0).unwrap();
        // Not a multiple of the page size, so alignment shows.
        let rd = payload(MIB as usize + 100);
        let rf = TempFile::new("initrd", &rd);
        setup_memory(&mem, mem_size, &k, "console=ttyS0", Some(&rf.0), None).unwrap();
        let hdr = zero_page(&mem).hdr;
        let (addr, size) = (u64::from(hdr.ramdisk_image), u64::from(hdr.ramdisk_size));
        assert_eq!(size, rd.len() as u64);
        assert_eq!(addr % 4096, 0);
        assert!(addr + size <= mem_size);
        assert!(addr >= k.end);
        // As high as it goes: the next page up would not fit.
        assert!(addr + 4096 + size > mem_size);
        let mut back = vec![0u8; rd.len()];
        mem.read_slice(&mut back, GuestAddress(addr)).unwrap();
        assert!(back == rd);
        assert_eq!({ zero_page(&mem).ext_ramdisk_image }, 0);
    }

    #[test]
    fn initrd_respects_initrd_addr_max_and_elf_cap() {
        let mem_size = 64 * MIB;
        let mem = memory::create(mem_size).unwrap();
        let mut hdr = header(0x020f, XLF_KERNEL_64);
        hdr.initrd_addr_max = 0x1ff_ffff; // 32 MiB - 1
        let kf = TempFile::new("bzImage", &bzimage(&hdr, &payload(4096)));
        let k = load_kernel(&mem, mem_size, &kf.0).unwrap();
        let rf = TempFile::new("initrd", &payload(64 * 1024));
        setup_memory(&mem, mem_size, &k, "", Some(&rf.0), None).unwrap();
        let addr = u64::from(zero_page(&mem).hdr.ramdisk_image);
        assert_eq!(addr, 32 * MIB - 64 * 1024);

        // An ELF kernel: up to the end of RAM below the hole.
        let mem = memory::create(mem_size).unwrap();
        setup_memory(&mem, mem_size, &elf_kernel(2 * MIB), "", Some(&rf.0), None).unwrap();
        let addr = u64::from(zero_page(&mem).hdr.ramdisk_image);
        assert_eq!(addr, mem_size - 64 * 1024);
    }

    #[test]
    fn initrd_too_big_or_missing() {
        let mem_size = 64 * MIB;
        let mem = memory::create(mem_size).unwrap();
        let kf = TempFile::new("bzImage", &good_bzimage());
        let k = load_kernel(&mem, mem_size, &kf.0).unwrap();
        // 17 MiB of kernel (init_size from 16 MiB) + 48 MiB does not fit in 64 MiB.
        let rf = TempFile::new("initrd-big", &[]);
        std::fs::File::options()
            .write(true)
            .open(&rf.0)
            .unwrap()
            .set_len(48 * MIB)
            .unwrap();
        let msg = setup_memory(&mem, mem_size, &k, "", Some(&rf.0), None)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&format!(
                "initrd {} (50331648 bytes) does not fit",
                rf.0.display()
            )),
            "{msg}"
        );
        assert!(msg.contains("0x4000000 bytes of guest memory"), "{msg}");
        // 47 MiB does.
        std::fs::File::options()
            .write(true)
            .open(&rf.0)
            .unwrap()
            .set_len(47 * MIB)
            .unwrap();
        setup_memory(&mem, mem_size, &k, "", Some(&rf.0), None).unwrap();
        assert_eq!(u64::from(zero_page(&mem).hdr.ramdisk_image), 17 * MIB);

        let missing = std::env::temp_dir().join("vhostkit-boot-no-such-initrd");
        let e = setup_memory(&mem, mem_size, &k, "", Some(&missing), None).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("cannot read initrd {}", missing.display())),
            "{e}"
        );
        assert!(matches!(e, BootError::InitrdOpen(..)));
    }

    #[test]
    fn cmdline_longer_than_the_kernel_takes() {
        let mem = memory::create(64 * MIB).unwrap();
        let mut hdr = header(0x020f, XLF_KERNEL_64);
        hdr.cmdline_size = 10;
        let kf = TempFile::new("bzImage", &bzimage(&hdr, &payload(64)));
        let k = load_kernel(&mem, 64 * MIB, &kf.0).unwrap();
        let msg = setup_memory(&mem, 64 * MIB, &k, "console=ttyS0", None, None)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("13 bytes, kernel") && msg.contains("at most 10"),
            "{msg}"
        );
        setup_memory(&mem, 64 * MIB, &k, "quiet", None, None).unwrap();
    }

    #[test]
    fn e820_above_4g() {
        let size = (4u64 << 30) + 64 * MIB;
        let map = e820_map(size);
        assert_eq!(
            map,
            vec![
                (0, EBDA_START, E820_RAM),
                (HIMEM_START, memory::MMIO_HOLE_START - HIMEM_START, E820_RAM),
                (
                    memory::MMIO_HOLE_END,
                    size - memory::MMIO_HOLE_START,
                    E820_RAM
                ),
            ]
        );
        for (a, l, _) in &map {
            assert!(a + l <= memory::MMIO_HOLE_START || *a >= memory::MMIO_HOLE_END);
        }
        // And in the zero page of a guest that size (the memfd is sparse).
        let mem = memory::create(size).unwrap();
        setup_memory(&mem, size, &elf_kernel(2 * MIB), "", None, None).unwrap();
        let p = zero_page(&mem);
        assert_eq!(p.e820_entries, 3);
        let e = p.e820_table;
        assert_eq!(
            ({ e[2].addr }, { e[2].size }, { e[2].r#type }),
            (1 << 32, size - memory::MMIO_HOLE_START, E820_RAM)
        );
        assert_eq!(e820_map(64 * MIB).len(), 2);
    }
}
