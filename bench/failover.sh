#!/usr/bin/env bash
# siplb failover measurement: what users lose when a backend dies, and when an operator moves
# them, under a steady REGISTER load — siplb next to Kamailio 5.6 + dispatcher configured the
# same way (bench/kamailio/kamailio.cfg, run as in production: TLSF memory managers, children =
# siplb's workers; see bench/lib.sh spawn_kamailio), in the same run.
#
#   sipp UAC ──▶ proxy ──▶ 4 × sipp UAS          (proxy = siplb, or Kamailio + dispatcher)
#
# Health settings are the contract's defaults for both proxies: OPTIONS every 1 s, 500 ms
# timeout, out after 2 failed probes, back after 2 answered ones.
#
#   1. Death of a backend. The client registers users at RATE/s, each REGISTER sent once (sipp
#      -nr: no retransmission, so a REGISTER sent to a dead server is lost rather than rescued
#      by a retransmission routed after the failover) and logged with its send time; KILL_AT_S
#      seconds in (plus a random fraction of a second, so the death falls at a random phase of
#      the probe interval), one backend dies. Two ways to die:
#        kill  SIGKILL: the process is gone, its port closed (the kernel answers ICMP port
#              unreachable);
#        stop  SIGSTOP: the process hangs, its socket stays open and swallows everything (a
#              frozen host: only the probe timeouts can tell).
#      Measured from the client's log: the REGISTERs without an answer (sipp's failed calls,
#      cross-checked with its statistics) and the window from the death to the send time of the
#      last lost REGISTER, i.e. the last one the proxy sent to the dead server. Fresh backends
#      and a fresh proxy for every run; the runs alternate siplb / Kamailio.
#   2. Operator actions under the same load (target: 0 lost). siplb: pools fe-dc1 and fe-dc2
#      (2 backends each) paired, manual failover; POST /admin/pools/fe-dc1/failover, failback,
#      /admin/servers/ID/drain, undrain, OP_GAP_S seconds apart. Kamailio has no pool pairing:
#      the same drain and undrain of one destination with kamcmd dispatcher.set_state d / a.
#
# Writes the results with the machine description to docs/FAILOVER.md (the method is kept
# there, under the table) and prints them; raw logs go to target/failover/STAMP/.
#
# Usage: bench/failover.sh
# Environment (defaults in brackets):
#   SIPLB_BIN     proxy binary [target/release/siplb]; `cargo build --release -p siplb`
#   RATE          REGISTERs per second [500]
#   REPEAT        runs per proxy and way to die [3]
#   RUN_S         length of a death run, s [14]; KILL_AT_S when the backend dies [5]
#   OP_GAP_S      seconds between operator actions [4]
#   WORKERS       siplb [listen] workers = Kamailio children [2]
#   FAILOVER_OUT  where raw logs go [target/failover/STAMP]
# Needs sipp (apt-get install -y sip-tester), kamailio (apt-get install -y kamailio), curl.
# Talks to 127.0.0.1 only; every sipp run is bounded by -m and -timeout; every process it
# starts is stopped on exit, by the PID it started.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
. "$root/bench/lib.sh"
# shellcheck disable=SC2034 # read by bench/lib.sh
log_tag=failover
users=$root/tests/sipp/users.csv
warm_xml=$root/tests/sipp/uac_register.xml
uac_xml=$root/bench/sipp/uac_register_failover.xml

SIPLB_BIN=${SIPLB_BIN:-$root/target/release/siplb}
RATE=${RATE:-500}
REPEAT=${REPEAT:-3}
RUN_S=${RUN_S:-14}
KILL_AT_S=${KILL_AT_S:-5}
OP_GAP_S=${OP_GAP_S:-4}
WORKERS=${WORKERS:-2}
BACKENDS=4
TOKEN=bench-failover-token

if [[ $# -gt 0 ]]; then
    usage
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=${FAILOVER_OUT:-$root/target/failover/$stamp}
mkdir -p "$out"
report=$root/docs/FAILOVER.md

for tool in sipp kamailio kamcmd curl; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y sip-tester kamailio curl)"
done
[[ -x $SIPLB_BIN ]] || die "no siplb binary at $SIPLB_BIN: cargo build --release -p siplb, or set SIPLB_BIN"

# ---------------------------------------------------------------------------------------------
# Processes we start, stopped on exit by their PIDs (and only those).

started_pids=()
cleanup() { kill_started KILL; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# Peers

uas_pids=()
uas_addrs=()
start_backends() { # start_backends TAG: fresh backends, with their statistics every second
    start_uas_backends "$out/$1-uas" 600s 1
}

# uac NAME ADDR CALLS: the measured client, in the background; sets uac_pid.
uac_pid=
uac() {
    local name=$1 addr=$2 calls=$3 port
    free_udp_port port
    timeout $((calls / RATE + 60)) sipp "$addr" -sf "$uac_xml" -inf "$users" -i 127.0.0.1 \
        -p "$port" -m "$calls" -r "$RATE" -nr -nostdin -timeout $((calls / RATE + 30))s \
        -trace_logs -log_file "$out/$name.log" -trace_stat -stf "$out/$name.csv" -fd 1 \
        >"$out/$name.out" 2>&1 &
    uac_pid=$!
    started_pids+=("$uac_pid")
}

# counts NAME → "sent successful failed" from sipp's final statistics line.
counts() {
    awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next } NF > 1 { last = $0 }
        END { split(last, v, ";"); print v[c["TotalCallCreated"]] + 0, v[c["SuccessfulCall(C)"]] + 0, v[c["FailedCall(C)"]] + 0 }' \
        "$out/$1.csv"
}

# window NAME DEATH_EPOCH → "lost last_ms first_ms": REGISTERs without answer, and when the
# last and first of them were sent, in ms after the death (from the client's log).
window() {
    awk -v t0="$2" '
        $1 == "SENT" { sent[$6] = $4 }
        $1 == "LOST" { lost[$6] = 1 }
        END {
            n = 0; last = ""; first = ""
            for (c in lost) {
                n++; t = (sent[c] - t0) * 1000
                if (last == "" || t > last) last = t
                if (first == "" || t < first) first = t
            }
            if (n == 0) print 0, "-", "-"; else printf "%d %d %d\n", n, int(last + 0.5), int(first + (first < 0 ? -0.5 : 0.5))
        }' "$out/$1.log"
}

# extra NAME DEATH_EPOCH → how many more requests per second each surviving backend (uas0,
# uas2, uas3) received after the death (from 3 s after it) than before it, from their
# per-second statistics: where the dead server's users went.
extra() {
    local i res=""
    for i in 0 2 3; do
        res+="$(awk -F';' -v t0="$2" '
            function epoch(f, p) { split(f, p, "\t"); return p[3] + 0 }
            NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
            NF > 1 { t = epoch($c["CurrentTime"]); n = $c["IncomingCall(P)"] + 0
                     if (t < t0 - 0.5 && t > t0 - 4) { b += n; bn++ }
                     if (t > t0 + 3 && t < t0 + 7) { a += n; an++ } }
            END { if (bn && an) printf "%+.0f", a / an - b / bn; else printf "?" }' "$out/$1-uas$i.csv") "
    done
    echo "${res% }"
}

# ---------------------------------------------------------------------------------------------
# Proxies

proxy_pid=
kamailio_info=
proxy_addr=
ops_addr=
ctl=
start_siplb() { # start_siplb NAME CONFIG_BODY (pools and routes)
    local name=$1 port ops
    free_udp_port port
    free_udp_port ops
    cat >"$out/$name.toml" <<EOF
[listen]
udp = ["127.0.0.1:$port"]
workers = $WORKERS

[ops]
listen = "127.0.0.1:$ops"

[health]
probe = "options"
interval = "1s"
timeout = "500ms"
fall = 2
rise = 2

[log]
format = "json"

$2
EOF
    SIPLB_ADMIN_TOKEN=$TOKEN start_siplb_process proxy_pid "$name" 100 ||
        die "siplb not ready (see $out/$name.stderr)"
    proxy_addr=127.0.0.1:$port
    ops_addr=127.0.0.1:$ops
}

start_kamailio() { # start_kamailio NAME
    local name=$1 port
    free_udp_port port
    spawn_kamailio proxy_pid "$out/$name.list" "$name" "$port"
    ctl=$kamailio_ctl
    started_pids+=("$proxy_pid")
    # Up to 10 s for its control socket; not there yet is no error: the warm-up tells.
    wait_started "$proxy_pid" 100 kamailio "$out/$name.out" test -S "$out/$name.ctl" || true
    proxy_addr=127.0.0.1:$port
}

admin() { # admin PATH → the HTTP status of POST PATH with the token
    curl -s -o "$out/admin.last" -w '%{http_code}' -X POST -H "Authorization: Bearer $TOKEN" "http://$ops_addr$1"
}

# ---------------------------------------------------------------------------------------------
# 1. Death of a backend

calls=$((RATE * RUN_S))
death_rows=()
declare -A windows=() losts=()
for ((run = 1; run <= REPEAT; run++)); do
    for death in kill stop; do
        for proxy in siplb kamailio; do
            name=death-$proxy-$death-$run
            log "$name: $calls REGISTERs at $RATE/s, backend uas1 dies ($death) at ${KILL_AT_S}s"
            start_backends "$name"
            if [[ $proxy == siplb ]]; then
                start_siplb "$name" "[[pool]]
name = \"fe\"
role = \"front-end\"
servers = $(servers_toml 0 1 2 3)

[[route]]
pool = \"fe\"
key = \"to-aor\""
            else
                start_kamailio "$name"
            fi
            warm_up "$proxy_addr" "$name"
            if [[ $proxy == kamailio ]]; then kamailio_info=$(kamailio_settings "$name" "${proxy_addr##*:}"); fi
            uac "$name" "$proxy_addr" "$calls"
            # The death's moment in the run (not a synchronisation): KILL_AT_S plus a random
            # fraction of a second, so that it falls at a random phase of the probe interval.
            sleep "$(awk -v b="$KILL_AT_S" -v r="$RANDOM" 'BEGIN { printf "%.3f", b + (r % 1000) / 1000 }')"
            t_death=$(date +%s.%N)
            if [[ $death == kill ]]; then kill -KILL "${uas_pids[1]}"; else kill -STOP "${uas_pids[1]}"; fi
            wait "$uac_pid" || true
            read -r sent ok failed <<<"$(counts "$name")"
            read -r lost last first <<<"$(window "$name" "$t_death")"
            moved_to=$(extra "$name" "$t_death")
            seen="-"
            if [[ $proxy == siplb ]]; then
                seen=$(awk -v t0="$t_death" -F'"timestamp":"' '/server state changed/ && /"to":"down"/ {
                    split($2, a, "\""); cmd = "date -d " a[1] " +%s.%N"; cmd | getline t; close(cmd)
                    printf "%.0f", (t - t0) * 1000; exit }' "$out/$name.stderr")
                seen=${seen:--}
            fi
            [[ $lost == "$failed" ]] || log "  note: $lost LOST lines but $failed failed calls"
            log "  $sent sent, $ok ok, $failed failed; last lost REGISTER sent ${last} ms after the death"
            death_rows+=("| $proxy | $death | $run | $sent | $failed | $lost | $first | $last | $seen | $moved_to |")
            windows[$proxy-$death]+="$last "
            losts[$proxy-$death]+="$lost "
            stop_pids 3 "$proxy_pid" "${uas_pids[@]}"
        done
    done
done

# ---------------------------------------------------------------------------------------------
# 2. Operator actions under load

op_calls=$((RATE * (OP_GAP_S * 5)))
op_rows=()

name=operator-siplb
log "$name: $op_calls REGISTERs at $RATE/s; failover, failback, drain, undrain ${OP_GAP_S}s apart"
start_backends "$name"
start_siplb "$name" "[[pool]]
name = \"fe-dc1\"
role = \"front-end\"
pair = \"fe-dc2\"
failover = \"manual\"
servers = $(servers_toml 0 1)

[[pool]]
name = \"fe-dc2\"
role = \"front-end\"
pair = \"fe-dc1\"
failover = \"manual\"
servers = $(servers_toml 2 3)

[[route]]
pools = [\"fe-dc1\", \"fe-dc2\"]
key = \"to-aor\""
warm_up "$proxy_addr" "$name"
uac "$name" "$proxy_addr" "$op_calls"
actions=""
for path in /admin/pools/fe-dc1/failover /admin/pools/fe-dc1/failback /admin/servers/uas2/drain /admin/servers/uas2/undrain; do
    sleep "$OP_GAP_S" # the moment of the action in the run
    code=$(admin "$path")
    status=$(curl -s "http://$ops_addr/status")
    if [[ $path == /admin/pools/* ]]; then
        seen="fe-dc1 served by $(grep -o '"name":"fe-dc1"[^}]*' <<<"$status" | grep -o '"serving":"[^"]*"' | head -n 1 | cut -d'"' -f4 || true)"
    else
        seen="uas2 $(grep -o '"id":"uas2"[^}]*' <<<"$status" | grep -o '"state":"[^"]*"' | head -n 1 | cut -d'"' -f4 || true)"
    fi
    log "  POST $path → $code ($seen)"
    [[ $code == 200 ]] || die "POST $path answered $code: $(cat "$out/admin.last")"
    actions+="${path#/admin/} → $seen; "
done
wait "$uac_pid" || true
read -r sent ok failed <<<"$(counts "$name")"
op_rows+=("| siplb | ${actions%; } | $sent | $ok | $failed |")
stop_pids 3 "$proxy_pid" "${uas_pids[@]}"

name=operator-kamailio
log "$name: $((RATE * OP_GAP_S * 3)) REGISTERs at $RATE/s; disable and enable one destination ${OP_GAP_S}s apart"
start_backends "$name"
start_kamailio "$name"
warm_up "$proxy_addr" "$name"
kamailio_info=$(kamailio_settings "$name" "${proxy_addr##*:}")
uac "$name" "$proxy_addr" "$((RATE * OP_GAP_S * 3))"
actions=""
for state in d a; do
    sleep "$OP_GAP_S"
    kamcmd -s "$ctl" dispatcher.set_state "$state" 1 "sip:${uas_addrs[2]}" >>"$out/$name.kamcmd" 2>&1 ||
        die "kamcmd dispatcher.set_state $state failed (see $out/$name.kamcmd)"
    flags=$(kamcmd -s "$ctl" dispatcher.list 2>/dev/null | grep -A2 "sip:${uas_addrs[2]}" | awk '/FLAGS/ { print $2; exit }' || true)
    log "  dispatcher.set_state $state 1 sip:${uas_addrs[2]} (now flags ${flags:-?})"
    actions+="set_state $state → flags $flags; "
done
wait "$uac_pid" || true
read -r sent ok failed <<<"$(counts "$name")"
op_rows+=("| Kamailio | ${actions%; } (destination uas2) | $sent | $ok | $failed |")
stop_pids 3 "$proxy_pid" "${uas_pids[@]}"

# ---------------------------------------------------------------------------------------------
# Report

summary() { # summary VALUES... → "median (min–max)"
    printf '%s\n' "$@" | grep -v -- '-' | sort -n | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "-"; exit }
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%.0f (%s–%s)", m, v[1], v[NR] }'
}

# bench/fleet-failover.sh writes its section at the end of the report, from its mark on: kept.
fleet_section=$(awk '$0 == "<!-- fleet-failover.sh -->" { f = 1 } f { print }' "$report" 2>/dev/null || true)
machine=$(machine_description)
versions="$(sipp_version), $(kamailio_version)"
commit=$(source_commit)
{
    echo "# Failover: what users lose when a server dies, and when an operator moves them"
    echo
    echo "Measured by \`bench/failover.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'):"
    echo
    echo "- machine: $machine; load average at the end $(load_average)"
    echo "- peers: $versions; siplb at commit $commit, release build; siplb workers = Kamailio children = $WORKERS"
    echo "- load: sipp UAC → proxy → $BACKENDS sipp UAS on 127.0.0.1, $RATE REGISTER/s, each REGISTER sent once (no retransmission)"
    echo "- health, both proxies: OPTIONS every 1 s, 500 ms timeout, out after 2 failures, back after 2 answers"
    echo "  (siplb \`[health]\` defaults; Kamailio dispatcher ds_ping_interval=1, ds_probing_threshold=2,"
    echo "  ds_inactive_threshold=2, ds_probing_mode=1, tm fr_timer=500 ms; hash over the To URI; stateless forward)"
    echo "- Kamailio run as in production: \`-x $KAMAILIO_MM -X $KAMAILIO_MM -m $KAMAILIO_SHM_MB -M $KAMAILIO_PKG_MB -n $WORKERS\`, bench/kamailio/kamailio.cfg"
    echo "  (why: docs/BENCHMARKS.md, \"A fair peer\"); read back with kamcmd after each warm-up: $kamailio_info"
    echo
    echo "## 1. A backend dies under load"
    echo
    echo "$calls REGISTERs per run; one of the 4 backends dies ${KILL_AT_S} s in. *kill* = SIGKILL (port closed:"
    echo "the kernel answers ICMP port unreachable); *stop* = SIGSTOP (hung: the socket swallows everything)."
    echo "**Window** = from the death to the send time of the last REGISTER that got no answer, i.e. the"
    echo "last one the proxy sent to the dead server. Lost = REGISTERs without an answer (= sipp's failed"
    echo "calls). For siplb, \"down logged\" is when its \`server state changed\` line says so. The last"
    echo "column is where the dead server's ~$((RATE / BACKENDS)) REGISTER/s went: how many more per second each"
    echo "surviving backend received after the death than before (from its sipp statistics)."
    echo
    echo "| proxy | death | run | REGISTERs | failed calls | lost | first lost sent at (ms) | window (ms) | siplb: down logged at (ms) | extra REGISTER/s on uas0 uas2 uas3 |"
    echo "| --- | --- | --: | --: | --: | --: | --: | --: | --: | --- |"
    printf '%s\n' "${death_rows[@]}"
    echo
    echo "| proxy | death | window, ms: median (min–max) | lost REGISTERs: median (min–max) |"
    echo "| --- | --- | --: | --: |"
    for death in kill stop; do
        for proxy in siplb kamailio; do
            # shellcheck disable=SC2086
            echo "| $proxy | $death | $(summary ${windows[$proxy-$death]}) | $(summary ${losts[$proxy-$death]}) |"
        done
    done
    echo
    echo "A hung server (*stop*): probing once per interval, as Kamailio does, the worst case is the death"
    echo "just after an answered probe, then \`fall\` probes that time out: fall × interval + timeout ="
    echo "2 × 1 s + 500 ms = 2.5 s. siplb does not wait for its probe schedule. It counts, per server, the"
    echo "requests forwarded since the server's last response. Five of them waiting past \`timeout\` with no"
    echo "response since ask for a probe at once and count one failure towards \`fall\` (never the last;"
    echo "README, \"Health and failover\"). The asked probe's timeout then completes the verdict, so under"
    echo "load a hung server is out about timeout + timeout = 1 s after it hung, wherever its probe schedule"
    echo "stood. Before this silence watch, siplb's *stop* median here was 1,150 ms and 138 lost REGISTERs"
    echo "(bounded by interval + fall × timeout = 2 s)."
    echo
    echo "A closed port (*kill*) is different for siplb: each REGISTER it forwards there draws an ICMP port"
    echo "unreachable, which siplb counts as a failure (its passive signal) and which asks for a probe at"
    echo "once, so \`fall\` forwarded REGISTERs take the server down — a few ms under load. Kamailio's"
    echo "stateless forward does not look at ICMP, so it waits for its probes either way."
    echo
    echo "Only the dead server's users lose REGISTERs in both proxies; siplb spreads them over the 3"
    echo "other servers (HRW), Kamailio's algorithm 2 sends them all to the next destination in the list."
    echo
    echo "## 2. Operator actions under load (target: 0 lost)"
    echo
    echo "$op_calls REGISTERs for siplb (actions ${OP_GAP_S} s apart: fail pool fe-dc1 over to fe-dc2 and back,"
    echo "drain and undrain server uas2), $((RATE * OP_GAP_S * 3)) for Kamailio (disable, enable one destination;"
    echo "Kamailio has no pool pairing, so drain/undrain is the comparable action)."
    echo
    echo "| proxy | actions | REGISTERs | answered 200 | failed calls |"
    echo "| --- | --- | --: | --: | --: |"
    printf '%s\n' "${op_rows[@]}"
    echo
    echo "## Method"
    echo
    sed -n '/^#   1\. Death/,/^# Writes the results/p' "$0" | sed '$d; s/^# \{0,3\}//'
    echo
    echo "Every run starts fresh backends and a fresh proxy; the death runs alternate siplb and Kamailio."
    echo "The machine is shared and noisy: compare rows of one run. Raw logs of this run were in target/failover/$stamp/."
    if [[ -n $fleet_section ]]; then
        echo
        echo "$fleet_section"
    fi
} >"$report"
cat "$report"
