#!/usr/bin/env bash
# The main job: builds everything, boots a Debian Linux guest with our vhost-user
# daemons attached (QEMU with KVM where the host has hardware virtualization, TCG
# otherwise; it says which), runs fio inside against our daemon and against the peer
# (qemu-storage-daemon), and prints the results table.
# Extra arguments go to guest-bench (see `guest-bench --help`), e.g. --seconds 5.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-host.sh
bash scripts/build-guest-image.sh

echo "== building (release)" >&2
cargo build --release --workspace --bins --quiet
mkdir -p build/results
exec target/release/guest-bench --json build/results/guest.json --svg build/results/guest.svg "$@"
