#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of guest or frontend input: the targets
# of the fuzz/ crate (vhostkit-fuzz), one after the other, under AFL++ through
# cargo-afl on the stable toolchain.
#
#   bash scripts/fuzz.sh [SECONDS]    every target for SECONDS (default 60)
#   bash scripts/fuzz.sh --smoke      every target for a few seconds (CI;
#                                     FUZZ_SMOKE_SECONDS, default 5)
#   FUZZ_TARGETS="fuse net_tx" bash scripts/fuzz.sh 600     only those targets
#
# Installs what is missing first: make and a C compiler (apt-get; AFL++ is built
# from the source cargo-afl carries), cargo-afl (cargo install, the version of the
# `afl` crate in Cargo.lock) and AFL++ for this rustc (`cargo afl config --build`).
# Builds the targets instrumented into target/afl (apart from the normal builds,
# which a change of RUSTFLAGS would otherwise rebuild), then runs each on a fresh
# output folder fuzz/out/<target>/ seeded from fuzz/corpus/<target>/, prints
# target / execs / execs/s / crashes / hangs from afl's fuzzer_stats, and exits 1
# if any target crashed (2 if afl-fuzz could not run).
#
# A crash or hang in fuzz/out/<target>/default/{crashes,hangs}/ replays without
# afl through the plain binary: cargo run -p vhostkit-fuzz --bin <target> -- FILE.
# Once understood, keep it in fuzz/regressions/<target>/ (cargo test replays it).
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS="blk_request net_tx net_ctrl fuse vmm_mmio vmm_config"
targets=${FUZZ_TARGETS:-$ALL_TARGETS}
case "${1:-60}" in
--smoke) seconds=${FUZZ_SMOKE_SECONDS:-5} ;;
-h | --help)
    sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
'' | *[!0-9]*)
    echo "usage: bash scripts/fuzz.sh [SECONDS] | --smoke" >&2
    exit 2
    ;;
*) seconds=$1 ;;
esac

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "fuzz.sh: need root (or sudo) for: $*" >&2
        exit 2
    fi
}

# ---- tools ----------------------------------------------------------------------
missing=()
command -v make >/dev/null || missing+=(make)
command -v cc >/dev/null || missing+=(gcc)
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]} (to build AFL++)" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

afl_version=$(awk '/^name = "afl"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
if ! cargo afl --version >/dev/null 2>&1; then
    echo "== cargo install cargo-afl ${afl_version}" >&2
    cargo install --quiet --locked cargo-afl --version "${afl_version}"
elif ! cargo afl --version | grep -q "cargo-afl ${afl_version}"; then
    echo "fuzz.sh: note: $(cargo afl --version | head -1) installed, Cargo.lock has afl ${afl_version}" >&2
fi
# Builds AFL++ and its runtime for this rustc once; says so (and fails) if done.
if ! out=$(cargo afl config --build 2>&1); then
    if ! grep -q "already built" <<<"$out"; then
        echo "$out" >&2
        echo "fuzz.sh: cargo afl config --build failed" >&2
        exit 2
    fi
fi

# ---- build ----------------------------------------------------------------------
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/afl}"
echo "== building the fuzz targets (cargo afl build, into $CARGO_TARGET_DIR)" >&2
nice -n 10 cargo afl build --quiet -p vhostkit-fuzz --features afl --bins
bin_dir="$CARGO_TARGET_DIR/debug"

# ---- run ------------------------------------------------------------------------
export AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_FAST_CAL=1
# afl-fuzz refuses a core_pattern that pipes to a program (systemd-coredump,
# apport) unless told crashes may be reported late; this only changes how soon.
if [ "$(head -c1 /proc/sys/kernel/core_pattern 2>/dev/null)" = "|" ]; then
    export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
fi
scratch_base=/dev/shm
[ -d "$scratch_base" ] && [ -w "$scratch_base" ] || scratch_base=${TMPDIR:-/tmp}
scratch=$(mktemp -d "$scratch_base/vhostkit-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export VHOSTKIT_FUZZ_SCRATCH="$scratch"
mkdir -p fuzz/out

stat_of() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$2"; }

rows=()
crashed=0
broken=0
for t in $targets; do
    if [ ! -d "fuzz/corpus/$t" ] || [ ! -x "$bin_dir/$t" ]; then
        echo "fuzz.sh: unknown target $t (known: $ALL_TARGETS)" >&2
        exit 2
    fi
    out="fuzz/out/$t"
    rm -rf "$out" "$out.log" "$out.panics"
    echo "== $t: ${seconds} s (log: $out.log)" >&2
    if ! VHOSTKIT_FUZZ_PANIC_LOG="$PWD/$out.panics" nice -n 10 cargo afl fuzz -i "fuzz/corpus/$t" -o "$out" -V "$seconds" -t 1000 \
        "$bin_dir/$t" >"$out.log" 2>&1; then
        tail -n 20 "$out.log" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g' >&2
        echo "fuzz.sh: afl-fuzz failed on $t" >&2
        broken=1
        rows+=("$t - - - -")
        continue
    fi
    stats="$out/default/fuzzer_stats"
    execs=$(stat_of execs_done "$stats")
    crashes=$(stat_of saved_crashes "$stats")
    hangs=$(stat_of saved_hangs "$stats")
    rate=$(printf '%.0f' "$(stat_of execs_per_sec "$stats")")
    rows+=("$t $execs $rate $crashes $hangs")
    if [ "${crashes:-0}" != 0 ]; then
        crashed=1
        echo "fuzz.sh: $t crashed; inputs in $out/default/crashes/, panics in $out.panics:" >&2
        grep -E '^pid [0-9]+ thread' "$out.panics" 2>/dev/null | sed 's/^pid [0-9]* //' |
            sort | uniq -c | sort -rn | head -5 >&2 || true
    fi
    if [ "${hangs:-0}" != 0 ]; then
        echo "fuzz.sh: $t hung; inputs in $out/default/hangs/" >&2
    fi
    rm -rf "${scratch:?}/vhostkit-fuzz-$t-"*
done

printf '\n%-12s %12s %10s %8s %6s\n' target execs execs/s crashes hangs
for row in "${rows[@]}"; do
    # shellcheck disable=SC2086
    printf '%-12s %12s %10s %8s %6s\n' $row
done
if [ "$broken" != 0 ]; then
    exit 2
fi
exit "$crashed"
