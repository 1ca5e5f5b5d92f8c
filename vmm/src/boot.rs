//! Loading an ELF kernel and setting up the 64-bit boot state a vmlinux expects
//! (the layout Firecracker and the rust-vmm examples use).
//!
//! Guest physical layout below 1 MiB:
//!
//! | address  | what                                             |
//! |----------|--------------------------------------------------|
//! | 0x500    | GDT: null, 64-bit code, data, TSS                |
//! | 0x520    | IDT (empty)                                      |
//! | 0x6000   | `hlt; jmp .` where secondary vCPUs are parked    |
//! | 0x7000   | zero page (`boot_params`), RSI points here       |
//! | 0x8ff0   | initial stack pointer                            |
//! | 0x9000   | PML4, PDPT at 0xa000, PD at 0xb000 (1 GiB, 2 MiB pages) |
//! | 0x20000  | kernel command line                              |
//!
//! The kernel's segments must lie at or above 1 MiB and inside guest memory.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::{elf::Elf, load_cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;

pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x520;
pub const AP_PARK: u64 = 0x6000;
pub const ZERO_PAGE: u64 = 0x7000;
pub const BOOT_STACK: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 2048;
/// Kernel segments start here or above.
pub const HIMEM_START: u64 = 0x10_0000;
/// The boot page tables identity-map this much.
pub const IDENTITY_MAPPED: u64 = 1 << 30;
/// End of conventional memory in the e820 map.
const EBDA_START: u64 = 0x9fc00;

const X86_CR0_PE: u64 = 1;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const E820_RAM: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot read kernel {0}")]
    Open(String, #[source] io::Error),
    #[error("kernel {0} is not a loadable 64-bit ELF")]
    Elf(String, #[source] linux_loader::loader::Error),
    #[error("kernel {path} needs guest memory up to {end:#x}, but --memory gives {mem:#x} bytes")]
    TooBig { path: String, end: u64, mem: u64 },
    #[error("kernel {path}: segment at {addr:#x} is below 1 MiB (the VMM's boot area)")]
    Low { path: String, addr: u64 },
    #[error("kernel {path}: entry point {entry:#x} is outside the identity-mapped first GiB")]
    Entry { path: String, entry: u64 },
    #[error("bad kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("cannot write the command line to guest memory")]
    LoadCmdline(#[source] linux_loader::loader::Error),
    #[error("cannot write the zero page")]
    ZeroPage(#[source] linux_loader::configurator::Error),
    #[error("cannot write boot structures to guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

pub type Result<T> = std::result::Result<T, BootError>;

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

/// Loads the ELF kernel at `path` into `mem`; returns its entry point.
pub fn load_kernel(mem: &GuestMemory, mem_size: u64, path: &Path) -> Result<u64> {
    let name = path.display().to_string();
    let mut f = File::open(path).map_err(|e| BootError::Open(name.clone(), e))?;
    if let Some((low, high)) = elf_extent(&mut f) {
        if low < HIMEM_START {
            return Err(BootError::Low {
                path: name,
                addr: low,
            });
        }
        if high > mem_size {
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
    Ok(entry)
}

/// Writes the command line, the zero page, the page tables, the GDT/IDT and the
/// secondary vCPUs' parking loop.
pub fn setup_memory(mem: &GuestMemory, mem_size: u64, cmdline: &str) -> Result<()> {
    let mut cl = Cmdline::new(CMDLINE_MAX).map_err(BootError::Cmdline)?;
    if !cmdline.is_empty() {
        cl.insert_str(cmdline).map_err(BootError::Cmdline)?;
    }
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(BootError::LoadCmdline)?;

    let mut params = boot_params::default();
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.type_of_loader = 0xff;
    params.hdr.kernel_alignment = 0x0100_0000;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;
    let ram = [(0, EBDA_START), (HIMEM_START, mem_size - HIMEM_START)];
    for (i, (addr, size)) in ram.into_iter().enumerate() {
        params.e820_table[i].addr = addr;
        params.e820_table[i].size = size;
        params.e820_table[i].r#type = E820_RAM;
    }
    params.e820_entries = ram.len() as u8;
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
    mem.write_slice(&[0xf4, 0xeb, 0xfd], GuestAddress(AP_PARK)) // hlt; jmp .-3
        .map_err(BootError::Memory)?;
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

/// Long mode with paging on, flat segments from the GDT.
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
    fn zero_page_and_tables() {
        let mem = crate::memory::create(4 << 20).unwrap();
        setup_memory(&mem, 4 << 20, "console=ttyS0 foo=bar").unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE)).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        let mut buf = [0u8; 22];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0 foo=bar\0");
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PD_START + 8)).unwrap(),
            0x20_0083
        );
        assert_eq!(p.e820_entries, 2);
    }
}
