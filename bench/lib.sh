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
    for pid in "${started_pids[@]}"; do kill "-$1" "$pid" 2>/dev/null || true; done
    for pid in "${started_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}

# ---------------------------------------------------------------------------------------------
# Peers

# start_uas_backends PREFIX TIMEOUT [STATS_PERIOD]: BACKENDS sipp UAS (tests/sipp/uas.xml) on free
# ports of 127.0.0.1, in the background, each bounded by -m and -timeout TIMEOUT; backend i
# writes its screen to PREFIXi.out and, with STATS_PERIOD, its statistics every STATS_PERIOD to
# PREFIXi.csv. Sets uas_pids and uas_addrs (IP:port) to these backends; their PIDs are also
# appended to started_pids.
start_uas_backends() {
    local prefix=$1 timeout=$2 period=${3:-} i port
    local -a stats=()
    uas_pids=() uas_addrs=()
    for ((i = 0; i < BACKENDS; i++)); do
        free_udp_port port
        if [[ -n $period ]]; then stats=(-trace_stat -stf "$prefix$i.csv" -fd "$period"); fi
        sipp -sf "$root/tests/sipp/uas.xml" -i 127.0.0.1 -p "$port" -nostdin -m 100000000 \
            -timeout "$timeout" "${stats[@]}" >"$prefix$i.out" 2>&1 &
        started_pids+=($!)
        uas_pids+=($!)
        uas_addrs+=("127.0.0.1:$port")
    done
}

# start_siplb_process VAR NAME TRIES: siplb ($SIPLB_BIN) with the configuration $out/NAME.toml,
# in the background, its stdout and stderr to $out/NAME.stdout and $out/NAME.stderr; sets VAR
# to its PID and appends it to started_pids, then waits for its `ready` line, TRIES × 0.1 s at
# most (dies if it exits meanwhile). Returns non-zero if it is not ready by then.
start_siplb_process() {
    local var=$1 name=$2 tries=$3
    "$SIPLB_BIN" --config "$out/$name.toml" >"$out/$name.stdout" 2>"$out/$name.stderr" &
    printf -v "$var" '%s' "$!"
    started_pids+=("$!")
    wait_started "$!" "$tries" siplb "$out/$name.stderr" grep -qsx ready "$out/$name.stdout"
}

# spawn_kamailio VAR CFG LIST NAME PORT [ARG...]: Kamailio with the configuration CFG, in the
# foreground mode (-DD -E) in the background, WORKERS children, listening on udp:127.0.0.1:PORT,
# its dispatcher set 1 = the backends of uas_addrs (written to the file LIST), and the further
# options ARG... (-A definitions); its output goes to $out/NAME.out, its PID file is
# $out/NAME.pid. Sets VAR to its PID (not added to started_pids: the caller decides).
spawn_kamailio() {
    local var=$1 cfg=$2 list=$3 name=$4 port=$5 a
    shift 5
    : >"$list"
    for a in "${uas_addrs[@]}"; do echo "1 sip:$a" >>"$list"; done
    kamailio -f "$cfg" -DD -E -n "$WORKERS" -l "udp:127.0.0.1:$port" -A "DS_LIST=\"$list\"" "$@" \
        -P "$out/$name.pid" >"$out/$name.out" 2>&1 &
    printf -v "$var" '%s' "$!"
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
