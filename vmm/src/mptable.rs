//! The Intel MultiProcessor Specification 1.4 table: how a kernel without ACPI
//! (or booted with `acpi=off`) finds the vCPUs and the I/O APIC. With ACPI, Linux
//! takes the MADT and ignores this table; both describe the same platform.
//!
//! The MP floating pointer structure sits at the start of the EBDA
//! ([`MPTABLE_START`], the last KiB of conventional memory, where Linux scans for
//! it), and the configuration table follows it at once, as in Firecracker. With
//! many vCPUs the configuration table runs past the first KiB, into the legacy
//! area below [`crate::acpi::RSDP_ADDR`] that the e820 map also leaves out of RAM.
//!
//! The layout is hand-written (as Firecracker and SeaBIOS do): the structures are
//! plain little-endian records and no crate covers them.

use vm_memory::{Bytes, GuestAddress};

use crate::acpi::{APIC_ADDR, IOAPIC_ADDR};
use crate::memory::GuestMemory;

/// Where the MP floating pointer goes: the EBDA, as in Firecracker. 16-byte aligned.
pub const MPTABLE_START: u64 = 0x9fc00;
/// End (exclusive) of the area the MP tables may use: where the ACPI tables start.
pub const MPTABLE_END: u64 = crate::acpi::RSDP_ADDR;
/// Most vCPUs: APIC IDs 0..cpus and the I/O APIC takes ID `cpus`, which must stay
/// below 0xff (the broadcast ID).
pub const MAX_CPUS: u8 = 254;

/// Size of the floating pointer structure.
const FLOATING_LEN: usize = 16;
/// Size of the configuration table header.
const HEADER_LEN: usize = 44;
/// MP spec revision 1.4.
const SPEC_REV: u8 = 4;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

/// Processor entry flags: enabled, bootstrap processor.
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Local APIC version KVM reports (integrated APIC).
const APIC_VERSION: u8 = 0x14;
/// I/O APIC version KVM reports.
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_ENABLED: u8 = 1;
/// CPU signature (family 6) and CPUID feature flags (FPU, APIC) in processor
/// entries, as Firecracker writes them; Linux does not use them.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

/// Interrupt types of interrupt entries.
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;
/// Polarity and trigger "conform to the bus" (ISA: edge, active high).
const IRQ_FLAGS_CONFORM: u16 = 0;
const ISA_BUS_ID: u8 = 0;
/// ISA interrupts described: IRQ 0..16.
const ISA_IRQS: u8 = 16;
/// "All local APICs" as a destination.
const ALL_APICS: u8 = 0xff;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("an MP table needs at least one vCPU")]
    NoCpus,
    #[error("{0} vCPUs do not fit in an MP table (at most {MAX_CPUS})")]
    TooManyCpus(u8),
    #[error("the MP table would end at {end:#x}, past {MPTABLE_END:#x}")]
    TooBig { end: u64 },
    #[error("cannot write the MP {0} to guest memory")]
    Memory(&'static str, #[source] vm_memory::GuestMemoryError),
}

pub type Result<T> = std::result::Result<T, MptableError>;

/// The byte that makes `bytes` sum to 0 (mod 256) when added.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// The I/O APIC ID in the MP table: the first ID after the vCPUs' local APIC IDs,
/// as the MP spec wants them unique (and as Firecracker picks it).
pub fn ioapic_id(cpus: u8) -> u8 {
    cpus
}

/// The configuration table (header and entries) for `cpus` vCPUs.
fn config_table(cpus: u8) -> Vec<u8> {
    let ioapic = ioapic_id(cpus);
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, IOAPIC_ENABLED]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    // ISA IRQ n -> I/O APIC pin n, except IRQ 0 (the PIT), which goes to pin 2 as
    // the MADT's override says; IRQ 2 (the 8259 cascade) is not routed, as SeaBIOS.
    for irq in (0..ISA_IRQS).filter(|&irq| irq != 2) {
        let pin = if irq == 0 { 2 } else { irq };
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_VECTORED]);
        entries.extend_from_slice(&IRQ_FLAGS_CONFORM.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, irq, ioapic, pin]);
        count += 1;
    }
    // The 8259 on LINT0 of the BSP (virtual wire mode), NMI on LINT1 of every CPU.
    for (kind, dest, lint) in [(INT_EXTINT, 0, 0), (INT_NMI, ALL_APICS, 1)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind]);
        entries.extend_from_slice(&IRQ_FLAGS_CONFORM.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, 0, dest, lint]);
        count += 1;
    }

    let len = (HEADER_LEN + entries.len()) as u16;
    let mut t = Vec::with_capacity(len.into());
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&len.to_le_bytes());
    t.push(SPEC_REV);
    t.push(0); // checksum, below
    t.extend_from_slice(b"VHOSTKIT"); // OEM ID, 8 bytes
    t.extend_from_slice(b"vhostkit-vmm"); // product ID, 12 bytes
    t.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    t.extend_from_slice(&0u16.to_le_bytes()); // its size
    t.extend_from_slice(&count.to_le_bytes());
    t.extend_from_slice(&APIC_ADDR.to_le_bytes());
    t.extend_from_slice(&0u16.to_le_bytes()); // no extended table
    t.push(0); // its checksum
    t.push(0); // reserved
    debug_assert_eq!(t.len(), HEADER_LEN);
    t.extend_from_slice(&entries);
    t[7] = checksum(&t);
    t
}

/// The floating pointer structure, pointing at a configuration table at `config`.
fn floating_pointer(config: u32) -> [u8; FLOATING_LEN] {
    let mut f = [0u8; FLOATING_LEN];
    f[..4].copy_from_slice(b"_MP_");
    f[4..8].copy_from_slice(&config.to_le_bytes());
    f[8] = 1; // length in 16-byte units
    f[9] = SPEC_REV;
    // f[10]: checksum, below. f[11] feature byte 1 = 0: a configuration table
    // is present. f[12] bit 7 (IMCRP) = 0: virtual wire mode, no IMCR.
    f[10] = checksum(&f);
    f
}

/// Writes the MP floating pointer at [`MPTABLE_START`] and the configuration table
/// right after it, for `cpus` vCPUs (local APIC IDs 0..cpus, BSP 0) and the I/O
/// APIC at [`IOAPIC_ADDR`] with ID [`ioapic_id`]`(cpus)`.
pub fn write(mem: &GuestMemory, cpus: u8) -> Result<()> {
    if cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let config_addr = MPTABLE_START + FLOATING_LEN as u64;
    let config = config_table(cpus);
    let end = config_addr + config.len() as u64;
    if end > MPTABLE_END {
        return Err(MptableError::TooBig { end });
    }
    mem.write_slice(&config, GuestAddress(config_addr))
        .map_err(|e| MptableError::Memory("configuration table", e))?;
    mem.write_slice(
        &floating_pointer(config_addr as u32),
        GuestAddress(MPTABLE_START),
    )
    .map_err(|e| MptableError::Memory("floating pointer", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    /// Finds the floating pointer as Linux's smp_scan_config does: "_MP_" on a
    /// 16-byte boundary, length 1, checksum 0, in the last KiB of base memory.
    fn scan(mem: &GuestMemory) -> Option<(u64, Vec<u8>)> {
        let ebda = read(mem, 639 * 0x400, 0x400);
        ebda.chunks(16).enumerate().find_map(|(i, f)| {
            (&f[..4] == b"_MP_" && f[8] == 1 && sum(f) == 0)
                .then(|| (639 * 0x400 + 16 * i as u64, f.to_vec()))
        })
    }

    /// The parsed configuration table.
    #[derive(Default)]
    struct Config {
        cpus: Vec<(u8, u8)>, // (APIC ID, flags)
        buses: Vec<Vec<u8>>,
        ioapics: Vec<(u8, u32)>,        // (ID, address)
        io_ints: Vec<(u8, u8, u8, u8)>, // (type, source IRQ, I/O APIC ID, pin)
        local_ints: Vec<(u8, u8, u8)>,  // (type, destination, LINT)
    }

    fn parse(mem: &GuestMemory, floating: &[u8]) -> Config {
        assert_eq!(floating[9], 4, "MP spec 1.4");
        assert_eq!(floating[11], 0, "a configuration table, not a default one");
        let addr = u32_at(floating, 4) as u64;
        let header = read(mem, addr, 44);
        assert_eq!(&header[..4], b"PCMP");
        let len = u16_at(&header, 4) as usize;
        let t = read(mem, addr, len);
        assert_eq!(sum(&t), 0, "configuration table checksum");
        assert_eq!(t[6], 4);
        assert_eq!(u32_at(&t, 36), crate::acpi::APIC_ADDR);
        assert_eq!(u16_at(&t, 40), 0, "no extended table");
        let mut c = Config::default();
        let mut o = 44;
        let mut n = 0;
        while o < len {
            let size = match t[o] {
                0 => {
                    c.cpus.push((t[o + 1], t[o + 3]));
                    20
                }
                1 => {
                    c.buses.push(t[o + 1..o + 8].to_vec());
                    8
                }
                2 => {
                    assert_eq!(t[o + 3], 1, "I/O APIC enabled");
                    c.ioapics.push((t[o + 1], u32_at(&t, o + 4)));
                    8
                }
                3 => {
                    c.io_ints.push((t[o + 1], t[o + 5], t[o + 6], t[o + 7]));
                    8
                }
                4 => {
                    c.local_ints.push((t[o + 1], t[o + 6], t[o + 7]));
                    8
                }
                other => panic!("entry type {other} at {o}"),
            };
            o += size;
            n += 1;
        }
        assert_eq!(o, len);
        assert_eq!(u16_at(&t, 34), n, "entry count");
        c
    }

    #[test]
    fn tables_for_1_64_and_254_cpus() {
        for cpus in [1u8, 64, MAX_CPUS] {
            let mem = crate::memory::create(64 << 20).unwrap();
            write(&mem, cpus).unwrap();
            let (addr, floating) = scan(&mem).expect("floating pointer found");
            assert_eq!(addr, MPTABLE_START);
            assert_eq!(addr % 16, 0);
            let c = parse(&mem, &floating);

            assert_eq!(c.cpus.len(), cpus as usize);
            for (i, (id, flags)) in c.cpus.iter().enumerate() {
                assert_eq!(*id, i as u8);
                assert_eq!(*flags, if i == 0 { 3 } else { 1 }, "enabled, BSP on 0");
            }
            assert_eq!(c.buses, [b"\0ISA   ".to_vec()]);
            assert_eq!(c.ioapics, [(cpus, 0xfec0_0000)]);
            // ISA IRQs: 0 -> pin 2, 2 unrouted, the rest to the same pin.
            let mut expect: Vec<_> = (0..16u8)
                .filter(|&i| i != 2)
                .map(|i| (0, i, cpus, if i == 0 { 2 } else { i }))
                .collect();
            expect.sort();
            let mut got = c.io_ints.clone();
            got.sort();
            assert_eq!(got, expect);
            assert_eq!(
                c.local_ints,
                [(3, 0, 0), (1, 0xff, 1)],
                "ExtINT LINT0, NMI LINT1"
            );
        }
    }

    #[test]
    fn errors_not_panics() {
        let mem = crate::memory::create(64 << 20).unwrap();
        assert!(matches!(write(&mem, 0), Err(MptableError::NoCpus)));
        assert!(matches!(
            write(&mem, 255),
            Err(MptableError::TooManyCpus(255))
        ));
        assert!(scan(&mem).is_none(), "nothing written");
        // Guest memory that ends below the EBDA.
        let small = crate::memory::create(256 << 10).unwrap();
        assert!(matches!(write(&small, 1), Err(MptableError::Memory(_, _))));
    }
}
