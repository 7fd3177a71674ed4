#!/usr/bin/env bash
# siplb fleet failover measurement: how long a pool's loss takes to move its users to the
# paired pool, and how many REGISTERs are lost meanwhile, through three replicas that must
# agree ([cluster], README "Fleet") next to a single replica, under the same load.
#
#   3 × sipp UAC ──▶ 3 × siplb ([cluster] peers = each other) ──▶ 4 × sipp UAS
#   1 × sipp UAC ──▶ 1 × siplb (no [cluster])                 ──▶ 4 × sipp UAS
#
#   Pools fe-dc1 (uas0, uas1) and fe-dc2 (uas2, uas3), paired, automatic failover; one route
#   over both, so about half of the users live in fe-dc1. The clients register users at RATE/s
#   in all (the fleet: RATE/3 through each replica), each REGISTER sent once (sipp -nr, so a
#   REGISTER sent to a dead pool is lost, not rescued by a retransmission) and logged with its
#   send time. KILL_AT_S seconds in (plus a random fraction of a second), both servers of
#   fe-dc1 die, the pool is lost:
#     kill  SIGKILL: the processes are gone, their ports closed (ICMP port unreachable);
#     stop  SIGSTOP: the processes hang, their sockets swallow everything (a datacenter cut
#           off: only the probes, the silence watch and the peers can tell).
#   Measured from the clients' logs: the REGISTERs without an answer, and the window from the
#   loss to the send time of the last lost REGISTER through any replica, i.e. until every
#   replica serves fe-dc1's users from fe-dc2. From siplb's logs: when each replica logged the
#   failover. Fresh backends and fresh replicas for every run; the runs alternate fleet and
#   single.
#
# Writes its section at the end of docs/FAILOVER.md (from the line `<!-- fleet-failover.sh -->`
# on; bench/failover.sh keeps that section when it rewrites the file above it) and prints it;
# raw logs go to target/failover/fleet-STAMP/.
#
# Usage: bench/fleet-failover.sh
# Environment (defaults in brackets):
#   SIPLB_BIN     proxy binary [target/release/siplb]; `cargo build --release -p siplb`
#   RATE          REGISTERs per second, all clients together [500]
#   REPEAT        runs per setup and way to die [3]
#   RUN_S         length of a run, s [12]; KILL_AT_S when the pool dies [4]
#   WORKERS       siplb [listen] workers [2]
#   FAILOVER_OUT  where raw logs go [target/failover/fleet-STAMP]
# Needs sipp (apt-get install -y sip-tester) and curl. Talks to 127.0.0.1 only; every sipp run
# is bounded by -m and -timeout; every process it starts is stopped on exit, by its PID.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
. "$root/bench/lib.sh"
# shellcheck disable=SC2034 # read by bench/lib.sh
log_tag=fleet-failover
users=$root/tests/sipp/users.csv
warm_xml=$root/tests/sipp/uac_register.xml
uac_xml=$root/bench/sipp/uac_register_failover.xml

SIPLB_BIN=${SIPLB_BIN:-$root/target/release/siplb}
RATE=${RATE:-500}
REPEAT=${REPEAT:-3}
RUN_S=${RUN_S:-12}
KILL_AT_S=${KILL_AT_S:-4}
WORKERS=${WORKERS:-2}
REPLICAS=3
BACKENDS=4
CLUSTER_TOKEN=bench-fleet-token
MARK='<!-- fleet-failover.sh -->'

if [[ $# -gt 0 ]]; then
    usage
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=${FAILOVER_OUT:-$root/target/failover/fleet-$stamp}
mkdir -p "$out"
report=$root/docs/FAILOVER.md

for tool in sipp curl; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install -y sip-tester curl)"
done
[[ -x $SIPLB_BIN ]] || die "no siplb binary at $SIPLB_BIN: cargo build --release -p siplb, or set SIPLB_BIN"
[[ -f $report ]] || die "no $report: run bench/failover.sh first, it writes the rest of the file"

started_pids=()
cleanup() { kill_started KILL; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# Peers and proxies

uas_pids=()
uas_addrs=()

# pools_toml → the pools and the route every replica shares (one config: one digest).
pools_toml() {
    cat <<EOF
[health]
probe = "options"
interval = "1s"
timeout = "500ms"
fall = 2
rise = 2

[[pool]]
name = "fe-dc1"
role = "front-end"
pair = "fe-dc2"
failover = "auto"
servers = $(servers_toml 0 1)

[[pool]]
name = "fe-dc2"
role = "front-end"
pair = "fe-dc1"
failover = "auto"
servers = $(servers_toml 2 3)

[[route]]
pools = ["fe-dc1", "fe-dc2"]
key = "to-aor"
EOF
}

proxy_pids=()
proxy_addrs=()
ops_addrs=()
# start_replicas NAME N: N replicas on their own SIP and ops ports; with N > 1 each names the
# others as [cluster] peers.
start_replicas() {
    local name=$1 n=$2 i j port peers
    local -a sip=() ops=()
    proxy_pids=()
    proxy_addrs=()
    ops_addrs=()
    for ((i = 0; i < n; i++)); do
        free_udp_port port
        sip+=("$port")
        free_port port
        ops+=("$port")
    done
    for ((i = 0; i < n; i++)); do
        {
            printf '[listen]\nudp = ["127.0.0.1:%s"]\nworkers = %s\n\n' "${sip[$i]}" "$WORKERS"
            printf '[ops]\nlisten = "127.0.0.1:%s"\n\n[log]\nformat = "json"\n\n' "${ops[$i]}"
            if ((n > 1)); then
                peers=""
                for ((j = 0; j < n; j++)); do
                    ((j == i)) || peers+="\"http://127.0.0.1:${ops[$j]}\", "
                done
                printf '[cluster]\npeers = [%s]\n\n' "${peers%, }"
            fi
            pools_toml
        } >"$out/$name-r$i.toml"
        SIPLB_CLUSTER_TOKEN=$CLUSTER_TOKEN start_siplb_process pid "$name-r$i" 100 ||
            die "siplb replica $i not ready (see $out/$name-r$i.stderr)"
        proxy_pids+=("$pid")
        proxy_addrs+=("127.0.0.1:${sip[$i]}")
        ops_addrs+=("127.0.0.1:${ops[$i]}")
    done
}

# uac NAME ADDR CALLS RATE: a measured client, in the background; appends to uac_pids.
uac_pids=()
uac() {
    local name=$1 addr=$2 calls=$3 rate=$4 port
    free_udp_port port
    timeout $((calls / rate + 60)) sipp "$addr" -sf "$uac_xml" -inf "$users" -i 127.0.0.1 \
        -p "$port" -m "$calls" -r "$rate" -nr -nostdin -timeout $((calls / rate + 30))s \
        -trace_logs -log_file "$out/$name.log" -trace_stat -stf "$out/$name.csv" -fd 1 \
        >"$out/$name.out" 2>&1 &
    uac_pids+=("$!")
    started_pids+=("$!")
}

# counts NAME → "sent failed" from sipp's final statistics line.
counts() {
    awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next } NF > 1 { last = $0 }
        END { split(last, v, ";"); print v[c["TotalCallCreated"]] + 0, v[c["FailedCall(C)"]] + 0 }' \
        "$out/$1.csv"
}

# failed_window DEATH_EPOCH LOG... → "lost refused last_ms": in all the clients' logs, the
# REGISTERs without an answer, those answered 503 (no server up for the user: the replica
# still sends fe-dc1's users to fe-dc1, whose servers it sees down), and when the last of
# either was sent, in ms after the death.
failed_window() {
    local t0=$1
    shift
    awk -v t0="$t0" '
        FNR == 1 { f++ }
        $1 == "SENT" { sent[f, $6] = $4 }
        $1 == "LOST" { bad[f, $6] = 1; lost++ }
        $1 == "REFUSED" { bad[f, $6] = 1; refused++ }
        END {
            last = ""
            for (k in bad) { t = (sent[k] - t0) * 1000; if (last == "" || t > last) last = t }
            if (last == "") print 0, 0, "-"; else printf "%d %d %d\n", lost, refused, int(last + 0.5)
        }' "$@"
}

# failover_logged DEATH_EPOCH STDERR → ms after the death when that replica logged fe-dc1's
# failover to fe-dc2 ("-" if it did not).
failover_logged() {
    awk -v t0="$1" -F'"timestamp":"' '/pool failover changed/ && /fe-dc1/ && /"serving":"fe-dc2"/ {
        split($2, a, "\""); cmd = "date -d " a[1] " +%s.%N"; cmd | getline t; close(cmd)
        printf "%.0f", (t - t0) * 1000; found = 1; exit }
        END { if (!found) printf "-" }' "$2"
}

# ---------------------------------------------------------------------------------------------
# Runs

rows=()
declare -A windows=() losts=() refuseds=() lasts=()
for ((run = 1; run <= REPEAT; run++)); do
    for death in kill stop; do
        for setup in fleet single; do
            name=$setup-$death-$run
            n=1
            [[ $setup == fleet ]] && n=$REPLICAS
            calls=$((RATE * RUN_S / n))
            log "$name: $n replica(s), $((calls * n)) REGISTERs at $RATE/s, fe-dc1 dies ($death) at ${KILL_AT_S}s"
            start_uas_backends "$out/$name-uas" 600s 1
            start_replicas "$name" "$n"
            for ((i = 0; i < n; i++)); do warm_up "${proxy_addrs[$i]}" "$name-r$i"; done
            # Every replica must have heard all its peers before the measured run, so that the
            # failover is the fleet's and not a replica's first round.
            if ((n > 1)); then
                for ((i = 0; i < n; i++)); do
                    for ((t = 0; ; t++)); do
                        heard=$(curl -s "http://${ops_addrs[$i]}/status" | grep -o '"result":"ok"' | wc -l || true)
                        ((heard >= n - 1)) && break
                        ((t < 50)) || die "replica $i does not hear its peers (see $out/$name-r$i.stderr)"
                        sleep 0.2
                    done
                done
            fi
            uac_pids=()
            logs=()
            for ((i = 0; i < n; i++)); do
                uac "$name-uac$i" "${proxy_addrs[$i]}" "$calls" $((RATE / n))
                logs+=("$out/$name-uac$i.log")
            done
            # The death's moment (not a synchronisation): KILL_AT_S plus a random fraction of a
            # second, so that it falls at a random phase of the probe and exchange intervals.
            sleep "$(awk -v b="$KILL_AT_S" -v r="$RANDOM" 'BEGIN { printf "%.3f", b + (r % 1000) / 1000 }')"
            t_death=$(date +%s.%N)
            sig=-KILL
            [[ $death == stop ]] && sig=-STOP
            kill "$sig" "${uas_pids[0]}" "${uas_pids[1]}"
            for p in "${uac_pids[@]}"; do wait "$p" || true; done
            sent=0 failed=0
            for ((i = 0; i < n; i++)); do
                read -r s f <<<"$(counts "$name-uac$i")"
                sent=$((sent + s)) failed=$((failed + f))
            done
            read -r lost refused last <<<"$(failed_window "$t_death" "${logs[@]}")"
            logged=""
            for ((i = 0; i < n; i++)); do logged+="$(failover_logged "$t_death" "$out/$name-r$i.stderr") "; done
            logged=${logged% }
            log "  $sent sent, $failed failed: $lost lost, $refused answered 503; last failed sent ${last} ms after the loss; failover logged at ${logged// /, } ms"
            [[ $((lost + refused)) == "$failed" ]] || log "  note: $lost LOST and $refused REFUSED lines but $failed failed calls"
            rows+=("| $setup | $death | $run | $sent | $lost | $refused | $last | ${logged// /, } |")
            windows[$setup-$death]+="$last "
            losts[$setup-$death]+="$lost "
            refuseds[$setup-$death]+="$refused "
            # The slowest replica's failover is the fleet's.
            lasts[$setup-$death]+="$(tr ' ' '\n' <<<"$logged" | grep -v -- '-' | sort -n | tail -n 1) "
            stop_pids 3 "${proxy_pids[@]}" "${uas_pids[@]}"
        done
    done
done

# ---------------------------------------------------------------------------------------------
# Report

summary() { # summary VALUES... → "median (min–max)"
    printf '%s\n' "$@" | grep -v -- '-' | grep . | sort -n | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "-"; exit }
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%.0f (%s–%s)", m, v[1], v[NR] }'
}

section=$out/section.md
{
    echo "$MARK"
    echo "## 3. A pool lost under load, through a fleet of three replicas and through one"
    echo
    echo "Measured by \`bench/fleet-failover.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'): machine $(machine_description);"
    echo "load average at the end $(load_average); $(sipp_version); siplb at commit $(source_commit), release build."
    echo
    echo "Pools fe-dc1 (2 servers) and fe-dc2 (2 servers), paired, \`failover = \"auto\"\`, health as above"
    echo "(OPTIONS every 1 s, 500 ms timeout, fall 2, rise 2). $RATE REGISTER/s in all, each sent once; about"
    echo "half of the users live in fe-dc1. *fleet*: three replicas with \`[cluster]\` naming each other,"
    echo "$((RATE / REPLICAS)) REGISTER/s through each; a pool fails over only when two of the three see it"
    echo "down (README, \"Fleet\"). *single*: one replica, no \`[cluster]\`, all $RATE/s through it. $((KILL_AT_S)) s"
    echo "(plus a random fraction of a second) into a ${RUN_S} s run, both servers of fe-dc1 die: *kill* ="
    echo "SIGKILL (ports closed), *stop* = SIGSTOP (hung: a datacenter cut off)."
    echo "**Lost** = REGISTERs without an answer (sent to a dead server); **503** = REGISTERs siplb"
    echo "answered 503 itself (it saw fe-dc1's servers down but had not failed the pool over yet)."
    echo "**Window** = from the loss to the send time of the last REGISTER that failed either way, through"
    echo "any replica: until every replica serves fe-dc1's users from fe-dc2. **Failover logged** = when"
    echo "each replica logged \`pool failover changed\` for fe-dc1, ms after the loss."
    echo
    echo "| setup | death | run | REGISTERs | lost | 503 | window (ms) | failover logged (ms), per replica |"
    echo "| --- | --- | --: | --: | --: | --: | --: | --- |"
    printf '%s\n' "${rows[@]}"
    echo
    echo "| setup | death | window, ms: median (min–max) | lost: median (min–max) | 503: median (min–max) | last replica's failover, ms |"
    echo "| --- | --- | --: | --: | --: | --: |"
    for death in kill stop; do
        for setup in fleet single; do
            # shellcheck disable=SC2086
            echo "| $setup | $death | $(summary ${windows[$setup-$death]}) | $(summary ${losts[$setup-$death]}) | $(summary ${refuseds[$setup-$death]}) | $(summary ${lasts[$setup-$death]}) |"
        done
    done
    echo
    echo "What the fleet adds. A replica fails a pool over only when a round of views shows a majority"
    echo "of the observers seeing it down. When its own view of a pool changes, it asks its peers at"
    echo "once and then every 100 ms for two intervals (proxy/src/cluster/exchange.rs), so the verdict"
    echo "comes when the second of the three replicas sees the loss, plus one exchange. A hung pool"
    echo "(*stop*) is seen by every replica's probe timeouts and silence watch at about the same time:"
    # shellcheck disable=SC2086
    echo "the fleet's window is $(summary ${windows[fleet-stop]}) ms against $(summary ${windows[single-stop]}) for one replica."
    echo "Closed ports (*kill*) favour a single replica: the ICMP errors of its own $RATE REGISTER/s"
    echo "tell it at once, while each of three replicas forwards a third of them and the fleet waits for"
    echo "the second to hear (ICMP alone takes at most half of a pool down; the probes confirm the rest)."
    echo "Between its own view and the verdict a replica answers the lost pool's users 503 itself (the"
    echo "column 503) rather than forwarding them into the dead pool."
    echo
    echo "Before a change of the own view asked the peers at once (one exchange per interval, an earlier"
    echo "run of this script on the same machine), the last replica's failover came at 2,041 ms"
    echo "(1,696–2,073) after a hung pool and 583 ms (341–1,025) after closed ports."
    echo
    echo "Raw logs of this run were in target/failover/fleet-$stamp/."
} >"$section"

# Keep everything above the mark, replace the section from it on.
tmp=$out/FAILOVER.md
awk -v mark="$MARK" '$0 == mark { exit } { print }' "$report" >"$tmp"
cat "$section" >>"$tmp"
mv "$tmp" "$report"
cat "$section"
