//! The backing tap device: one multi-queue tap with a file descriptor per queue
//! pair, its vnet header and offloads, and (optionally) the host side's address,
//! MTU and link state.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

use thiserror::Error;

use crate::net::VNET_HDR_LEN;

/// Longest interface name the kernel takes (IFNAMSIZ less the NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error("cannot attach queue {queue} of tap {name} (TUNSETIFF)")]
    SetIff {
        name: String,
        queue: u16,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the vnet header size of tap {name}")]
    VnetHdrSize {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set offloads {flags:#x} on tap {name}")]
    Offload {
        name: String,
        flags: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot open a socket to configure tap {0}")]
    Socket(String, #[source] io::Error),
    #[error("cannot {what} of tap {name}")]
    Configure {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot {} queue {queue} of tap {name}", if *.attach { "attach" } else { "detach" })]
    SetQueue {
        name: String,
        queue: usize,
        attach: bool,
        #[source]
        source: io::Error,
    },
    #[error("invalid tap name {0:?} (1 to 15 bytes, no '/' or NUL)")]
    BadName(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A multi-queue tap: `queues[i]` serves queue pair `i`. The kernel spreads frames
/// headed for the tap (host to guest) over its queues by flow; each fd takes frames
/// from the guest independently.
#[derive(Debug)]
pub struct Tap {
    name: String,
    queues: Vec<File>,
    /// Whether each queue is attached (takes part in the kernel's frame
    /// spreading). Queues of pairs the guest does not use are detached, or frames
    /// steered to them would wait there unread.
    attached: Mutex<Vec<bool>>,
}

fn ifreq_for(name: &str) -> Result<libc::ifreq> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains(['/', '\0']) {
        return Err(Error::BadName(name.to_string()));
    }
    // SAFETY: ifreq is plain data (a name array and a union of plain fields) for
    // which all zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(ifr)
}

impl Tap {
    /// A tap whose queues are the given files (in tests: one end of a socket pair
    /// per queue, standing for the kernel's tap).
    #[cfg(test)]
    pub(crate) fn from_files(name: &str, queues: Vec<File>) -> Self {
        let attached = Mutex::new(vec![true; queues.len()]);
        Tap {
            name: name.to_string(),
            queues,
            attached,
        }
    }

    /// Opens (creating it if needed) tap `name` with `num_queues` queues, each
    /// non-blocking, with a 12-byte vnet header (`virtio_net_hdr_v1`, which is what
    /// the guest puts before every frame with VERSION_1) and no offloads yet.
    pub fn open(name: &str, num_queues: u16) -> Result<Self> {
        let mut queues = Vec::with_capacity(usize::from(num_queues));
        let mut actual_name = name.to_string();
        for queue in 0..num_queues {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("/dev/net/tun")
                .map_err(Error::OpenTun)?;
            let mut ifr = ifreq_for(&actual_name)?;
            ifr.ifr_ifru.ifru_flags = IFF_MULTI_QUEUE_TAP;
            // SAFETY: TUNSETIFF reads and writes the ifreq we pass, which outlives the call.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
            if rc < 0 {
                return Err(Error::SetIff {
                    name: actual_name,
                    queue,
                    source: io::Error::last_os_error(),
                });
            }
            // SAFETY: the kernel wrote a NUL-terminated name into ifr_name (an array of
            // IFNAMSIZ bytes, zeroed beyond the name).
            let kernel_name = unsafe { CStr::from_ptr(ifr.ifr_name.as_ptr()) };
            actual_name = kernel_name.to_string_lossy().into_owned();
            queues.push(file);
        }
        let tap = Tap {
            name: actual_name,
            attached: Mutex::new(vec![true; queues.len()]),
            queues,
        };
        tap.set_vnet_hdr_len(VNET_HDR_LEN)?;
        tap.set_offload(0)?;
        Ok(tap)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// The fd of queue `index` (queue pair `index`).
    pub fn queue_fd(&self, index: usize) -> Option<RawFd> {
        self.queues.get(index).map(AsRawFd::as_raw_fd)
    }

    /// Attaches queues `0..active` and detaches the rest (TUNSETQUEUE), so that the
    /// kernel steers host-to-guest frames only to queue pairs the guest serves.
    pub fn set_active_queues(&self, active: usize) -> Result<()> {
        for queue in 0..self.queues.len() {
            self.set_queue_attached(queue, queue < active.max(1))?;
        }
        Ok(())
    }

    /// Attaches or detaches one queue (a no-op if it already is).
    pub fn set_queue_attached(&self, queue: usize, attach: bool) -> Result<()> {
        let mut attached = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        let (Some(file), Some(is_attached)) = (self.queues.get(queue), attached.get_mut(queue))
        else {
            return Ok(());
        };
        if attach == *is_attached {
            return Ok(());
        }
        let mut ifr = ifreq_for(&self.name)?;
        ifr.ifr_ifru.ifru_flags = if attach {
            IFF_ATTACH_QUEUE
        } else {
            IFF_DETACH_QUEUE
        };
        // SAFETY: TUNSETQUEUE reads the ifreq we pass, which outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETQUEUE, &mut ifr) };
        if rc < 0 {
            return Err(Error::SetQueue {
                name: self.name.clone(),
                queue,
                attach,
                source: io::Error::last_os_error(),
            });
        }
        *is_attached = attach;
        Ok(())
    }

    /// TUNSETVNETHDRSZ on every queue: 12 bytes with VERSION_1 or MRG_RXBUF, 10 for
    /// a legacy guest without either.
    pub fn set_vnet_hdr_len(&self, len: usize) -> Result<()> {
        let hdr_len = libc::c_int::try_from(len).map_err(|_| Error::VnetHdrSize {
            name: self.name.clone(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        for file in &self.queues {
            // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer we pass.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
            if rc < 0 {
                return Err(Error::VnetHdrSize {
                    name: self.name.clone(),
                    source: io::Error::last_os_error(),
                });
            }
        }
        Ok(())
    }

    /// TUNSETOFFLOAD: which offloads the tap may hand to its reader (the guest) in
    /// the vnet header (TUN_F_* bits). The setting is per device; one fd sets it.
    pub fn set_offload(&self, flags: u32) -> Result<()> {
        let Some(file) = self.queues.first() else {
            return Ok(());
        };
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(Error::Offload {
                name: self.name.clone(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Configures the host side: an IPv4 address and prefix, the MTU, and brings
    /// the link up (SIOCSIFADDR, SIOCSIFNETMASK, SIOCSIFMTU, SIOCSIFFLAGS).
    pub fn configure_host(&self, addr: Option<(Ipv4Addr, u8)>, mtu: Option<u16>) -> Result<()> {
        // SAFETY: socket() takes no pointers; we own the fd it returns.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(Error::Socket(self.name.clone(), io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a new socket nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        let ioctl = |request: libc::Ioctl, ifr: &mut libc::ifreq, what: &'static str| {
            // SAFETY: the SIOCSIF* requests read (and SIOCGIFFLAGS writes) the ifreq we
            // pass, which outlives the call.
            let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, ifr as *mut libc::ifreq) };
            if rc < 0 {
                Err(Error::Configure {
                    name: self.name.clone(),
                    what,
                    source: io::Error::last_os_error(),
                })
            } else {
                Ok(())
            }
        };
        if let Some((ip, prefix)) = addr {
            let mut ifr = ifreq_for(&self.name)?;
            ifr.ifr_ifru.ifru_addr = sockaddr_v4(ip);
            ioctl(libc::SIOCSIFADDR, &mut ifr, "set the address")?;
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            let mut ifr = ifreq_for(&self.name)?;
            ifr.ifr_ifru.ifru_netmask = sockaddr_v4(Ipv4Addr::from(mask));
            ioctl(libc::SIOCSIFNETMASK, &mut ifr, "set the netmask")?;
        }
        if let Some(mtu) = mtu {
            let mut ifr = ifreq_for(&self.name)?;
            ifr.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
            ioctl(libc::SIOCSIFMTU, &mut ifr, "set the MTU")?;
        }
        if addr.is_some() {
            let mut ifr = ifreq_for(&self.name)?;
            ioctl(libc::SIOCGIFFLAGS, &mut ifr, "read the flags")?;
            // SAFETY: SIOCGIFFLAGS filled ifru_flags, the union member read here.
            let flags = unsafe { ifr.ifr_ifru.ifru_flags };
            ifr.ifr_ifru.ifru_flags = flags | IFF_UP_RUNNING;
            ioctl(libc::SIOCSIFFLAGS, &mut ifr, "bring up the link")?;
        }
        Ok(())
    }
}

// ifreq flags are a C short and a sockaddr's family a u16: these values fit them.
#[allow(clippy::cast_possible_truncation)]
const IFF_MULTI_QUEUE_TAP: libc::c_short =
    (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE) as libc::c_short;
#[allow(clippy::cast_possible_truncation)]
const IFF_ATTACH_QUEUE: libc::c_short = libc::IFF_ATTACH_QUEUE as libc::c_short;
#[allow(clippy::cast_possible_truncation)]
const IFF_DETACH_QUEUE: libc::c_short = libc::IFF_DETACH_QUEUE as libc::c_short;
#[allow(clippy::cast_possible_truncation)]
const IFF_UP_RUNNING: libc::c_short = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
const AF_INET: libc::sa_family_t = libc::AF_INET as libc::sa_family_t;

fn sockaddr_v4(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: AF_INET,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and sockaddr is
    // plain data; this is the cast every SIOCSIFADDR caller makes.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(ifreq_for("").is_err());
        assert!(ifreq_for("0123456789abcdef").is_err());
        assert!(ifreq_for("a/b").is_err());
        let ifr = ifreq_for("vk0").unwrap();
        assert_eq!(ifr.ifr_name[..4], [b'v' as _, b'k' as _, b'0' as _, 0]);
    }

    #[test]
    fn sockaddr_is_network_order() {
        let sa = sockaddr_v4(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        assert_eq!(&sa.sa_data[2..6], &[10, 0, 0, 1]);
    }
}
