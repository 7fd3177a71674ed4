#!/usr/bin/env bash
# Instructions the sans-io core executes per forwarded REGISTER + 200 OK pair, counted by
# valgrind's callgrind: a count, not a duration, so the figure is the same on a busy machine.
#
# It runs the example `hotpath` (proxy/examples/hotpath.rs: a REGISTER through the core and its
# 200 OK back, N times, no sockets) twice under callgrind, with N = N_SMALL and N = N_LARGE,
# reads each run's total instruction count (Ir) and prints
#
#     instructions per pair = (Ir(N_LARGE) − Ir(N_SMALL)) / (N_LARGE − N_SMALL)
#
# The difference removes what both runs do once (start-up, parsing the configuration,
# building the routing table, preparing the messages), so what is left is the loop alone.
# It relies only on the example's command line, `hotpath [N]`.
#
# Usage: bench/callgrind.sh
# Environment (defaults in brackets):
#   SIPLB_EXAMPLE   the hotpath binary; when unset, built with
#                   `cargo build --release -p siplb --example hotpath` [target/release/examples/hotpath]
#   N_SMALL, N_LARGE   the two loop counts [20000, 120000]
# Needs valgrind (apt-get install -y valgrind). Writes the callgrind files and the result to
# bench/out/callgrind-<UTC time>/ (and bench/out/callgrind-latest.md).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
N_SMALL=${N_SMALL:-20000}
N_LARGE=${N_LARGE:-120000}

log() { printf '[callgrind %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

[[ $# -eq 0 ]] || {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
}
command -v valgrind >/dev/null || die "valgrind not found: apt-get install -y valgrind"
[[ $N_LARGE -gt $N_SMALL ]] || die "N_LARGE ($N_LARGE) must be larger than N_SMALL ($N_SMALL)"

if [[ -n ${SIPLB_EXAMPLE:-} ]]; then
    example=$SIPLB_EXAMPLE
else
    log "building: cargo build --release -p siplb --example hotpath"
    cargo build --release -p siplb --example hotpath >&2
    example=${CARGO_TARGET_DIR:-$root/target}/release/examples/hotpath
fi
[[ -x $example ]] || die "no hotpath binary at $example"

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=$root/bench/out/callgrind-$stamp
mkdir -p "$out"

# total_ir FILE → the total instruction count of a callgrind output file: its "totals:" line
# (or, in files without one, "summary:"), whose first number is Ir, the only event collected.
total_ir() {
    awk '$1 == "totals:" { t = $2 } $1 == "summary:" { s = $2 }
         END { if (t != "") print t; else if (s != "") print s; else exit 1 }' "$1"
}

declare -A ir=()
for n in "$N_SMALL" "$N_LARGE"; do
    log "valgrind --tool=callgrind $example $n"
    valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out.$n" "$example" "$n" \
        >"$out/hotpath-$n.stdout" 2>"$out/valgrind-$n.stderr" ||
        die "the run with N=$n failed (see $out/valgrind-$n.stderr)"
    ir[$n]=$(total_ir "$out/callgrind.out.$n") || die "no total in $out/callgrind.out.$n"
    log "  N=$n: ${ir[$n]} instructions"
done

per_pair=$(awk -v a="${ir[$N_LARGE]}" -v b="${ir[$N_SMALL]}" -v n=$((N_LARGE - N_SMALL)) \
    'BEGIN { printf "%.0f", (a - b) / n }')
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$root" status --porcelain -- proxy 2>/dev/null | head -n 1)
{
    echo "# Core instruction count, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- siplb at commit $commit${dirty:+ (with uncommitted changes under proxy/)}; $example"
    echo "- $(valgrind --version), callgrind, instructions (Ir) of the whole process"
    echo
    echo "| N pairs | total instructions |"
    echo "| --: | --: |"
    echo "| $N_SMALL | ${ir[$N_SMALL]} |"
    echo "| $N_LARGE | ${ir[$N_LARGE]} |"
    echo
    echo "**$per_pair instructions per REGISTER + 200 OK pair** = (Ir($N_LARGE) − Ir($N_SMALL)) / $((N_LARGE - N_SMALL))"
} >"$out/result.md"
cp "$out/result.md" "$root/bench/out/callgrind-latest.md"
cat "$out/result.md"
