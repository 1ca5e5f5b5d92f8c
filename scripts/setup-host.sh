#!/usr/bin/env bash
# Installs the host packages vhostkit's tests, benchmarks and demo use, on Debian
# bookworm, as root: QEMU 7.2 (qemu-system-x86; its qemu-system-common package
# carries qemu-storage-daemon, the block peer), fio, iperf3, busybox-static, cpio and
# kmod (guest image), iproute2 (network tests), acpica-tools (iasl checks the
# VMM's ACPI tables), dpdk-dev (dpdk-testpmd: net-bench's vhost-user-net peer),
# libcap-ng-dev and libseccomp-dev (to build virtiofsd, the vhost-user-fs peer:
# scripts/build-fs-tools.sh). Does nothing when all are present.
set -euo pipefail

log() { printf '[setup-host] %s\n' "$*" >&2; }

want=(
    qemu-system-x86_64:qemu-system-x86
    qemu-storage-daemon:qemu-system-common
    fio:fio
    iperf3:iperf3
    cpio:cpio
    depmod:kmod
    blkdiscard:util-linux
    ip:iproute2
    iasl:acpica-tools
    dpdk-testpmd:dpdk-dev
    /usr/include/cap-ng.h:libcap-ng-dev
    /usr/include/seccomp.h:libseccomp-dev
)
missing=()
for entry in "${want[@]}"; do
    cmd=${entry%%:*} pkg=${entry#*:}
    case "$cmd" in
    /*) [ -e "$cmd" ] || missing+=("$pkg") ;; # a library: its header
    *) command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg") ;;
    esac
done
[ -x /bin/busybox ] || missing+=(busybox-static)

if [ ${#missing[@]} -eq 0 ]; then
    log "host packages present"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    log "missing packages: ${missing[*]} (run as root or install them)"
    exit 1
fi
log "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
log "installed"
