//! Found by the `vmm_mmio` target (it died with EMFILE after about 10 000
//! connections to its in-process vhost-user-blk daemon): every frontend
//! connection leaves descriptors open in the daemon. vhost-user-backend 0.24's
//! `VringEpollHandler::new` (src/event_loop.rs:124) registers the exit-event
//! consumer our backends return from `exit_event` with `consumer.into_raw_fd()`
//! and never closes it: one eventfd per worker thread per connection, as
//! `vhostkit_common::lifecycle::serve` makes a new daemon for each frontend. A
//! daemon with the usual limit of 1024 descriptors stops working after about 500
//! connections (VM restarts, frontend reconnections). vhost-user-fs leaks the same
//! way. Ignored until the dependency is fixed (or patched as vendor/vhost is):
//! `cargo test -p vhostkit-fuzz --test daemon_fd_leak -- --ignored`.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use vhostkit_common::lifecycle::StopHandle;
use vhostkit_vmm::virtio::vhost_user::Backend;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[test]
#[ignore = "vhost-user-backend 0.24 leaks an eventfd per worker thread per connection"]
fn connections_leave_no_descriptors_in_the_daemon() {
    let dir = std::env::temp_dir().join(format!("vhostkit-fd-leak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let socket = dir.join("blk.sock");
    let arg = |p: &Path| p.display().to_string();
    let args = vhost_blk::Args::try_parse_from([
        "vhost-user-blk",
        "--socket-path",
        &arg(&socket),
        "--path",
        &arg(&image),
        "--num-queues",
        "2",
        "--engine",
        "sync",
    ])
    .unwrap();
    let config = vhost_blk::BlkConfig::try_from(args).unwrap();
    let stop = StopHandle::new().unwrap();
    let daemon_stop = stop.clone();
    let daemon = std::thread::spawn(move || vhost_blk::run(config, &daemon_stop));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the daemon did not listen");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The daemon serves one frontend at a time: a handshake answered means the
    // previous connection is gone.
    let connect = || drop(Backend::connect(&socket).expect("handshake"));
    connect();
    connect();
    let before = open_fds();
    for _ in 0..50 {
        connect();
    }
    connect();
    let after = open_fds();
    stop.stop();
    let _ = daemon.join();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        after <= before + 2,
        "50 connections left {} descriptors open ({before} before, {after} after)",
        after - before
    );
}
