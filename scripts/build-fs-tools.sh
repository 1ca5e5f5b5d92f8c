#!/usr/bin/env bash
# Installs the tools of the vhost-user-fs tests into build/tools/ (or
# $VHOSTKIT_TOOLS_DIR), once per machine:
#   bin/virtiofsd          the peer our vhost-user-fs is compared with (crates.io)
#   bin/pjdfstest          the POSIX file system suite, Rust rewrite (crates.io)
#   guest-pjdfstest.cpio   pjdfstest, coreutils' sleep and their shared libraries, laid out
#                          for the guest's root; the harness appends it to the
#                          guest image, with /etc/passwd and /etc/group that add
#                          the users it switches to (tests/src/fs.rs)
#
# Usage: scripts/build-fs-tools.sh [--force]
#
# Cached: when the outputs exist and were made by this exact script, it does
# nothing (well under a second). The first run builds both crates with
# `cargo install --locked` (a few minutes: see docs/vhost-user-fs.md). virtiofsd
# needs libcap-ng-dev and libseccomp-dev (scripts/setup-host.sh installs them).
set -euo pipefail

VIRTIOFSD_VERSION=1.14.0
PJDFSTEST_VERSION=0.2.2

log() { echo "build-fs-tools: $*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

FORCE=0
for arg in "$@"; do
    case "$arg" in
    --force) FORCE=1 ;;
    -h | --help)
        sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument: $arg (try --help)" ;;
    esac
done

SCRIPT="$(readlink -f "${BASH_SOURCE[0]}")"
ROOT="$(cd "$(dirname "$SCRIPT")/.." && pwd)"
OUT="${VHOSTKIT_TOOLS_DIR:-$ROOT/build/tools}"
mkdir -p "$OUT"
# One builder at a time (tests may call this script concurrently).
exec 9>"$OUT/.lock"
flock 9

STAMP_WANT="$(sha256sum "$SCRIPT" | cut -d' ' -f1)"
up_to_date() {
    [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$STAMP_WANT" ] || return 1
    for f in bin/virtiofsd bin/pjdfstest guest-pjdfstest.cpio; do [ -s "$OUT/$f" ] || return 1; done
}
if [ "$FORCE" = 0 ] && up_to_date; then
    log "up to date: $OUT (virtiofsd $VIRTIOFSD_VERSION, pjdfstest $PJDFSTEST_VERSION)"
    exit 0
fi
rm -f "$OUT/stamp"

command -v cargo >/dev/null || die "no cargo on PATH"
command -v cpio >/dev/null || die "no cpio (run scripts/setup-host.sh)"
for header in /usr/include/cap-ng.h:libcap-ng-dev /usr/include/seccomp.h:libseccomp-dev; do
    [ -e "${header%%:*}" ] || die "${header%%:*} missing: install ${header#*:} (scripts/setup-host.sh does)"
done

install_crate() { # install_crate <crate> <version>
    local crate="$1" version="$2" start
    if [ "$FORCE" = 0 ] && [ -x "$OUT/bin/$crate" ] &&
        grep -q "^\"$crate $version " "$OUT/.crates.toml" 2>/dev/null; then
        log "$crate $version already installed"
        return
    fi
    start=$(date +%s)
    log "cargo install $crate $version (a few minutes the first time)"
    cargo install "$crate" --version "=$version" --locked --force --root "$OUT" >&2 ||
        die "cargo install $crate $version failed"
    log "$crate $version installed in $(($(date +%s) - start)) s"
}
install_crate virtiofsd "$VIRTIOFSD_VERSION"
install_crate pjdfstest "$PJDFSTEST_VERSION"

# ---------------------------------------------------------------- guest archive
log "guest-pjdfstest.cpio: pjdfstest, sleep and their shared libraries"
STAGE="$OUT/stage"
rm -rf "$STAGE"
mkdir -p "$STAGE/usr/bin" "$STAGE/lib64"
copy_with_libs() { # copy_with_libs <binary on the host> <path in the guest>
    cp -L "$1" "$STAGE/$2"
    local libs lib
    libs="$(ldd "$1" 2>&1)" || true
    if grep -q 'not found' <<<"$libs"; then
        die "$1: libraries not found: $(grep 'not found' <<<"$libs" | tr -s ' \t' ' ')"
    fi
    for lib in $(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$libs"); do
        mkdir -p "$STAGE/$(dirname "$lib")"
        cp -L "$lib" "$STAGE/$lib"
    done
}
copy_with_libs "$OUT/bin/pjdfstest" usr/bin/pjdfstest
# The *::etxtbsy tests copy `which sleep` to a new name and run it while they open
# it for writing. busybox's sleep, run under another name, is no applet and exits at
# once, which makes them flaky; coreutils' sleep is a program of its own, found
# first on the guest's PATH (/usr/bin before /bin).
SLEEP="$(PATH=/usr/bin:/bin command -v sleep)"
[ -n "$SLEEP" ] && ! [ "$(readlink -f "$SLEEP")" -ef /bin/busybox ] || die "no coreutils sleep on the host"
copy_with_libs "$SLEEP" usr/bin/sleep
[ -e "$STAGE/lib64/ld-linux-x86-64.so.2" ] || cp -L /lib64/ld-linux-x86-64.so.2 "$STAGE/lib64/"
# pjdfstest switches to two unprivileged users it looks up by name (the base
# image only knows root); these files replace the base image's.
mkdir -p "$STAGE/etc"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\ntests:x:1000:1000:tests:/:/bin/sh\n' >"$STAGE/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\ntests:x:1000:\n' >"$STAGE/etc/group"
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$OUT/guest-pjdfstest.cpio.new"
mv "$OUT/guest-pjdfstest.cpio.new" "$OUT/guest-pjdfstest.cpio"
rm -rf "$STAGE"

echo "$STAMP_WANT" >"$OUT/stamp"
log "done: $OUT ($(du -sh "$OUT/guest-pjdfstest.cpio" | cut -f1) guest archive)"
