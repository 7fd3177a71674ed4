#!/usr/bin/env bash
# siplb benchmark with siplb's own load generator (bench/loadgen, `siplb-loadgen`): REGISTER +
# 200 OK through siplb and through Kamailio 5.6, on loopback, at rates sipp cannot drive here.
#
#   udp   siplb-loadgen register ─UDP─▶ proxy ─UDP─▶ 4 × siplb-loadgen backend (UDP)
#   tcp   the same over TCP: one connection carrying every user, backends over TCP
#   tls   the same over TLS (the proxy's certificate checked against the bench's CA), TLS
#         backends (checked by the proxy against the same CA)
#   direct  the client straight to the 4 UDP backends (a user always to the same one): the
#         loopback's and the generator's own share of every figure
#   relay   over UDP and TCP in part 1: `siplb-loadgen relay`, a forwarder that does no SIP work
#         (over UDP built as siplb's UDP shell: WORKERS threads blocking in recvmmsg,
#         SO_REUSEPORT, sendmmsg; over TCP a blocking thread per connection): the floor under
#         any proxy's CPU per pair on these sockets and this machine
#         (proxy = siplb, or Kamailio 5.6 + dispatcher; one instance of each per transport)
#
# Kamailio runs as in production (bench/kamailio/kamailio.cfg over UDP, started by
# bench/lib.sh spawn_kamailio; bench/kamailio/kamailio-streams.cfg over TCP and TLS): TLSF memory
# managers, children / tcp_children = siplb's workers (TLS: KAMAILIO_TLS_CHILDREN, see
# bench/streams.sh), OPTIONS probes every second as siplb's; the script reads these settings
# back with kamcmd and stops if one did not take effect.
#
# It measures, in one run, proxies alternating, so that the noise of a shared machine hits
# both alike:
#   1. CPU per forwarded REGISTER + 200 OK pair: the proxy's utime+stime (/proc/PID/stat,
#      summed over its processes) over a fixed-count run at a fixed rate, divided by the pairs
#      answered with 200; at each of UDP_RATES over UDP and STREAM_RATE over TCP and TLS,
#      REPEAT times, and the ratio siplb / Kamailio; over UDP and TCP the relay's too, and the
#      ratio relay / Kamailio: what a proxy doing no SIP work at all would score.
#   2. The highest rate each proxy sustains over UDP: STEP_RATES in turn, STEP_SECS each,
#      until a step has ≥ 0.1% of its transactions lost or retransmitted, or the generator
#      sent at < 95% of the rate, STEP_TRIES times in a row; with the generator's own CPU (client + backends) and the
#      proxy's beside it, so that the table tells who ran out first. `direct` runs the same
#      steps with no proxy: the generator's and the loopback's own ceiling.
#   3. Latency inside the proxy: at each of LATENCY_RATES over UDP, for siplb, Kamailio and
#      direct, p50/p99/p99.9 of the request's way (client send → backend receive) and of the
#      response's (backend send → client receive), timed by the generator on CLOCK_MONOTONIC;
#      the proxy's share is its figure less direct's.
#   4. Memory: each UDP proxy's PSS (summed over its processes: Kamailio's shared memory
#      counts once) idle after its warm-up, and under load (halfway through its run at the
#      highest of UDP_RATES).
# The result is a markdown table printed and written to bench/out/load-<time>/results.md (and
# bench/out/load-latest.md).
#
# Usage: bench/load.sh [--quick]
#   --quick                    a short run (~1 minute) to check the setup
# Environment (defaults in brackets):
#   SIPLB_BIN, LOADGEN_BIN     [target/release/siplb, target/release/siplb-loadgen]; build both
#                              with `cargo build --release -p siplb -p siplb-loadgen`
#   WORKERS                    siplb [listen] workers = Kamailio children [2]
#   KAMAILIO_TLS_CHILDREN      Kamailio's tcp_children serving TLS [1] (bench/streams.sh says why)
#   UDP_RATES, STREAM_RATE     part 1's rates ["2000 5000 10000"], [2000]
#   CPU_SECS, REPEAT           part 1: seconds per run [10], runs per proxy and rate [2]
#   STEP_RATES, STEP_SECS      part 2 ["10000 20000 30000 40000 50000 60000 70000 80000"], [5]
#   STEP_TRIES                 tries of a step before a target leaves the race [2]
#   LATENCY_RATES, LATENCY_SECS  part 3 ["1000 5000"], [10]
#   LATENCY_ORDER              the order part 3 runs the targets in, at each rate ["siplb kamailio direct"]
#   USERS                      AORs the clients register [100000]
#   TCP_CONNECTIONS            client connections over TCP and TLS [1: one carrying every user]
#   PARTS                      ["cpu steps latency"]; memory is read during cpu's runs
#   KAMAILIO_SHM_MB, KAMAILIO_PKG_MB   Kamailio's -m and -M [256, 16] (bench/lib.sh)
#   PIN_CORES                  "P G": the proxies on core P only, the generator on core G only
#                              (taskset; bench/lib.sh) [empty: every process on every core]
# Needs: kamailio, kamailio-tls-modules, openssl, jq, curl. Talks to 127.0.0.1 only; every generator
# run is bounded by its count and by `timeout`; every process it starts is stopped on exit, by
# the PID it started.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
. "$root/bench/lib.sh"
# shellcheck disable=SC2034 # read by bench/lib.sh
log_tag=load

SIPLB_BIN=${SIPLB_BIN:-$root/target/release/siplb}
LOADGEN_BIN=${LOADGEN_BIN:-$root/target/release/siplb-loadgen}
WORKERS=${WORKERS:-2}
KAMAILIO_TLS_CHILDREN=${KAMAILIO_TLS_CHILDREN:-1}
UDP_RATES=${UDP_RATES:-2000 5000 10000}
STREAM_RATE=${STREAM_RATE:-2000}
CPU_SECS=${CPU_SECS:-10}
REPEAT=${REPEAT:-2}
STEP_RATES=${STEP_RATES:-10000 20000 30000 40000 50000 60000 70000 80000}
STEP_SECS=${STEP_SECS:-5}
STEP_TRIES=${STEP_TRIES:-2}
LATENCY_RATES=${LATENCY_RATES:-1000 5000}
LATENCY_SECS=${LATENCY_SECS:-10}
LATENCY_ORDER=${LATENCY_ORDER:-siplb kamailio direct}
USERS=${USERS:-100000}
TCP_CONNECTIONS=${TCP_CONNECTIONS:-1}
PARTS=${PARTS:-cpu steps latency}
BACKENDS=4
MAX_LOST_PCT=0.1
MIN_ACHIEVED_PCT=95

if [[ ${1:-} == --quick ]]; then
    CPU_SECS=2 REPEAT=1 STEP_RATES="10000 20000" STEP_SECS=2 LATENCY_RATES=1000 LATENCY_SECS=2
elif [[ $# -gt 0 ]]; then
    usage
fi
command_line="bench/load.sh${1:+ $1}"

bench_setup load-
has_part() { [[ " $PARTS " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------------------------
# Accounting, from /proc

# ---------------------------------------------------------------------------------------------
# The generator's backends: one process, BACKENDS of each transport.

declare -A backends_of=()
backends_pid=
start_backends() {
    "${generator_pin[@]}" "$LOADGEN_BIN" backends --udp "$BACKENDS" --tcp "$BACKENDS" --tls "$BACKENDS" \
        --cert "$certs/lb.crt" --key "$certs/lb.key" --secs 3600 >"$out/backends.out" 2>"$out/backends.err" &
    backends_pid=$!
    started_pids+=("$backends_pid")
    wait_started "$backends_pid" 50 "siplb-loadgen backends" "$out/backends.err" grep -qsx ready "$out/backends.out" ||
        die "siplb-loadgen backends did not start (see $out/backends.err)"
    local t
    for t in udp tcp tls; do
        backends_of[$t]=$(awk -v t="$t" '$1 == "listening" && $2 == t { printf "%s%s", s, $3; s = " " }' "$out/backends.out")
    done
}

# ---------------------------------------------------------------------------------------------
# The proxies: one instance per proxy and transport.

declare -A proxy_pid=() proxy_addr=() ops_addr=() kamailio_info=()

# start_siplb TRANSPORT: siplb listening on TRANSPORT only, in front of the backends of that
# transport (TLS ones verified against the bench's CA and name, as Kamailio verifies them),
# health as Kamailio's.
start_siplb() {
    local t=$1 name=siplb-$1 servers="" a pid addr
    [[ -x $SIPLB_BIN ]] || die "no siplb binary at $SIPLB_BIN: cargo build --release -p siplb"
    for a in ${backends_of[$t]}; do servers+="  { address = \"$a\", transport = \"$t\" },"$'\n'; done
    {
        echo "# written by bench/load.sh"
        echo "[listen]"
        case $t in
        udp) echo 'udp = ["127.0.0.1:0"]' ;;
        tcp) echo 'tcp = ["127.0.0.1:0"]' ;;
        tls) echo "tls = [{ address = \"127.0.0.1:0\", cert = \"$certs/lb.crt\", key = \"$certs/lb.key\" }]" ;;
        esac
        echo "workers = $WORKERS"
        cat <<EOF

# Read once, after the runs (its counters go to the raw output): an idle listener.
[ops]
listen = "127.0.0.1:0"

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
EOF
        if [[ $t == tls ]]; then echo "tls = { ca = \"$certs/ca.crt\", server_name = \"$tls_name\" }"; fi
        cat <<EOF

[[route]]
domain = "contoso.com"
pool = "fe"
key = "to-aor"
EOF
    } >"$out/$name.toml"
    start_siplb_process pid "$name" 150 || die "$name did not print ready within 15 s (see $out/$name.stderr)"
    addr=$(awk -v t="$t" '$1 == "listening" && $2 == t { print $3; exit }' "$out/$name.stdout")
    [[ -n $addr ]] || die "$name printed no $t listener (see $out/$name.stdout)"
    proxy_pid[$name]=$pid
    proxy_addr[$name]=$addr
    ops_addr[$name]=$(awk '$1 == "listening" && $2 == "ops" { print $3; exit }' "$out/$name.stdout")
}

# kamailio_children TRANSPORT → Kamailio's tcp_children for TRANSPORT.
kamailio_children() {
    if [[ $1 == tls ]]; then echo "$KAMAILIO_TLS_CHILDREN"; else echo "$WORKERS"; fi
}

# start_kamailio TRANSPORT: over UDP, bench/lib.sh's spawn_kamailio and kamailio_settings; over
# TCP and TLS, kamailio-streams.cfg as bench/streams.sh runs it, its settings read back here.
start_kamailio() {
    local t=$1 name=kamailio-$1 port list a
    command -v kamailio >/dev/null || die "kamailio not found: apt-get install -y kamailio kamailio-tls-modules"
    free_port port
    if [[ $t == udp ]]; then
        # shellcheck disable=SC2034,SC2206 # uas_addrs: read by spawn_kamailio
        uas_addrs=(${backends_of[udp]})
        spawn_kamailio "proxy_pid[$name]" "$out/$name.list" "$name" "$port"
        kamailio_pids+=("${proxy_pid[$name]}")
        wait_started "${proxy_pid[$name]}" 100 "$name" "$out/$name.out" test -S "$out/$name.ctl" || true
        kamailio_info[$name]=$(kamailio_settings "$name" "$port")
    else
        list=$out/$name.list
        : >"$list"
        for a in ${backends_of[$t]}; do echo "1 sip:$a;transport=$t" >>"$list"; done
        kamailio_ctl=unix:$out/$name.ctl
        rm -f "$out/$name.ctl"
        local -a tls=()
        [[ $t == tls ]] && tls=(-A WITH_TLS -A "TLS_CFG=\"$out/kamailio-tls.cfg\"")
        "${proxy_pin[@]}" kamailio -f "$root/bench/kamailio/kamailio-streams.cfg" -DD -E \
            -x "$KAMAILIO_MM" -X "$KAMAILIO_MM" -m "$KAMAILIO_SHM_MB" -M "$KAMAILIO_PKG_MB" \
            -l "$t:127.0.0.1:$port" -A "TCP_CHILDREN=$(kamailio_children "$t")" -A "MAX_CONNECTIONS=4096" \
            "${tls[@]}" -A "DS_LIST=\"$list\"" -A "CTL_SOCKET=\"$kamailio_ctl\"" \
            -P "$out/$name.pid" >"$out/$name.out" 2>&1 &
        proxy_pid[$name]=$!
        kamailio_pids+=($!)
        wait_started "$!" 100 "$name" "$out/$name.out" test -S "$out/$name.ctl" || true
        kamailio_info[$name]=$(kamailio_streams_settings "$name" "$t")
    fi
    proxy_addr[$name]=127.0.0.1:$port
}

# kamailio_streams_settings NAME TRANSPORT: what makes Kamailio a fair peer over TCP/TLS, read
# back with kamcmd (through kamailio_ctl); dies if one did not take effect.
kamailio_streams_settings() {
    local name=$1 t=$2 flags shm pkg receivers debug i
    for ((i = 0; i < 50; i++)); do
        flags=$(kamcmd_value - dispatcher.list | awk '$1 == "FLAGS:" { printf "%s%s", sep, $2; sep = "," }')
        [[ -n $flags && $flags =~ ^(AP,)*AP$ ]] && break
        sleep 0.1
    done
    {
        for c in shm.info pkg.info core.ps dispatcher.list core.tcp_options; do
            echo "\$ kamcmd $c"
            kamcmd -s "$kamailio_ctl" "$c" 2>&1 || true
        done
    } >"$out/$name.settings"
    shm=$(kamcmd_value name shm.info)
    pkg=$(kamcmd_value name pkg.info)
    receivers=$(kamcmd_value - core.ps | grep -c '^tcp receiver' || true)
    debug=$(kamcmd_value - cfg.get core debug)
    [[ $shm == tlsf_malloc && $pkg == tlsf_malloc ]] || die "$name: memory managers $shm / $pkg, not TLSF (see $out/$name.settings)"
    [[ $receivers == "$(kamailio_children "$t")" ]] || die "$name runs $receivers tcp receivers, not $(kamailio_children "$t") (see $out/$name.settings)"
    [[ $debug == 1 ]] || die "$name: debug=$debug, not 1 (see $out/$name.settings)"
    [[ -n $flags && $flags =~ ^(AP,)*AP$ ]] || die "$name: destinations not all active and probed: flags $flags (see $out/$name.settings)"
    echo "shm and pkg $shm, $receivers tcp receivers, debug=$debug, destinations $flags (active, probed over $t)"
}

# start_relay TRANSPORT (udp or tcp): `siplb-loadgen relay` (over UDP, WORKERS threads) in
# front of the backends of TRANSPORT, as proxy "relay-TRANSPORT".
start_relay() {
    local t=$1 name=relay-$1
    "${proxy_pin[@]}" "$LOADGEN_BIN" relay --transport "$t" --to "$(tr ' ' ',' <<<"${backends_of[$t]}")" \
        --threads "$WORKERS" --secs 3600 >"$out/$name.out" 2>"$out/$name.err" &
    proxy_pid[$name]=$!
    started_pids+=("$!")
    wait_started "$!" 50 "$name" "$out/$name.err" grep -qsx ready "$out/$name.out" ||
        die "$name did not start (see $out/$name.err)"
    proxy_addr[$name]=$(awk -v t="$t" '$1 == "listening" && $2 == t { print $3; exit }' "$out/$name.out")
}

# ---------------------------------------------------------------------------------------------
# Generator runs

# lg_run NAME TARGET TRANSPORT RATE COUNT [PSS_AT_HALF]: one `siplb-loadgen register` run
# through TARGET (siplb-T, kamailio-T or direct), its JSON line to $out/NAME.json and its
# summary to $out/NAME.txt. Prints one line:
#   ok lost retransmitted late achieved max_lag_us proxy_cpu_s client_cpu_s backends_cpu_s wall_s pss_kib proxy_sys_s vol invol
# (pss_kib: the proxy's PSS halfway through the run with PSS_AT_HALF, else "-"; proxy_sys_s: the
# part of proxy_cpu_s spent in the kernel; vol, invol: the proxy's voluntary and involuntary
# context switches during the run, all its threads and processes).
lg_run() {
    local name=$1 target=$2 t=$3 rate=$4 count=$5 at_half=${6:-} pid="" to c0=0 c1=0 b0 b1 lg rc=0 pss=-
    local u0=0 s0=0 u1=0 s1=0 v0=0 n0=0 v1=0 n1=0
    local -a how=()
    if [[ $target == direct ]]; then
        to=$(tr ' ' ',' <<<"${backends_of[udp]}")
    else
        to=${proxy_addr[$target]}
        pid=${proxy_pid[$target]}
    fi
    case $t in
    tcp) how=(--connections "$TCP_CONNECTIONS") ;;
    tls) how=(--connections "$TCP_CONNECTIONS" --ca "$certs/ca.crt" --name "$tls_name") ;;
    esac
    [[ -n $pid ]] && read -r u0 s0 <<<"$(cpu_ticks_split "$pid")" && read -r v0 n0 <<<"$(switches "$pid")"
    b0=$(cpu_ticks "$backends_pid")
    timeout $((count / rate + 40)) "${generator_pin[@]}" "$LOADGEN_BIN" register --to "$to" --transport "$t" --rate "$rate" \
        --count "$count" --users "$USERS" "${how[@]}" >"$out/$name.json" 2>"$out/$name.txt" &
    lg=$!
    if [[ -n $at_half && -n $pid ]]; then
        sleep "$(awk -v c="$count" -v r="$rate" 'BEGIN { print c / r / 2 }')"
        pss=$(memory_kib "$pid" Pss)
    fi
    wait "$lg" || rc=$?
    [[ -n $pid ]] && read -r u1 s1 <<<"$(cpu_ticks_split "$pid")" && read -r v1 n1 <<<"$(switches "$pid")"
    c0=$((u0 + s0)) c1=$((u1 + s1))
    b1=$(cpu_ticks "$backends_pid")
    if [[ $rc != 0 || ! -s $out/$name.json ]]; then
        log "  siplb-loadgen failed (status $rc, see $out/$name.txt)"
        echo "0 $count 0 0 0 0 $((c1 - c0)) 0 0 0 $pss $((s1 - s0)) $((v1 - v0)) $((n1 - n0))" | awk -v hz="$clk_tck" '{ $7 = $7 / hz; $12 = $12 / hz; print }'
        return 0
    fi
    jq -r --arg p "$((c1 - c0))" --arg s "$((s1 - s0))" --arg b "$((b1 - b0))" --arg hz "$clk_tck" --arg pss "$pss" \
        --arg v "$((v1 - v0))" --arg n "$((n1 - n0))" \
        '"\(.ok) \(.lost) \(.retransmitted) \(.late) \(.achieved_rate) \(.max_lag_us) \(($p | tonumber) / ($hz | tonumber)) \(.cpu_secs) \(($b | tonumber) / ($hz | tonumber)) \(.wall_secs) \($pss) \(($s | tonumber) / ($hz | tonumber)) \($v) \($n)"' \
        "$out/$name.json"
}

# lat NAME FIELD → "p50 / p99 / p99.9" of FIELD (request_us, response_us, transaction_us) of the
# run NAME, in µs.
lat() { jq -r --arg f "$2" '.[$f] | "\(.p50) / \(.p99) / \(.p999)"' "$out/$1.json" 2>/dev/null || echo "-"; }

# warm_up TARGET TRANSPORT: 500 REGISTERs at 200/s with none lost, up to 20 tries: health
# starts from probes, so this means every backend is in use.
warm_up() {
    local i ok lost
    for ((i = 0; i < 20; i++)); do
        read -r ok lost _ <<<"$(lg_run "warmup-$1-$i" "$1" "$2" 500 500)"
        [[ $ok == 500 && $lost == 0 ]] && return 0
        sleep 0.5
    done
    die "$1 does not forward REGISTERs over $2 (see $out/warmup-$1-*.txt)"
}

# ---------------------------------------------------------------------------------------------
# Run

for tool in kamailio kamcmd openssl jq curl; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install -y kamailio kamailio-tls-modules openssl jq curl"
done
[[ -x $LOADGEN_BIN ]] || die "no generator at $LOADGEN_BIN: cargo build --release -p siplb-loadgen"
ulimit -c 0
machine=$(machine_description)
memory="$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
load_at_start=$(load_average)
commit=$(source_commit)
log "machine: $machine, $memory, load average $load_at_start; output in $out"
make_certs
start_backends
log "backends: udp ${backends_of[udp]}; tcp ${backends_of[tcp]}; tls ${backends_of[tls]}"

transports=(udp)
if has_part cpu; then transports=(udp tcp tls); fi
for t in "${transports[@]}"; do
    start_siplb "$t"
    start_kamailio "$t"
    log "siplb-$t ${proxy_addr[siplb-$t]} (pid ${proxy_pid[siplb-$t]}); kamailio-$t ${proxy_addr[kamailio-$t]} (pid ${proxy_pid[kamailio-$t]}): ${kamailio_info[kamailio-$t]}"
done
if has_part cpu; then
    for t in udp tcp; do
        start_relay "$t"
        log "relay-$t ${proxy_addr[relay-$t]} (pid ${proxy_pid[relay-$t]})"
        warm_up "relay-$t" "$t"
    done
fi
for t in "${transports[@]}"; do
    warm_up "siplb-$t" "$t"
    warm_up "kamailio-$t" "$t"
done
warm_up direct udp

# 4 (idle). Memory after the warm-up, before any load.
declare -A pss_idle=() pss_load=()
for p in siplb kamailio; do pss_idle[$p]=$(memory_kib "${proxy_pid[$p-udp]}" Pss); done
log "idle PSS: siplb ${pss_idle[siplb]} KiB, kamailio ${pss_idle[kamailio]} KiB"

# 1. CPU per pair.
declare -A cpu_sum=() sys_sum=() ok_sum=() lossy=() runs_of=()
cpu_rows=() cpu_keys=()
top_udp=$(tr ' ' '\n' <<<"$UDP_RATES" | sort -n | tail -n 1)
if has_part cpu; then
    legs=()
    for r in $UDP_RATES; do legs+=("udp/$r"); done
    legs+=("tcp/$STREAM_RATE" "tls/$STREAM_RATE")
    for leg in "${legs[@]}"; do
        t=${leg%/*} rate=${leg#*/} count=$((${leg#*/} * CPU_SECS))
        cpu_keys+=("$leg")
        for ((run = 1; run <= REPEAT; run++)); do
            for p in siplb kamailio relay; do
                [[ $p == relay && $t == tls ]] && continue
                half=
                [[ $t == udp && $rate == "$top_udp" ]] && half=1
                log "cpu: $p over $t, $count REGISTERs at $rate/s, run $run"
                read -r ok lost retr late achieved lag pcpu ccpu bcpu wall pss psys vol invol <<<"$(lg_run "cpu-$p-$t-$rate-$run" "$p-$t" "$t" "$rate" "$count" "$half")"
                per=$(awk -v c="$pcpu" -v n="$ok" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / n; else print "-" }')
                sw=$(awk -v v="$vol" -v i="$invol" -v n="$ok" 'BEGIN { if (n > 0) printf "%.2f + %.2f", v / n, i / n; else print "-" }')
                kper=$(awk -v c="$psys" -v n="$ok" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / n; else print "-" }')
                lgper=$(awk -v c="$ccpu" -v b="$bcpu" -v n="$ok" 'BEGIN { if (n > 0) printf "%.1f", (c + b) * 1e6 / n; else print "-" }')
                load=$(cut -d' ' -f1 /proc/loadavg)
                log "  $ok ok, $lost lost, $retr retransmitted ($late answered late), sent at $achieved/s, proxy CPU ${pcpu}s = $per µs/pair ($kper in the kernel), switches $sw per pair, generator $lgper µs/pair, load $load"
                cpu_rows+=("| $rate | $t | $p | $run | $ok | $lost | $retr | $achieved | $pcpu | **$per** | $kper | $sw | $lgper | $load |")
                runs_of[$leg-$p]+="$per $kper $sw;"
                if awk -v l="$lost" -v r="$retr" -v n="$count" -v m="$MAX_LOST_PCT" 'BEGIN { exit !((l + r) * 100 >= m * n) }'; then
                    lossy[$leg]+="$p run $run, "
                fi
                cpu_sum[$leg-$p]=$(awk -v a="${cpu_sum[$leg-$p]:-0}" -v b="$pcpu" 'BEGIN { print a + b }')
                sys_sum[$leg-$p]=$(awk -v a="${sys_sum[$leg-$p]:-0}" -v b="$psys" 'BEGIN { print a + b }')
                ok_sum[$leg-$p]=$((${ok_sum[$leg-$p]:-0} + ok))
                if [[ $pss != - ]]; then
                    pss_load[$p]=$pss
                    log "  PSS halfway: $pss KiB"
                fi
            done
        done
    done
fi

# 2. Highest sustained rate over UDP. Each rate is tried on every target still in the race
# before the next rate, so that a noisy moment of the machine falls on neighbouring rows.
declare -A best=() out_of_race=()
step_rows=()
step_targets=(siplb kamailio direct)
for t in "${step_targets[@]}"; do best[$t]=none; done
if has_part steps; then
    for rate in $STEP_RATES; do
        for t in "${step_targets[@]}"; do
            [[ -z ${out_of_race[$t]:-} ]] || continue
            target=$t
            [[ $t != direct ]] && target=$t-udp
            count=$((rate * STEP_SECS))
            # A step that fails is tried again (STEP_TRIES in all): a stall of the shared
            # machine fails a step as surely as the proxy does, and only the proxy's own limit
            # fails it every time.
            for ((try = 1; try <= STEP_TRIES; try++)); do
                log "step: $t at $rate/s, $count REGISTERs, try $try"
                read -r ok lost retr _ achieved lag pcpu ccpu bcpu wall _ <<<"$(lg_run "step-$t-$rate-$try" "$target" udp "$rate" "$count")"
                verdict=$(awk -v ok="$ok" -v l="$lost" -v r="$retr" -v n="$count" -v a="$achieved" -v rate="$rate" \
                    -v m="$MAX_LOST_PCT" -v mina="$MIN_ACHIEVED_PCT" 'BEGIN {
                        if ((l + r) * 100 >= m * n) print "lost"
                        else if (a * 100 < mina * rate) print "generator behind"
                        else if (ok < n) print "failed"
                        else print "sustained" }')
                read -r pshare gshare <<<"$(awk -v p="$pcpu" -v c="$ccpu" -v b="$bcpu" -v w="$wall" 'BEGIN {
                    if (w > 0) printf "%.0f%% %.0f%%\n", p * 100 / w, (c + b) * 100 / w; else print "- -" }')"
                [[ $t == direct ]] && pshare=-
                log "  $ok ok, $lost lost, $retr retransmitted, sent at $achieved/s (at most $lag µs late); proxy CPU $pshare, generator CPU $gshare of a core: $verdict"
                step_rows+=("| $rate | $t | $try | $achieved | $ok | $lost | $retr | $((lag / 1000)) | $pshare | $gshare | $verdict |")
                [[ $verdict == sustained ]] && break
            done
            if [[ $verdict == sustained ]]; then best[$t]=$rate; else out_of_race[$t]=1; fi
        done
    done
fi

# 3. Latency inside the proxy, over UDP.
lat_rows=()
if has_part latency; then
    for rate in $LATENCY_RATES; do
        for t in $LATENCY_ORDER; do
            target=$t
            [[ $t != direct ]] && target=$t-udp
            count=$((rate * LATENCY_SECS))
            log "latency: $t at $rate/s, $count REGISTERs"
            read -r ok lost retr _ <<<"$(lg_run "lat-$t-$rate" "$target" udp "$rate" "$count")"
            lat_rows+=("| $rate | $t | $ok | $((lost + retr)) | $(lat "lat-$t-$rate" request_us) | $(lat "lat-$t-$rate" response_us) | $(lat "lat-$t-$rate" transaction_us) |")
            log "  request $(lat "lat-$t-$rate" request_us) µs, response $(lat "lat-$t-$rate" response_us) µs"
        done
    done
fi

# siplb's counters after the runs (what it dropped, and why), next to the raw output.
for t in "${transports[@]}"; do
    if [[ -n ${ops_addr[siplb-$t]:-} ]]; then
        curl -s --max-time 5 "http://${ops_addr[siplb-$t]}/metrics" >"$out/siplb-$t.metrics" || true
    fi
done

# ---------------------------------------------------------------------------------------------
# Report

# per_pair LEG PROXY → the proxy's µs CPU per pair over the runs of LEG, or "-"
per_pair() {
    awk -v c="${cpu_sum[$1-$2]:-}" -v n="${ok_sum[$1-$2]:-0}" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / n; else print "-" }'
}
# median_runs LEG PROXY → "MEDIAN (KERNEL), RUNS|VOL + INVOL": the median of the runs' µs per pair
# with its kernel µs (of an even count, the mean of the two middle runs), every run's µs in
# ascending order, and the median run's switches per pair (likewise).
median_runs() {
    tr ';' '\n' <<<"${runs_of[$1-$2]:-}" | awk 'NF >= 5 && $1 != "-" { n++; line[n] = $0; v[n] = $1 }
        END {
            if (n == 0) { print "-|-"; exit }
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t; t = line[i]; line[i] = line[j]; line[j] = t }
            lo = int((n + 1) / 2); hi = int(n / 2) + 1; split(line[lo], a, " "); split(line[hi], b, " ")
            all = ""; for (i = 1; i <= n; i++) all = all (i > 1 ? ", " : "") v[i]
            printf "%.1f (%.1f), runs %s|%.2f + %.2f\n", (a[1] + b[1]) / 2, (a[2] + b[2]) / 2, all, (a[3] + b[3]) / 2, (a[5] + b[5]) / 2
        }'
}
# ratio A B → A / B to two places, or "-" when either is "-" (the leading number of a
# median_runs answer is read)
ratio() {
    awk -v s="${1%%[ |]*}" -v k="${2%%[ |]*}" 'BEGIN { if (s != "-" && k != "-" && k > 0) printf "%.2f", s / k; else print "-" }'
}
# kernel_per_pair LEG PROXY → of that, the µs in the kernel (stime), or "-"
kernel_per_pair() {
    awk -v c="${sys_sum[$1-$2]:-}" -v n="${ok_sum[$1-$2]:-0}" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / n; else print "-" }'
}
# share RATE PROXY FIELD Q → the proxy's share of the percentile Q (p50, p99, p999) of FIELD:
# its figure less direct's, in µs
share() {
    local f=$out/lat-$2-$1.json d=$out/lat-direct-$1.json
    if [[ -s $f && -s $d ]]; then
        echo $(($(jq -r ".$3.$4" "$f") - $(jq -r ".$3.$4" "$d")))
    else
        echo "-"
    fi
}
kib_mib() { awk -v k="${1:-}" 'BEGIN { if (k == "" || k == "-") print "-"; else printf "%.2f MiB", k / 1024 }'; }

{
    echo "# siplb-loadgen benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- command: \`$command_line\` (PARTS=\"$PARTS\", UDP_RATES=\"$UDP_RATES\", STREAM_RATE=$STREAM_RATE, CPU_SECS=$CPU_SECS, REPEAT=$REPEAT, STEP_RATES=\"$STEP_RATES\", STEP_SECS=$STEP_SECS, LATENCY_RATES=\"$LATENCY_RATES\", LATENCY_SECS=$LATENCY_SECS)"
    echo "- machine: $machine, $memory; load average at start $load_at_start, at end $(load_average)"
    echo "- siplb at commit $commit ($SIPLB_BIN); $(kamailio_version); generator $LOADGEN_BIN"
    echo "- topology: siplb-loadgen register → proxy → $BACKENDS siplb-loadgen backends on 127.0.0.1, per transport;"
    echo "  $USERS users (AORs), each REGISTER a new transaction; over TCP and TLS $TCP_CONNECTIONS client connection(s) carrying every user;"
    echo "  siplb workers = Kamailio children = $WORKERS (Kamailio over TLS: $KAMAILIO_TLS_CHILDREN, see bench/streams.sh);"
    echo "  direct = the same client straight to the $BACKENDS UDP backends"
    if [[ -n ${PIN_CORES:-} ]]; then
        echo "- cores: PIN_CORES=\"$PIN_CORES\": each proxy on core ${PIN_CORES%% *} only, the generator (client and backends) on core ${PIN_CORES##* } only"
    else
        echo "- cores: every process on every core (PIN_CORES unset)"
    fi
    echo "- probing, both proxies: OPTIONS to every backend every 1 s, 500 ms timeout, fall 2, rise 2"
    echo "- Kamailio: \`-x $KAMAILIO_MM -X $KAMAILIO_MM -m $KAMAILIO_SHM_MB -M $KAMAILIO_PKG_MB\`; read back with kamcmd:"
    for t in "${transports[@]}"; do echo "  - $t: ${kamailio_info[kamailio-$t]}"; done
    echo
    if has_part cpu; then
        echo "## CPU per forwarded REGISTER + 200 OK ($CPU_SECS s per run)"
        echo
        echo "| rate /s | transport | proxy | run | 200s | lost | retransmitted | sent /s | proxy CPU s | µs CPU / pair | of which kernel | switches / pair (vol. + invol.) | generator µs / pair | load (1 min) |"
        echo "| --: | --- | --- | --: | --: | --: | --: | --: | --: | --: | --: | --- | --: | --: |"
        printf '%s\n' "${cpu_rows[@]}"
        echo
        echo "| rate /s | transport | siplb µs / pair (kernel) | Kamailio µs / pair (kernel) | siplb / Kamailio | siplb's kernel µs / Kamailio's whole | relay µs / pair (kernel) | relay / Kamailio |"
        echo "| --: | --- | --: | --: | --: | --: | --: | --: |"
        for leg in "${cpu_keys[@]}"; do
            s=$(per_pair "$leg" siplb) k=$(per_pair "$leg" kamailio)
            sk=$(kernel_per_pair "$leg" siplb) kk=$(kernel_per_pair "$leg" kamailio)
            r=$(per_pair "$leg" relay) rk=$(kernel_per_pair "$leg" relay)
            echo "| ${leg#*/} | ${leg%/*} | $s ($sk) | $k ($kk) | **$(ratio "$s" "$k")** | $(ratio "$sk" "$k") | $r ($rk) | $(ratio "$r" "$k") |"
        done
        echo
        echo "\"siplb's kernel µs / Kamailio's whole\" is the ratio siplb would have if its own code cost"
        echo "nothing: the kernel's part of its pair (stime from /proc/PID/stat) against all of Kamailio's."
        echo "The relay (UDP and TCP) is a forwarder that does no SIP work at all, over UDP built as siplb's UDP shell;"
        echo "\"relay / Kamailio\" is the ratio of a proxy whose only cost is the sockets' and the machine's."
        echo
        echo "The same runs by their medians (a run's µs per pair; a stall of the shared machine moves the"
        echo "mean above by one run, the median less), and the context switches per pair, which are counts"
        echo "and so do not depend on the machine's load:"
        echo
        echo "| rate /s | transport | siplb: median µs / pair (kernel), runs | Kamailio: median µs / pair (kernel), runs | siplb / Kamailio, medians | switches / pair, siplb | switches / pair, Kamailio | relay: median µs / pair (kernel), runs | relay / Kamailio, medians | switches / pair, relay |"
        echo "| --: | --- | --- | --- | --: | --- | --- | --- | --: | --- |"
        for leg in "${cpu_keys[@]}"; do
            s=$(median_runs "$leg" siplb) k=$(median_runs "$leg" kamailio) r=$(median_runs "$leg" relay)
            echo "| ${leg#*/} | ${leg%/*} | ${s%%|*} | ${k%%|*} | **$(ratio "$s" "$k")** | ${s#*|} | ${k#*|} | ${r%%|*} | $(ratio "$r" "$k") | ${r#*|} |"
        done
        for leg in "${cpu_keys[@]}"; do
            if [[ -n ${lossy[$leg]:-} ]]; then
                echo
                echo "- NOT COMPARABLE at ${leg#*/}/s over ${leg%/*}: ${lossy[$leg]%, } lost or retransmitted ≥ $MAX_LOST_PCT% of the REGISTERs"
                echo "  (siplb's counters after the runs: bench/out/load-$stamp/siplb-${leg%/*}.metrics)"
            fi
        done
        echo
    fi
    echo "## Memory (PSS summed over the proxy's processes)"
    echo
    echo "| proxy | idle, after the warm-up | under load ($top_udp/s over UDP, halfway) |"
    echo "| --- | --: | --: |"
    for p in siplb kamailio; do echo "| $p | $(kib_mib "${pss_idle[$p]}") | $(kib_mib "${pss_load[$p]:-}") |"; done
    echo
    if has_part steps; then
        echo "## Highest sustained rate over UDP ($STEP_SECS s per step)"
        echo
        echo "Sustained: lost + retransmitted REGISTERs < $MAX_LOST_PCT% of the step's, and the generator sent at"
        echo "≥ $MIN_ACHIEVED_PCT% of the rate. CPU as a share of one core over the step: the proxy's, and the generator's"
        echo "(client + backends; 2 cores in all)."
        echo
        echo "A step that fails is tried again, $STEP_TRIES tries in all; a target leaves the race when every try failed."
        echo
        echo "| asked /s | target | try | sent /s | 200s | lost | retransmitted | generator late at most, ms | proxy CPU | generator CPU | verdict |"
        echo "| --: | --- | --: | --: | --: | --: | --: | --: | --: | --: | --- |"
        printf '%s\n' "${step_rows[@]}"
        echo
        for t in "${step_targets[@]}"; do echo "- $t: highest sustained step **${best[$t]}/s**"; done
        for t in siplb kamailio; do
            if [[ ${best[$t]} != none && ${best[$t]} == "${best[direct]}" ]]; then
                echo "- $t sustained every step the generator did with no proxy: its ceiling here is the generator's and the machine's, not its own"
            fi
        done
        echo
    fi
    if has_part latency; then
        echo "## Latency over UDP, µs (p50 / p99 / p99.9)"
        echo
        echo "request = client send → backend receive (through the proxy), response = backend send → client"
        echo "receive, transaction = client send → 200 received; only transactions answered without a"
        echo "retransmission. The proxy's share = its figure less direct's: a difference of percentiles, not a"
        echo "percentile of differences; where the machine's own stalls (direct's tail) dominate, it can come out negative."
        echo
        echo "| rate /s | target | 200s | lost + retransmitted | request | response | transaction |"
        echo "| --: | --- | --: | --: | --- | --- | --- |"
        printf '%s\n' "${lat_rows[@]}"
        echo
        for rate in $LATENCY_RATES; do
            for p in siplb kamailio; do
                echo "- at $rate/s, inside $p: request p50 $(share "$rate" "$p" request_us p50) µs, p99 $(share "$rate" "$p" request_us p99) µs, p99.9 $(share "$rate" "$p" request_us p999) µs; response p50 $(share "$rate" "$p" response_us p50) µs, p99 $(share "$rate" "$p" response_us p99) µs, p99.9 $(share "$rate" "$p" response_us p999) µs"
            done
        done
        echo
    fi
    echo "CPU is utime+stime from /proc/PID/stat (all processes of the proxy) at $clk_tck Hz over each"
    echo "run, divided by its 200s; the generator's is its client's getrusage plus its backends' share"
    echo "of /proc. The machine is shared: compare the rows of one run. Raw output: bench/out/load-$stamp/."
} >"$report"
cp "$report" "$root/bench/out/load-latest.md"
cat "$report"
