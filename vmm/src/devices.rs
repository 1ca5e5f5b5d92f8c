//! Port I/O devices: the COM1 8250 console and the exit device; the MMIO bus of the
//! virtio-mmio devices.
//!
//! Power off and reboot stop the VMM with exit status 0: writing 0xfe to the i8042
//! command port 0x64 ("pulse the reset line", how Linux reboots with `reboot=k` and
//! how the test guests power off), S5 written to the ACPI sleep control register
//! (Linux's `poweroff` on the hardware-reduced ACPI of [`crate::acpi`]) and the
//! reset value written to the ACPI reset register (Linux's `reboot`). Other ports
//! read as 0xff and ignore writes.

use std::io::{self, Write};

use vhostkit_common::guest_debug;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi;
use crate::virtio::mmio::{MmioTransport, MMIO_WINDOW};

/// Guest physical address of the first virtio-mmio device; the next ones follow
/// every [`MMIO_WINDOW`] bytes (above 3 GiB, in the usual PCI hole).
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Interrupt line of the first virtio-mmio device; the next ones count up.
pub const VIRTIO_MMIO_IRQ: u32 = 5;

/// The MMIO bus: virtio-mmio devices, one 4 KiB window each.
#[derive(Debug, Default)]
pub struct MmioBus {
    devices: Vec<(u64, MmioTransport)>,
}

impl MmioBus {
    /// Adds `device` at `base` (windows must not overlap; the caller places them).
    pub fn add(&mut self, base: u64, device: MmioTransport) {
        self.devices.push((base, device));
    }

    fn find(&mut self, addr: u64) -> Option<(u64, &mut MmioTransport)> {
        self.devices
            .iter_mut()
            .find(|(base, _)| addr >= *base && addr - *base < MMIO_WINDOW)
            .map(|(base, d)| (addr - *base, d))
    }

    /// Notifications that went through the VMM, summed over the devices.
    pub fn notification_stats(&self) -> crate::virtio::mmio::NotificationStats {
        let mut sum = crate::virtio::mmio::NotificationStats::default();
        for (_, dev) in &self.devices {
            let s = dev.notification_stats();
            sum.kicks += s.kicks;
            sum.calls += s.calls;
        }
        sum
    }

    /// A guest read; unbacked addresses read as all ones.
    pub fn read(&mut self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((offset, dev)) => dev.read(offset, data),
            None => {
                guest_debug!("read of unbacked MMIO {addr:#x}");
                data.fill(0xff);
            }
        }
    }

    /// A guest write; writes to unbacked addresses are ignored.
    pub fn write(&mut self, addr: u64, data: &[u8]) {
        match self.find(addr) {
            Some((offset, dev)) => dev.write(offset, data),
            None => guest_debug!("write to unbacked MMIO {addr:#x}"),
        }
    }
}

/// COM1 base port; the 8250 decodes 8 ports from here.
pub const COM1: u16 = 0x3f8;
/// i8042 command/status port.
pub const I8042_CMD: u16 = 0x64;
/// i8042 command "pulse reset line": the guest asks to stop.
pub const I8042_RESET: u8 = 0xfe;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("serial console output failed")]
    Serial(#[source] io::Error),
}

/// COM1's interrupt line (ISA IRQ 4, GSI 4 on the IOAPIC).
pub const COM1_GSI: u32 = 4;

/// The serial port's interrupt: an eventfd that the VMM registers with KVM as an
/// irqfd on [`COM1_GSI`], so raising it is one write and no ioctl.
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// What the vCPU does after a port write.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// The guest asked to power off.
    Stop,
}

/// The port I/O bus.
pub struct IoBus<W: Write> {
    serial: Serial<IrqLine, vm_superio::serial::NoEvents, W>,
}

impl<W: Write> IoBus<W> {
    /// A bus whose serial console writes to `out` and raises `serial_irq`.
    pub fn new(out: W, serial_irq: EventFd) -> Self {
        IoBus {
            serial: Serial::new(IrqLine(serial_irq), out),
        }
    }

    pub fn write(&mut self, port: u16, data: &[u8]) -> Result<Action, DeviceError> {
        match (port, data) {
            (COM1..=0x3ff, [value]) => {
                self.serial
                    .write((port - COM1) as u8, *value)
                    .map_err(|e| match e {
                        vm_superio::serial::Error::IOError(e) => DeviceError::Serial(e),
                        vm_superio::serial::Error::Trigger(e) => DeviceError::Serial(e),
                        vm_superio::serial::Error::FullFifo => {
                            DeviceError::Serial(io::Error::other("serial FIFO full"))
                        }
                    })?;
            }
            (I8042_CMD, [I8042_RESET]) => return Ok(Action::Stop),
            (acpi::SLEEP_CONTROL_PORT, [value]) if acpi::is_poweroff(*value) => {
                return Ok(Action::Stop)
            }
            (acpi::RESET_PORT, [acpi::RESET_VALUE]) => return Ok(Action::Stop),
            _ => guest_debug!("ignored write of {data:x?} to port {port:#x}"),
        }
        Ok(Action::Continue)
    }

    /// Console input for the guest: queues as many of `bytes` as the serial FIFO
    /// takes (raising the receive interrupt if the guest enabled it) and returns
    /// how many; the rest must be offered again once the guest has read some.
    pub fn serial_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.serial.fifo_capacity().min(bytes.len());
        if room == 0 {
            return 0;
        }
        // Only a failed interrupt eventfd write can fail here; the bytes are queued.
        let _ = self.serial.enqueue_raw_bytes(&bytes[..room]);
        room
    }

    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        match (port, &mut *data) {
            (COM1..=0x3ff, [value]) => *value = self.serial.read((port - COM1) as u8),
            (I8042_CMD, [value]) => *value = 0, // output and input buffers empty
            // Sleep status: nothing to report (no wake events).
            (acpi::SLEEP_STATUS_PORT | acpi::SLEEP_CONTROL_PORT, [value]) => *value = 0,
            _ => {
                guest_debug!("read of {} bytes from unhandled port {port:#x}", data.len());
                data.fill(0xff);
            }
        }
    }

    #[cfg(test)]
    pub fn output(&self) -> &W {
        self.serial.writer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_input_reaches_the_guest() {
        let irq = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let mut bus = IoBus::new(Vec::new(), irq.try_clone().unwrap());
        bus.write(COM1 + 1, &[0x01]).unwrap(); // IER: received-data interrupt
        assert_eq!(bus.serial_input(b"ok\n"), 3);
        assert!(irq.read().is_ok(), "receive interrupt raised");
        let mut got = Vec::new();
        loop {
            let mut lsr = [0u8];
            bus.read(COM1 + 5, &mut lsr);
            if lsr[0] & 1 == 0 {
                break; // no data ready
            }
            let mut b = [0u8];
            bus.read(COM1, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, b"ok\n");
        // The FIFO holds 64 bytes: the rest waits.
        assert_eq!(bus.serial_input(&[b'x'; 100]), 64);
        assert_eq!(bus.serial_input(b"y"), 0);
    }

    #[test]
    fn serial_and_exit() {
        let irq = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let mut bus = IoBus::new(Vec::new(), irq.try_clone().unwrap());
        // Enable the THR-empty interrupt: the 8250 raises its line at once.
        bus.write(COM1 + 1, &[0x02]).unwrap();
        assert_eq!(irq.read().unwrap(), 1, "IER write raised the IRQ");
        let mut lsr = [0u8];
        bus.read(COM1 + 5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
        for b in b"hi\n" {
            assert_eq!(bus.write(COM1, &[*b]).unwrap(), Action::Continue);
        }
        assert_eq!(bus.output(), b"hi\n");
        assert_eq!(bus.write(I8042_CMD, &[0xd1]).unwrap(), Action::Continue);
        assert_eq!(bus.write(I8042_CMD, &[I8042_RESET]).unwrap(), Action::Stop);
        // ACPI: S5 through the sleep control register, reset through the reset register.
        let s5 = (acpi::S5_SLP_TYP << 2) | 1 << 5;
        assert_eq!(
            bus.write(acpi::SLEEP_CONTROL_PORT, &[s5 & !(1 << 5)])
                .unwrap(),
            Action::Continue
        );
        assert_eq!(
            bus.write(acpi::SLEEP_CONTROL_PORT, &[s5]).unwrap(),
            Action::Stop
        );
        assert_eq!(bus.write(acpi::RESET_PORT, &[0]).unwrap(), Action::Continue);
        assert_eq!(
            bus.write(acpi::RESET_PORT, &[acpi::RESET_VALUE]).unwrap(),
            Action::Stop
        );
        let mut other = [0u8; 2];
        bus.read(0x1234, &mut other);
        assert_eq!(other, [0xff, 0xff]);
    }
}
