#!/usr/bin/env bash
# siplb benchmark over TCP and TLS, next to UDP and next to Kamailio 5.6 over the same transport.
#
#   udp     sipp UAC ─UDP─▶ proxy ─UDP─▶ 4 × sipp UAS
#   tcp-t1  sipp UAC ─TCP (one connection carrying every user)─▶ proxy ─TCP─▶ 4 × sipp UAS
#   tcp-tn  sipp UAC ─TCP (a connection per call)─▶ proxy ─TCP─▶ 4 × sipp UAS
#   tls-t1  sipp UAC ─TCP─▶ stunnel ─TLS─▶ proxy ─TLS─▶ 4 × (stunnel ─TCP─▶ sipp UAS)
#   tls-tn  the same with a connection (and a TLS handshake) per call
#           (proxy = siplb, or Kamailio 5.6 + dispatcher; Debian's sipp has no TLS, so stunnel4
#            carries its TCP over TLS on both sides; stunnel's CPU is counted apart)
#
# Kamailio runs as in production (bench/kamailio/kamailio.cfg over UDP,
# bench/kamailio/kamailio-streams.cfg over TCP and TLS, started by bench/lib.sh spawn_kamailio
# or spawn_kamailio_streams below): TLSF memory managers, children / tcp_children = siplb's
# workers, OPTIONS probes every second over the backends' own transport, the same certificate
# as siplb; the script reads these settings back with kamcmd and stops if one did not take
# effect.
#
# It measures, in one run, so that the noise of a shared machine hits all of them alike:
#   1. CPU per forwarded REGISTER + 200 OK pair: the proxy's utime+stime (/proc/PID/stat,
#      summed over its processes) over a fixed-count sipp run at a fixed rate, divided by the
#      successful calls; for every leg in LEGS and every proxy, alternating, REPEAT times.
#   2. Memory per idle TLS flow: the proxy's memory growth (siplb: RSS; Kamailio: PSS
#      summed over its processes, so that shared memory counts once) while `flows hold` keeps
#      IDLE_FLOWS TLS connections open, each after a handshake and one REGISTER whose 200 came
#      back; then the same over TCP. The backends are `flows serve` (a TLS or TCP SIP
#      responder), for both proxies.
#   3. TLS connection setup: `flows handshakes` runs HANDSHAKES × (connect, full handshake,
#      close) against each proxy, alternating, REPEAT times: handshakes per second and the
#      proxy's CPU per handshake.
# The result is a markdown table printed and written to bench/out/streams-<time>/results.md
# (and bench/out/streams-latest.md).
#
# Usage: bench/streams.sh [--quick]
#   --quick                    a short run (few calls, few flows, one repetition) to check the setup
# Environment (defaults in brackets):
#   SIPLB_BIN                  proxy binary [target/release/siplb]
#   FLOWS_BIN                  the flow tool [target/release/flows]; build both with
#                              `cargo build --release -p siplb -p siplb-e2e --bin siplb --bin flows`
#   PROXIES                    ["siplb kamailio"]
#   LEGS                       what part 1 measures ["udp tcp-t1 tcp-tn tls-t1"]; tls-tn (a
#                              handshake per call, stunnel's and the proxy's) is left out by
#                              default: part 3 measures what a handshake costs
#   WORKERS                    siplb [listen] workers = Kamailio children and tcp_children [2]
#   KAMAILIO_TLS_CHILDREN      Kamailio's tcp_children when it serves TLS [1]: Debian's 5.6.3
#                              with OpenSSL 3 crashes when several processes do TLS handshakes
#                              (docs/BENCHMARKS.md, "TCP and TLS")
#   RATES, CALLS, REPEAT       part 1: calls/s ["2000 5000"], calls per run [30000], runs per leg [2]
#   TN_RATE                    the rate of the -t tn legs, run once (at the first of RATES) [500]:
#                              on this kind of machine sipp's tn mode stalls for seconds with a few
#                              thousand sockets open and holds no higher rate, through either proxy;
#                              TN_CALLS calls per run [10000]
#   IDLE_FLOWS                 part 2: flows held [10000, capped by the open-file limit]
#   HANDSHAKES, HS_CONCURRENCY part 3: handshakes per run [3000], in flight at once [16]
#   PARTS                      which parts run ["cpu flows handshakes"]
#   FLOW_TRANSPORTS            part 2 over TLS, and over TCP to tell TLS's share ["tls tcp"]
#   PERF_LEGS                  legs of which one more siplb run (at the first rate) is recorded
#                              with `perf record -e cpu-clock`, not counted in the figures: CPU
#                              by binary and top symbols in perf-LEG-RATE.txt [none]
#   KAMAILIO_SHM_MB, KAMAILIO_PKG_MB   Kamailio's -m and -M [256, 16] (bench/lib.sh); the
#                              idle-flow instance gets KAMAILIO_FLOWS_SHM_MB [2048]
# Needs: sipp (sip-tester), kamailio and kamailio-tls-modules, stunnel4, openssl. Talks to
# 127.0.0.0/8 only; every sipp run is bounded by -m and -timeout, every flow tool run by
# --secs; every process it starts is stopped on exit, by the PID it started.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
. "$root/bench/lib.sh"
# shellcheck disable=SC2034 # read by bench/lib.sh
log_tag=streams
scenarios=$root/tests/sipp
users=$scenarios/users.csv

SIPLB_BIN=${SIPLB_BIN:-$root/target/release/siplb}
FLOWS_BIN=${FLOWS_BIN:-$root/target/release/flows}
PROXIES=${PROXIES:-siplb kamailio}
LEGS=${LEGS:-udp tcp-t1 tcp-tn tls-t1}
WORKERS=${WORKERS:-2}
RATES=${RATES:-2000 5000}
TN_RATE=${TN_RATE:-500}
TN_CALLS=${TN_CALLS:-10000}
CALLS=${CALLS:-30000}
REPEAT=${REPEAT:-2}
IDLE_FLOWS=${IDLE_FLOWS:-10000}
HANDSHAKES=${HANDSHAKES:-3000}
HS_CONCURRENCY=${HS_CONCURRENCY:-16}
PARTS=${PARTS:-cpu flows handshakes}
FLOW_TRANSPORTS=${FLOW_TRANSPORTS:-tls tcp}
KAMAILIO_FLOWS_SHM_MB=${KAMAILIO_FLOWS_SHM_MB:-2048}
KAMAILIO_TLS_CHILDREN=${KAMAILIO_TLS_CHILDREN:-1}
BACKENDS=4
MAX_LOST_PCT=0.1
# siplb's goal for an idle TLS flow.
FLOW_BUDGET_KIB=32

if [[ ${1:-} == --quick ]]; then
    CALLS=4000 TN_CALLS=2000 REPEAT=1 IDLE_FLOWS=1000 HANDSHAKES=500
elif [[ $# -gt 0 ]]; then
    usage
fi

bench_setup streams-
has_part() { [[ " $PARTS " == *" $1 "* ]]; }
has_proxy() { [[ " $PROXIES " == *" $1 "* ]]; }

# ---------------------------------------------------------------------------------------------
# Accounting, from /proc

# open_fds PID → descriptors open in PID and its descendants.
open_fds() {
    local p sum=0 n
    for p in $(tree_pids "$1"); do
        n=$(find "/proc/$p/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        sum=$((sum + n))
    done
    echo "$sum"
}

now_ns() { date +%s%N; }


# ---------------------------------------------------------------------------------------------
# Peers: sipp backends, stunnel, the flow tool

udp_uas=() tcp_uas=() tls_uas=()
start_sipp_backends() {
    local i port
    for ((i = 0; i < BACKENDS; i++)); do
        free_port port
        sipp -sf "$scenarios/uas.xml" -i 127.0.0.1 -p "$port" -nostdin -m 100000000 \
            -timeout 3600s >"$out/backend-udp$i.out" 2>&1 &
        started_pids+=($!)
        udp_uas+=("127.0.0.1:$port")
        free_port port
        sipp -sf "$scenarios/uas.xml" -t t1 -i 127.0.0.1 -p "$port" -nostdin -m 100000000 \
            -max_socket 16000 -timeout 3600s >"$out/backend-tcp$i.out" 2>&1 &
        started_pids+=($!)
        tcp_uas+=("127.0.0.1:$port")
    done
}

# stunnel: a server service in front of each TCP sipp backend (tls_uas), and a client service
# per proxy TLS listener (stunnel_front[PROXY]): sipp connects there over TCP.
declare -A stunnel_front=()
stunnel_pid=
start_stunnel() {
    local conf=$out/stunnel.conf i port p
    sed -e "s#@PID@##" "$root/bench/stunnel/stunnel.conf" >"$conf"
    for ((i = 0; i < BACKENDS; i++)); do
        free_port port
        printf '\n[backend%d]\naccept = 127.0.0.1:%s\nconnect = %s\ncert = %s\nkey = %s\n' \
            "$i" "$port" "${tcp_uas[$i]}" "$certs/lb.crt" "$certs/lb.key" >>"$conf"
        tls_uas+=("127.0.0.1:$port")
    done
    for p in $PROXIES; do
        free_port port
        printf '\n[to-%s]\nclient = yes\naccept = 127.0.0.1:%s\nconnect = %s\nCAfile = %s\nverifyChain = yes\ncheckHost = %s\n' \
            "$p" "$port" "${tls_addr[$p]}" "$certs/ca.crt" "$tls_name" >>"$conf"
        stunnel_front[$p]=127.0.0.1:$port
    done
    stunnel4 "$conf" >"$out/stunnel.out" 2>&1 &
    stunnel_pid=$!
    started_pids+=("$stunnel_pid")
}

# start_flows_serve NAME COUNT [--tcp]: `flows serve` with COUNT TLS (or TCP) listeners; sets
# flows_backends.
flows_backends=()
start_flows_serve() {
    local name=$1 count=$2 i
    shift 2
    local -a addrs=()
    for ((i = 0; i < count; i++)); do addrs+=(127.0.0.1:0); done
    "$FLOWS_BIN" serve --cert "$certs/lb.crt" --key "$certs/lb.key" --secs 3600 "$@" "${addrs[@]}" \
        >"$out/$name.out" 2>&1 &
    started_pids+=($!)
    wait_started "$!" 100 "flows serve" "$out/$name.out" grep -qsx ready "$out/$name.out" ||
        die "flows serve did not start (see $out/$name.out)"
    mapfile -t flows_backends < <(awk '$1 == "listening" { print $2 }' "$out/$name.out")
}

# hold_command PROXY TRANSPORT N SECS: sets hold_argv to the `flows hold` command of N flows
# over TRANSPORT (tls or tcp) through PROXY's idle-flow instance, held until SECS after the
# start. (A command line, not a function running it: started in the background, its PID is
# the tool's own, the one to stop.)
hold_argv=()
hold_command() {
    local -a how=(--tcp)
    [[ $2 == tls ]] && how=(--ca "$certs/ca.crt" --name "$tls_name")
    hold_argv=("$FLOWS_BIN" hold --to "${flow_addr[$1-$2]}" "${how[@]}" --flows "$3" --secs "$4")
}

# ---------------------------------------------------------------------------------------------
# sipp client runs

# run_uac NAME ADDR MODE RATE CALLS → "successful failed retransmissions wall_s rc"
# MODE: u1 (UDP), t1 (TCP, one connection), tn (TCP, a connection per call).
run_uac() {
    local name=$1 addr=$2 mode=$3 rate=$4 calls=$5 port limit t0 t1 rc=0
    free_port port
    limit=$((calls / rate + 30))
    t0=$(now_ns)
    timeout $((limit + 30)) sipp "$addr" -sf "$scenarios/uac_register.xml" -inf "$users" \
        -t "$mode" -i 127.0.0.1 -p "$port" -m "$calls" -r "$rate" -nostdin -max_socket 16000 \
        -timeout "${limit}s" -timeout_error -trace_stat -stf "$out/$name.csv" -fd 1s \
        >"$out/$name.out" 2>&1 || rc=$?
    t1=$(now_ns)
    if [[ ! -s $out/$name.csv ]]; then
        awk -v n="$calls" -v ns=$((t1 - t0)) -v rc=$rc 'BEGIN { printf "0 %d 0 %.3f %d\n", n, ns / 1e9, rc }'
        return 0
    fi
    awk -F';' -v wall_ns=$((t1 - t0)) -v rc=$rc '
        NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        NF > 1 { last = $0 }
        END { split(last, v, ";")
              printf "%d %d %d %.3f %d\n", v[col["SuccessfulCall(C)"]], v[col["FailedCall(C)"]],
                     v[col["Retransmissions(C)"]], wall_ns / 1e9, rc }' "$out/$name.csv"
}

# wait_answering NAME ADDR MODE CALLS: succeeds once CALLS registrations at 200/s through ADDR
# all succeed; about 20 tries.
wait_answering() {
    local name=$1 addr=$2 mode=$3 calls=$4 i ok failed
    for ((i = 0; i < 20; i++)); do
        read -r ok failed _ <<<"$(run_uac "warmup-$name-$i" "$addr" "$mode" 200 "$calls")"
        if [[ $ok -eq $calls && $failed -eq 0 ]]; then return 0; fi
        sleep 0.5
    done
    return 1
}

# ---------------------------------------------------------------------------------------------
# The proxies: one instance per proxy and transport, each with the listener of its transport
# only, in front of backends of that transport.

# proxy_addr[PROXY-TRANSPORT]: the listener of part 1's instance; tls_addr[PROXY]: its TLS
# listener, where stunnel's client service connects.
declare -A proxy_pid=() proxy_addr=() tls_addr=() kamailio_ctl_of=() kamailio_info=()

# siplb_config FILE TRANSPORT PORT MAX_CONNECTIONS BACKEND... : siplb's configuration for one
# transport: the listener of that transport only, the backends over it (TLS ones verified
# against the bench's CA and name, as Kamailio verifies them), health as Kamailio's.
siplb_config() {
    local file=$1 transport=$2 port=$3 maxconn=$4 servers="" a
    shift 4
    for a in "$@"; do servers+="  { address = \"$a\", transport = \"$transport\" },"$'\n'; done
    {
        echo "# written by bench/streams.sh"
        echo "[listen]"
        case $transport in
        udp) echo "udp = [\"127.0.0.1:$port\"]" ;;
        tcp) echo "tcp = [\"127.0.0.1:$port\"]" ;;
        tls) echo "tls = [{ address = \"127.0.0.1:$port\", cert = \"$certs/lb.crt\", key = \"$certs/lb.key\" }]" ;;
        esac
        echo "workers = $WORKERS"
        if [[ $transport != udp ]]; then
            # Room for the idle flows (over the default 10,000), and for sipp's connections, which
            # all come from 127.0.0.1 (over the default 256 from one address).
            printf '\n[connections]\nmax = %s\nmax_per_ip = %s\n' "$maxconn" "$maxconn"
        fi
        cat <<EOF

[health]
probe = "options"
interval = "1s"
timeout = "500ms"
fall = 2
rise = 2
EOF
        cat <<EOF

[[pool]]
name = "fe"
role = "front-end"
servers = [
$servers]
EOF
        if [[ $transport == tls ]]; then
            echo "tls = { ca = \"$certs/ca.crt\", server_name = \"$tls_name\" }"
        fi
        cat <<EOF

[[route]]
domain = "contoso.com"
pool = "fe"
key = "to-aor"
EOF
    } >"$file"
}

# start_siplb NAME TRANSPORT BACKEND...: sets proxy_pid[NAME] and the listener's address.
start_siplb() {
    local name=$1 transport=$2 port pid
    shift 2
    [[ -x $SIPLB_BIN ]] || die "no siplb binary at $SIPLB_BIN: cargo build --release -p siplb"
    free_port port
    siplb_config "$out/$name.toml" "$transport" "$port" 4096 "$@"
    start_siplb_process pid "$name" 150 || die "$name did not print ready within 15 s (see $out/$name.stderr)"
    proxy_pid[$name]=$pid
    proxy_addr[siplb-$transport]=127.0.0.1:$port
}

# spawn_kamailio_streams NAME PROTO PORT SHM_MB MAX_CONNECTIONS BACKEND...: Kamailio with
# kamailio-streams.cfg listening on PROTO:127.0.0.1:PORT, dispatcher set 1 = the backends over
# PROTO, tcp_children = kamailio_children PROTO; sets proxy_pid[NAME] and kamailio_ctl_of[NAME].
spawn_kamailio_streams() {
    local name=$1 proto=$2 port=$3 shm=$4 maxconn=$5 a list ctl
    shift 5
    list=$out/$name.list
    : >"$list"
    for a in "$@"; do echo "1 sip:$a;transport=$proto" >>"$list"; done
    ctl=unix:$out/$name.ctl
    rm -f "$out/$name.ctl"
    local -a tls=()
    if [[ $proto == tls ]]; then tls=(-A WITH_TLS -A "TLS_CFG=\"$out/kamailio-tls.cfg\""); fi
    kamailio -f "$root/bench/kamailio/kamailio-streams.cfg" -DD -E \
        -x "$KAMAILIO_MM" -X "$KAMAILIO_MM" -m "$shm" -M "$KAMAILIO_PKG_MB" \
        -l "$proto:127.0.0.1:$port" -A "TCP_CHILDREN=$(kamailio_children "$proto")" -A "MAX_CONNECTIONS=$maxconn" \
        "${tls[@]}" -A "DS_LIST=\"$list\"" -A "CTL_SOCKET=\"$ctl\"" \
        -P "$out/$name.pid" >"$out/$name.out" 2>&1 &
    proxy_pid[$name]=$!
    kamailio_pids+=($!)
    kamailio_ctl_of[$name]=$ctl
    wait_started "$!" 100 "$name" "$out/$name.out" test -S "$out/$name.ctl" || true
}

# kamailio_children PROTO → Kamailio's tcp_children for PROTO: WORKERS, or KAMAILIO_TLS_CHILDREN
# over TLS.
kamailio_children() {
    if [[ $1 == tls ]]; then echo "$KAMAILIO_TLS_CHILDREN"; else echo "$WORKERS"; fi
}

# kamailio_streams_settings NAME SHM_MB MAXCONN PROTO: reads back what makes Kamailio a fair
# peer over TCP/TLS and dies if one did not take effect: both memory managers TLSF with the
# sizes asked, WORKERS tcp receivers and no UDP receiver, debug=1 with memdbg and memlog above
# it, every destination active and probed, the TCP connection lifetime and the limits.
kamailio_streams_settings() {
    local name=$1 shm_mb=$2 maxconn=$3 proto=$4 shm shm_size pkg pkg_size receivers udp debug memdbg memlog flags lifetime i c
    kamailio_ctl=${kamailio_ctl_of[$name]}
    for ((i = 0; i < 50; i++)); do
        flags=$(kamcmd_value - dispatcher.list | awk '$1 == "FLAGS:" { printf "%s%s", sep, $2; sep = "," }')
        [[ -n $flags && $flags =~ ^(AP,)*AP$ ]] && break
        sleep 0.1
    done
    {
        for c in shm.info pkg.info core.shmmem core.ps dispatcher.list core.tcp_options tls.options; do
            echo "\$ kamcmd $c"
            kamcmd -s "$kamailio_ctl" "$c" 2>&1 || true
        done
        for v in debug memdbg memlog; do echo "\$ kamcmd cfg.get core $v"; kamcmd -s "$kamailio_ctl" cfg.get core "$v" 2>&1 || true; done
    } >"$out/$name.settings"
    shm=$(kamcmd_value name shm.info)
    shm_size=$(kamcmd_value size shm.info)
    pkg=$(kamcmd_value name pkg.info)
    pkg_size=$(kamcmd_value size pkg.info)
    receivers=$(kamcmd_value - core.ps | grep -c '^tcp receiver' || true)
    udp=$(kamcmd_value - core.ps | grep -c '^udp receiver' || true)
    debug=$(kamcmd_value - cfg.get core debug)
    memdbg=$(kamcmd_value - cfg.get core memdbg)
    memlog=$(kamcmd_value - cfg.get core memlog)
    lifetime=$(kamcmd_value connection_lifetime core.tcp_options)
    c=$(kamcmd_value 'max_connections(soft)' core.tcp_options)
    [[ $shm == tlsf_malloc && $shm_size == $((shm_mb << 20)) ]] ||
        die "$name: shared memory is ${shm:-?} of ${shm_size:-?} bytes, not tlsf_malloc of $shm_mb MiB (see $out/$name.settings)"
    [[ $pkg == tlsf_malloc && $pkg_size == $((KAMAILIO_PKG_MB << 20)) ]] ||
        die "$name: private memory is ${pkg:-?} of ${pkg_size:-?} bytes, not tlsf_malloc of $KAMAILIO_PKG_MB MiB (see $out/$name.settings)"
    [[ $receivers == "$(kamailio_children "$proto")" && $udp == 0 ]] ||
        die "$name runs $receivers tcp receivers and $udp UDP receivers, not $(kamailio_children "$proto") and 0 (see $out/$name.settings)"
    [[ $debug == 1 && $memdbg -gt $debug && $memlog -gt $debug ]] ||
        die "$name: log levels are debug=$debug memdbg=$memdbg memlog=$memlog (see $out/$name.settings)"
    [[ -n $flags && $flags =~ ^(AP,)*AP$ ]] || die "$name: destinations not all active and probed: flags $flags (see $out/$name.settings)"
    # core.tcp_options gives the lifetime in seconds, or in ticks (1/16 s) in some builds.
    [[ $lifetime == 1800 || $lifetime == $((1800 * 16)) ]] || die "$name: tcp connection_lifetime is ${lifetime:-?}, not 1800 s (see $out/$name.settings)"
    [[ $c == "$maxconn" ]] || die "$name: tcp max_connections is ${c:-?}, not $maxconn (see $out/$name.settings)"
    local tls_info=""
    if [[ $proto == tls ]]; then
        c=$(kamcmd_value 'max_tls_connections(soft)' core.tcp_options)
        [[ $c == "$maxconn" ]] || die "$name: max_tls_connections is ${c:-?}, not $maxconn (see $out/$name.settings)"
        tls_info=", tls module with the bench certificate (tls.cfg), TLS 1.2+"
    fi
    echo "shm $shm $((shm_size >> 20)) MiB, pkg $pkg $((pkg_size >> 20)) MiB per process, $receivers tcp receivers, no UDP receiver, debug=$debug memdbg=$memdbg memlog=$memlog, destinations $flags (active, probed over $proto), tcp connection lifetime 1800 s, max connections $maxconn$tls_info"
}

# start_kamailio NAME TRANSPORT: the Kamailio instance of one transport of part 1.
start_kamailio() {
    local name=$1 transport=$2 port
    free_port port
    case $transport in
    udp)
        uas_addrs=("${udp_uas[@]}")
        spawn_kamailio "proxy_pid[$name]" "$out/$name.list" "$name" "$port"
        kamailio_pids+=("${proxy_pid[$name]}")
        kamailio_ctl_of[$name]=$kamailio_ctl
        wait_started "${proxy_pid[$name]}" 100 "$name" "$out/$name.out" test -S "$out/$name.ctl" || true
        kamailio_info[$name]=$(kamailio_settings "$name" "$port")
        ;;
    tcp)
        spawn_kamailio_streams "$name" tcp "$port" "$KAMAILIO_SHM_MB" 4096 "${tcp_uas[@]}"
        kamailio_info[$name]=$(kamailio_streams_settings "$name" "$KAMAILIO_SHM_MB" 4096 tcp)
        ;;
    tls)
        spawn_kamailio_streams "$name" tls "$port" "$KAMAILIO_SHM_MB" 4096 "${tls_uas[@]}"
        kamailio_info[$name]=$(kamailio_streams_settings "$name" "$KAMAILIO_SHM_MB" 4096 tls)
        ;;
    esac
    proxy_addr[kamailio-$transport]=127.0.0.1:$port
}

# ---------------------------------------------------------------------------------------------
# Run

for tool in sipp kamailio kamcmd stunnel4 openssl; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install -y sip-tester kamailio kamailio-tls-modules stunnel4 openssl"
done
[[ -x $FLOWS_BIN ]] || die "no flow tool at $FLOWS_BIN: cargo build --release -p siplb-e2e --bin flows"
# A crashing Kamailio would dump its shared memory (gigabytes) into its working directory.
ulimit -c 0
# Each idle flow is a descriptor in the tool and the proxy (two in siplb: the client's and the
# backend connection); raise the soft limit as far as the hard one allows.
ulimit -Sn "$(ulimit -Hn)"
nofile=$(ulimit -Sn)
max_flows=$(((nofile - 500) / 2))
if ((IDLE_FLOWS > max_flows)); then
    log "open files limited to $nofile (hard limit): $max_flows idle flows, not $IDLE_FLOWS"
    IDLE_FLOWS=$max_flows
fi
machine=$(machine_description)
memory="$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
versions="$(sipp_version), $(kamailio_version), $(stunnel4 -version 2>&1 | awk '/^stunnel/ { print $1, $2; exit }')"
load_at_start=$(load_average)
commit=$(source_commit)
log "machine: $machine, $memory, load average $load_at_start; output in $out"
make_certs

transports=()
for leg in $LEGS; do
    t=${leg%%-*}
    [[ " ${transports[*]} " == *" $t "* ]] || transports+=("$t")
done

# 1. CPU per pair.
declare -A cpu_sum=() ok_sum=() st_sum=() lossy=() unfinished=()
cpu_rows=() summary_keys=()
if has_part cpu; then
    start_sipp_backends
    for t in "${transports[@]}"; do
        for p in $PROXIES; do
            case $p in
            siplb)
                case $t in
                udp) start_siplb siplb-udp udp "${udp_uas[@]}" ;;
                tcp) start_siplb siplb-tcp tcp "${tcp_uas[@]}" ;;
                tls) ;; # after stunnel, whose backends it needs
                esac
                ;;
            kamailio) [[ $t == tls ]] || start_kamailio "kamailio-$t" "$t" ;;
            esac
        done
    done
    if [[ " ${transports[*]} " == *" tls "* ]]; then
        # The proxies' TLS ports are chosen first, for stunnel's client services; stunnel's
        # server services (tls_uas) come up with it; then the proxies.
        for p in $PROXIES; do free_port port; tls_addr[$p]=127.0.0.1:$port; done
        start_stunnel
        for p in $PROXIES; do
            port=${tls_addr[$p]##*:}
            case $p in
            siplb)
                siplb_config "$out/siplb-tls.toml" tls "$port" 4096 "${tls_uas[@]}"
                start_siplb_process pid siplb-tls 150 || die "siplb-tls did not print ready (see $out/siplb-tls.stderr)"
                proxy_pid[siplb-tls]=$pid
                ;;
            kamailio)
                spawn_kamailio_streams kamailio-tls tls "$port" "$KAMAILIO_SHM_MB" 4096 "${tls_uas[@]}"
                kamailio_info[kamailio-tls]=$(kamailio_streams_settings kamailio-tls "$KAMAILIO_SHM_MB" 4096 tls)
                ;;
            esac
        done
    fi
    # Warm-up: health starts from probes; a run with no failure means every backend is in use.
    for leg in $LEGS; do
        t=${leg%%-*} mode=${leg#*-}
        [[ $t == udp ]] && mode=u1
        for p in $PROXIES; do
            addr=${proxy_addr[$p-$t]:-}
            [[ $t == tls ]] && addr=${stunnel_front[$p]}
            wait_answering "$p-$leg" "$addr" "$mode" 500 || die "$p over $leg does not forward REGISTERs (see $out/warmup-$p-$leg-*.out)"
        done
    done
    for p in "${!kamailio_info[@]}"; do log "$p: ${kamailio_info[$p]}"; done
    first_rate=${RATES%% *}
    for asked in $RATES; do
        for ((run = 1; run <= REPEAT; run++)); do
            for leg in $LEGS; do
                t=${leg%%-*} mode=${leg#*-} rate=$asked calls=$CALLS
                [[ $t == udp ]] && mode=u1
                # A connection per call: once, at TN_RATE (sipp's own limit, see the header).
                if [[ $mode == tn ]]; then
                    [[ $asked == "$first_rate" ]] || continue
                    rate=$TN_RATE calls=$TN_CALLS
                fi
                [[ " ${summary_keys[*]} " == *" $rate/$leg "* ]] || summary_keys+=("$rate/$leg")
                for p in $PROXIES; do
                    addr=${proxy_addr[$p-$t]:-}
                    [[ $t == tls ]] && addr=${stunnel_front[$p]}
                    pid=${proxy_pid[$p-$t]}
                    log "$leg $p run $run: $calls calls at $rate/s"
                    c0=$(cpu_ticks "$pid")
                    s0=0
                    [[ $t == tls ]] && s0=$(cpu_ticks "$stunnel_pid")
                    read -r ok failed retrans wall _ <<<"$(run_uac "cpu-$leg-$p-$rate-$run" "$addr" "$mode" "$rate" "$calls")"
                    c1=$(cpu_ticks "$pid")
                    s1=0
                    [[ $t == tls ]] && s1=$(cpu_ticks "$stunnel_pid")
                    load=$(cut -d' ' -f1 /proc/loadavg)
                    read -r cpu per st <<<"$(awk -v d=$((c1 - c0)) -v s=$((s1 - s0)) -v hz="$clk_tck" -v ok="$ok" -v tls="$([[ $t == tls ]] && echo 1)" 'BEGIN {
                        printf "%.2f %s %s\n", d / hz, (ok > 0 ? sprintf("%.1f", d / hz * 1e6 / ok) : "-"),
                               ((tls && ok > 0) ? sprintf("%.1f", s / hz * 1e6 / ok) : "-") }')"
                    log "  $ok ok, $failed failed, $retrans retransmissions, ${wall}s, CPU ${cpu}s, $per µs/pair (stunnel $st), load $load"
                    cpu_rows+=("| $rate | $leg | $p | $run | $ok | $failed | $retrans | $wall | $cpu | **$per** | $st | $load |")
                    if awk -v f="$failed" -v re="$retrans" -v n="$calls" -v maxl="$MAX_LOST_PCT" \
                        'BEGIN { exit !((f + re) * 100 >= maxl * n) }'; then
                        lossy[$rate-$leg]+="$p run $run, "
                    fi
                    if ((ok + failed < calls)); then
                        unfinished[$rate-$leg]+="$p run $run ($((ok + failed)) of $calls), "
                    fi
                    cpu_sum[$rate-$leg-$p]=$(awk -v a="${cpu_sum[$rate-$leg-$p]:-0}" -v b="$cpu" 'BEGIN { print a + b }')
                    ok_sum[$rate-$leg-$p]=$((${ok_sum[$rate-$leg-$p]:-0} + ok))
                    st_sum[$rate-$leg-$p]=$((${st_sum[$rate-$leg-$p]:-0} + s1 - s0))
                done
            done
        done
    done
    # Profiles: one more siplb run of each of PERF_LEGS at the first rate, under `perf record`,
    # not counted above (sampling costs the profiled process CPU of its own).
    for leg in ${PERF_LEGS:-}; do
        t=${leg%%-*} mode=${leg#*-} rate=$first_rate calls=$CALLS
        [[ $t == udp ]] && mode=u1
        [[ $mode == tn ]] && rate=$TN_RATE calls=$TN_CALLS
        addr=${proxy_addr[siplb-$t]:-}
        [[ $t == tls ]] && addr=${stunnel_front[siplb]}
        pid=${proxy_pid[siplb-$t]}
        log "$leg siplb under perf record: $calls calls at $rate/s"
        perf record -e cpu-clock -F 999 -p "$pid" -o "$out/perf-$leg-$rate.data" >"$out/perf-$leg-$rate.log" 2>&1 &
        perf_pid=$!
        started_pids+=("$perf_pid")
        run_uac "perf-$leg-$rate" "$addr" "$mode" "$rate" "$calls" >/dev/null
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        perf report -i "$out/perf-$leg-$rate.data" --stdio --no-children --sort dso 2>/dev/null |
            grep -v '^#' | grep -v '^$' | head -n 12 >"$out/perf-$leg-$rate.txt" || true
        perf report -i "$out/perf-$leg-$rate.data" --stdio --no-children --sort dso,sym 2>/dev/null |
            grep -v '^#' | grep -v '^$' | head -n 40 >>"$out/perf-$leg-$rate.txt" || true
    done
    # Part 1's processes go before part 2 measures memory.
    if [[ ${#kamailio_pids[@]} -gt 0 ]]; then stop_pids 5 "${kamailio_pids[@]}"; fi
    kamailio_pids=()
    kill_started TERM
    started_pids=()
fi

# 2. and 3.: idle flows (over each of FLOW_TRANSPORTS) and TLS handshakes, against
# `flows serve` as the backends.
declare -A flow_rows=() hs_cpu=() hs_ok=() hs_secs=() flow_addr=()
hs_rows=()
flow_transports=$FLOW_TRANSPORTS
if ! has_part flows; then flow_transports=tls; fi
if has_part flows || has_part handshakes; then
    maxconn=$((IDLE_FLOWS + 1000))
    for ft in $flow_transports; do
        serve_opts=()
        [[ $ft == tcp ]] && serve_opts=(--tcp)
        start_flows_serve "flows-backends-$ft" "$BACKENDS" "${serve_opts[@]}"
        log "$ft backends (flows serve): ${flows_backends[*]}"
        for p in $PROXIES; do
            free_port port
            case $p in
            siplb)
                siplb_config "$out/siplb-flows-$ft.toml" "$ft" "$port" "$maxconn" "${flows_backends[@]}"
                start_siplb_process pid "siplb-flows-$ft" 150 || die "siplb-flows-$ft did not print ready (see $out/siplb-flows-$ft.stderr)"
                proxy_pid[siplb-flows-$ft]=$pid
                ;;
            kamailio)
                spawn_kamailio_streams "kamailio-flows-$ft" "$ft" "$port" "$KAMAILIO_FLOWS_SHM_MB" "$maxconn" "${flows_backends[@]}"
                kamailio_info[kamailio-flows-$ft]=$(kamailio_streams_settings "kamailio-flows-$ft" "$KAMAILIO_FLOWS_SHM_MB" "$maxconn" "$ft")
                log "kamailio-flows-$ft: ${kamailio_info[kamailio-flows-$ft]}"
                ;;
            esac
            flow_addr[$p-$ft]=127.0.0.1:$port
        done
        # Warm-up: a few flows through each proxy (connect, handshake, REGISTER, 200), so that
        # what is made once (TLS contexts, allocator arenas) is in the baseline.
        for p in $PROXIES; do
            ok=0
            for ((i = 0; i < 50; i++)); do
                hold_command "$p" "$ft" 100 3
                "${hold_argv[@]}" >"$out/warmup-flows-$p-$ft.out" 2>&1 || true
                if grep -q '^holding 100$' "$out/warmup-flows-$p-$ft.out"; then ok=1; break; fi
                sleep 0.5
            done
            [[ $ok == 1 ]] || die "$p does not carry $ft flows to flows serve (see $out/warmup-flows-$p-$ft.out)"
        done
    done
fi

if has_part flows; then
    for ft in $flow_transports; do
        for p in $PROXIES; do
            pid=${proxy_pid[$p-flows-$ft]}
            field=Rss
            [[ $p == kamailio ]] && field=Pss
            sleep 2
            m0=$(memory_kib "$pid" "$field")
            f0=$(open_fds "$pid")
            log "idle flows: $IDLE_FLOWS $ft flows held through $p ($field before: $m0 KiB)"
            hold_command "$p" "$ft" "$IDLE_FLOWS" 900
            "${hold_argv[@]}" >"$out/flows-$p-$ft.out" 2>&1 &
            hold_pid=$!
            started_pids+=("$hold_pid")
            for ((i = 0; i < 8000; i++)); do
                grep -q '^holding' "$out/flows-$p-$ft.out" && break
                kill -0 "$hold_pid" 2>/dev/null || break
                sleep 0.1
            done
            held=$(awk '$1 == "holding" { print $2 }' "$out/flows-$p-$ft.out")
            [[ -n $held ]] || die "flows hold through $p did not report (see $out/flows-$p-$ft.out)"
            # Settled: idle for 5 s (no more traffic after the last 200).
            sleep 5
            m1=$(memory_kib "$pid" "$field")
            f1=$(open_fds "$pid")
            shm_used=-
            if [[ $p == kamailio ]]; then
                kamailio_ctl=${kamailio_ctl_of[kamailio-flows-$ft]}
                shm_used=$(($(kamcmd_value used core.shmmem) >> 10))
            fi
            log "  $held held ($(grep -o 'failed [0-9]*' "$out/flows-$p-$ft.out")), $field $m0 → $m1 KiB, descriptors $f0 → $f1"
            flow_rows[$ft-$p]="$held $(awk '$1 == "established" { print $4, $6 }' "$out/flows-$p-$ft.out") $m0 $m1 $f0 $f1 $field $shm_used"
            kill -TERM "$hold_pid" 2>/dev/null || true
            wait "$hold_pid" 2>/dev/null || true
            # The proxy sees the closes; let it drop the flows before the next measurement.
            for ((i = 0; i < 100; i++)); do
                (($(open_fds "$pid") < f0 + 100)) && break
                sleep 0.2
            done
        done
    done
fi

if has_part handshakes; then
    for ((run = 1; run <= REPEAT; run++)); do
        for p in $PROXIES; do
            pid=${proxy_pid[$p-flows-tls]}
            log "handshakes: $HANDSHAKES against $p, $HS_CONCURRENCY at a time, run $run"
            c0=$(cpu_ticks "$pid")
            res=$("$FLOWS_BIN" handshakes --to "${flow_addr[$p-tls]}" --ca "$certs/ca.crt" --name "$tls_name" \
                --count "$HANDSHAKES" --concurrency "$HS_CONCURRENCY" --secs 120 2>&1 | tee "$out/handshakes-$p-$run.out" | tail -n 1)
            c1=$(cpu_ticks "$pid")
            read -r _ _ ok _ failed _ secs _ rate <<<"$res"
            per=$(awk -v d=$((c1 - c0)) -v hz="$clk_tck" -v ok="${ok:-0}" 'BEGIN { printf "%s", (ok > 0 ? sprintf("%.0f", d / hz * 1e6 / ok) : "-") }')
            load=$(cut -d' ' -f1 /proc/loadavg)
            log "  $ok ok, $failed failed, ${secs}s, $rate/s, $per µs CPU per handshake, load $load"
            hs_rows+=("| $p | $run | $ok | $failed | $secs | $rate | $(awk -v d=$((c1 - c0)) -v hz="$clk_tck" 'BEGIN { printf "%.2f", d / hz }') | **$per** | $load |")
            hs_cpu[$p]=$((${hs_cpu[$p]:-0} + c1 - c0))
            hs_ok[$p]=$((${hs_ok[$p]:-0} + ${ok:-0}))
            hs_secs[$p]=$(awk -v a="${hs_secs[$p]:-0}" -v b="${secs:-0}" 'BEGIN { print a + b }')
        done
    done
fi

# ---------------------------------------------------------------------------------------------
# Report

{
    echo "# siplb over TCP and TLS, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- machine: $machine, $memory; load average at start $load_at_start, at end $(load_average)"
    echo "- peers: $versions; siplb at commit $commit ($SIPLB_BIN)"
    echo "- siplb workers = Kamailio children and tcp_children = $WORKERS (Kamailio over TLS: tcp_children = $KAMAILIO_TLS_CHILDREN); both probe with OPTIONS every 1 s over the backends' transport (500 ms, fall 2, rise 2)"
    echo "- certificate: RSA 2048, signed by a CA made for the run (openssl); the same for siplb, Kamailio, stunnel's backends and flows serve"
    for p in "${!kamailio_info[@]}"; do echo "- $p, read back with kamcmd: ${kamailio_info[$p]}"; done
    if has_part cpu; then
        echo
        echo "## CPU per forwarded REGISTER + 200 OK ($CALLS calls per run; $TN_CALLS for the -t tn legs)"
        echo
        echo "| rate /s | leg | proxy | run | successful | failed | retransmissions | wall s | proxy CPU s | µs CPU / pair | stunnel µs / pair | load after |"
        echo "| --: | --- | --- | --: | --: | --: | --: | --: | --: | --: | --: | --: |"
        printf '%s\n' "${cpu_rows[@]}"
        echo
        echo "| rate /s | leg | siplb µs / pair | Kamailio µs / pair | siplb / Kamailio | stunnel µs / pair (siplb runs, Kamailio runs) |"
        echo "| --: | --- | --: | --: | --: | --- |"
        for key in "${summary_keys[@]}"; do
            rate=${key%%/*} leg=${key#*/}
            {
                s=$(awk -v c="${cpu_sum[$rate-$leg-siplb]:-0}" -v n="${ok_sum[$rate-$leg-siplb]:-0}" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / n; else print "-" }')
                k=$(awk -v c="${cpu_sum[$rate-$leg-kamailio]:-0}" -v n="${ok_sum[$rate-$leg-kamailio]:-0}" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / n; else print "-" }')
                r=$(awk -v s="$s" -v k="$k" 'BEGIN { if (s != "-" && k != "-" && k > 0) printf "%.2f", s / k; else print "-" }')
                st=-
                if [[ $leg == tls-* ]]; then
                    st=$(awk -v a="${st_sum[$rate-$leg-siplb]:-0}" -v na="${ok_sum[$rate-$leg-siplb]:-0}" \
                        -v b="${st_sum[$rate-$leg-kamailio]:-0}" -v nb="${ok_sum[$rate-$leg-kamailio]:-0}" -v hz="$clk_tck" \
                        'BEGIN { printf "%s, %s", (na ? sprintf("%.1f", a / hz * 1e6 / na) : "-"), (nb ? sprintf("%.1f", b / hz * 1e6 / nb) : "-") }')
                fi
                note=""
                [[ -n ${lossy[$rate-$leg]:-} ]] && note=" (not comparable: ${lossy[$rate-$leg]%, } lost pairs)"
                [[ -n ${unfinished[$rate-$leg]:-} ]] && note+=" (sipp did not start every call in time: ${unfinished[$rate-$leg]%, }; the figure is per call completed)"
                echo "| $rate | $leg | **$s** | $k | **$r**$note | $st |"
            }
        done
    fi
    if has_part flows; then
        echo
        echo "## Memory per idle flow"
        echo
        echo "Each flow: TCP connect, full TLS handshake (over TLS), one REGISTER whose 200 came back,"
        echo "then idle; memory read 5 s after the last flow was set up. siplb: RSS of its process;"
        echo "Kamailio: PSS summed over its processes (its shared memory counted once)."
        echo
        echo "| transport | proxy | flows held | failed | set-up s | memory before KiB | memory held KiB | KiB per flow | descriptors before → held | Kamailio shm in use KiB |"
        echo "| --- | --- | --: | --: | --: | --: | --: | --: | --- | --: |"
        for ft in $flow_transports; do
            for p in $PROXIES; do
                [[ -n ${flow_rows[$ft-$p]:-} ]] || continue
                read -r held failed secs m0 m1 f0 f1 field shm <<<"${flow_rows[$ft-$p]}"
                per=$(awk -v a="$m0" -v b="$m1" -v n="$held" 'BEGIN { if (n > 0) printf "%.1f", (b - a) / n; else print "-" }')
                echo "| $ft | $p | $held | $failed | $secs | $m0 ($field) | $m1 | **$per** | $f0 → $f1 | $shm |"
            done
        done
        echo
        echo "- siplb's goal: ≤ $FLOW_BUDGET_KIB KiB per idle flow"
    fi
    if has_part handshakes; then
        echo
        echo "## TLS connection setup ($HANDSHAKES × connect, full handshake, close; $HS_CONCURRENCY at a time)"
        echo
        echo "| proxy | run | handshakes | failed | seconds | handshakes /s | proxy CPU s | µs CPU / handshake | load after |"
        echo "| --- | --: | --: | --: | --: | --: | --: | --: | --: |"
        printf '%s\n' "${hs_rows[@]}"
        echo
        for p in $PROXIES; do
            [[ -n ${hs_ok[$p]:-} ]] || continue
            awk -v p="$p" -v c="${hs_cpu[$p]}" -v n="${hs_ok[$p]}" -v s="${hs_secs[$p]}" -v hz="$clk_tck" 'BEGIN {
                printf "- %s: **%.0f µs CPU per handshake**, %.0f handshakes/s (all runs)\n", p, (n ? c / hz * 1e6 / n : 0), (s > 0 ? n / s : 0) }'
        done
    fi
    echo
    echo "CPU is utime+stime from /proc/PID/stat (all processes of the proxy) at ${clk_tck} Hz. The machine"
    echo "is shared: compare the rows of one run. Raw output: bench/out/streams-$stamp/."
} >"$report"
cp "$report" "$root/bench/out/streams-latest.md"
cat "$report"
