//! A new user's first run: vhost-user-net in its default configuration (only
//! `--socket-path`, `--tap`, `--host-ip`: one queue pair, a random MAC) under
//! QEMU's default virtio-net device options (`-netdev vhost-user,id=n1,chardev=c1
//! -device virtio-net-pci,netdev=n1`: no `queues=`, no `mq=`, no `mac=`; only
//! `vectors=0`, which QEMU 7.2 under TCG needs, see the harness). The guest brings
//! eth0 up and pings the host end of the tap; the tap must count the frames.
//!
//! This once failed: the guest's frames never reached the tap (ping lost, the tap
//! counted 0 packets) while two queue pairs with `mq=on` worked.
//!
//! Needs root, /dev/net/tun, `ip` and qemu-system-x86_64 on the host and the guest
//! image (`scripts/build-guest-image.sh`, run by the harness when missing);
//! otherwise SKIPPED. About 10 s under TCG.
//!
//!     cargo build -p vhost-net --bins
//!     cargo test -p vhost-net --test guest_default -- --nocapture

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use vhostkit_tests::daemon::DaemonProcess;
use vhostkit_tests::guest::{qemu_guest_image, Guest, GuestOutput, Initrd};
use vhostkit_tests::launch::net::{HostIp, NetArgs};
use vhostkit_tests::launch::{Launch, LogLevel};
use vhostkit_tests::netns::{self, NetNs};
use vhostkit_tests::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-net");
const GUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// The guest's run.sh; `@HOST@` and `@GUEST@` are the two ends' addresses.
const SCRIPT: &str = r#"
if [ ! -e /sys/class/net/eth0 ]; then echo "VHOSTKIT-RESULT error no eth0"; exit 1; fi
ip link set lo up
ip link set eth0 up || exit 2
ip addr add @GUEST@/24 dev eth0 || exit 3
echo "VHOSTKIT-RESULT rx_queues $(ls -d /sys/class/net/eth0/queues/rx-* | wc -l)"
ping -c 3 -W 5 @HOST@ >/tmp/ping.txt 2>&1
cat /tmp/ping.txt
echo "VHOSTKIT-RESULT ping_received $(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping.txt)"
echo "VHOSTKIT-RESULT guest_tx_packets $(cat /sys/class/net/eth0/statistics/tx_packets)"
echo "VHOSTKIT-RESULT guest_rx_packets $(cat /sys/class/net/eth0/statistics/rx_packets)"
exit 0
"#;

/// A counter of the tap in the namespace (`rx_packets`: frames the daemon wrote
/// to the tap, i.e. from the guest).
fn tap_counter(ns: &NetNs, tap: &str, counter: &str) -> Option<u64> {
    let out = ns
        .command("cat")
        .arg(format!("/sys/class/net/{tap}/statistics/{counter}"))
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn check(out: &GuestOutput, tap_rx: Option<u64>) -> Result<(), String> {
    if let Some(error) = out.result("error") {
        return Err(format!("the guest script reports: {error}"));
    }
    let received: u32 = out
        .require("ping_received")
        .map_err(|e| e.to_string())?
        .parse()
        .unwrap_or(0);
    if received == 0 {
        return Err("the guest's ping to the host end of the tap: all packets lost".into());
    }
    match tap_rx {
        Some(n) if n > 0 => {}
        other => return Err(format!("the tap received {other:?} packets from the guest")),
    }
    out.check_run_ok().map_err(|e| e.to_string())
}

#[test]
fn default_daemon_under_default_qemu_device() {
    if let Some(why) = netns::unavailable() {
        vhostkit_tests::skip::skip(format_args!("guest_default: {why}"));
        return;
    }
    let Some(image) = qemu_guest_image("guest_default") else {
        return;
    };
    let pid = std::process::id();
    let subnet = 10 + (pid % 240) as u8;
    let (host_ip, guest_ip) = (
        Ipv4Addr::new(10, 78, subnet, 1),
        Ipv4Addr::new(10, 78, subnet, 2),
    );
    let tap = format!("vkd{pid}");
    let dir = TempDir::new("guest-default").unwrap();
    let socket = dir.join("net.sock");
    let log_path = dir.join("daemon.log");

    // Dropped last: the daemon inside goes first (reverse declaration order).
    let ns = NetNs::create(&format!("vkd-{pid}")).expect("create the network namespace");
    let daemon = NetArgs {
        host_ip: Some(HostIp {
            addr: host_ip.into(),
            prefix: 24,
        }),
        ..NetArgs::new(&tap)
    };
    let launch = Launch::on_socket(&socket, daemon).log_level(LogLevel::Debug);
    let mut cmd = ns.command(BIN);
    cmd.args(launch.to_args())
        .env_remove("RUST_LOG")
        .stderr(Stdio::from(File::create(&log_path).unwrap()));
    let mut daemon = DaemonProcess::spawn("vhost-user-net", cmd, &socket, Duration::from_secs(10))
        .unwrap_or_else(|e| {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("start vhost-user-net: {e}\n{log}")
        });

    let script = SCRIPT
        .replace("@HOST@", &host_ip.to_string())
        .replace("@GUEST@", &guest_ip.to_string());
    // QEMU's defaults, spelled out rather than through NetDevice (which adds
    // `queues=`): `vectors=0` is the one departure (see the module docs).
    let out = Guest::new(&image, &script)
        .initrd(Initrd::Mini)
        .qemu_args([
            "-chardev".to_string(),
            format!("socket,id=c1,path={}", socket.display()),
            "-netdev".to_string(),
            "vhost-user,id=n1,chardev=c1".to_string(),
            "-device".to_string(),
            "virtio-net-pci,netdev=n1,vectors=0".to_string(),
        ])
        .timeout(GUEST_TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    let tap_rx = tap_counter(&ns, &tap, "rx_packets");
    let tap_tx = tap_counter(&ns, &tap, "tx_packets");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    if let Err(e) = check(&out, tap_rx) {
        panic!(
            "{e} (tap rx_packets {tap_rx:?}, tx_packets {tap_tx:?})\n----- guest console -----\n{}\n----- vhost-user-net log -----\n{log}",
            out.console
        );
    }
    assert!(
        daemon.is_running(),
        "vhost-user-net died during the guest run\n{log}"
    );
    eprintln!(
        "vhost-user-net defaults, QEMU default virtio-net-pci: ping ok, tap rx_packets {tap_rx:?} \
         tx_packets {tap_tx:?}, guest {:.1} s",
        out.elapsed.as_secs_f64()
    );
}
