# shellcheck shell=bash
# shellcheck disable=SC2154 # root, out, log_tag, started_pids...: set by the sourcing script (below)
# Shell functions shared by bench/run.sh and bench/failover.sh, sourced by both. Functions only:
# sourcing this file defines them and does nothing else.
#
# What the functions expect of the script that sources them (bash, set -euo pipefail):
#   root          the repository's root
#   out           the directory for raw output (logs, configurations, statistics)
#   log_tag       the prefix of log lines: [log_tag HH:MM:SS] message
#   started_pids  an array: the PIDs of the processes the script started, stopped on exit
#   BACKENDS      how many sipp backends to start
#   SIPLB_BIN     the siplb binary;  WORKERS: siplb [listen] workers = Kamailio children (-n)
# Everything talks to 127.0.0.1 only, and signals only PIDs the script started (or the
# children a process we started forked).

# ---------------------------------------------------------------------------------------------
# Messages

# log MESSAGE...: a timestamped line on stderr.
log() { printf '[%s %s] %s\n' "$log_tag" "$(date -u +%H:%M:%S)" "$*" >&2; }

# die MESSAGE...: logs an error and exits 1.
die() {
    log "ERROR: $*"
    exit 1
}

# usage: prints the script's header comment (line 2 up to `set -euo`) and exits 2.
usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
}

# ---------------------------------------------------------------------------------------------
# Ports and processes, from /proc (no extra tools needed)

# free_udp_port VAR: sets VAR to a UDP port on which nothing listens now (per /proc/net/udp and
# /proc/net/udp6) and that was not handed out before (a variable, not $(...), so that the record
# survives).
free_udp_port() {
    local busy candidate
    declare -gA ports_handed_out
    busy=$(awk 'NR > 1 { split($2, a, ":"); h = a[2]; n = 0
                for (i = 1; i <= length(h); i++) n = n * 16 + index("0123456789ABCDEF", substr(h, i, 1)) - 1
                print n }' /proc/net/udp /proc/net/udp6 2>/dev/null || true)
    for _ in $(seq 1 200); do
        candidate=$((20000 + RANDOM % 30000))
        if [[ -z ${ports_handed_out[$candidate]:-} ]] && ! grep -qx "$candidate" <<<"$busy"; then
            ports_handed_out[$candidate]=1
            printf -v "$1" '%s' "$candidate"
            return 0
        fi
    done
    die "no free UDP port found"
}

# child_pids PID... → the PIDs of the processes whose parent is one of PID... (per /proc/*/stat).
child_pids() {
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v parents=" $* " '
        { r = $0; sub(/^.*\) /, "", r); split(r, f, " "); if (index(parents, " " f[2] " ")) print $1 }'
}

# wait_started PID TRIES WHAT LOG CHECK...: runs the command CHECK... every 0.1 s, TRIES times at
# most, until it succeeds; dies with "WHAT exited at start (see LOG)" if PID exits meanwhile.
# Returns CHECK's last status: non-zero when it never succeeded (the caller says what it means).
wait_started() {
    local pid=$1 tries=$2 what=$3 logfile=$4 i
    shift 4
    for ((i = 0; i < tries; i++)); do
        "$@" && return 0
        kill -0 "$pid" 2>/dev/null || die "$what exited at start (see $logfile)"
        sleep 0.1
    done
    "$@"
}

# stop_pids GRACE_S PID...: SIGCONT (for a stopped process) and SIGTERM to each PID, then SIGKILL
# to whatever is left of them, and of their children, after GRACE_S seconds; waits for them.
# Kamailio's main process stops its children on SIGTERM; any child left over is ours (forked by
# a process we started), found by its parent PID before the SIGTERM.
stop_pids() {
    local grace=$1 pid children i alive
    shift
    children=$(child_pids "$@")
    for pid in "$@"; do
        kill -CONT "$pid" 2>/dev/null || true
        # SIGINT first: siplb drains for its shutdown_grace on SIGTERM, but ends at once on
        # SIGINT; the other processes end on either.
        kill -INT "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
    done
    for ((i = 0; i < grace * 10; i++)); do
        alive=0
        for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    # shellcheck disable=SC2086 # $children: PIDs, one a word
    for pid in "$@" $children; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# kill_started SIGNAL: sends SIGNAL to every PID in started_pids, then waits for them (the exit
# trap's work).
kill_started() {
    local pid
    # SIGINT first, as in stop_pids: siplb ends at once on it.
    for pid in "${started_pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in "${started_pids[@]}"; do kill "-$1" "$pid" 2>/dev/null || true; done
    for pid in "${started_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}

# ---------------------------------------------------------------------------------------------
# Peers

# start_uas_backends PREFIX TIMEOUT [STATS_PERIOD]: BACKENDS sipp UAS (tests/sipp/uas.xml) on free
# ports of 127.0.0.1, in the background, each bounded by -m and -timeout TIMEOUT; backend i
# writes its screen to PREFIXi.out and, with STATS_PERIOD, its statistics every STATS_PERIOD to
# PREFIXi.csv. Sets uas_pids and uas_addrs (IP:port) to these backends; their PIDs are also
# appended to started_pids. Each asks for a 4 MiB socket buffer (SIPP_BUFFER; sipp's own default
# is 64 KiB): a backend must hold a burst a proxy rightly forwards, such as flood.sh's
# 65,000-byte REGISTERs, without dropping the valid request beside it and blaming the proxy.
SIPP_BUFFER=${SIPP_BUFFER:-4194304}
start_uas_backends() {
    local prefix=$1 timeout=$2 period=${3:-} i port
    local -a stats=()
    uas_pids=() uas_addrs=()
    for ((i = 0; i < BACKENDS; i++)); do
        free_udp_port port
        if [[ -n $period ]]; then stats=(-trace_stat -stf "$prefix$i.csv" -fd "$period"); fi
        sipp -sf "$root/tests/sipp/uas.xml" -i 127.0.0.1 -p "$port" -nostdin -m 100000000 \
            -buff_size "$SIPP_BUFFER" -timeout "$timeout" "${stats[@]}" >"$prefix$i.out" 2>&1 &
        started_pids+=($!)
        uas_pids+=($!)
        uas_addrs+=("127.0.0.1:$port")
    done
}

# servers_toml INDEX... → a TOML servers list of those backends of uas_addrs, ids uasINDEX.
servers_toml() {
    local i s=""
    for i in "$@"; do s+="{ id = \"uas$i\", address = \"${uas_addrs[$i]}\", transport = \"udp\" }, "; done
    echo "[ ${s%, } ]"
}

# warm_up ADDR WHAT: a run of 200 REGISTERs (retransmitted as usual, the scenario $warm_xml
# with the users of $users) must all succeed; tries for about 10 s. Proves the proxy forwards
# to every backend before a measured run. Logs go to $out/warm-WHAT-*.
warm_up() {
    local addr=$1 what=$2 i port
    for ((i = 0; i < 10; i++)); do
        free_udp_port port
        timeout 30 sipp "$addr" -sf "$warm_xml" -inf "$users" -i 127.0.0.1 -p "$port" \
            -m 200 -r 400 -nostdin -timeout 20s -timeout_error -trace_stat \
            -stf "$out/warm-$what-$i.csv" >"$out/warm-$what-$i.out" 2>&1 && return 0
        sleep 1
    done
    die "$what at $addr does not answer every REGISTER (see $out/warm-$what-*.out)"
}

# PIN_CORES="P G": the proxy under test runs on core P only and the load generator on core G
# only (taskset), as they would on machines of their own, so that neither preempts the other;
# empty (the default): every process may run on every core.
proxy_pin=()
# shellcheck disable=SC2034 # read by the scripts that start a generator
generator_pin=()
if [[ -n ${PIN_CORES:-} ]]; then
    read -r pin_p pin_g <<<"$PIN_CORES"
    proxy_pin=(taskset -c "$pin_p")
    # shellcheck disable=SC2034 # read by the scripts that start a generator
    generator_pin=(taskset -c "$pin_g")
fi

# start_siplb_process VAR NAME TRIES: siplb ($SIPLB_BIN) with the configuration $out/NAME.toml,
# in the background, its stdout and stderr to $out/NAME.stdout and $out/NAME.stderr; sets VAR
# to its PID and appends it to started_pids, then waits for its `ready` line, TRIES × 0.1 s at
# most (dies if it exits meanwhile). Returns non-zero if it is not ready by then.
start_siplb_process() {
    local var=$1 name=$2 tries=$3
    "${proxy_pin[@]}" "$SIPLB_BIN" --config "$out/$name.toml" >"$out/$name.stdout" 2>"$out/$name.stderr" &
    printf -v "$var" '%s' "$!"
    started_pids+=("$!")
    wait_started "$!" "$tries" siplb "$out/$name.stderr" grep -qsx ready "$out/$name.stdout"
}

# How Kamailio is run, as its operators run it in production (docs/BENCHMARKS.md, "A fair peer"):
# TLSF for both the shared (-x) and the per-process (-X) memory, sized well above what the
# load needs (the scripts record the peak each run used).
KAMAILIO_SHM_MB=${KAMAILIO_SHM_MB:-256}
KAMAILIO_PKG_MB=${KAMAILIO_PKG_MB:-16}
# The memory manager: tlsf. Only to measure what the choice is worth (docs/BENCHMARKS.md):
# qm (Debian's default, with its debug bookkeeping) or fm.
KAMAILIO_MM=${KAMAILIO_MM:-tlsf}

# spawn_kamailio VAR LIST NAME PORT: Kamailio with bench/kamailio/kamailio.cfg, in the
# foreground mode (-DD -E) in the background, TLSF memory managers sized KAMAILIO_SHM_MB and
# KAMAILIO_PKG_MB, WORKERS UDP receivers (-n), listening on udp:127.0.0.1:PORT, its dispatcher
# set 1 = the backends of uas_addrs (written to the file LIST), its control socket (kamcmd) at
# $out/NAME.ctl; its output goes to $out/NAME.out, its PID file is $out/NAME.pid. Sets VAR to
# its PID (not added to started_pids: the caller decides) and kamailio_ctl to the control
# socket's address.
kamailio_ctl=
spawn_kamailio() {
    local var=$1 list=$2 name=$3 port=$4 a
    : >"$list"
    for a in "${uas_addrs[@]}"; do echo "1 sip:$a" >>"$list"; done
    kamailio_ctl=unix:$out/$name.ctl
    rm -f "$out/$name.ctl"
    "${proxy_pin[@]}" kamailio -f "$root/bench/kamailio/kamailio.cfg" -DD -E \
        -x "$KAMAILIO_MM" -X "$KAMAILIO_MM" -m "$KAMAILIO_SHM_MB" -M "$KAMAILIO_PKG_MB" -n "$WORKERS" \
        -l "udp:127.0.0.1:$port" -A "DS_LIST=\"$list\"" -A "CTL_SOCKET=\"$kamailio_ctl\"" \
        -P "$out/$name.pid" >"$out/$name.out" 2>&1 &
    printf -v "$var" '%s' "$!"
}

# kamcmd_value NAME COMMAND... → the value after "NAME:" in what kamcmd COMMAND... prints
# (through kamailio_ctl), or the whole output when NAME is "-".
kamcmd_value() {
    local key=$1
    shift
    kamcmd -s "$kamailio_ctl" "$@" 2>/dev/null |
        awk -v k="$key" 'k == "-" { print; next } { sub(/^[ \t]+/, "") } index($0, k ": ") == 1 { print substr($0, length(k) + 3); exit }' || true
}

# udp_receive_buffer PORT → the receive buffer (bytes, as the kernel accounts it: twice what
# SO_RCVBUF asked) of the UDP socket(s) bound to 127.0.0.1:PORT, per `ss -m`; "?" without ss.
udp_receive_buffer() {
    command -v ss >/dev/null || {
        echo "?"
        return 0
    }
    ss -u -a -m -n "sport = :$1" 2>/dev/null | grep -o 'rb[0-9]*' | sed 's/^rb//' | sort -u | paste -sd, - || true
}

# kamailio_settings NAME PORT: reads back, from the running Kamailio (kamcmd through kamailio_ctl),
# the settings that make it a fair peer, writes kamcmd's answers to $out/NAME.settings, prints a
# one-line summary for the report, and dies when one of them did not take effect: both memory
# managers TLSF with the sizes asked, WORKERS UDP receivers, debug=1 with memdbg and memlog
# above it, every destination active (dispatcher flag A) and probed (P: its probe was answered),
# a receive buffer of
# 4 MiB (maxbuffer; as the kernel counts it: capped at net.core.rmem_max, doubled), when ss is
# there to tell.
kamailio_settings() {
    local name=$1 port=$2 shm shm_size pkg pkg_size receivers debug memdbg memlog flags rcvbuf mm i
    # Dispatcher marks a destination P (probing) when the answer to its first OPTIONS probe
    # comes back, a probe interval after the start: up to 5 s for every destination to be AP.
    for ((i = 0; i < 50; i++)); do
        flags=$(kamcmd_value - dispatcher.list | awk '$1 == "FLAGS:" { printf "%s%s", sep, $2; sep = "," }')
        [[ -n $flags && $flags =~ ^(AP,)*AP$ ]] && break
        sleep 0.1
    done
    case $KAMAILIO_MM in
    tlsf) mm=tlsf_malloc ;;
    qm) mm=q_malloc ;;
    fm) mm=f_malloc ;;
    *) die "KAMAILIO_MM=$KAMAILIO_MM: tlsf, qm or fm" ;;
    esac
    {
        for c in shm.info pkg.info core.shmmem core.ps dispatcher.list; do
            echo "\$ kamcmd $c"
            kamcmd -s "$kamailio_ctl" "$c" 2>&1 || true
        done
        echo "\$ ss -u -a -m -n 'sport = :$port'"
        ss -u -a -m -n "sport = :$port" 2>&1 || true
        for v in debug memdbg memlog maxbuffer; do echo "\$ kamcmd cfg.get core $v"; kamcmd -s "$kamailio_ctl" cfg.get core "$v" 2>&1 || true; done
    } >"$out/$name.settings"
    shm=$(kamcmd_value name shm.info)
    shm_size=$(kamcmd_value size shm.info)
    pkg=$(kamcmd_value name pkg.info)
    pkg_size=$(kamcmd_value size pkg.info)
    receivers=$(kamcmd_value - core.ps | grep -c '^udp receiver' || true)
    debug=$(kamcmd_value - cfg.get core debug)
    memdbg=$(kamcmd_value - cfg.get core memdbg)
    memlog=$(kamcmd_value - cfg.get core memlog)
    rcvbuf=$(udp_receive_buffer "$port")
    [[ $shm == "$mm" && $shm_size == $((KAMAILIO_SHM_MB << 20)) ]] ||
        die "Kamailio's shared memory is ${shm:-?} of ${shm_size:-?} bytes, not $mm of $KAMAILIO_SHM_MB MiB (see $out/$name.settings)"
    [[ $pkg == "$mm" && $pkg_size == $((KAMAILIO_PKG_MB << 20)) ]] ||
        die "Kamailio's private memory is ${pkg:-?} of ${pkg_size:-?} bytes, not $mm of $KAMAILIO_PKG_MB MiB (see $out/$name.settings)"
    [[ $receivers == "$WORKERS" ]] || die "Kamailio runs $receivers UDP receivers, not $WORKERS (see $out/$name.settings)"
    [[ $debug == 1 && $memdbg -gt $debug && $memlog -gt $debug ]] ||
        die "Kamailio's log levels are debug=$debug memdbg=$memdbg memlog=$memlog (see $out/$name.settings)"
    [[ -n $flags && $flags =~ ^(AP,)*AP$ ]] || die "Kamailio's destinations are not all active and probed: flags $flags (see $out/$name.settings)"
    # 4 MiB asked, capped by the kernel at net.core.rmem_max, doubled.
    local want=$((4 << 20)) rmem_max
    rmem_max=$(cat /proc/sys/net/core/rmem_max 2>/dev/null || echo "$want")
    ((rmem_max < want)) && want=$rmem_max
    want=$((want * 2))
    [[ $rcvbuf == "$want" || $rcvbuf == "?" ]] ||
        die "Kamailio's UDP receive buffer is ${rcvbuf:-?} bytes, not $want (see $out/$name.settings)"
    echo "shm $shm $((shm_size >> 20)) MiB, pkg $pkg $((pkg_size >> 20)) MiB per process, $receivers UDP receivers, debug=$debug memdbg=$memdbg memlog=$memlog, destinations $flags (active, probed), UDP receive buffer $rcvbuf bytes"
}

# kamailio_peak_memory → "shm peak X KiB, pkg peak Y KiB": the most shared memory Kamailio used
# since it started (core.shmmem max_used) and the most private memory any of its processes
# uses now (pkg.stats real_used), read through kamailio_ctl.
kamailio_peak_memory() {
    local shm pkg
    shm=$(kamcmd_value max_used core.shmmem)
    pkg=$(kamcmd_value - pkg.stats | awk '$1 == "real_used:" && $2 > m { m = $2 } END { print m + 0 }')
    echo "shm peak $((${shm:-0} >> 10)) KiB of $KAMAILIO_SHM_MB MiB, pkg in use at most $((${pkg:-0} >> 10)) KiB of $KAMAILIO_PKG_MB MiB per process"
}

# ---------------------------------------------------------------------------------------------
# The machine and the versions, for the reports

# machine_description → "N CPUs, CPU model, Linux KERNEL"
machine_description() {
    echo "$(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), Linux $(uname -r)"
}

# load_average → the 1, 5 and 15 minute load averages
load_average() { cut -d' ' -f1-3 /proc/loadavg; }

# sipp_version → "SIPp vX.Y.Z" (empty if sipp does not say)
sipp_version() { sipp -v 2>/dev/null | grep -o 'SIPp v[0-9.]*[0-9]' | head -n 1 || true; }

# kamailio_version → "kamailio X.Y.Z"
kamailio_version() { kamailio -v 2>/dev/null | awk 'NR == 1 { print $2, $3 }'; }

# source_commit → the short hash of the checked-out commit of $root, or "uncommitted"
source_commit() { git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "uncommitted"; }

# ---------------------------------------------------------------------------------------------
# Accounting from /proc, free ports and certificates, shared by the benchmarks.

# tree_pids PID → PID and all its descendants, one a line.
tree_pids() {
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$1" '
        { pid = $1; rest = $0; sub(/^.*\) /, "", rest); split(rest, f, " "); ppid[pid] = f[2] }
        END {
            in_tree[root] = 1; changed = 1
            while (changed) { changed = 0
                for (p in ppid) if (!(p in in_tree) && (ppid[p] in in_tree)) { in_tree[p] = 1; changed = 1 } }
            for (p in in_tree) print p
        }'
}

# switches PID → "voluntary involuntary": the context switches of every thread of PID and of its
# descendants so far (a count, not a time: it does not depend on how busy the machine is).
switches() {
    local p
    for p in $(tree_pids "$1"); do cat /proc/"$p"/task/*/status 2>/dev/null || true; done |
        awk '$1 == "voluntary_ctxt_switches:" { v += $2 } $1 == "nonvoluntary_ctxt_switches:" { n += $2 } END { print v + 0, n + 0 }'
}

# cpu_ticks PID → utime+stime in clock ticks of PID and all its descendants (Kamailio forks its workers;
# siplb is one process whose threads are all counted in its own /proc/PID/stat).
cpu_ticks() {
    cpu_ticks_split "$1" | awk '{ print $1 + $2 }'
}

# cpu_ticks_split PID → "utime stime": the same, user and kernel time apart.
cpu_ticks_split() {
    # A process may exit between the glob and the read: that is not an error here.
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$1" '
        { pid = $1; rest = $0; sub(/^.*\) /, "", rest); split(rest, f, " ")
          ppid[pid] = f[2]; user[pid] = f[12]; sys[pid] = f[13] }
        END {
            in_tree[root] = 1; changed = 1
            while (changed) { changed = 0
                for (p in ppid) if (!(p in in_tree) && (ppid[p] in in_tree)) { in_tree[p] = 1; changed = 1 } }
            u = 0; s = 0; for (p in in_tree) { u += user[p]; s += sys[p] }; print u, s
        }'
}

# memory_kib PID FIELD → FIELD (Rss or Pss, from /proc/*/smaps_rollup) summed over PID and its
# descendants, in KiB. Pss shares each shared page among the processes that map it, so
# Kamailio's shared memory counts once however many of its processes touched it.
memory_kib() {
    local p sum=0 v
    for p in $(tree_pids "$1"); do
        v=$(awk -v k="$2:" '$1 == k { print $2; exit }' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

# free_port VAR: a port free for both TCP and UDP on 127.0.0.1 (per /proc/net), never handed
# out before in this run.
free_port() {
    local busy candidate
    declare -gA ports_handed_out
    busy=$(awk 'NR > 1 { split($2, a, ":"); h = a[2]; n = 0
                for (i = 1; i <= length(h); i++) n = n * 16 + index("0123456789ABCDEF", substr(h, i, 1)) - 1
                print n }' /proc/net/udp /proc/net/udp6 /proc/net/tcp /proc/net/tcp6 2>/dev/null || true)
    for _ in $(seq 1 200); do
        candidate=$((20000 + RANDOM % 12000))
        if [[ -z ${ports_handed_out[$candidate]:-} ]] && ! grep -qx "$candidate" <<<"$busy"; then
            ports_handed_out[$candidate]=1
            printf -v "$1" '%s' "$candidate"
            return 0
        fi
    done
    die "no free port found"
}

# make_certs: a CA and one server certificate (for $tls_name and 127.0.0.1) for every TLS
# endpoint of a run (siplb, Kamailio, stunnel's or the generator's backends), RSA 2048 as Lync
# deployments use, made fresh into a temporary directory kept in $certs (the caller removes it
# on exit); writes Kamailio's TLS settings naming them to $out/kamailio-tls.cfg.
tls_name=siplb.test
make_certs() {
    certs=$(mktemp -d)
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$certs/ca.key" -out "$certs/ca.crt" \
        -days 2 -subj "/CN=siplb bench CA" >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -keyout "$certs/lb.key" -out "$certs/lb.csr" \
        -subj "/CN=$tls_name" >/dev/null 2>&1
    printf '%s\n' "subjectAltName=DNS:$tls_name,IP:127.0.0.1" 'basicConstraints=CA:FALSE' \
        'keyUsage=digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth,clientAuth' >"$certs/ext.cnf"
    openssl x509 -req -in "$certs/lb.csr" -CA "$certs/ca.crt" -CAkey "$certs/ca.key" \
        -CAcreateserial -out "$certs/lb.crt" -days 2 -extfile "$certs/ext.cnf" >/dev/null 2>&1 ||
        die "openssl could not make the test certificate"
    sed -e "s#@CERT@#$certs/lb.crt#; s#@KEY@#$certs/lb.key#; s#@CA@#$certs/ca.crt#" \
        "$root/bench/kamailio/tls.cfg" >"$out/kamailio-tls.cfg"
}

# ---------------------------------------------------------------------------------------------
# A run's output and the processes it starts

# bench_setup NAME: the run's output directory bench/out/NAME<UTC time> (`out`, made), its
# report `$out/results.md`, `stamp` and `clk_tck`; and the processes it starts, stopped on exit
# (and only those): `started_pids` (stopped with SIGTERM), `kamailio_pids` (Kamailio main
# processes: SIGTERM stops their children; what is left after 5 s is killed by PID), `certs` (a
# directory removed on exit).
bench_setup() {
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    out=$root/bench/out/$1$stamp
    mkdir -p "$out"
    # shellcheck disable=SC2034 # read by the scripts
    report=$out/results.md
    # shellcheck disable=SC2034 # read by the scripts
    clk_tck=$(getconf CLK_TCK)
    started_pids=()
    kamailio_pids=()
    certs=
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

bench_cleanup() {
    if [[ ${#kamailio_pids[@]} -gt 0 ]]; then stop_pids 5 "${kamailio_pids[@]}"; fi
    kamailio_pids=()
    kill_started TERM
    if [[ -n ${certs:-} ]]; then rm -rf "$certs"; fi
}
