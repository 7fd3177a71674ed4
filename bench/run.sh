#!/usr/bin/env bash
# siplb benchmark: REGISTER + 200 OK through a proxy on loopback, driven by sipp.
#
#   sipp UAC ──▶ proxy ──▶ 4 × sipp UAS          (proxy = siplb, or Kamailio 5.6 + dispatcher)
#   sipp UAC ──────────▶ 4 × sipp UAS            ("direct": the baseline, no proxy)
#
# Kamailio runs as in production (bench/kamailio/kamailio.cfg, bench/lib.sh spawn_kamailio):
# TLSF memory managers, children = siplb's workers, probing its backends as siplb does (OPTIONS
# every second); the script reads these settings back from the running Kamailio with kamcmd
# and stops if one did not take effect.
#
# It measures, in one run so that the noise of a shared machine hits all of them alike:
#   1. CPU per forwarded pair: the proxy's utime+stime (/proc/PID/stat, summed over its
#      processes) over a fixed-count run at a fixed rate, divided by the successful calls
#      (one call = one REGISTER forwarded + one 200 OK forwarded back). At each of
#      FIXED_RATES, alternating runs of siplb and Kamailio, REPEAT times each, and the ratio
#      siplb / Kamailio.
#   2. The highest rate sipp sustains through each target: rates stepped up, a fixed number
#      of calls per step, until a step loses pairs (failed calls + retransmissions ≥ 0.1% of
#      the calls) or sipp starts the calls at < 90% of the asked rate.
# The result is a markdown table printed and written to bench/out/ (gitignored).
#
# Usage: bench/run.sh [--quick]
#   --quick                    a short run (fewer calls, two rate steps) to check the setup
# Environment (defaults in brackets):
#   SIPLB_BIN                  proxy binary [target/release/siplb]; build it with
#                              `cargo build --release -p siplb`
#   BENCH_TARGETS              which targets to measure ["direct siplb kamailio"]
#   WORKERS                    siplb [listen] workers = Kamailio children (-n) [2]
#   FIXED_RATES, FIXED_CALLS   the CPU-per-pair runs [2000 10000 calls/s, 60000 calls per run]
#   REPEAT                     fixed-rate runs per proxy and rate, alternating [2]
#   STEP_RATES, STEP_CALLS     the rate steps [2000 4000 8000 12000 16000 20000 24000], [20000]
#                              (FIXED_RATES or STEP_RATES set empty: that part is skipped)
#   BUDGET_US                  siplb's goal: CPU per pair at the first fixed rate [30]
#   KAMAILIO_SHM_MB, KAMAILIO_PKG_MB   Kamailio's -m and -M [256, 16] (bench/lib.sh)
#   KAMAILIO_MM                Kamailio's memory manager [tlsf]; qm or fm only to measure the choice
# Needs: sipp (apt-get install -y sip-tester), kamailio (apt-get install -y kamailio) unless
# BENCH_TARGETS leaves it out. Talks to 127.0.0.1 only; every sipp run is bounded by -m and
# -timeout; every process it starts is stopped on exit, by the PID it started.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
. "$root/bench/lib.sh"
# shellcheck disable=SC2034 # read by bench/lib.sh
log_tag=bench
scenarios=$root/tests/sipp
users=$scenarios/users.csv

SIPLB_BIN=${SIPLB_BIN:-$root/target/release/siplb}
BENCH_TARGETS=${BENCH_TARGETS:-direct siplb kamailio}
WORKERS=${WORKERS:-2}
FIXED_RATES=${FIXED_RATES-2000 10000}
FIXED_CALLS=${FIXED_CALLS:-60000}
REPEAT=${REPEAT:-2}
STEP_RATES=${STEP_RATES-2000 4000 8000 12000 16000 20000 24000}
STEP_CALLS=${STEP_CALLS:-20000}
BUDGET_US=${BUDGET_US:-30}
BACKENDS=4
MAX_LOST_PCT=0.1
MIN_ACHIEVED_PCT=90

if [[ ${1:-} == --quick ]]; then
    FIXED_CALLS=10000 REPEAT=1 STEP_RATES="2000 4000" STEP_CALLS=5000
elif [[ $# -gt 0 ]]; then
    usage
fi

bench_setup ""
kamailio_pid=

has_target() { [[ " $BENCH_TARGETS " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------------------------
# CPU accounting, from /proc (no extra tools needed).

now_ns() { date +%s%N; }

# ---------------------------------------------------------------------------------------------
# sipp

uas_addrs=()
start_backends() {
    local i
    start_uas_backends "$out/backend" 3600s
    for i in "${!uas_addrs[@]}"; do
        wait_answering "${uas_addrs[$i]}" "backend $i" 1 ||
            die "sipp backend $i at ${uas_addrs[$i]} does not answer (see $out/backend$i.out)"
    done
    # The baseline's injection file: the same users, each sent straight to a backend, in turn.
    awk -F';' -v backends="${uas_addrs[*]}" '
        BEGIN { n = split(backends, b, " ") }
        NR == 1 { print; next }
        { split(b[(NR - 2) % n + 1], hp, ":"); print $1 ";" $2 ";" hp[1] ";" hp[2] ";" }' \
        "$users" >"$out/users-direct.csv"
}

# One sipp client run: run_uac NAME ADDR RATE CALLS [SCENARIO INJECTION_FILE]
# → "successful failed retransmissions wall_s sending_s rc" on stdout, where sending_s is how
# long sipp took to start all CALLS calls (from its statistics, dumped every 200 ms, with the
# moment the last call started interpolated): CALLS / sending_s is the rate sipp achieved,
# whatever the wait for the last answers. sipp's statistics and screen go to $out/NAME.csv
# and $out/NAME.out.
run_uac() {
    local name=$1 addr=$2 rate=$3 calls=$4 port limit t0 t1 rc=0
    local scenario=${5:-$scenarios/uac_register.xml} inf=${6:-$users}
    free_udp_port port
    limit=$((calls / rate + 30))
    t0=$(now_ns)
    timeout $((limit + 30)) sipp "$addr" -sf "$scenario" -inf "$inf" \
        -i 127.0.0.1 -p "$port" -m "$calls" -r "$rate" -nostdin \
        -timeout "${limit}s" -timeout_error -trace_stat -stf "$out/$name.csv" -fd 200ms \
        >"$out/$name.out" 2>&1 || rc=$?
    t1=$(now_ns)
    if [[ ! -s $out/$name.csv ]]; then
        awk -v n="$calls" -v ns=$((t1 - t0)) -v rc=$rc 'BEGIN { printf "0 %d 0 %.3f %.3f %d\n", n, ns / 1e9, ns / 1e9, rc }'
        return 0
    fi
    awk -F';' -v wall_ns=$((t1 - t0)) -v rc=$rc -v calls="$calls" '
        function epoch(field, parts) { split(field, parts, "\t"); return parts[3] + 0 }
        NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        NF > 1 {
            last = $0
            if (start == "") { start = epoch($col["StartTime"]); prev_t = start; prev_created = 0 }
            created = $col["TotalCallCreated"] + 0; t = epoch($col["CurrentTime"])
            if (sent == "" && created >= calls) {
                sent = (created > prev_created) ? prev_t + (calls - prev_created) * (t - prev_t) / (created - prev_created) : t
            }
            prev_created = created; prev_t = t
        }
        END {
            split(last, v, ";")
            sending = (sent == "") ? wall_ns / 1e9 : sent - start
            printf "%d %d %d %.3f %.3f %d\n", v[col["SuccessfulCall(C)"]], v[col["FailedCall(C)"]],
                   v[col["Retransmissions(C)"]], wall_ns / 1e9, sending, rc }' "$out/$name.csv"
}

# wait_answering ADDR WHAT [CALLS]: succeeds once a run of CALLS registrations (at 200/s)
# through ADDR has no failure; tries for about 20 runs.
wait_answering() {
    local addr=$1 what=$2 calls=${3:-1} i ok failed
    for ((i = 0; i < 20; i++)); do
        read -r ok failed _ <<<"$(run_uac "warmup-${what// /-}-$i" "$addr" 200 "$calls")"
        if [[ $ok -eq $calls && $failed -eq 0 ]]; then return 0; fi
        sleep 0.5
    done
    return 1
}

# ---------------------------------------------------------------------------------------------
# The proxies

siplb_pid=
siplb_addr=
siplb_rcvbuf=
start_siplb() {
    local port cfg servers="" a
    [[ -x $SIPLB_BIN ]] || die "no siplb binary at $SIPLB_BIN: run \`cargo build --release -p siplb\` or set SIPLB_BIN"
    free_udp_port port
    cfg=$out/siplb.toml
    for a in "${uas_addrs[@]}"; do
        servers+="  { address = \"$a\", transport = \"udp\" },"$'\n'
    done
    # Health: siplb's defaults, and what Kamailio's dispatcher is given in kamailio.cfg.
    cat >"$cfg" <<EOF
# written by bench/run.sh
[listen]
udp = ["127.0.0.1:$port"]
workers = $WORKERS

[health]
probe = "options"
interval = "1s"
timeout = "500ms"
fall = 2
rise = 2

[[pool]]
name = "fe"
role = "front-end"
servers = [
$servers]

[[route]]
domain = "contoso.com"
pool = "fe"
key = "to-aor"
EOF
    start_siplb_process siplb_pid siplb 150 ||
        die "siplb did not print ready within 15 s (see $out/siplb.stderr)"
    siplb_addr=$(awk '$1 == "listening" && $2 == "udp" { print $3; exit }' "$out/siplb.stdout")
    siplb_addr=${siplb_addr:-127.0.0.1:$port}
    siplb_rcvbuf=$(udp_receive_buffer "${siplb_addr##*:}")
    # Health starts from probes: a warm-up with no failure means every backend is in use.
    wait_answering "$siplb_addr" "siplb warm-up" 1000 ||
        die "siplb at $siplb_addr does not forward REGISTERs (see $out/siplb.stderr)"
}

kamailio_addr=
start_kamailio() {
    local port
    command -v kamailio >/dev/null || die "kamailio not found: apt-get install -y kamailio (or BENCH_TARGETS without kamailio)"
    free_udp_port port
    spawn_kamailio kamailio_pid "$out/dispatcher.list" kamailio "$port"
    kamailio_pids+=("$kamailio_pid")
    kamailio_addr=127.0.0.1:$port
    # Up to 10 s for its control socket; not there yet is no error: the warm-up tells.
    wait_started "$kamailio_pid" 100 kamailio "$out/kamailio.out" test -S "$out/kamailio.ctl" || true
    wait_answering "$kamailio_addr" "kamailio warm-up" 1000 ||
        die "kamailio at $kamailio_addr does not forward REGISTERs (see $out/kamailio.out)"
    kamailio_info=$(kamailio_settings kamailio "$port")
}

# ---------------------------------------------------------------------------------------------
# Measurements

# measure TARGET NAME RATE CALLS
# → "successful failed retransmissions wall_s sending_s rc cpu_s us_per_pair"
measure() {
    local target=$1 name=$2 rate=$3 calls=$4 pid c0=0 c1=0 res
    pid=$(target_pid "$target")
    [[ -n $pid ]] && c0=$(cpu_ticks "$pid")
    if [[ $target == direct ]]; then
        res=$(run_uac "$name" "${uas_addrs[0]}" "$rate" "$calls" \
            "$root/bench/sipp/uac_register_direct.xml" "$out/users-direct.csv")
    else
        res=$(run_uac "$name" "$(target_addr "$target")" "$rate" "$calls")
    fi
    [[ -n $pid ]] && c1=$(cpu_ticks "$pid")
    awk -v r="$res" -v d=$((c1 - c0)) -v hz="$clk_tck" -v has_pid="${pid:+1}" 'BEGIN {
        split(r, v, " "); cpu = d / hz
        per = (has_pid && v[1] > 0) ? sprintf("%.1f", cpu * 1e6 / v[1]) : "-"
        printf "%s %.2f %s\n", r, cpu, per }'
}

target_addr() {
    case $1 in
    siplb) echo "$siplb_addr" ;;
    kamailio) echo "$kamailio_addr" ;;
    esac
}
target_pid() {
    case $1 in
    siplb) echo "$siplb_pid" ;;
    kamailio) echo "$kamailio_pid" ;;
    *) echo "" ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# Run

command -v sipp >/dev/null || die "sipp not found: apt-get install -y sip-tester"
machine=$(machine_description)
memory="$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
versions=$(sipp_version)
if has_target kamailio; then versions+=", $(kamailio_version)"; fi
load_at_start=$(load_average)
commit=$(source_commit)
log "machine: $machine, $memory, load average $load_at_start"
log "output in $out"

start_backends
log "backends: ${uas_addrs[*]}"
if has_target siplb; then start_siplb; log "siplb $siplb_addr (pid $siplb_pid, $WORKERS workers)"; fi
kamailio_info=
if has_target kamailio; then
    start_kamailio
    log "kamailio $kamailio_addr (pid $kamailio_pid): $kamailio_info"
fi

proxies=()
for t in siplb kamailio; do has_target "$t" && proxies+=("$t"); done

# 0. What the proxies burn with no traffic (timers, siplb's probes), over one 10 s window.
declare -A idle_ms=() idle0=()
if [[ ${#proxies[@]} -gt 0 ]]; then
    log "idle CPU: 10 s without traffic"
    for t in "${proxies[@]}"; do idle0[$t]=$(cpu_ticks "$(target_pid "$t")"); done
    sleep 10
    for t in "${proxies[@]}"; do
        idle_ms[$t]=$(awk -v d=$(($(cpu_ticks "$(target_pid "$t")") - ${idle0[$t]})) -v hz="$clk_tck" \
            'BEGIN { printf "%.0f", d * 1000 / hz / 10 }')
        log "  $t: ${idle_ms[$t]} ms CPU per second"
    done
fi

# 1. CPU per pair at fixed rates, proxies alternating.
declare -A cpu_sum=() ok_sum=() per_pair=() fixed_lossy=()
fixed_rows=()
for rate in $FIXED_RATES; do
    for ((run = 1; run <= REPEAT; run++)); do
        for t in "${proxies[@]}"; do
            log "fixed rate: $t run $run: $FIXED_CALLS calls at $rate/s"
            read -r ok failed retrans wall _ _ cpu per <<<"$(measure "$t" "fixed-$t-$rate-$run" "$rate" "$FIXED_CALLS")"
            load=$(cut -d' ' -f1 /proc/loadavg)
            log "  $ok ok, $failed failed, $retrans retransmissions, ${wall}s, CPU ${cpu}s, $per µs/pair, load $load"
            fixed_rows+=("| $rate | $t | $run | $ok | $failed | $retrans | $wall | $cpu | $per | $load |")
            if awk -v f="$failed" -v re="$retrans" -v n="$FIXED_CALLS" -v maxl="$MAX_LOST_PCT" \
                'BEGIN { exit !((f + re) * 100 >= maxl * n) }'; then
                fixed_lossy[$rate]+="$t run $run, "
            fi
            cpu_sum[$t-$rate]=$(awk -v a="${cpu_sum[$t-$rate]:-0}" -v b="$cpu" 'BEGIN { print a + b }')
            ok_sum[$t-$rate]=$((${ok_sum[$t-$rate]:-0} + ok))
        done
    done
    for t in "${proxies[@]}"; do
        per_pair[$t-$rate]=$(awk -v c="${cpu_sum[$t-$rate]}" -v n="${ok_sum[$t-$rate]}" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / n; else print "-" }')
    done
done

# 2. Highest sustained rate per target. Each rate is tried on every target still in the race
# before the next rate, so a noisy moment of the machine falls on neighbouring rows.
declare -A best=() out_of_race=()
step_rows=()
for t in $BENCH_TARGETS; do best[$t]=none; done
for rate in $STEP_RATES; do
    for t in $BENCH_TARGETS; do
        [[ -z ${out_of_race[$t]:-} ]] || continue
        log "rate step: $t at $rate/s, $STEP_CALLS calls"
        read -r ok failed retrans wall sending _ cpu per <<<"$(measure "$t" "step-$t-$rate" "$rate" "$STEP_CALLS")"
        achieved=$(awk -v n="$STEP_CALLS" -v s="$sending" 'BEGIN { printf "%.0f", (s > 0) ? n / s : 0 }')
        verdict=$(awk -v ok="$ok" -v f="$failed" -v re="$retrans" -v n="$STEP_CALLS" -v a="$achieved" \
            -v r="$rate" -v maxl="$MAX_LOST_PCT" -v mina="$MIN_ACHIEVED_PCT" 'BEGIN {
                if (ok + f < n) print "unfinished"
                else if ((f + re) * 100 >= maxl * n) print "lost"
                else if (a * 100 < mina * r) print "rate-not-reached"
                else print "sustained" }')
        log "  $ok ok, $failed failed, $retrans retransmissions, sent at ${achieved}/s, ${wall}s, $per µs/pair: $verdict"
        step_rows+=("| $rate | $t | $achieved | $ok | $failed | $retrans | $per | $verdict |")
        if [[ $verdict == sustained ]]; then best[$t]=$rate; else out_of_race[$t]=1; fi
    done
done

# ---------------------------------------------------------------------------------------------
# Report

# ratio RATE → siplb / Kamailio CPU per pair at the fixed rate RATE, or "-"
ratio() {
    awk -v s="${per_pair[siplb-$1]:--}" -v k="${per_pair[kamailio-$1]:--}" \
        'BEGIN { if (s != "-" && k != "-" && k > 0) printf "%.2f", s / k; else print "-" }'
}
first_rate=${FIXED_RATES%% *}
budget="not measured"
if [[ ${per_pair[siplb-$first_rate]:--} != - ]]; then
    budget=$(awk -v s="${per_pair[siplb-$first_rate]}" -v b="$BUDGET_US" 'BEGIN { print (s <= b) ? "met" : "NOT MET" }')
fi
kamailio_memory=
if [[ -n $kamailio_pid ]]; then kamailio_memory=$(kamailio_peak_memory); fi

{
    echo "# siplb benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- machine: $machine, $memory; load average at start $load_at_start, at end $(load_average)"
    echo "- peers: ${versions}; siplb at commit $commit ($SIPLB_BIN)"
    echo "- topology: sipp UAC → proxy → $BACKENDS sipp UAS on 127.0.0.1; siplb workers = Kamailio children = $WORKERS;"
    echo "  direct = the same client and backends with no proxy (each REGISTER sent to a backend in turn)"
    echo "- scenario: REGISTER for users of tests/sipp/users.csv, 200 OK back (tests/sipp/*.xml)"
    echo "- probing, both proxies: OPTIONS to every backend every 1 s, 500 ms timeout, fall 2, rise 2"
    if [[ -n $siplb_pid ]]; then
        echo "- siplb: bench/out/$stamp/siplb.toml (written by bench/run.sh); UDP receive buffer ${siplb_rcvbuf:-?} bytes (ss -m)"
    fi
    if [[ -n $kamailio_info ]]; then
        echo "- Kamailio: \`-x $KAMAILIO_MM -X $KAMAILIO_MM -m $KAMAILIO_SHM_MB -M $KAMAILIO_PKG_MB -n $WORKERS\`, bench/kamailio/kamailio.cfg; read back"
        echo "  with kamcmd after the warm-up: $kamailio_info; at the end: $kamailio_memory"
    fi
    echo
    echo "## CPU per forwarded REGISTER + 200 OK ($FIXED_CALLS calls per run)"
    echo
    echo "| rate /s | proxy | run | successful | failed | retransmissions | wall s | proxy CPU s | µs CPU / pair | load average (1 min) after |"
    echo "| --: | --- | --: | --: | --: | --: | --: | --: | --: | --: |"
    printf '%s\n' "${fixed_rows[@]}"
    echo
    for rate in $FIXED_RATES; do
        line="- at $rate/s:"
        for t in "${proxies[@]}"; do line+=" **$t ${per_pair[$t-$rate]} µs** CPU per pair;"; done
        echo "$line **siplb / Kamailio $(ratio "$rate")**"
        if [[ -n ${fixed_lossy[$rate]:-} ]]; then
            echo "  - NOT COMPARABLE: ${fixed_lossy[$rate]%, } lost pairs (failed calls + retransmissions ≥ $MAX_LOST_PCT% of"
            echo "    the calls): the proxy or the machine did not carry the rate, and the CPU figure includes the"
            echo "    work of the retransmissions"
        fi
    done
    for t in "${proxies[@]}"; do echo "- idle, $t uses ${idle_ms[$t]} ms CPU per second (timers, probes)"; done
    echo "- siplb's goal, ≤ $BUDGET_US µs per pair at $first_rate/s: $budget"
    echo
    echo "## Highest sustained rate ($STEP_CALLS calls per step)"
    echo
    echo "Sustained: failed calls + retransmitted REGISTERs < $MAX_LOST_PCT% of the calls (a retransmission"
    echo "means a REGISTER or its 200 was lost, or took over 500 ms), and sipp started the calls at"
    echo "≥ $MIN_ACHIEVED_PCT% of the asked rate."
    echo
    echo "| asked /s | target | sent /s | successful | failed | retransmissions | µs CPU / pair | verdict |"
    echo "| --: | --- | --: | --: | --: | --: | --: | --- |"
    printf '%s\n' "${step_rows[@]}"
    echo
    for t in $BENCH_TARGETS; do echo "- $t: highest sustained step **${best[$t]}/s**"; done
    if has_target direct && [[ ${best[direct]} == none ]]; then
        echo "- the baseline (no proxy) lost pairs at the first step: the machine could not carry this load during the run"
    fi
    if has_target direct && [[ ${best[direct]} != none ]]; then
        for t in "${proxies[@]}"; do
            if [[ ${best[$t]} == "${best[direct]}" ]]; then
                echo "- $t sustained every rate the baseline did: its limit here is sipp's and the machine's, not its own"
            fi
        done
    fi
    echo
    echo "CPU is utime+stime from /proc/PID/stat (all processes of the proxy) at ${clk_tck} Hz over"
    echo "each sipp run, divided by its successful calls. The machine is shared: compare the rows"
    echo "of one run, not runs of different days. Raw sipp statistics: bench/out/$stamp/."
} >"$report"
cp "$report" "$root/bench/out/latest.md"
cat "$report"
