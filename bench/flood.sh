#!/usr/bin/env bash
# siplb under floods: valid traffic next to junk at several times its rate, each phase on a
# fresh siplb, the same phase without junk as its reference.
#
#   udp           sipp UAC ─UDP─▶ siplb ─UDP─▶ 3 × sipp UAS          (valid only)
#   udp-junk      the same + `flood udp`: random bytes, mutated SIP, 65,000-byte datagrams,
#                 requests no route takes, forged responses, scanner OPTIONS/REGISTERs at
#                 JUNK_X × UDP_RATE datagrams/s from 4 source ports
#   streams       sipp UAC ─TCP (one connection)─▶ siplb, and `flood register`: TLS_CLIENTS
#                 TLS connections each registering every 50 ms ─▶ siplb ─UDP─▶ the same servers
#   streams-junk  the same + `flood streams`: junk streams, bodies longer than their
#                 Content-Length, slowloris headers, TLS ClientHellos never finished, on the TCP
#                 and the TLS listener ([connections] header_timeout and handshake_timeout 2 s)
#   conn-flood    the same valid traffic + `flood streams --churn`: CHURN attackers per listener
#                 opening and resetting connections in a loop from 32 addresses, far over
#                 [connections] max = CONN_MAX and max_per_ip = CONN_MAX_PER_IP
#
# For each phase: the valid calls and what failed or was retransmitted (sipp) or not answered
# 200 (`flood register`); siplb's CPU (utime+stime from /proc/PID/stat) and VmRSS (at the start
# and the most over the phase, sampled every 100 ms); GET /healthz every 100 ms: how many, how
# many not 200 within 2 s, latency p50 / p99 / max; the refusals and drops siplb counted
# (/metrics). The result is a markdown table printed and written to
# bench/out/flood-<time>/results.md (and bench/out/flood-latest.md).
#
# Usage: bench/flood.sh [--quick]
#   --quick          10 s phases, to check the setup
# Environment (defaults in brackets):
#   SIPLB_BIN        [target/release/siplb];  FLOOD_BIN [target/release/flood]; build both with
#                    `cargo build --release -p siplb -p siplb-e2e --bin siplb --bin flood`
#   SECS             seconds per phase [30];  PHASES ["udp udp-junk streams streams-junk conn-flood"]
#   UDP_RATE         valid REGISTERs/s over UDP [1000];  JUNK_X: junk datagrams per valid one [10]
#   JUNK_KINDS       the kinds of junk datagram, comma-separated (random, mutated, oversized,
#                    no_route, forged_response, scanner) [all]
#   TCP_RATE         valid REGISTERs/s over TCP (sipp -t t1) [500]
#   TLS_CLIENTS      TLS clients of `flood register` [8] (20 REGISTERs/s each)
#   STREAM_JUNK      attackers per attack and listener in streams-junk [junk 8, overlong 4,
#                    slowloris 50, hellos 50]: "JUNK OVERLONG SLOWLORIS HELLOS" ["8 4 50 50"]
#   CHURN            churn attackers per listener [600];  CONN_MAX, CONN_MAX_PER_IP [500, 20]
#   WORKERS          siplb [listen] workers [2];  LOG_LEVEL siplb [log] level [info]
# Needs: sipp (sip-tester), openssl, curl. Talks to 127.0.0.0/8 only; every sipp run is bounded
# by -m and -timeout, every flood tool run by --secs; every process it starts is stopped on exit,
# by the PID it started.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
. "$root/bench/lib.sh"
# shellcheck disable=SC2034 # read by bench/lib.sh
log_tag=flood
scenarios=$root/tests/sipp

SIPLB_BIN=${SIPLB_BIN:-$root/target/release/siplb}
FLOOD_BIN=${FLOOD_BIN:-$root/target/release/flood}
SECS=${SECS:-30}
PHASES=${PHASES:-udp udp-junk streams streams-junk conn-flood}
UDP_RATE=${UDP_RATE:-1000}
JUNK_X=${JUNK_X:-10}
JUNK_KINDS=${JUNK_KINDS:-random,mutated,oversized,no_route,forged_response,scanner}
TCP_RATE=${TCP_RATE:-500}
TLS_CLIENTS=${TLS_CLIENTS:-8}
STREAM_JUNK=${STREAM_JUNK:-8 4 50 50}
CHURN=${CHURN:-600}
CONN_MAX=${CONN_MAX:-500}
CONN_MAX_PER_IP=${CONN_MAX_PER_IP:-20}
WORKERS=${WORKERS:-2}
LOG_LEVEL=${LOG_LEVEL:-info}
BACKENDS=3

if [[ ${1:-} == --quick ]]; then
    SECS=10
elif [[ $# -gt 0 ]]; then
    usage
fi
for tool in sipp openssl curl; do
    command -v "$tool" >/dev/null || die "$tool is needed (apt-get install -y sip-tester openssl curl)"
done
[[ -x $SIPLB_BIN && -x $FLOOD_BIN ]] ||
    die "build first: cargo build --release -p siplb -p siplb-e2e --bin siplb --bin flood"

bench_setup flood-

# A CA and siplb's certificate (siplb.test, 127.0.0.1), made fresh each run (bench/lib.sh).
make_certs

start_uas_backends "$out/backend" 3600s

# siplb_config NAME: siplb's configuration for a phase, to $out/NAME.toml: UDP, TCP and TLS
# listeners on free ports (learnt from its `listening` lines), the ops endpoint, the sipp
# servers as pool `fe` for contoso.com, and the [connections] limits.
siplb_config() {
    local servers="" a
    for a in "${uas_addrs[@]}"; do servers+="{ address = \"$a\", transport = \"udp\" }, "; done
    cat >"$out/$1.toml" <<EOF
[listen]
udp = ["127.0.0.1:0"]
tcp = ["127.0.0.1:0"]
tls = [{ address = "127.0.0.2:0", cert = "$certs/lb.crt", key = "$certs/lb.key" }]
workers = $WORKERS

[ops]
listen = "127.0.0.1:0"

[log]
level = "$LOG_LEVEL"

[health]
probe = "options"
interval = "1s"
timeout = "500ms"
fall = 5
rise = 1

[connections]
max = $CONN_MAX
max_per_ip = $CONN_MAX_PER_IP
header_timeout = "2s"
handshake_timeout = "2s"

[[pool]]
name = "fe"
servers = [ ${servers%, } ]

[[route]]
domain = "contoso.com"
pool = "fe"
EOF
}

# listening NAME WHAT → the address of siplb's `listening WHAT ADDR` line.
listening() { awk -v w="$2" '$1 == "listening" && $2 == w { print $3; exit }' "$out/$1.stdout"; }

# metric NAME FILTER → the sum of the samples of /metrics (saved as $out/NAME.metrics) whose
# line starts with FILTER.
metric() { awk -v f="$2" 'index($0, f) == 1 { s += $NF } END { printf "%d", s }' "$out/$1.metrics"; }

# sipp_column FILE COLUMN → the last value of COLUMN in a sipp -stf file.
sipp_column() {
    awk -F';' -v c="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i; next }
        NF > 1 { v = $k } END { print v + 0 }' "$1"
}

rows=()
run_phase() {
    local phase=$1 pid udp tcp tls ops watch_pid calls flood_pids=() sipp_pid tls_pid
    log "phase $phase: $SECS s"
    siplb_config "$phase"
    start_siplb_process pid "$phase" 150 || die "siplb not ready (see $out/$phase.stderr)"
    udp=$(listening "$phase" udp) tcp=$(listening "$phase" tcp) tls=$(listening "$phase" tls)
    ops=$(listening "$phase" ops)
    # Every server up and in use before the phase starts.
    for _ in $(seq 1 100); do
        curl -fsS "http://$ops/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    sleep 1
    "$FLOOD_BIN" watch --pid "$pid" --ops "$ops" --secs "$SECS" >"$out/$phase.watch" 2>&1 &
    watch_pid=$!
    started_pids+=("$watch_pid")
    local rate valid_kind
    case $phase in
        udp*)
            rate=$UDP_RATE valid_kind=udp
            calls=$((UDP_RATE * SECS))
            sipp "$udp" -sf "$scenarios/uac_register.xml" -inf "$scenarios/users.csv" -i 127.0.0.1 \
                -m "$calls" -r "$UDP_RATE" -buff_size "$SIPP_BUFFER" -nostdin -timeout $((SECS + 30))s -timeout_error \
                -trace_stat -fd 1 -stf "$out/$phase.csv" >"$out/$phase.sipp.out" 2>&1 &
            ;;
        *)
            rate=$TCP_RATE valid_kind=tcp
            calls=$((TCP_RATE * SECS))
            sipp "$tcp" -sf "$scenarios/uac_register.xml" -inf "$scenarios/users.csv" -i 127.0.0.1 \
                -t t1 -m "$calls" -r "$TCP_RATE" -buff_size "$SIPP_BUFFER" -nostdin -timeout $((SECS + 30))s -timeout_error \
                -trace_stat -fd 1 -stf "$out/$phase.csv" >"$out/$phase.sipp.out" 2>&1 &
            ;;
    esac
    sipp_pid=$!
    started_pids+=("$sipp_pid")
    tls_pid=
    if [[ $valid_kind == tcp ]]; then
        "$FLOOD_BIN" register --secs "$SECS" --clients "$TLS_CLIENTS" --tls "$tls" \
            --ca "$certs/ca.crt" --name "$tls_name" >"$out/$phase.register" 2>&1 &
        tls_pid=$!
        started_pids+=("$tls_pid")
    fi
    local junk_what=""
    # The valid clients connect first, as signed-in clients are connected before a flood.
    if [[ $phase == *-* ]]; then sleep 1; fi
    case $phase in
        udp-junk)
            "$FLOOD_BIN" udp --to "$udp" --rate $((UDP_RATE * JUNK_X)) --secs "$SECS" \
                --kinds "$JUNK_KINDS" >"$out/$phase.flood" 2>&1 &
            flood_pids+=($!)
            junk_what="$((UDP_RATE * JUNK_X)) datagrams/s ($JUNK_KINDS)"
            ;;
        streams-junk)
            local j o s h
            read -r j o s h <<<"$STREAM_JUNK"
            "$FLOOD_BIN" streams --secs "$SECS" --tcp "$tcp" --tls "$tls" --ca "$certs/ca.crt" \
                --name "$tls_name" --junk "$j" --overlong "$o" --slowloris "$s" --hellos "$h" \
                >"$out/$phase.flood" 2>&1 &
            flood_pids+=($!)
            junk_what="per listener: $j junk, $o overlong, $s slowloris; $h unfinished hellos"
            ;;
        conn-flood)
            "$FLOOD_BIN" streams --secs "$SECS" --tcp "$tcp" --tls "$tls" --ca "$certs/ca.crt" \
                --name "$tls_name" --churn "$CHURN" --hold 300 \
                >"$out/$phase.flood" 2>&1 &
            flood_pids+=($!)
            junk_what="$CHURN churning attackers per listener, max $CONN_MAX, max_per_ip $CONN_MAX_PER_IP"
            ;;
    esac
    started_pids+=("${flood_pids[@]}")
    local cpu0 t0
    cpu0=$(awk '{ r = $0; sub(/^.*\) /, "", r); split(r, f, " "); print f[12] + f[13] }' "/proc/$pid/stat")
    t0=$(date +%s%N)
    wait "$sipp_pid" || true
    [[ -n $tls_pid ]] && { wait "$tls_pid" || true; }
    for p in "${flood_pids[@]}"; do wait "$p" || true; done
    local cpu1 t1
    cpu1=$(awk '{ r = $0; sub(/^.*\) /, "", r); split(r, f, " "); print f[12] + f[13] }' "/proc/$pid/stat")
    t1=$(date +%s%N)
    curl -fsS "http://$ops/metrics" >"$out/$phase.metrics" || true
    wait "$watch_pid" 2>/dev/null || true
    stop_pids 5 "$pid"

    local ok failed retrans tls_line tls_sent=0 tls_failed=0 wall cpu
    ok=$(sipp_column "$out/$phase.csv" 'SuccessfulCall(C)')
    failed=$(sipp_column "$out/$phase.csv" 'FailedCall(C)')
    retrans=$(sipp_column "$out/$phase.csv" 'Retransmissions(C)')
    if [[ -n $tls_pid ]]; then
        tls_line=$(grep '^register' "$out/$phase.register" || echo "register sent 0 ok 0 failed 0")
        tls_sent=$(awk '{ print $3 }' <<<"$tls_line")
        tls_failed=$(awk '{ print $7 }' <<<"$tls_line")
    fi
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
    cpu=$(awk -v a="$cpu0" -v b="$cpu1" -v t="$clk_tck" 'BEGIN { printf "%.2f", (b - a) / t }')
    local w
    w=$(grep '^watch rss' "$out/$phase.watch" || echo "")
    local rss0 rssmax polls not200 p50 p99 pmax
    read -r rss0 rssmax polls not200 p50 p99 pmax < <(awk '{ print $3, $5, $7, $9, $11, $13, $15 }' <<<"$w")
    local lost_pct
    lost_pct=$(awk -v c="$calls" -v f="$failed" -v r="$retrans" -v ts="$tls_sent" -v tf="$tls_failed" \
        'BEGIN { printf "%.3f", 100 * (f + r + tf) / (c + ts) }')
    local refusals drops
    refusals=$(metric "$phase" 'siplb_connection_refusals_total')
    drops=$(metric "$phase" 'siplb_drops_total')
    local flood_line
    flood_line=$(grep -E '^(udp|streams) ' "$out/$phase.flood" 2>/dev/null | cut -c1-400 || true)
    rows+=("| $phase | $valid_kind $rate/s: $ok ok, $failed failed, $retrans retr.$( [[ -n $tls_pid ]] && echo "; tls $tls_sent sent, $tls_failed failed") | $lost_pct | ${junk_what:--} | $cpu s in $wall s ($(awk -v c="$cpu" -v w="$wall" 'BEGIN { printf "%.0f", 100 * c / w }')%) | $rss0 → $rssmax | $polls / $not200 | $p50 / $p99 / $pmax | $drops | $refusals |")
    [[ -n $flood_line ]] && log "$phase: $flood_line"
    log "$phase: ${rows[-1]}"
}

for phase in $PHASES; do run_phase "$phase"; done

{
    echo "# siplb under floods ($stamp)"
    echo
    echo "siplb $(source_commit), $(machine_description), $(sipp_version); $SECS s per phase;"
    echo "workers $WORKERS, [log] level $LOG_LEVEL; load average after: $(load_average). Raw output: bench/out/flood-$stamp/."
    echo
    echo "| phase | valid traffic | lost % | junk | siplb CPU | VmRSS KiB start → max | /healthz polls / not 200 | /healthz ms p50 / p99 / max | drops | connection refusals |"
    echo "| --- | --- | --: | --- | --: | --: | --: | --: | --: | --: |"
    printf '%s\n' "${rows[@]}"
} | tee "$report"
cp "$report" "$root/bench/out/flood-latest.md"
