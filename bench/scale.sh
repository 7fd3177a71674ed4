#!/usr/bin/env bash
# How siplb's cost grows with the work: servers per pool, routes, table size, /metrics.
#
#   1. core: instructions per REGISTER + 200 OK pair of the sans-io core under callgrind
#      (proxy/examples/scale.rs `pairs`, as bench/callgrind.sh counts them) with 2, 20 and 200
#      servers in the pool (one route) and with 1, 10 and 100 routes (2 servers; the request
#      matches the last route, the worst case). BASE_EXAMPLE: a second build of the example
#      measured the same way, for a before/after in one run.
#   2. tables: time to build a 10,000-server routing table (1 pool of 10,000; 100 pools of 100)
#      and the heap it holds (`scale build`).
#   3. process: siplb's CPU per pair under sipp at RATE/s with 2, 20 and 200 servers per pool
#      (three siplb processes, runs alternating, REPEAT each), the servers being one responder
#      process with a UDP socket per server (bench/scale_responder.py).
#   4. metrics: a siplb with 1,000 servers (10 pools of 100 beside the pool sipp's REGISTERs
#      go to): /metrics size and scrape time (curl, SCRAPES times), siplb's CPU per scrape,
#      and the CPU per pair and lost pairs at RATE/s with a scrape every 100 ms against none.
#   5. reload: the same siplb reloads (SIGHUP) to 10,000 servers (100 pools of 100, probed
#      every 30 s) under 2,000 REGISTER/s: time to the reload's answer, table build times
#      (siplb_table_build_seconds), the slowest /healthz during it, lost pairs, RSS before/after.
#
# Usage: bench/scale.sh
# Environment (defaults in brackets):
#   SIPLB_BIN      [target/release/siplb];  SCALE_EXAMPLE  [target/release/examples/scale]
#                  (build both: cargo build --release -p siplb --bin siplb --example scale)
#   BASE_EXAMPLE   another build of the scale example to count too [none]
#   PARTS          which parts ["core tables process metrics reload"]
#   RATE, CALLS, REPEAT   the sipp runs [5000/s, 30000 calls, 2]; SCRAPES [200]
# Needs valgrind, sipp, curl, python3. Talks to 127.0.0.1 only; every sipp run is bounded by
# -m and -timeout, the responder by its lifetime; it stops only the processes it started.
# Writes bench/out/scale-<UTC time>/ and bench/out/scale-latest.md.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
. "$root/bench/lib.sh"
# shellcheck disable=SC2034 # read by bench/lib.sh
log_tag=scale
[[ $# -eq 0 ]] || usage

SIPLB_BIN=${SIPLB_BIN:-$root/target/release/siplb}
SCALE_EXAMPLE=${SCALE_EXAMPLE:-$root/target/release/examples/scale}
BASE_EXAMPLE=${BASE_EXAMPLE:-}
PARTS=${PARTS:-core tables process metrics reload}
RATE=${RATE:-5000}
CALLS=${CALLS:-30000}
REPEAT=${REPEAT:-2}
SCRAPES=${SCRAPES:-200}
WORKERS=${WORKERS:-2}
users=$root/tests/sipp/users.csv
clk_tck=$(getconf CLK_TCK)

bench_setup scale-
has_part() { [[ " $PARTS " == *" $1 "* ]]; }

for tool in valgrind sipp curl python3; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y valgrind sip-tester curl python3)"
done
[[ -x $SCALE_EXAMPLE ]] || die "no $SCALE_EXAMPLE: cargo build --release -p siplb --bin siplb --example scale"
[[ -x $SIPLB_BIN ]] || die "no $SIPLB_BIN: cargo build --release -p siplb --bin siplb --example scale"

# ---------------------------------------------------------------------------------------------
# Configurations

# gen_config FILE SERVERS ROUTES POOLS PORTS_FILE [EXTRA_POOLS EXTRA_SERVERS EXTRA_PORTS INTERVAL]:
# pool fe with SERVERS servers (addresses 127.0.0.1:PORT from PORTS_FILE, or made-up ones when
# PORTS_FILE is -), ROUTES routes of which only the last matches REGISTER for contoso.com, and
# EXTRA_POOLS pools of EXTRA_SERVERS servers more (ports from EXTRA_PORTS, probed every
# INTERVAL), which no route names.
gen_config() {
    local file=$1 servers=$2 routes=$3 ports=$4 extra_pools=${5:-0} extra_servers=${6:-0}
    local extra_ports=${7:--} interval=${8:-1s} listen=${9:-127.0.0.1:0}
    python3 - "$file" "$servers" "$routes" "$ports" "$extra_pools" "$extra_servers" \
        "$extra_ports" "$interval" "$listen" "$WORKERS" <<'EOF'
import sys
file, servers, routes, ports, xp, xs, xports, interval, listen, workers = sys.argv[1:]
servers, routes, xp, xs = int(servers), int(routes), int(xp), int(xs)
def addrs(path, n, base):
    if path == "-":
        return [f"127.{1 + (base + i) // 65536}.{(base + i) // 256 % 256}.{(base + i) % 256}:5060" for i in range(n)]
    got = [l.strip() for l in open(path) if l.strip().isdigit()]
    assert len(got) >= n, f"{path}: {len(got)} ports, {n} needed"
    return [f"127.0.0.1:{p}" for p in got[:n]]
out = [f'# written by bench/scale.sh\n[listen]\nudp = ["{listen}"]\nworkers = {workers}\n[ops]\nlisten = "127.0.0.1:0"\n',
       '[health]\nprobe = "options"\ninterval = "1s"\ntimeout = "500ms"\nfall = 2\nrise = 2\n']
out.append('[[pool]]\nname = "fe"\nservers = [\n' + "".join(f'  {{ address = "{a}" }},\n' for a in addrs(ports, servers, 0)) + "]\n")
extra = addrs(xports, xp * xs, 100000)
for p in range(xp):
    out.append(f'[[pool]]\nname = "x{p}"\nhealth = {{ interval = "{interval}" }}\nservers = [\n'
               + "".join(f'  {{ address = "{a}" }},\n' for a in extra[p * xs:(p + 1) * xs]) + "]\n")
for r in range(1, routes):
    out.append(f'[[route]]\nmethods = ["REGISTER", "INVITE"]\ndomain = "d{r}.example"\npool = "fe"\n')
out.append('[[route]]\nmethods = ["REGISTER", "INVITE"]\ndomain = "contoso.com"\npool = "fe"\nkey = "to-aor"\n')
open(file, "w").write("".join(out))
EOF
}

# ---------------------------------------------------------------------------------------------
# Processes

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# start_responder NAME COUNT SECONDS: COUNT servers in one process; their ports in $out/NAME.ports.
start_responder() {
    local name=$1 count=$2 secs=$3 pid
    (
        ulimit -n $((count + 64))
        exec python3 "$root/bench/scale_responder.py" "$count" "$out/$name.ports" "$secs"
    ) >"$out/$name.log" 2>&1 &
    pid=$!
    started_pids+=("$pid")
    wait_started "$pid" 600 responder "$out/$name.log" grep -qsx ready "$out/$name.ports" ||
        die "the responder $name did not start (see $out/$name.log)"
}

# siplb_addr NAME → the UDP address siplb NAME listens on (its `listening udp ADDR` line).
siplb_addr() { awk '$1 == "listening" && $2 == "udp" { print $3; exit }' "$out/$1.stdout"; }
# siplb_ops NAME → its ops address.
siplb_ops() { awk '$1 == "listening" && $2 == "ops" { print $3; exit }' "$out/$1.stdout"; }

# run_uac NAME ADDR RATE CALLS → "successful failed retransmissions"
run_uac() {
    local name=$1 addr=$2 rate=$3 calls=$4 port limit
    free_udp_port port
    limit=$((calls / rate + 30))
    timeout $((limit + 30)) sipp "$addr" -sf "$root/tests/sipp/uac_register.xml" -inf "$users" \
        -i 127.0.0.1 -p "$port" -m "$calls" -r "$rate" -nostdin -timeout "${limit}s" \
        -timeout_error -trace_stat -stf "$out/$name.csv" -fd 1 >"$out/$name.out" 2>&1 || true
    awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next } NF > 1 { l = $0 }
        END { split(l, v, ";"); printf "%d %d %d\n", v[c["SuccessfulCall(C)"]], v[c["FailedCall(C)"]], v[c["Retransmissions(C)"]] }' \
        "$out/$name.csv" 2>/dev/null || echo "0 $calls 0"
}

# measure PID NAME ADDR RATE CALLS → "successful failed retransmissions us_per_pair"
measure() {
    local pid=$1 c0 c1 res
    c0=$(cpu_ticks "$pid")
    res=$(run_uac "$2" "$3" "$4" "$5")
    c1=$(cpu_ticks "$pid")
    awk -v r="$res" -v d=$((c1 - c0)) -v hz="$clk_tck" 'BEGIN { split(r, v, " ")
        printf "%s %.1f\n", r, (v[1] > 0 ? d / hz * 1e6 / v[1] : 0) }'
}

# metric OPS NAME → the sum of the samples of NAME (a full sample name, labels included, or a
# metric name: all its series) in /metrics.
metric() {
    curl -s --max-time 10 "http://$1/metrics" | awk -v n="$2" '
        index($0, n) == 1 && (substr($0, length(n) + 1, 1) ~ /[ {]/) { s += $NF } END { print s + 0 }'
}

# ---------------------------------------------------------------------------------------------

{
    echo "# How cost grows: servers, routes, tables, metrics — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- siplb at commit $(source_commit); $(machine_description); load average at the start $(load_average)"
    echo "- \`bench/scale.sh\` (PARTS=\"$PARTS\", RATE=$RATE, CALLS=$CALLS, REPEAT=$REPEAT)"
    echo
} >"$report"
log "output in $out"

# 1. The core under callgrind.
if has_part core; then
    declare -A cases=([s2-r1]="2 1" [s20-r1]="20 1" [s200-r1]="200 1" [s2-r10]="2 10" [s2-r100]="2 100")
    order=(s2-r1 s20-r1 s200-r1 s2-r10 s2-r100)
    count_pairs() { # EXAMPLE CONFIG → instructions per pair
        local ex=$1 cfg=$2 n a b
        for n in 2000 12000; do
            valgrind --tool=callgrind --callgrind-out-file="$out/cg.$(basename "$cfg").$n.$3" \
                "$ex" pairs "$cfg" "$n" >/dev/null 2>"$out/cg.$(basename "$cfg").$n.$3.err" ||
                die "callgrind of $ex on $cfg failed"
        done
        a=$(awk '$1 == "totals:" { print $2 }' "$out/cg.$(basename "$cfg").12000.$3")
        b=$(awk '$1 == "totals:" { print $2 }' "$out/cg.$(basename "$cfg").2000.$3")
        echo $(((a - b) / 10000))
    }
    {
        echo "## 1. The core: instructions per REGISTER + 200 OK pair (callgrind)"
        echo
        if [[ -n $BASE_EXAMPLE ]]; then
            echo "| servers in the pool | routes (the last matches) | instructions per pair | with $BASE_EXAMPLE |"
            echo "| --: | --: | --: | --: |"
        else
            echo "| servers in the pool | routes (the last matches) | instructions per pair |"
            echo "| --: | --: | --: |"
        fi
    } >>"$report"
    for c in "${order[@]}"; do
        read -r s r <<<"${cases[$c]}"
        gen_config "$out/$c.toml" "$s" "$r" -
        log "core: $s servers, $r routes"
        now=$(count_pairs "$SCALE_EXAMPLE" "$out/$c.toml" now)
        if [[ -n $BASE_EXAMPLE ]]; then
            base=$(count_pairs "$BASE_EXAMPLE" "$out/$c.toml" base)
            echo "| $s | $r | $now | $base |" >>"$report"
        else
            echo "| $s | $r | $now |" >>"$report"
        fi
    done
    echo >>"$report"
fi

# 2. 10,000-server tables.
if has_part tables; then
    gen_config "$out/t10k-1x10000.toml" 10000 1 -
    gen_config "$out/t10k-100x100.toml" 1 1 - 100 100
    {
        echo "## 2. Building a 10,000-server routing table (\`scale build\`, no metrics recorder)"
        echo
    } >>"$report"
    for c in t10k-1x10000 t10k-100x100; do
        log "tables: $c"
        echo "- $c: $("$SCALE_EXAMPLE" build "$out/$c.toml" 20)" >>"$report"
    done
    echo >>"$report"
fi

# 3. CPU per pair in the process, 2 / 20 / 200 servers.
if has_part process; then
    start_responder servers 200 3600
    declare -A pid=() addr=() sum=() okn=() lost=()
    sizes=(2 20 200)
    for s in "${sizes[@]}"; do
        gen_config "$out/p$s.toml" "$s" 1 "$out/servers.ports"
        start_siplb_process "pid[$s]" "p$s" 150 || die "siplb p$s not ready (see $out/p$s.stderr)"
        addr[$s]=$(siplb_addr "p$s")
        sum[$s]=0 okn[$s]=0 lost[$s]=0
    done
    sleep 3 # every server probed up
    for s in "${sizes[@]}"; do run_uac "warm-$s" "${addr[$s]}" 500 1000 >/dev/null; done
    {
        echo "## 3. siplb's CPU per pair at $RATE/s by servers per pool (sipp, $CALLS calls a run)"
        echo
        echo "| servers | run | successful | failed | retransmissions | µs CPU / pair | load average after |"
        echo "| --: | --: | --: | --: | --: | --: | --: |"
    } >>"$report"
    for ((run = 1; run <= REPEAT; run++)); do
        for s in "${sizes[@]}"; do
            log "process: $s servers, run $run"
            read -r ok failed retrans us <<<"$(measure "${pid[$s]}" "p$s-$run" "${addr[$s]}" "$RATE" "$CALLS")"
            echo "| $s | $run | $ok | $failed | $retrans | $us | $(cut -d' ' -f1 /proc/loadavg) |" >>"$report"
            sum[$s]=$(awk -v a="${sum[$s]}" -v b="$us" -v n="$ok" 'BEGIN { print a + b * n }')
            okn[$s]=$((okn[$s] + ok))
            lost[$s]=$((lost[$s] + failed + retrans))
        done
    done
    echo >>"$report"
    for s in "${sizes[@]}"; do
        echo "- $s servers: **$(awk -v a="${sum[$s]}" -v n="${okn[$s]}" 'BEGIN { printf "%.1f", (n ? a / n : 0) }') µs** per pair over all runs (failed + retransmitted: ${lost[$s]})" >>"$report"
        stop_pids 5 "${pid[$s]}"
    done
    echo >>"$report"
fi

# 4 and 5. /metrics with 1,000 servers, then a reload to 10,000.
mpid='' maddr='' mops=''
if has_part metrics || has_part reload; then
    start_responder fe 4 3600
    start_responder big 10000 3600
    gen_config "$out/m1000.toml" 4 1 "$out/fe.ports" 10 100 "$out/big.ports" 1s
    start_siplb_process mpid m1000 150 || die "siplb m1000 not ready (see $out/m1000.stderr)"
    maddr=$(siplb_addr m1000)
    mops=$(siplb_ops m1000)
    [[ -n $mops ]] || die "siplb m1000 has no ops listener (see $out/m1000.stdout)"
    sleep 3
    run_uac warm-m "$maddr" 500 1000 >/dev/null
fi
if has_part metrics; then
    curl -s "http://$mops/metrics" >"$out/metrics-1000.txt"
    bytes=$(wc -c <"$out/metrics-1000.txt")
    series=$(grep -vc '^#' "$out/metrics-1000.txt" || true)
    c0=$(cpu_ticks "$mpid")
    for ((i = 0; i < SCRAPES; i++)); do
        curl -s -o /dev/null -w '%{time_total}\n' "http://$mops/metrics"
    done >"$out/scrape-times.txt"
    c1=$(cpu_ticks "$mpid")
    times=$(sort -n "$out/scrape-times.txt" | awk '{ t[NR] = $1 } END {
        printf "median %.1f ms, p90 %.1f ms, max %.1f ms", t[int(NR / 2) + 1] * 1e3, t[int(NR * 0.9)] * 1e3, t[NR] * 1e3 }')
    per_scrape=$(awk -v d=$((c1 - c0)) -v hz="$clk_tck" -v n="$SCRAPES" 'BEGIN { printf "%.2f", d / hz * 1e3 / n }')
    log "metrics: $bytes bytes, $series series; $times; $per_scrape ms CPU per scrape"
    # Forwarding with and without a scrape every 100 ms.
    rows=()
    for ((run = 1; run <= REPEAT; run++)); do
        for mode in quiet scraped; do
            scraper=
            if [[ $mode == scraped ]]; then
                (for ((i = 0; i < 600; i++)); do curl -s -o /dev/null "http://$mops/metrics"; sleep 0.1; done) &
                scraper=$!
                started_pids+=("$scraper")
            fi
            read -r ok failed retrans us <<<"$(measure "$mpid" "m-$mode-$run" "$maddr" "$RATE" "$CALLS")"
            [[ -n $scraper ]] && { kill "$scraper" 2>/dev/null || true; wait "$scraper" 2>/dev/null || true; }
            rows+=("| $mode | $run | $ok | $failed | $retrans | $us |")
        done
    done
    {
        echo "## 4. /metrics with 1,000 servers (11 pools)"
        echo
        echo "- size: **$bytes bytes**, $series samples"
        echo "- scrape time ($SCRAPES curl scrapes one after another): **$times**"
        echo "- siplb's CPU per scrape: **$per_scrape ms**"
        echo
        echo "Forwarding at $RATE/s, without scrapes and with one every 100 ms:"
        echo
        echo "| scrapes | run | successful | failed | retransmissions | µs CPU / pair (scrapes included) |"
        echo "| --- | --: | --: | --: | --: | --: |"
        printf '%s\n' "${rows[@]}"
        echo
    } >>"$report"
fi
if has_part reload; then
    gen_config "$out/m1000.next.toml" 4 1 "$out/fe.ports" 100 100 "$out/big.ports" 30s
    rss0=$(rss_kib "$mpid")
    builds0=$(metric "$mops" siplb_table_build_seconds_count)
    sum0=$(metric "$mops" siplb_table_build_seconds_sum)
    reloads0=$(metric "$mops" 'siplb_config_reloads_total{result="ok"}')
    # Load through the reload, and /healthz polled meanwhile.
    run_uac reload-load "$maddr" 2000 40000 >"$out/reload-load.result" &
    uac=$!
    started_pids+=("$uac")
    sleep 3
    (for ((i = 0; i < 200; i++)); do curl -s -o /dev/null -w '%{time_total}\n' --max-time 5 "http://$mops/healthz"; sleep 0.05; done) >"$out/healthz-times.txt" &
    poller=$!
    started_pids+=("$poller")
    cp "$out/m1000.next.toml" "$out/m1000.toml.new"
    mv "$out/m1000.toml.new" "$out/m1000.toml"
    t0=$(date +%s%N)
    kill -HUP "$mpid"
    for ((i = 0; i < 600; i++)); do
        [[ $(metric "$mops" 'siplb_config_reloads_total{result="ok"}') != "$reloads0" ]] && break
        sleep 0.05
    done
    t1=$(date +%s%N)
    wait "$poller" || true
    wait "$uac" || true
    read -r ok failed retrans <"$out/reload-load.result"
    sleep 2
    rss1=$(rss_kib "$mpid")
    builds1=$(metric "$mops" siplb_table_build_seconds_count)
    sum1=$(metric "$mops" siplb_table_build_seconds_sum)
    curl -s "http://$mops/metrics" | grep '^siplb_table_build_seconds' >"$out/build-histogram.txt" || true
    slowest=$(sort -n "$out/healthz-times.txt" | tail -n 1 | awk '{ printf "%.1f", $1 * 1e3 }')
    {
        echo "## 5. Reload from 1,004 to 10,004 servers (SIGHUP) under 2,000 REGISTER/s"
        echo
        echo "- reload answered (siplb_config_reloads_total{result=\"ok\"} moved) after **$(((t1 - t0) / 1000000)) ms** (polled every 50 ms)"
        echo "- tables built meanwhile and after: $(awk -v a="$builds1" -v b="$builds0" 'BEGIN { print a - b }'), $(awk -v a="$sum1" -v b="$sum0" -v n="$builds1" -v m="$builds0" 'BEGIN { printf "%.2f ms each on average", (n > m ? (a - b) * 1e3 / (n - m) : 0) }') (siplb_table_build_seconds)"
        echo "- slowest of 200 /healthz (every 50 ms through the reload): **$slowest ms**"
        echo "- sipp through it: $ok successful, $failed failed, $retrans retransmissions of 40,000"
        echo "- RSS: $rss0 KiB before, $rss1 KiB after: **$(((rss1 - rss0) / 1024)) MiB** for 9,000 more servers (their probe tasks included), $(((rss1 - rss0) * 1024 / 9000)) bytes a server"
        echo
        echo '```'
        cat "$out/build-histogram.txt"
        echo '```'
        echo
    } >>"$report"
fi

cp "$report" "$root/bench/out/scale-latest.md"
cat "$report"
