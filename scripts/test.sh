#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, daemon process tests, driver tests
# against our daemons and the peers, and the guest tests that boot Debian's kernel
# under QEMU (KVM where the host has hardware virtualization, TCG otherwise).
# Installs what it needs first (host packages, the guest image into build/guest,
# virtiofsd and pjdfstest into build/tools: a few minutes once per machine), and
# ends with a smoke run of every fuzz target (cargo-afl installed on first use).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-host.sh
bash scripts/build-guest-image.sh
bash scripts/build-fs-tools.sh

echo "== building the daemons" >&2
cargo build --workspace --bins --quiet
echo "== running the tests" >&2
# Guest tests boot VMs; two at a time is what 2 cores take without timeouts.
cargo test --workspace -- --test-threads=2 "$@"
# Every fuzz target for a few seconds under AFL++ (the long runs: scripts/fuzz.sh N).
echo "== fuzz targets, smoke run (scripts/fuzz.sh --smoke)" >&2
bash scripts/fuzz.sh --smoke
