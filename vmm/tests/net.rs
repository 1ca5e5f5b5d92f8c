//! A network device through the VMM: the net test guest (guest/net.c) finds the
//! virtio-net device in ACPI, sends a frame through our vhost-user-net daemon into
//! its tap, and waits by interrupt for the reply the test sends back through the
//! tap (an AF_PACKET socket bound to it). Needs root, /dev/kvm and /dev/net/tun.

mod support;

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use support::*;
use vhostkit_tests::daemon::{workspace_bin, DaemonProcess};
use vhostkit_tests::launch::net::{HostIp, NetArgs};
use vhostkit_tests::launch::{Launch, LogLevel};
use vhostkit_tests::packet::{frame, PacketSocket, ETHERTYPE_TEST};
use vhostkit_tests::util::{run_to_end, Finished, TempDir};

const HELLO: &[u8] = b"vhostkit vmm net guest hello";
const REPLY: &[u8] = b"vhostkit vmm net host reply";

fn ready() -> bool {
    have_paths(&["/dev/kvm", "/dev/net/tun"]) && built("vhost-user-net").is_some()
}

/// A tap name unique to this test process and call (at most 15 bytes).
fn tap_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "vkvm{}{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// Answers the guest: waits for its HELLO frame on the tap, checks it, sends the
/// REPLY to its source address. Runs until the frame came or 20 s passed.
fn answer_on(
    sock: PacketSocket,
    guest_mac: [u8; 6],
) -> std::thread::JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let hello = sock
            .recv_with(HELLO, Duration::from_secs(20))
            .ok_or("no frame from the guest on the tap")?;
        if hello[..6] != [0xff; 6] || hello[6..12] != guest_mac {
            return Err(format!("guest frame addresses: {:02x?}", &hello[..12]));
        }
        if hello[12..14] != ETHERTYPE_TEST.to_be_bytes() || hello.len() != 60 {
            return Err(format!(
                "guest frame: {} bytes, type {:02x?}",
                hello.len(),
                &hello[12..14]
            ));
        }
        let host_mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
        sock.send(&frame(guest_mac, host_mac, 90, REPLY));
        Ok(())
    })
}

/// The guest's verdict: its three lines and exit 0.
fn check_guest(o: &Finished, mac: &str) {
    assert_powered_off(o);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", o.stdout);
    assert_eq!(lines[0], "virtio-net: LNRO0005 at 0xd0000000 GSI 5 (ACPI)");
    assert_eq!(lines[1], format!("virtio-net: mac {mac}"));
    assert!(
        lines[2].starts_with("virtio-net: sent 60 bytes, got the reply (90 bytes) after ")
            && lines[2].ends_with(" other frames ok"),
        "{}",
        lines[2]
    );
    assert_no_vmm_notifications(o);
}

#[test]
fn net_guest_sends_and_receives_a_frame_through_vhost_user_net() {
    if !ready() {
        return;
    }
    let dir = TempDir::new("vmm-net").unwrap();
    let sock_path = dir.join("net.sock");
    let tap = tap_name();
    let daemon = NetArgs {
        host_ip: Some(HostIp {
            addr: Ipv4Addr::new(10, 214, 7, 1).into(),
            prefix: 24,
        }),
        ..NetArgs::new(&tap)
    };
    let cmd = Launch::on_socket(&sock_path, daemon)
        .log_level(LogLevel::Warn)
        .command(&workspace_bin("vhost-user-net"));
    let _daemon =
        DaemonProcess::spawn("vhost-user-net", cmd, &sock_path, Duration::from_secs(10)).unwrap();
    let mac = "52:54:00:ab:cd:01";
    let answer = answer_on(PacketSocket::open(&tap, false), parse_mac(mac));
    let o = run_to_end(
        Command::new(VHOSTKIT)
            .args(["run", "--kernel", NET, "--log-level", "info"])
            .args([
                "--net",
                &format!("socket={},mac={mac}", sock_path.display()),
            ])
            .env_remove("RUST_LOG"),
        TIMEOUT,
    );
    let host_side = answer.join().unwrap();
    check_guest(&o, mac);
    host_side.unwrap();
}

/// Removes the tap when dropped.
struct PersistentTap(String);

impl Drop for PersistentTap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

#[test]
fn net_tap_form_starts_vhost_user_net_itself() {
    if !ready() {
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        vhostkit_tests::skip::skip(format_args!("no `ip` (iproute2)"));
        return;
    }
    // A persistent multi-queue tap made first, so the test can listen on it before
    // the guest talks; the daemon vhostkit starts attaches to it by name.
    let tap = tap_name();
    let made = Command::new("ip")
        .args([
            "tuntap",
            "add",
            "dev",
            &tap,
            "mode",
            "tap",
            "multi_queue",
            "vnet_hdr",
        ])
        .status()
        .unwrap();
    assert!(made.success(), "ip tuntap add {tap}");
    let _tap = PersistentTap(tap.clone());
    let up = Command::new("ip")
        .args(["link", "set", &tap, "up"])
        .status()
        .unwrap();
    assert!(up.success());
    let mac = "52:54:00:12:34:56"; // the VMM's default for the first net device
    let answer = answer_on(PacketSocket::open(&tap, false), parse_mac(mac));
    let o = run_to_end(
        Command::new(VHOSTKIT)
            .args(["run", "--kernel", NET, "--log-level", "info"])
            .args(["--net", &format!("tap={tap}")])
            .env_remove("RUST_LOG"),
        TIMEOUT,
    );
    let host_side = answer.join().unwrap();
    check_guest(&o, mac);
    host_side.unwrap();
    assert!(
        o.stderr
            .contains(&format!("started vhost-user-net for --net tap={tap}")),
        "{}",
        o.stderr
    );
}
