#!/usr/bin/env bash
# The main job: builds everything, boots a Debian Linux guest with our vhost-user
# daemons attached, runs fio inside against our daemon and against the peer
# (qemu-storage-daemon), fio and a tar extract on a virtiofs mount served by our
# vhost-user-fs and by virtiofsd (same cache mode), and iperf3 between the guest and
# the host on our vhost-user-net and on QEMU's own tap backend (short runs: 3 s per
# row), and prints the results table (fio rows, fs rows and net rows; --no-net and
# --no-fs leave rows out).
# Which VMM boots the guest is guest-bench's choice (--vhostkit auto): where the host
# has hardware virtualization (vmx/svm) the guest also boots through our own VMM,
# vhostkit, with our daemon (rows vhostkit+ours), beside QEMU with KVM; elsewhere
# QEMU with TCG only, since Linux through vhostkit needs vmx/svm. It says which.
# Extra arguments go to guest-bench (see `guest-bench --help`), e.g. --seconds 5.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-host.sh
bash scripts/build-guest-image.sh
# virtiofsd, the fs rows' peer (a no-op when built; a few minutes of cargo install the
# first time). Without it guest-bench still runs our fs rows and says the peer is SKIPPED.
bash scripts/build-fs-tools.sh >&2 || echo "== WARNING: scripts/build-fs-tools.sh failed: the fs rows' peer (virtiofsd) will be SKIPPED" >&2

echo "== building (release)" >&2
cargo build --release --workspace --bins --quiet
mkdir -p build/results
bin="${CARGO_TARGET_DIR:-target}/release"
"$bin/guest-bench" --print-vmm "$@" | sed 's/^/== /' >&2
exec "$bin/guest-bench" --json build/results/guest.json --svg build/results/guest.svg "$@"
