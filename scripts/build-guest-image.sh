#!/bin/bash
# Builds the Linux guest used by the in-guest tests and benchmarks into build/guest/
# (or $VHOSTKIT_GUEST_DIR): Debian's current 6.1 kernel and an initramfs made of
# busybox, fio, iperf3, the virtio/fuse modules and an /init that runs /run.sh.
#
# Usage: scripts/build-guest-image.sh [--force]
#
# Cached: when the outputs exist and were made by this exact script, it does nothing
# (well under a second). Editing this script, or --force, rebuilds; the downloaded
# .deb files stay in build/guest/debs/ and are reused. The kernel package is only
# downloaded and unpacked (dpkg -x), never installed on the host.
#
# Outputs (described for the harness in build/guest/guest.env):
#   vmlinuz              the package's bzImage
#   vmlinux              the same kernel as an uncompressed ELF (boots through PVH, faster)
#   initramfs.cpio       busybox + fio + iperf3 + modules + /init  (~87 MB)
#   initramfs-mini.cpio  busybox + modules + /init, for guests that need no fio
# The archives are left uncompressed: under TCG the guest unpacks an 87 MB plain cpio
# about a second faster than a gzip -1 one (QEMU q35, ELF kernel: 4.1 s vs 5.3 s from
# QEMU start to power-off), and copying it per run costs the host a few milliseconds.
#
# A per-test script needs no rebuild: the kernel unpacks concatenated cpio archives,
# so the harness appends a small cpio holding /run.sh to one of these images.
set -euo pipefail

log() { echo "build-guest-image: $*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

FORCE=0
for arg in "$@"; do
    case "$arg" in
    --force) FORCE=1 ;;
    -h | --help)
        sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument: $arg (try --help)" ;;
    esac
done

SCRIPT="$(readlink -f "${BASH_SOURCE[0]}")"
ROOT="$(cd "$(dirname "$SCRIPT")/.." && pwd)"
OUT="${VHOSTKIT_GUEST_DIR:-$ROOT/build/guest}"
# Virtio and FUSE modules, in the order that loads (dependencies first).
MODULES="failover net_failover virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_mmio virtio_blk virtio_net fuse virtiofs"
OUTPUTS="vmlinuz vmlinux initramfs.cpio initramfs-mini.cpio guest.env"

mkdir -p "$OUT"
# One builder at a time (tests may call this script concurrently).
exec 9>"$OUT/.lock"
flock 9

STAMP_WANT="$(sha256sum "$SCRIPT" | cut -d' ' -f1)"
up_to_date() {
    [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$STAMP_WANT" ] || return 1
    for f in $OUTPUTS; do [ -s "$OUT/$f" ] || return 1; done
}
if [ "$FORCE" = 0 ] && up_to_date; then
    log "up to date: $OUT ($(sed -n 's/^KVER=//p' "$OUT/guest.env"))"
    exit 0
fi
START=$(date +%s)
# Also drop the compressed archives older versions of this script made.
rm -f "$OUT/stamp" "$OUT"/initramfs*.cpio.gz

# ---------------------------------------------------------------- host tools
# Commands this script runs, and the Debian package that provides each. fio and
# iperf3 are installed on the host too: their shared libraries are copied from it.
# qemu-system-x86 (which brings qemu-storage-daemon) is what the harness boots with.
need_pkgs=""
for pair in cpio:cpio depmod:kmod xz:xz-utils gzip:gzip ldd:libc-bin flock:util-linux \
    dpkg-deb:dpkg apt-get:apt fio:fio iperf3:iperf3 qemu-system-x86_64:qemu-system-x86; do
    cmd="${pair%%:*}"
    pkg="${pair#*:}"
    command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 ||
        need_pkgs="$need_pkgs $pkg"
done
[ -x /bin/busybox ] || need_pkgs="$need_pkgs busybox-static"
export PATH="$PATH:/usr/sbin:/sbin"
APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        apt-get update -qq >&2 || die "apt-get update failed"
        APT_UPDATED=1
    fi
}
if [ -n "$need_pkgs" ]; then
    [ "$(id -u)" = 0 ] || die "missing host packages:$need_pkgs (run as root, or install them)"
    log "installing host packages:$need_pkgs"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need_pkgs >&2; then
        apt_update_once
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need_pkgs >&2 ||
            die "cannot install:$need_pkgs"
    fi
fi

# ---------------------------------------------------------------- kernel package
resolve_kernel() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-amd64$/ { print $2; exit }'
}
KPKG="$(resolve_kernel)"
if [ -z "$KPKG" ]; then
    apt_update_once
    KPKG="$(resolve_kernel)"
fi
[ -n "$KPKG" ] || die "cannot resolve linux-image-amd64 to a kernel package (apt-cache depends)"
KVER="${KPKG#linux-image-}"
log "kernel package: $KPKG (version $KVER)"

# ---------------------------------------------------------------- downloads
DEBS="$OUT/debs"
mkdir -p "$DEBS"
deb_of() { ls "$DEBS/${1}_"*.deb 2>/dev/null | head -n1; }
download() {
    local missing=""
    for p in "$@"; do [ -n "$(deb_of "$p")" ] || missing="$missing $p"; done
    [ -z "$missing" ] && return 0
    log "apt-get download$missing"
    if ! (cd "$DEBS" && apt-get download -qq $missing >&2 2>/dev/null); then
        apt_update_once
        (cd "$DEBS" && apt-get download -qq $missing >&2) || die "apt-get download$missing failed"
    fi
}
download "$KPKG" busybox-static fio iperf3 libiperf0

# ---------------------------------------------------------------- unpack
WORK="$OUT/work"
rm -rf "$WORK"
mkdir -p "$WORK/kernel" "$WORK/pkgs"
log "unpacking $(basename "$(deb_of "$KPKG")")"
dpkg -x "$(deb_of "$KPKG")" "$WORK/kernel"
for p in busybox-static fio iperf3 libiperf0; do
    log "unpacking $(basename "$(deb_of "$p")")"
    dpkg -x "$(deb_of "$p")" "$WORK/pkgs"
done
KROOT="$WORK/kernel"
[ -f "$KROOT/boot/vmlinuz-$KVER" ] || die "no boot/vmlinuz-$KVER in $KPKG"
[ -d "$KROOT/lib/modules/$KVER" ] || die "no lib/modules/$KVER in $KPKG"

# ---------------------------------------------------------------- kernel images
log "kernel: vmlinuz (bzImage)"
cp "$KROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz.new"
mv "$OUT/vmlinuz.new" "$OUT/vmlinuz"
# The ELF vmlinux is the xz stream inside the bzImage (as scripts/extract-vmlinux does).
log "kernel: extracting ELF vmlinux from the bzImage's xz payload"
rm -f "$OUT/vmlinux"
for off in $(LC_ALL=C grep -aboP '\xfd7zXZ\x00' "$OUT/vmlinuz" | cut -d: -f1); do
    tail -c +$((off + 1)) "$OUT/vmlinuz" | xz -dc --single-stream >"$OUT/vmlinux.new" 2>/dev/null || true
    if [ "$(head -c4 "$OUT/vmlinux.new" 2>/dev/null)" = $'\x7fELF' ]; then
        mv "$OUT/vmlinux.new" "$OUT/vmlinux"
        break
    fi
done
rm -f "$OUT/vmlinux.new"
[ -s "$OUT/vmlinux" ] || die "could not extract an ELF vmlinux from the bzImage"

# ---------------------------------------------------------------- initramfs root
STAGE="$WORK/root"
log "initramfs: busybox, modules, /init"
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,etc,proc,sys,dev,tmp,run,mnt,root,var/tmp}
chmod 1777 "$STAGE/tmp" "$STAGE/var/tmp"
BB="$WORK/pkgs/bin/busybox"
[ -x "$BB" ] || die "busybox-static has no bin/busybox"
cp "$BB" "$STAGE/bin/busybox"
# Applet links (bin/busybox itself is the binary; linuxrc is not wanted).
"$BB" --list-full | while read -r applet; do
    case "$applet" in bin/busybox | linuxrc | "") continue ;; esac
    [ -e "$STAGE/$applet" ] && continue
    mkdir -p "$STAGE/$(dirname "$applet")"
    ln -s /bin/busybox "$STAGE/$applet"
done
# Console and null nodes: the kernel opens /dev/console for init before devtmpfs is up.
if [ "$(id -u)" = 0 ]; then
    mknod -m 600 "$STAGE/dev/console" c 5 1
    mknod -m 666 "$STAGE/dev/null" c 1 3
fi
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$STAGE/etc/passwd"
printf 'root:x:0:\n' >"$STAGE/etc/group"

# Modules (with their tree paths) and a modules.dep for just these.
MODDIR="lib/modules/$KVER"
mkdir -p "$STAGE/$MODDIR"
INSMOD_LIST=""
for m in $MODULES; do
    src="$(find "$KROOT/$MODDIR" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" | head -n1)"
    [ -n "$src" ] || die "module $m not found in $KPKG"
    rel="${src#"$KROOT"/}"
    mkdir -p "$STAGE/$(dirname "$rel")"
    case "$src" in
    *.ko) cp "$src" "$STAGE/$rel" ;;
    *.ko.xz) xz -dc "$src" >"$STAGE/${rel%.xz}" && rel="${rel%.xz}" ;;
    *.ko.zst) zstd -qdc "$src" >"$STAGE/${rel%.zst}" && rel="${rel%.zst}" ;;
    *.ko.gz) gzip -dc "$src" >"$STAGE/${rel%.gz}" && rel="${rel%.gz}" ;;
    esac
    INSMOD_LIST="$INSMOD_LIST /$rel"
done
cp "$KROOT/$MODDIR"/modules.builtin* "$STAGE/$MODDIR/" 2>/dev/null || true
for rel in $INSMOD_LIST; do echo "${rel#/"$MODDIR"/}"; done >"$STAGE/$MODDIR/modules.order"
depmod -b "$STAGE" "$KVER"

cat >"$STAGE/init" <<EOF
#!/bin/sh
# vhostkit guest init (generated by scripts/build-guest-image.sh)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t devtmpfs dev /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmp /tmp
mount -t tmpfs shm /dev/shm
echo "VHOSTKIT-INIT kernel \$(uname -r) cpus \$(nproc)"
for m in $INSMOD_LIST; do
    insmod "\$m" || echo "VHOSTKIT-INIT insmod failed: \$m"
done
echo "VHOSTKIT-INIT modules loaded"
if [ -x /run.sh ] || [ -f /run.sh ]; then
    echo "VHOSTKIT-RUN-BEGIN"
    sh /run.sh
    rc=\$?
    echo "VHOSTKIT-RUN-END rc=\$rc"
else
    echo "VHOSTKIT-INIT no /run.sh"
fi
sync
echo "VHOSTKIT-POWEROFF"
poweroff -f
# Not reached; if it were, init exiting panics the kernel, and panic=-1 with
# QEMU -no-reboot ends the VM.
EOF
chmod 755 "$STAGE/init"

pack() { # pack <out file>
    (cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
        cat >"$1.new"
    mv "$1.new" "$1"
}
log "initramfs: packing initramfs-mini.cpio (busybox only)"
pack "$OUT/initramfs-mini.cpio"

# ---------------------------------------------------------------- fio, iperf3
copy_with_libs() { # copy_with_libs <binary in pkgs> <path in guest>
    local bin="$1" dest="$2"
    mkdir -p "$STAGE/$(dirname "$dest")"
    cp "$bin" "$STAGE/$dest"
    local libs
    libs="$(LD_LIBRARY_PATH="$WORK/pkgs/usr/lib/x86_64-linux-gnu" ldd "$bin")" || die "ldd $bin failed"
    if grep -q 'not found' <<<"$libs"; then
        die "$(basename "$bin"): libraries not found on the host: $(grep 'not found' <<<"$libs" | tr -s ' \t' ' ')"
    fi
    local lib guestpath
    for lib in $(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$libs"); do
        guestpath="${lib#"$WORK/pkgs"}"
        [ -e "$STAGE/$guestpath" ] && continue
        mkdir -p "$STAGE/$(dirname "$guestpath")"
        cp -L "$lib" "$STAGE/$guestpath"
    done
}
log "initramfs: fio, iperf3 and their shared libraries"
copy_with_libs "$WORK/pkgs/usr/bin/fio" usr/bin/fio
copy_with_libs "$WORK/pkgs/usr/bin/iperf3" usr/bin/iperf3
[ -e "$STAGE/lib64/ld-linux-x86-64.so.2" ] || cp -L /lib64/ld-linux-x86-64.so.2 "$STAGE/lib64/"
log "initramfs: packing initramfs.cpio ($(du -sm "$STAGE" | cut -f1) MB)"
pack "$OUT/initramfs.cpio"

cat >"$OUT/guest.env" <<EOF
# Written by scripts/build-guest-image.sh; read by tests/src/guest.rs.
KVER=$KVER
KERNEL_PACKAGE=$KPKG
KERNEL_BZIMAGE=vmlinuz
KERNEL_ELF=vmlinux
INITRD=initramfs.cpio
INITRD_MINI=initramfs-mini.cpio
MODULES=$MODULES
EOF
rm -rf "$WORK"
echo "$STAMP_WANT" >"$OUT/stamp"
log "done in $(($(date +%s) - START)) s: $OUT"
ls -l "$OUT" | sed 's/^/  /' >&2
