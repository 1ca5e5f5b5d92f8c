//! A real Linux guest on our vhost-user-net: virtio-net-pci under QEMU with two
//! queue pairs, the daemon on a multi-queue tap. The guest pings the host end of
//! the tap, then runs iperf3 TCP (2 streams, 3 s) to the host and back (`-R`).
//!
//! The host end lives in a network namespace of the test's own (`vk-<pid>`): the
//! daemon is started inside it (`ip netns exec`), so the tap it creates, the
//! address it gives it (`--host-ip 10.77.<n>.1/24`) and the iperf3 server never
//! touch the host's own interfaces; deleting the namespace on the way out (also
//! on failure) deletes the tap.
//!
//! Needs root, /dev/net/tun, `ip`, iperf3 and qemu-system-x86_64 on the host and
//! the guest image (`scripts/build-guest-image.sh`, run by the harness when
//! missing); otherwise SKIPPED. About 20 s under TCG.
//!
//!     cargo build --workspace --bins
//!     cargo test -p vhost-net --test guest_iperf -- --nocapture

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vhostkit_tests::daemon::DaemonProcess;
use vhostkit_tests::guest::{Guest, GuestImage, GuestOutput, NetDevice};
use vhostkit_tests::launch::net::{HostIp, Mac, NetArgs};
use vhostkit_tests::launch::Launch;
use vhostkit_tests::netns::{self, NetNs};
use vhostkit_tests::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-net");
const QUEUE_PAIRS: u16 = 2;
const GUEST_MAC: Mac = Mac([0x52, 0x54, 0x00, 0x77, 0x00, 0x02]);
const IPERF_PORT: u16 = 5201;
const GUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The guest's run.sh; `@HOST@` and `@GUEST@` are the two ends' addresses.
/// Busybox `ip` and `ping`; the image has no ethtool, and needs none: Linux's
/// virtio_net turns on min(queue pairs, vCPUs) pairs by itself (the script
/// reports how many the guest uses).
const SCRIPT: &str = r#"
host=@HOST@
echo "VHOSTKIT-RESULT interfaces $(ls /sys/class/net | tr '\n' ' ')"
if [ ! -e /sys/class/net/eth0 ]; then echo "VHOSTKIT-RESULT error no eth0"; exit 1; fi
ip link set lo up
ip link set eth0 up || exit 2
ip addr add @GUEST@/24 dev eth0 || exit 3
echo "VHOSTKIT-RESULT mac $(cat /sys/class/net/eth0/address)"
if command -v ethtool >/dev/null 2>&1; then
    ethtool -L eth0 combined @PAIRS@; echo "VHOSTKIT-RESULT ethtool_rc $?"
else
    echo "VHOSTKIT-RESULT ethtool absent"
fi
echo "VHOSTKIT-RESULT rx_queues $(ls -d /sys/class/net/eth0/queues/rx-* | wc -l)"
echo "VHOSTKIT-RESULT tx_queues $(ls -d /sys/class/net/eth0/queues/tx-* | wc -l)"
ping -c 3 -W 5 $host >/tmp/ping.txt 2>&1
cat /tmp/ping.txt
echo "VHOSTKIT-RESULT ping_received $(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping.txt)"
failed=0
for dir in tx rx; do
    flag=; [ $dir = rx ] && flag=-R
    iperf3 -c $host -p @PORT@ -t 3 -P 2 -i 0 -J $flag >/tmp/$dir.json 2>/tmp/$dir.err
    rc=$?
    echo "VHOSTKIT-RESULT iperf_${dir}_rc $rc"
    [ $rc = 0 ] || { cat /tmp/$dir.err; failed=1; }
    echo "VHOSTKIT-BEGIN iperf-$dir"; cat /tmp/$dir.json; echo "VHOSTKIT-END iperf-$dir"
done
echo "VHOSTKIT-RESULT rx_packets $(cat /sys/class/net/eth0/statistics/rx_packets)"
echo "VHOSTKIT-RESULT tx_packets $(cat /sys/class/net/eth0/statistics/tx_packets)"
exit $failed
"#;

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// An iperf3 server inside the namespace, killed on drop.
struct IperfServer(Child);

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Received throughput (bits/s) of an iperf3 client's JSON: what the receiving
/// end counted (the host for guest->host, the guest for `-R`).
fn received_bits_per_second(json: &str) -> Result<f64, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("iperf3 JSON: {e}"))?;
    if let Some(error) = v["error"].as_str() {
        return Err(format!("iperf3: {error}"));
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| "iperf3 JSON has no end.sum_received.bits_per_second".to_string())
}

/// Error lines of the daemon's log (env_logger: `[<time> ERROR <target>] ...`).
/// Any fails the test: e.g. "dropping a received frame", which host->guest TCP
/// caused whenever the guest's receive ring was short of buffers for a 64 KiB
/// frame, before the daemon learned to hold such a frame until it fits.
fn daemon_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.starts_with('[') && l.contains(" ERROR "))
        .collect()
}

/// Checks the run; returns guest->host and host->guest Gbit/s.
fn check(out: &GuestOutput) -> Result<(f64, f64), String> {
    let value = |key: &str| {
        out.result(key)
            .ok_or_else(|| format!("no `VHOSTKIT-RESULT {key}` line"))
    };
    if let Some(error) = out.result("error") {
        return Err(format!("the guest script reports: {error}"));
    }
    let mac = value("mac")?;
    if mac != GUEST_MAC.to_string() {
        return Err(format!("guest MAC {mac}, expected {GUEST_MAC}"));
    }
    let received: u32 = value("ping_received")?.parse().unwrap_or(0);
    if received == 0 {
        return Err("the guest's ping to the host end of the tap: all packets lost".into());
    }
    let mut gbits = [0.0; 2];
    for (i, dir) in ["tx", "rx"].into_iter().enumerate() {
        let what = if dir == "tx" {
            "guest->host"
        } else {
            "host->guest"
        };
        let json = out
            .section(&format!("iperf-{dir}"))
            .ok_or_else(|| format!("{what}: no iperf3 JSON on the console"))?;
        let bps = received_bits_per_second(&json).map_err(|e| format!("{what}: {e}"))?;
        let rc = value(&format!("iperf_{dir}_rc"))?;
        if rc != "0" {
            return Err(format!("{what}: iperf3 exited with status {rc}"));
        }
        if bps <= 0.0 {
            return Err(format!("{what}: zero throughput"));
        }
        gbits[i] = bps / 1e9;
    }
    let queues = value("rx_queues")?;
    if queues != QUEUE_PAIRS.to_string() {
        return Err(format!(
            "the guest uses {queues} receive queue(s), expected {QUEUE_PAIRS}"
        ));
    }
    out.check_run_ok().map_err(|e| e.to_string())?;
    Ok((gbits[0], gbits[1]))
}

#[test]
fn iperf3_through_vhost_user_net() {
    if let Some(why) = netns::unavailable() {
        vhostkit_tests::skip::skip(format_args!("guest_iperf: {why}"));
        return;
    }
    for tool in ["iperf3", "qemu-system-x86_64"] {
        if !have(tool) {
            vhostkit_tests::skip::skip(format_args!(
                "guest_iperf: {tool} is not installed on the host"
            ));
            return;
        }
    }
    let image = match GuestImage::ensure() {
        Ok(image) => image,
        Err(e) => {
            vhostkit_tests::skip::skip(format_args!("guest_iperf: no guest image: {e}"));
            return;
        }
    };
    let start = Instant::now();
    let pid = std::process::id();
    let subnet = 10 + (pid % 240) as u8;
    let (host_ip, guest_ip) = (
        Ipv4Addr::new(10, 77, subnet, 1),
        Ipv4Addr::new(10, 77, subnet, 2),
    );
    let tap = format!("vkt{pid}");
    let dir = TempDir::new("guest-iperf").unwrap();
    let socket = dir.join("net.sock");
    let log_path = dir.join("daemon.log");

    // Dropped last: the processes inside go first (reverse declaration order).
    let ns = NetNs::create(&format!("vk-{pid}")).expect("create the network namespace");
    let daemon = NetArgs {
        mac: Some(GUEST_MAC),
        num_queue_pairs: Some(QUEUE_PAIRS),
        host_ip: Some(HostIp {
            addr: host_ip.into(),
            prefix: 24,
        }),
        ..NetArgs::new(&tap)
    };
    let mut cmd = ns.command(BIN);
    cmd.args(Launch::on_socket(&socket, daemon).to_args())
        .env_remove("RUST_LOG")
        .stderr(Stdio::from(File::create(&log_path).unwrap()));
    let mut daemon = DaemonProcess::spawn("vhost-user-net", cmd, &socket, Duration::from_secs(10))
        .unwrap_or_else(|e| {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("start vhost-user-net: {e}\n{log}")
        });
    let server = ns
        .command("iperf3")
        .args([
            "-s",
            "-B",
            &host_ip.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
        ])
        .stdout(Stdio::from(File::create(dir.join("iperf3.log")).unwrap()))
        .stderr(Stdio::from(File::create(dir.join("iperf3.err")).unwrap()))
        .stdin(Stdio::null())
        .spawn()
        .expect("start iperf3 -s in the namespace");
    let mut server = IperfServer(server);

    let script = SCRIPT
        .replace("@HOST@", &host_ip.to_string())
        .replace("@GUEST@", &guest_ip.to_string())
        .replace("@PAIRS@", &QUEUE_PAIRS.to_string())
        .replace("@PORT@", &IPERF_PORT.to_string());
    let out = Guest::new(&image, &script)
        .net(NetDevice::vhost_user(&socket, QUEUE_PAIRS).mac(GUEST_MAC.to_string()))
        .timeout(GUEST_TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let result = check(&out);
    let (tx, rx) = match result {
        Ok(r) => r,
        Err(e) => panic!(
            "{e}\n----- guest console -----\n{}\n----- vhost-user-net log -----\n{log}",
            out.console
        ),
    };
    assert!(
        daemon.is_running(),
        "vhost-user-net died during the guest run\n{log}"
    );
    assert!(
        matches!(server.0.try_wait(), Ok(None)),
        "the iperf3 server died during the guest run"
    );
    let errors = daemon_errors(&log);
    assert!(
        errors.is_empty(),
        "vhost-user-net logged {} error line(s):\n{log}",
        errors.len()
    );
    eprintln!(
        "vhost-user-net, {QUEUE_PAIRS} queue pairs, guest under {}: iperf3 TCP 2 streams \
         guest->host {tx:.2} Gbit/s, host->guest {rx:.2} Gbit/s; ping ok; guest {:.1} s, \
         test {:.1} s",
        out.accel,
        out.elapsed.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn iperf_json_and_log_checks() {
    let ok = r#"{"start":{},"end":{"sum_sent":{"bits_per_second":2e9},
        "sum_received":{"bits_per_second":1.5e9}}}"#;
    assert_eq!(received_bits_per_second(ok).unwrap(), 1.5e9);
    let failed = r#"{"start":{},"end":{},"error":"unable to connect to server"}"#;
    let err = received_bits_per_second(failed).unwrap_err();
    assert!(err.contains("unable to connect"), "{err}");
    assert!(received_bits_per_second("not json").is_err());
    let log = "[2026-12-02T18:00:00.000000Z INFO  vhost_net] serving tap vkt1\n\
               [2026-12-02T18:00:01.000000Z ERROR vhost_net::worker] tap write: EIO\n";
    assert_eq!(daemon_errors(log), vec![log.lines().nth(1).unwrap()]);
    let drop =
        "[t ERROR vhost_net::worker] pair 1: dropping a received frame of over 16384 bytes\n";
    assert_eq!(daemon_errors(drop).len(), 1);
    assert!(daemon_errors("[x INFO  y] fine\n").is_empty());
}
