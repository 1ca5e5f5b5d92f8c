//! ACPI tables: how a stock Linux kernel (one without
//! `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`, such as Debian's) finds our vCPUs, our
//! interrupt controllers, our virtio-mmio devices and how to power off, as under
//! Firecracker and QEMU microvm.
//!
//! The platform is ACPI "hardware-reduced" (no PM1 blocks, no SCI, no GPEs): the
//! FADT names one-byte sleep control/status registers and a reset register in
//! port I/O space, and the DSDT describes the devices. Layout in guest memory, all
//! in the BIOS area below 1 MiB that the e820 map leaves out of RAM:
//!
//! | address              | table                                           |
//! |----------------------|-------------------------------------------------|
//! | [`RSDP_ADDR`]        | RSDP (revision 2), points at the XSDT           |
//! | next 16-byte boundary| XSDT: FADT, MADT                                |
//! | ...                  | FADT (6.5): hardware-reduced, X_DSDT            |
//! | ...                  | MADT: local APICs, I/O APIC, IRQ0 override, NMI |
//! | ...                  | DSDT: COM1, one `LNRO0005` per virtio-mmio, `\_S5_` |
//!
//! Linux finds the RSDP by scanning 0xe0000..0x100000 on 16-byte boundaries, so no
//! boot_params field is needed (the integrator may still set `acpi_rsdp_addr`).
//!
//! Notes for the run path that calls [`write_tables`]:
//! - The MADT says ISA IRQ 0 arrives on GSI 2, as on every PC. KVM's default GSI
//!   routing is the identity (its PIT raises GSI 0 -> I/O APIC pin 0), so install
//!   a routing with GSI 0 -> I/O APIC pin 2 (KVM_SET_GSI_ROUTING), as QEMU's
//!   `kvm_pc_setup_irq_routing` does; otherwise Linux's timer check falls back to
//!   the 8259 virtual wire and logs an "MP-BIOS bug".
//! - Port writes to [`SLEEP_CONTROL_PORT`] for which [`is_poweroff`] holds mean
//!   power off; a write of [`RESET_VALUE`] to [`RESET_PORT`] means reset.
//! - Linux then needs neither `virtio_mmio.device=` on the command line nor
//!   `reboot=k`.
//!
//! Tables come from the rust-vmm `acpi_tables` crate (RSDP, XSDT, FADT, the
//! generic SDT and AML). The MADT is built on its generic `Sdt` rather than its
//! `MADT` type, because that type cannot set the MADT flags (PCAT_COMPAT) and
//! has no Interrupt Source Override or Local APIC NMI structures.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;

/// One virtio-mmio device as the DSDT announces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioInfo {
    /// Guest physical address of its register window (must be below 4 GiB:
    /// the DSDT describes it with a 32-bit Memory32Fixed descriptor).
    pub base: u64,
    /// Size of the register window.
    pub size: u64,
    /// The I/O APIC input (GSI) its interrupt arrives on.
    pub gsi: u32,
}

/// What the tables describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// Number of vCPUs; their local APIC IDs are 0..cpus.
    pub cpus: u8,
    pub virtio_mmio: Vec<VirtioMmioInfo>,
}

/// Where the RSDP goes; the other tables follow it, all below [`TABLES_END`].
pub const RSDP_ADDR: u64 = 0x000e_0000;
/// End (exclusive) of the area the tables may use: the start of high memory.
pub const TABLES_END: u64 = 0x10_0000;
/// FADT sleep control register (1 byte, port I/O): see [`is_poweroff`].
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// FADT sleep status register (1 byte, port I/O). Linux polls its WAK_STS bit
/// (bit 7) after a sleep request; for S5 the VMM has stopped before that matters.
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// FADT reset register (1 byte, port I/O): writing [`RESET_VALUE`] asks for a
/// reset (Linux's default `reboot=acpi` path on x86).
pub const RESET_PORT: u16 = 0x602;
/// The value the guest writes to [`RESET_PORT`] to reset.
pub const RESET_VALUE: u8 = 0x1;
/// SLP_TYP of S5 (soft off), the first element of the DSDT's `\_S5_` package.
pub const S5_SLP_TYP: u8 = 5;
/// Local APIC address in the MADT (the architectural default).
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// I/O APIC address (where KVM's in-kernel I/O APIC sits).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// I/O APIC ID in the MADT: 0, the reset value of KVM's I/O APIC ID register, as
/// QEMU and Firecracker use (I/O APIC and local APIC IDs are separate name spaces
/// on every CPU since the Pentium 4).
pub const IOAPIC_ID: u8 = 0;
/// Most virtio-mmio devices: names V000..VFFF.
pub const MAX_VIRTIO_MMIO: usize = 0x1000;

/// OEM ID in every table header (6 bytes).
const OEM_ID: [u8; 6] = *b"VHOSTK";
/// OEM table ID in every table header (8 bytes).
const OEM_TABLE_ID: [u8; 8] = *b"VHOSTKIT";
const OEM_REVISION: u32 = 1;

/// SLP_TYP field of the sleep control register: bits 2..4.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;
/// SLP_EN bit of the sleep control register.
const SLP_EN: u8 = 1 << 5;

/// IAPC_BOOT_ARCH "VGA Not Present" (bit 2). The "8042" bit (1) stays clear: port
/// 0x64 only implements the reset pulse, not a keyboard controller worth probing.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;

/// MADT flags: PCAT_COMPAT, a dual 8259 is present (KVM's in-kernel irqchip has
/// one), as QEMU's pc and q35 tables say.
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT revision of ACPI 6.3 and later.
const MADT_REVISION: u8 = 5;
/// MADT Interrupt Source Override (type 2, 10 bytes).
const MADT_TYPE_ISO: u8 = 2;
/// MADT Local APIC NMI (type 4, 6 bytes).
const MADT_TYPE_LAPIC_NMI: u8 = 4;
/// DSDT revision 2 or later: AML integers are 64-bit.
const DSDT_REVISION: u8 = 6;
/// Size of the standard SDT header.
const SDT_HEADER_LEN: u32 = 36;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("an ACPI table needs at least one vCPU")]
    NoCpus,
    #[error("{0} virtio-mmio devices do not fit in the DSDT (at most {MAX_VIRTIO_MMIO})")]
    TooManyDevices(usize),
    #[error(
        "virtio-mmio device {index} at {base:#x} (size {size:#x}) does not fit in a \
         32-bit Memory32Fixed descriptor"
    )]
    Above4G { index: usize, base: u64, size: u64 },
    #[error("ACPI tables would end at {end:#x}, past {TABLES_END:#x}")]
    TooBig { end: u64 },
    #[error("cannot write the {0} to guest memory")]
    Memory(&'static str, #[source] vm_memory::GuestMemoryError),
}

pub type Result<T> = std::result::Result<T, AcpiError>;

/// For the device model: does `value`, written to [`SLEEP_CONTROL_PORT`], request
/// S5 (soft off)? True when SLP_EN (bit 5) is set and SLP_TYP (bits 2..4) is
/// [`S5_SLP_TYP`], the layout of the ACPI 6.x hardware-reduced sleep control
/// register.
pub fn is_poweroff(value: u8) -> bool {
    value & SLP_EN != 0 && (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == S5_SLP_TYP
}

/// Serializes anything AML-shaped (tables, AML objects) into bytes.
fn bytes_of(aml: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    v
}

/// A one-byte port I/O register as a Generic Address Structure.
fn io_port_byte(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}

/// The FADT: hardware-reduced, the sleep and reset registers, the DSDT pointer.
fn fadt(dsdt_addr: u64) -> Vec<u8> {
    // FADTBuilder::new fills signature, length (276), revision 6.5, OEM fields.
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup);
    b.iapc_boot_arch = IAPC_BOOT_ARCH_VGA_NOT_PRESENT.into();
    b.reset_reg = io_port_byte(RESET_PORT);
    b.reset_value = RESET_VALUE;
    b.sleep_control_reg = io_port_byte(SLEEP_CONTROL_PORT);
    b.sleep_status_reg = io_port_byte(SLEEP_STATUS_PORT);
    // finalize() computes the checksum, so every field is set before it.
    bytes_of(&b.finalize())
}

/// The MADT: one enabled local APIC per vCPU, the I/O APIC with GSI base 0, the
/// ISA IRQ0 -> GSI 2 override (the PC convention; QEMU routes KVM's GSI 0, the
/// PIT, to I/O APIC pin 2 to match, see the module notes) and NMI on LINT1 of
/// every processor.
fn madt(cpus: u8) -> Vec<u8> {
    let mut t = Sdt::new(
        *b"APIC",
        SDT_HEADER_LEN + 8,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.write_u32(36, APIC_ADDR);
    t.write_u32(40, MADT_PCAT_COMPAT);
    for id in 0..cpus {
        t.append_slice(&bytes_of(&ProcessorLocalApic::new(
            id,
            id,
            EnabledStatus::Enabled,
        )));
    }
    t.append_slice(&bytes_of(&IoApic::new(IOAPIC_ID, IOAPIC_ADDR, 0)));
    // Interrupt Source Override: type, length, bus 0 (ISA), source IRQ 0, GSI 2,
    // flags 0 (polarity and trigger conform to the ISA bus: edge, active high).
    let mut iso = vec![MADT_TYPE_ISO, 10, 0, 0];
    iso.extend_from_slice(&2u32.to_le_bytes());
    iso.extend_from_slice(&0u16.to_le_bytes());
    t.append_slice(&iso);
    // Local APIC NMI: type, length, processor UID 0xff (all), flags 0, LINT1.
    t.append_slice(&[MADT_TYPE_LAPIC_NMI, 6, 0xff, 0, 0, 1]);
    t.as_slice().to_vec()
}

/// The AML of one virtio-mmio device: `Device (Vnnn)` with _HID "LNRO0005" (what
/// Linux's virtio_mmio driver matches on), _UID and its window and interrupt.
fn virtio_mmio_aml(index: usize, dev: &VirtioMmioInfo) -> Result<Vec<u8>> {
    let above = || AcpiError::Above4G {
        index,
        base: dev.base,
        size: dev.size,
    };
    let base = u32::try_from(dev.base).map_err(|_| above())?;
    let size = u32::try_from(dev.size).map_err(|_| above())?;
    if u64::from(base) + u64::from(size) > 1 << 32 {
        return Err(above());
    }
    let uid = index as u32;
    let memory = aml::Memory32Fixed::new(true, base, size);
    // Consumer, edge-triggered, active high, exclusive: how virtio-mmio signals.
    let irq = aml::Interrupt::new(true, true, false, false, dev.gsi);
    let crs = aml::ResourceTemplate::new(vec![&memory, &irq]);
    let hid = aml::Name::new("_HID".into(), &"LNRO0005");
    let uid = aml::Name::new("_UID".into(), &uid);
    let crs = aml::Name::new("_CRS".into(), &crs);
    let name = format!("V{index:03X}");
    Ok(bytes_of(&aml::Device::new(
        name.as_str().into(),
        vec![&hid, &uid, &crs],
    )))
}

/// The DSDT: COM1 and the virtio-mmio devices in `\_SB`, and `\_S5_`.
fn dsdt(platform: &Platform) -> Result<Vec<u8>> {
    if platform.virtio_mmio.len() > MAX_VIRTIO_MMIO {
        return Err(AcpiError::TooManyDevices(platform.virtio_mmio.len()));
    }
    let com1_io = aml::IO::new(0x3f8, 0x3f8, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, 4);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let com1_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let com1_crs = aml::Name::new("_CRS".into(), &com1_crs);
    let mut sb = bytes_of(&aml::Device::new(
        "COM1".into(),
        vec![&com1_hid, &com1_uid, &com1_crs],
    ));
    for (i, dev) in platform.virtio_mmio.iter().enumerate() {
        sb.extend(virtio_mmio_aml(i, dev)?);
    }
    let mut body = aml::Scope::raw("\\_SB_".into(), sb);
    // \_S5_: {SLP_TYPa, SLP_TYPb, reserved, reserved}; Linux offers power-off only
    // when this exists (and the FADT has the sleep registers).
    let s5 = aml::Package::new(vec![&S5_SLP_TYP, &aml::ZERO, &aml::ZERO, &aml::ZERO]);
    body.extend(bytes_of(&aml::Name::new("_S5_".into(), &s5)));

    let mut t = Sdt::new(
        *b"DSDT",
        SDT_HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.append_slice(&body);
    Ok(t.as_slice().to_vec())
}

/// Rounds `addr` up to a multiple of 16.
fn align16(addr: u64) -> u64 {
    (addr + 15) & !15
}

/// Writes RSDP, XSDT, FADT, MADT and DSDT into guest memory from [`RSDP_ADDR`]
/// upward; returns the RSDP address. Nothing is written if the tables do not fit
/// below [`TABLES_END`].
pub fn write_tables(mem: &GuestMemory, platform: &Platform) -> Result<u64> {
    if platform.cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    // Sizes first (all but the XSDT's entries are independent of addresses).
    let dsdt = dsdt(platform)?;
    let madt = madt(platform.cpus);
    let xsdt_addr = align16(RSDP_ADDR + Rsdp::len() as u64);
    let xsdt_len = u64::from(SDT_HEADER_LEN) + 2 * 8;
    let fadt_addr = align16(xsdt_addr + xsdt_len);
    let fadt_len = acpi_tables::fadt::FADT::len() as u64;
    let madt_addr = align16(fadt_addr + fadt_len);
    let dsdt_addr = align16(madt_addr + madt.len() as u64);
    let end = dsdt_addr + dsdt.len() as u64;
    if end > TABLES_END {
        return Err(AcpiError::TooBig { end });
    }

    let fadt = fadt(dsdt_addr);
    debug_assert_eq!(fadt.len() as u64, fadt_len);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = bytes_of(&xsdt);
    debug_assert_eq!(xsdt.len() as u64, xsdt_len);
    let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_addr));

    for (what, addr, bytes) in [
        ("RSDP", RSDP_ADDR, &rsdp),
        ("XSDT", xsdt_addr, &xsdt),
        ("FADT", fadt_addr, &fadt),
        ("MADT", madt_addr, &madt),
        ("DSDT", dsdt_addr, &dsdt),
    ] {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|e| AcpiError::Memory(what, e))?;
    }
    Ok(RSDP_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    /// The DSDT base of the first test device, as iasl prints it.
    const BASE0: u64 = 0xd000_0000;

    fn platform(cpus: u8, devices: usize) -> Platform {
        Platform {
            cpus,
            virtio_mmio: (0..devices)
                .map(|i| VirtioMmioInfo {
                    base: BASE0 + i as u64 * 0x1000,
                    size: 0x1000,
                    gsi: 5 + i as u32,
                })
                .collect(),
        }
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// The SDT at `addr`: its length from its header, checked to sum to 0.
    fn sdt(mem: &GuestMemory, addr: u64) -> Vec<u8> {
        let header = read(mem, addr, 36);
        let len = u32_at(&header, 4) as usize;
        assert!(len >= 36);
        assert!(
            addr + len as u64 <= TABLES_END,
            "table at {addr:#x} too long"
        );
        let t = read(mem, addr, len);
        assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(&t[..4]));
        t
    }

    /// The tables as the guest finds them, from the RSDP, every checksum checked.
    struct Tables {
        fadt: Vec<u8>,
        madt: Vec<u8>,
        dsdt: Vec<u8>,
    }

    fn walk(mem: &GuestMemory, rsdp_addr: u64) -> Tables {
        let rsdp = read(mem, rsdp_addr, 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum (first 20 bytes)");
        assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
        assert_eq!(rsdp[15], 2, "RSDP revision");
        assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");
        let xsdt = sdt(mem, u64_at(&rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        let entries: Vec<u64> = xsdt[36..].chunks(8).map(|c| u64_at(c, 0)).collect();
        assert_eq!(entries.len(), 2);
        let fadt = sdt(mem, entries[0]);
        assert_eq!(&fadt[..4], b"FACP");
        let madt = sdt(mem, entries[1]);
        assert_eq!(&madt[..4], b"APIC");
        assert_eq!(u32_at(&fadt, 40), 0, "32-bit DSDT pointer unused");
        let dsdt = sdt(mem, u64_at(&fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        Tables { fadt, madt, dsdt }
    }

    /// MADT interrupt controller structures as (type, bytes).
    fn madt_entries(madt: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut o = 44;
        while o < madt.len() {
            let len = madt[o + 1] as usize;
            assert!(len >= 2 && o + len <= madt.len());
            out.push((madt[o], &madt[o..o + len]));
            o += len;
        }
        out
    }

    fn count(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count()
    }

    #[test]
    fn tables_for_1_and_64_cpus_0_and_8_devices() {
        for cpus in [1u8, 64] {
            for devices in [0usize, 8] {
                let mem = crate::memory::create(64 << 20).unwrap();
                let p = platform(cpus, devices);
                let rsdp = write_tables(&mem, &p).unwrap();
                assert_eq!(rsdp, RSDP_ADDR);
                let t = walk(&mem, rsdp);

                // FADT: revision 6.5, hardware-reduced, reset and sleep registers.
                assert_eq!((t.fadt[8], t.fadt[131]), (6, 5), "FADT revision");
                assert_eq!(t.fadt.len(), 276);
                let flags = u32_at(&t.fadt, 112);
                assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
                assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
                let gas = |o: usize| {
                    (
                        t.fadt[o],
                        t.fadt[o + 1],
                        t.fadt[o + 3],
                        u64_at(&t.fadt, o + 4),
                    )
                };
                assert_eq!(gas(116), (1, 8, 1, RESET_PORT.into()), "reset register");
                assert_eq!(t.fadt[128], RESET_VALUE);
                assert_eq!(gas(244), (1, 8, 1, SLEEP_CONTROL_PORT.into()));
                assert_eq!(gas(256), (1, 8, 1, SLEEP_STATUS_PORT.into()));

                // MADT: local APICs 0..cpus enabled, one I/O APIC, IRQ0 -> GSI 2.
                assert_eq!(u32_at(&t.madt, 36), APIC_ADDR);
                assert_eq!(u32_at(&t.madt, 40), 1, "PCAT_COMPAT");
                let entries = madt_entries(&t.madt);
                let lapics: Vec<_> = entries.iter().filter(|(k, _)| *k == 0).collect();
                assert_eq!(lapics.len(), cpus as usize);
                for (i, (_, e)) in lapics.iter().enumerate() {
                    assert_eq!((e[2], e[3], u32_at(e, 4)), (i as u8, i as u8, 1));
                }
                let ioapics: Vec<_> = entries.iter().filter(|(k, _)| *k == 1).collect();
                assert_eq!(ioapics.len(), 1);
                let io = ioapics[0].1;
                assert_eq!((u32_at(io, 4), u32_at(io, 8)), (IOAPIC_ADDR, 0));
                let isos: Vec<_> = entries.iter().filter(|(k, _)| *k == 2).collect();
                assert_eq!(isos.len(), 1);
                assert_eq!((isos[0].1[3], u32_at(isos[0].1, 4)), (0, 2));

                // DSDT: one LNRO0005 per device, each base little-endian.
                assert_eq!(count(&t.dsdt, b"LNRO0005"), devices);
                assert_eq!(count(&t.dsdt, b"_S5_"), 1);
                for d in &p.virtio_mmio {
                    let base = (d.base as u32).to_le_bytes();
                    assert_eq!(count(&t.dsdt, &base), 1, "base {:#x}", d.base);
                }
            }
        }
    }

    #[test]
    fn poweroff_truth_table() {
        let s5 = (S5_SLP_TYP << 2) | (1 << 5);
        assert_eq!(s5, 0x34);
        assert!(is_poweroff(0x34));
        // Bits outside SLP_TYP and SLP_EN do not matter.
        assert!(is_poweroff(0x34 | 0xc3));
        assert!(!is_poweroff(0x14), "SLP_EN clear");
        assert!(!is_poweroff(0x00));
        for typ in (0..8u8).filter(|&t| t != S5_SLP_TYP) {
            assert!(!is_poweroff((typ << 2) | 0x20), "SLP_TYP {typ}");
        }
        // 2^4 values for the four free bits, nothing else.
        assert_eq!((0..=255u8).filter(|v| is_poweroff(*v)).count(), 16);
    }

    #[test]
    fn errors_not_panics() {
        let mem = crate::memory::create(64 << 20).unwrap();
        // About 3000 devices need more than the 128 KiB below 1 MiB.
        match write_tables(&mem, &platform(1, 3000)) {
            Err(AcpiError::TooBig { end }) => assert!(end > TABLES_END),
            other => panic!("{other:?}"),
        }
        assert_eq!(read(&mem, RSDP_ADDR, 8), [0; 8], "nothing written");
        assert!(matches!(
            write_tables(&mem, &platform(1, MAX_VIRTIO_MMIO + 1)),
            Err(AcpiError::TooManyDevices(_))
        ));
        assert!(matches!(
            write_tables(&mem, &platform(0, 1)),
            Err(AcpiError::NoCpus)
        ));
        let mut high = platform(1, 1);
        high.virtio_mmio[0].base = 0x1_0000_0000;
        assert!(matches!(
            write_tables(&mem, &high),
            Err(AcpiError::Above4G { index: 0, .. })
        ));
        high.virtio_mmio[0].base = 0xffff_f800;
        assert!(matches!(
            write_tables(&mem, &high),
            Err(AcpiError::Above4G { .. })
        ));
        // Guest memory that ends below the tables.
        let small = crate::memory::create(512 << 10).unwrap();
        assert!(matches!(
            write_tables(&small, &platform(1, 1)),
            Err(AcpiError::Memory("RSDP", _))
        ));
        // The most devices that have names still fit.
        let many = platform(255, 1500);
        let t = walk(&mem, write_tables(&mem, &many).unwrap());
        assert_eq!(count(&t.dsdt, b"LNRO0005"), 1500);
    }

    /// A fresh directory for iasl's files, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("vhostkit-acpi-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Disassembles `table` with `iasl -d`; None (and a note) if iasl is missing.
    fn iasl_disassemble(dir: &std::path::Path, name: &str, table: &[u8]) -> Option<String> {
        let dat = dir.join(format!("{name}.dat"));
        std::fs::write(&dat, table).unwrap();
        let out = match Command::new("iasl")
            .arg("-d")
            .arg(&dat)
            .current_dir(dir)
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                vhostkit_tests::skip::skip(format_args!(
                    "iasl not installed (Debian acpica-tools)"
                ));
                return None;
            }
            Err(e) => panic!("iasl: {e}"),
        };
        assert!(
            out.status.success(),
            "iasl -d {name}.dat: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap())
    }

    #[test]
    fn iasl_accepts_64_cpus_8_devices() {
        let mem = crate::memory::create(64 << 20).unwrap();
        let t = walk(&mem, write_tables(&mem, &platform(64, 8)).unwrap());
        let scratch = Scratch::new("iasl-big");
        let Some(dsl) = iasl_disassemble(&scratch.0, "dsdt", &t.dsdt) else {
            return;
        };
        assert_eq!(dsl.matches("Name (_HID, \"LNRO0005\")").count(), 8, "{dsl}");
        assert!(dsl.contains("Device (V007)"), "{dsl}");
        assert!(dsl.contains("0xD0007000,"), "{dsl}");
        let madt = iasl_disassemble(&scratch.0, "apic", &t.madt).unwrap();
        assert_eq!(madt.matches("Local Apic ID : ").count(), 64, "{madt}");
        assert!(madt.contains("Local Apic ID : 3F"), "{madt}");
    }

    #[test]
    fn iasl_accepts_the_tables() {
        let mem = crate::memory::create(64 << 20).unwrap();
        let p = platform(4, 3);
        let t = walk(&mem, write_tables(&mem, &p).unwrap());
        let scratch = Scratch::new("iasl");
        let dir = &scratch.0;

        let Some(dsl) = iasl_disassemble(dir, "dsdt", &t.dsdt) else {
            return;
        };
        // Compare with whitespace runs folded to one space: the layout is iasl's.
        let flat = dsl.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(
            flat.matches("Name (_HID, \"LNRO0005\")").count(),
            3,
            "{dsl}"
        );
        for (i, d) in p.virtio_mmio.iter().enumerate() {
            let dev = format!(
                "Device (V{i:03X}) {{ Name (_HID, \"LNRO0005\") // _HID: Hardware ID \
                 Name (_UID, {uid}) // _UID: Unique ID \
                 Name (_CRS, ResourceTemplate () // _CRS: Current Resource Settings {{ \
                 Memory32Fixed (ReadWrite, {base:#010X}, // Address Base \
                 0x00001000, // Address Length ) \
                 Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) \
                 {{ {gsi:#010X}, }} }}) }}",
                uid = ["Zero", "One", "0x02"][i],
                base = d.base,
                gsi = d.gsi,
            )
            .replace("0X", "0x");
            assert!(flat.contains(&dev), "no {dev:?} in {dsl}");
        }
        for com1 in [
            "Device (COM1) { Name (_HID, EisaId (\"PNP0501\")",
            "IO (Decode16, 0x03F8, // Range Minimum 0x03F8, // Range Maximum \
             0x01, // Alignment 0x08, // Length ) \
             Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) { 0x00000004, }",
        ] {
            assert!(flat.contains(com1), "no {com1:?} in {dsl}");
        }
        let s5 = "Name (_S5, Package (0x04) // _S5_: S5 System State { 0x05, Zero, Zero, Zero })";
        assert!(flat.contains(s5), "no {s5:?} in {dsl}");
        // The disassembly compiles back without a complaint.
        let out = Command::new("iasl")
            .arg("-p")
            .arg(dir.join("recompiled"))
            .arg(dir.join("dsdt.dsl"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "iasl dsdt.dsl: {text}");
        assert!(
            text.contains("0 Errors, 0 Warnings"),
            "iasl dsdt.dsl: {text}"
        );

        let fadt = iasl_disassemble(dir, "facp", &t.fadt).unwrap();
        let fadt_flat = fadt.split_whitespace().collect::<Vec<_>>().join(" ");
        for line in [
            "Revision : 06".to_string(),
            "FADT Minor Revision : 05".into(),
            "Hardware Reduced (V5) : 1".into(),
            "Reset Register Supported (V2) : 1".into(),
            "VGA Not Present (V4) : 1".into(),
            "8042 Present on ports 60/64 (V2) : 0".into(),
            "Space ID : 01 [SystemIO]".into(),
            "Address : 0000000000000600".into(),
            "Address : 0000000000000601".into(),
            "Address : 0000000000000602".into(),
            "Value to cause reset : 01".into(),
            format!("DSDT Address : {:016X}", u64_at(&t.fadt, 140)),
        ] {
            assert!(fadt_flat.contains(&line), "no {line:?} in {fadt}");
        }
        let madt = iasl_disassemble(dir, "apic", &t.madt).unwrap();
        let madt_flat = madt.split_whitespace().collect::<Vec<_>>().join(" ");
        for i in 0..4 {
            let lapic = format!(
                "[Processor Local APIC] [{:03X}h {:04} 1] Length : 08 \
                 [{:03X}h {:04} 1] Processor ID : {i:02X} \
                 [{:03X}h {:04} 1] Local Apic ID : {i:02X}",
                0x2d + 8 * i,
                0x2d + 8 * i,
                0x2e + 8 * i,
                0x2e + 8 * i,
                0x2f + 8 * i,
                0x2f + 8 * i,
            );
            assert!(madt_flat.contains(&lapic), "no {lapic:?} in {madt}");
        }
        assert_eq!(madt.matches("Local Apic ID :").count(), 4, "{madt}");
        assert_eq!(madt.matches("Processor Enabled : 1").count(), 4, "{madt}");
        assert_eq!(madt.matches("[I/O APIC]").count(), 1, "{madt}");
        for line in [
            "Local Apic Address : FEE00000",
            "PC-AT Compatibility : 1",
            "Address : FEC00000",
            "[Interrupt Source Override]",
            "Source : 00",
            "Interrupt : 00000002",
            "[Local APIC NMI]",
            "Interrupt Input LINT : 01",
        ] {
            assert!(madt_flat.contains(line), "no {line:?} in {madt}");
        }
    }
}
