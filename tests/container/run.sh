#!/usr/bin/env bash
# The appliance image, built and run for real: podman (runc) builds the Dockerfile's `host`
# target from the release binary on a local Debian bookworm base, runs it with host networking
# on a mounted config directory in front of sipp servers, and checks what an operator relies
# on — SIP through it, /healthz and the image's HEALTHCHECK, a config edit seen and reloaded,
# and `podman stop` under load: the STOPSIGNAL's graceful stop, exit status 0, no call lost.
#
# Runs as root on Debian bookworm (CI runs it from .ci/run), from anywhere in the repository:
#   tests/container/run.sh
# It installs what it needs when missing (podman runc debootstrap; sipp from sip-tester; curl),
# makes the base image localhost/debian:bookworm-slim with debootstrap when it is not there
# (no registry can be pulled from here), builds target/release/siplb (a no-op when it is up to
# date), builds and tags localhost/siplb:dev, and runs the checks, one line each. The base and
# the siplb image stay for the next run; the container, the sipp processes and the scratch
# directory go, whatever happens. Ports (loopback only): SIP 15060 (UDP, TCP), TLS 15061, ops
# 19060, sipp servers 15071-15073, the sipp client 15090 — none of them used by the other CI
# steps. Every wait is a poll with a deadline; every sipp run is bounded by -m and -timeout.
set -euo pipefail

cd "$(dirname "$0")/../.."
repo=$PWD
started=$SECONDS

image=${SIPLB_IMAGE:-localhost/siplb:dev}
base=localhost/debian:bookworm-slim
name=siplb-container-test-$$
sip_port=15060
tls_port=15061
ops_port=19060
ops=http://127.0.0.1:$ops_port
client_port=15090
# shutdown_grace of the container's config, and what `podman stop` may take beyond it before
# the check fails (podman kills at grace + margin, which would show as exit status 137).
grace=5
margin=4
sipp_buffer=4194304 # as tests/src/sipp.rs PEER_BUFFER: a peer must not drop what siplb sends
scenarios=$repo/tests/sipp

work=$(mktemp -d /tmp/siplb-container.XXXXXX)
container_started=0
stopping=0
pids=() # background processes started here and not yet reaped

say() { printf '%s\n' "$*"; }
ok() { printf 'ok   %-58s %s\n' "$1" "${2:-}"; }
fail() {
    printf 'FAIL %s\n' "$*"
    exit 1
}

cleanup() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        say "---- failed after $((SECONDS - started)) s; what the peers and siplb said:"
        if [[ $container_started == 1 ]]; then
            say "-- podman logs $name (last 40 lines)"
            podman logs --tail 40 "$name" 2>&1 || true
        fi
        local f
        for f in "$work"/*.out "$work"/build.log; do
            [[ -s $f ]] || continue
            # sipp writes its errors first, then a screen of counters.
            say "-- $(basename "$f"): errors, then the last 12 lines"
            grep -i -m 5 'error\|unable\|fatal\|fail' "$f" || true
            tail -n 12 "$f"
        done
    fi
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pids=()
    if [[ $container_started == 1 ]]; then
        podman rm --force --time 0 "$name" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT

# ---- tools -----------------------------------------------------------------------------------
need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v sipp >/dev/null || need+=(sip-tester)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# podman's default runtime (crun) fails here on rlimits and cgroups, and its default ulimits
# cannot be set in these VMs: runc, and no default ulimits, for every podman call below.
printf '[containers]\ndefault_ulimits = []\n' >"$work/containers.conf"
export CONTAINERS_CONF=$work/containers.conf
podman=(podman --runtime runc)
say "$(podman --version), $(runc --version | head -n1), $({ sipp -v 2>&1 || true; } | grep -m1 -o 'SIPp v[0-9.]*[0-9]')"

# ---- the base image --------------------------------------------------------------------------
if podman image exists "$base"; then
    ok "base image $base" "(reused)"
else
    t=$SECONDS
    # minbase: dpkg, apt and the essential packages, like the official slim image; then what
    # that image also leaves out (apt lists and caches, documentation but copyright notices,
    # manual pages, translations).
    debootstrap --variant=minbase bookworm "$work/rootfs" >"$work/debootstrap.out" 2>&1 ||
        fail "debootstrap --variant=minbase bookworm (log above)"
    (
        cd "$work/rootfs"
        rm -rf var/lib/apt/lists/* var/cache/apt/*.bin var/cache/apt/archives/*.deb \
            usr/share/man/* usr/share/info/* usr/share/locale/* var/log/*.log
        find usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
        find usr/share/doc -mindepth 1 -type d -empty -delete
    )
    tar -C "$work/rootfs" -c . | podman import - "$base" >"$work/import.out" 2>&1 ||
        fail "podman import of the debootstrap tree as $base"
    rm -rf "$work/rootfs"
    ok "base image $base" "(debootstrap + podman import, $((SECONDS - t)) s)"
fi

# ---- the binary and the image ----------------------------------------------------------------
t=$SECONDS
say "cargo build --release --locked -p siplb (minutes when it has not been built yet)"
cargo build --release --locked -p siplb 2>"$work/cargo.out" || fail "cargo build --release -p siplb"
binary=${CARGO_TARGET_DIR:-target}/release/siplb
if [[ $(realpath "$binary") != $(realpath -m target/release/siplb) ]]; then
    # The image takes target/release/siplb from the build context (.dockerignore).
    mkdir -p target/release
    cp "$binary" target/release/siplb
fi
ok "release binary target/release/siplb" "($((SECONDS - t)) s, $(du -m target/release/siplb | cut -f1) MB)"

t=$SECONDS
old=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
version=$(target/release/siplb --version | awk '{ print $2 }')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [[ $revision != unknown ]] && ! git diff --quiet HEAD 2>/dev/null; then
    revision=$revision-dirty
fi
source_url=$(git remote get-url origin 2>/dev/null || echo unknown)
# --format docker: the OCI image format has no HEALTHCHECK (buildah drops it with a warning).
# --layers=false: no intermediate images kept (the labels change at every build, so they
# would pile up); the build takes seconds anyway.
"${podman[@]}" build --format docker --layers=false --target host \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" \
    --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" --build-arg SOURCE="$source_url" \
    -t "$image" . >"$work/build.log" 2>&1 || fail "podman build --target host (log above)"
# `--target host` must not touch the build stage: its Rust image cannot be pulled here.
if grep -q 'AS build' "$work/build.log"; then
    fail "podman build --target host ran the Rust build stage"
fi
new=$(podman image inspect --format '{{.Id}}' "$image")
if [[ -n $old && $old != "$new" ]] &&
    [[ $(podman image inspect --format '{{len .RepoTags}}' "$old" 2>/dev/null) == 0 ]]; then
    # The image this tag named before, now untagged: this script's previous build.
    podman rmi "$old" >/dev/null 2>&1 || true
fi
size_mb() { podman image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.1f", $1 / 1e6 }'; }
ok "podman build --target host -t $image" \
    "($((SECONDS - t)) s; $(size_mb "$image") MB, base $(size_mb "$base") MB)"

inspect() { podman image inspect --format "$1" "$image"; }
[[ $(inspect '{{.Config.User}}') == 10001:10001 ]] || fail "image user: $(inspect '{{.Config.User}}')"
[[ $(inspect '{{.Config.StopSignal}}') == SIGTERM ]] || fail "STOPSIGNAL: $(inspect '{{.Config.StopSignal}}')"
[[ $(inspect '{{json .HealthCheck.Test}}') == '["CMD","/usr/local/bin/siplb","healthcheck","--config","/etc/siplb/config.toml"]' ]] ||
    fail "HEALTHCHECK: $(inspect '{{json .HealthCheck}}')"
[[ $(inspect '{{index .Config.Labels "org.opencontainers.image.revision"}}') == "$revision" ]] ||
    fail "label revision: $(inspect '{{json .Config.Labels}}')"
[[ $(inspect '{{index .Config.Labels "org.opencontainers.image.version"}}') == "$version" ]] ||
    fail "label version: $(inspect '{{json .Config.Labels}}')"
ok "image: user 10001:10001, STOPSIGNAL SIGTERM, HEALTHCHECK" "(version $version, revision ${revision:0:12})"

# ---- sipp servers and the config directory ---------------------------------------------------
start_uas() { # ID PORT
    sipp -sf "$scenarios/uas.xml" -i 127.0.0.1 -p "$2" -nostdin -m 1000000 -timeout 300s \
        -buff_size "$sipp_buffer" -trace_logs -log_file "$work/$1.log" >"$work/$1.out" 2>&1 &
    pids+=($!)
}
start_uas fe-a 15071
start_uas fe-b 15072
start_uas fe-c 15073

cfg=$work/etc
mkdir -p "$cfg"
# The container runs as uid 10001: the directory and its files must be readable by others.
chmod 755 "$cfg"
cp tls/demo.crt tls/demo.key "$cfg/"
write_config() { # PATH SERVER-LINES...
    local path=$1
    shift
    {
        cat <<EOF
# siplb in the container test (tests/container/run.sh): host networking, loopback ports.
[listen]
udp = ["127.0.0.1:$sip_port"]
tcp = ["127.0.0.1:$sip_port"]
tls = [{ address = "127.0.0.1:$tls_port", cert = "demo.crt", key = "demo.key" }]
advertise = "127.0.0.1:$sip_port"
shutdown_grace = "${grace}s"

[ops]
listen = "127.0.0.1:$ops_port"

[health]
interval = "1s"
timeout = "500ms"
fall = 3
rise = 1

[[pool]]
name = "fe"
servers = [
EOF
        printf '  %s,\n' "$@"
        cat <<EOF
]

[[route]]
methods = ["REGISTER"]
pool = "fe"
EOF
    } >"$path"
    chmod 644 "$path"
}
server_a='{ address = "127.0.0.1:15071", id = "fe-a" }'
server_b='{ address = "127.0.0.1:15072", id = "fe-b" }'
server_c='{ address = "127.0.0.1:15073", id = "fe-c" }'
write_config "$cfg/config.toml" "$server_a" "$server_b"
chmod 644 "$cfg"/*
target/release/siplb check --config "$cfg/config.toml" >"$work/check.out" 2>&1 ||
    fail "siplb check of the test config"

# ---- run it ----------------------------------------------------------------------------------
# Without systemd podman cannot schedule the HEALTHCHECK (it logs that on stderr): the check
# below runs it with `podman healthcheck run`, which records its result the same way.
"${podman[@]}" run -d --name "$name" --network host -v "$cfg:/etc/siplb:ro" "$image" \
    >"$work/run.out" 2>&1 || fail "podman run (log above)"
container_started=1

# reap PID: waits for a background process started here, forgets it, and sets $reaped to its
# exit status.
reap() {
    reaped=0
    wait "$1" || reaped=$?
    local kept=() p
    for p in "${pids[@]}"; do
        [[ $p == "$1" ]] || kept+=("$p")
    done
    pids=("${kept[@]}")
}

# status_field EXPRESSION: evaluates a Python expression over /status (`s`).
status_field() {
    curl -fsS --max-time 2 "$ops/status" 2>/dev/null |
        python3 -c "import json, sys; s = json.load(sys.stdin); print($1)" 2>/dev/null
}
# poll SECONDS DESCRIPTION COMMAND...: runs COMMAND every 0.2 s until it succeeds.
poll() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        if [[ $stopping == 0 ]] &&
            [[ $(podman inspect --format '{{.State.Running}}' "$name" 2>/dev/null) != true ]]; then
            fail "$what: the container is not running"
        fi
        ((SECONDS < deadline)) || fail "$what: not within $limit s"
        sleep 0.2
    done
}
# A server is "up" in /status from the start, until probes say otherwise: it counts here once
# a probe got its answer (a round-trip time), so a sipp server that did not start is noticed.
answering="v['state'] == 'up' and v['last_rtt_ms'] is not None"
servers_up() { # N: N servers up and answering probes in /status
    [[ $(status_field "sum($answering for p in s['pools'] for v in p['servers'])") == "$1" ]]
}
poll 20 "siplb ready in the container" curl -fs --max-time 2 -o /dev/null "$ops/readyz"
poll 10 "fe-a and fe-b up and answering probes" servers_up 2
ok "container up, /readyz 200, fe-a and fe-b answer probes" "($name)"

code=$(curl -sS --max-time 2 -o "$work/healthz" -w '%{http_code}' "$ops/healthz")
[[ $code == 200 && $(cat "$work/healthz") == ok ]] || fail "/healthz from the host: $code $(cat "$work/healthz")"
ok "/healthz from the host" "(200 ok)"

pid=$(podman inspect --format '{{.State.Pid}}' "$name")
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")
[[ $uid == 10001 ]] || fail "siplb runs as uid $uid, not 10001"
ok "siplb runs as uid 10001" "(host pid $pid)"

"${podman[@]}" healthcheck run "$name" >"$work/healthcheck.out" 2>&1 ||
    fail "podman healthcheck run: $(cat "$work/healthcheck.out")"
health=$(podman inspect --format '{{.State.Health.Status}}' "$name")
[[ $health == healthy ]] || fail "health status after podman healthcheck run: $health"
ok "HEALTHCHECK (siplb healthcheck in the container)" "(podman healthcheck run: $health)"

if command -v openssl >/dev/null; then
    subject=$(openssl s_client -connect "127.0.0.1:$tls_port" -servername localhost </dev/null 2>/dev/null |
        sed -n 's/^subject=//p')
    [[ $subject == *"siplb demo"* ]] || fail "TLS on $tls_port: subject '$subject'"
    ok "TLS listener serves the mounted certificate" "($subject)"
fi

# ---- SIP through it --------------------------------------------------------------------------
# log_sizes: the byte length of each server's request log now (offsets to read later lines).
log_sizes() {
    local id
    for id in fe-a fe-b fe-c; do
        stat -c %s "$work/$id.log" 2>/dev/null || echo 0
    done | paste -sd' '
}
# placement FROM-SIZES TO-SIZES OUT: "user server" for each REGISTER logged in between.
placement() {
    python3 - "$work" "$1" "$2" >"$3" <<'EOF'
import sys
work, start, end = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
for server, a, b in zip(["fe-a", "fe-b", "fe-c"], start, end):
    try:
        with open(f"{work}/{server}.log", "rb") as f:
            f.seek(int(a))
            text = f.read(int(b) - int(a)).decode(errors="replace")
    except FileNotFoundError:
        continue
    for line in text.splitlines():
        if line.startswith("REGISTER "):
            print(line.split()[1], server)
EOF
}
# stats FILE COLUMN: a cumulative column of the last line of a sipp -stf file.
stats() {
    python3 - "$1" "$2" <<'EOF'
import sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.strip()]
print(lines[-1].split(";")[lines[0].split(";").index(sys.argv[2])] if len(lines) > 1 else 0)
EOF
}
# uac NAME CALLS RATE: registers the first CALLS users of tests/sipp/users.csv through siplb
# over UDP (in the background; its pid is $uac_pid).
uac() {
    sipp "127.0.0.1:$sip_port" -sf "$scenarios/uac_register.xml" -inf "$scenarios/users.csv" \
        -i 127.0.0.1 -p "$client_port" -m "$2" -r "$3" -buff_size "$sipp_buffer" \
        -nostdin -timeout 30s -timeout_error -trace_stat -fd 1 -stf "$work/$1.csv" \
        >"$work/$1.out" 2>&1 &
    uac_pid=$!
    pids+=("$uac_pid")
}
# uac_result NAME CALLS RC: sipp's exit status 0, CALLS successful, 0 failed, 0 retransmitted.
uac_result() {
    local ok_calls failed retrans
    ok_calls=$(stats "$work/$1.csv" 'SuccessfulCall(C)')
    failed=$(stats "$work/$1.csv" 'FailedCall(C)')
    retrans=$(stats "$work/$1.csv" 'Retransmissions(C)')
    [[ $3 == 0 && $ok_calls == "$2" && $failed == 0 && $retrans == 0 ]] ||
        fail "sipp $1: exit $3, $ok_calls successful, $failed failed, $retrans retransmissions of $2"
    uac_summary="$ok_calls of $2 successful, 0 failed, 0 retransmissions"
}

calls=600
before=$(log_sizes)
uac register $calls 300
reap "$uac_pid"
uac_result register $calls $reaped
placement "$before" "$(log_sizes)" "$work/placement1"
read -r on_a on_b <<<"$(awk '{ n[$2]++ } END { print n["fe-a"] + 0, n["fe-b"] + 0 }' "$work/placement1")"
users=$(cut -d' ' -f1 "$work/placement1" | sort -u | wc -l)
[[ $users == "$calls" && $((on_a + on_b)) == "$calls" && $on_a -gt 0 && $on_b -gt 0 ]] ||
    fail "placement: $users users, fe-a $on_a, fe-b $on_b REGISTERs (want $calls, each once, both used)"
ok "sipp REGISTER x$calls through the container" "($uac_summary; fe-a $on_a, fe-b $on_b)"

# ---- a config edit, saved by rename as editors do --------------------------------------------
version_before=$(status_field "s['config']['version']")
loaded_before=$(status_field "s['config']['loaded_at']")
write_config "$cfg/.config.toml.edit" "$server_a" "$server_b" "$server_c"
mv "$cfg/.config.toml.edit" "$cfg/config.toml"
has_fe_c() {
    [[ $(status_field "any(v['id'] == 'fe-c' and $answering for p in s['pools'] for v in p['servers'])") == True ]]
}
poll 15 "the edited config (fe-c added) loaded" has_fe_c
version_after=$(status_field "s['config']['version']")
loaded_after=$(status_field "s['config']['loaded_at']")
last_error=$(status_field "s['config']['last_error']")
((version_after > version_before)) || fail "config version $version_before -> $version_after"
[[ $last_error == None ]] || fail "config last_error: $last_error"
ok "config edit by rename reloaded" \
    "(version $version_before -> $version_after, loaded_at $loaded_before -> $loaded_after)"

before=$(log_sizes)
uac register-reloaded $calls 300
reap "$uac_pid"
uac_result register-reloaded $calls $reaped
placement "$before" "$(log_sizes)" "$work/placement2"
# Every user is where it was, or on the new server (rendezvous hashing moves no one else).
moved=$(python3 - "$work/placement1" "$work/placement2" <<'EOF'
import sys
first = dict(l.split() for l in open(sys.argv[1]))
second = dict(l.split() for l in open(sys.argv[2]))
to_c = sum(1 for u, s in second.items() if s == "fe-c")
elsewhere = sum(1 for u, s in second.items() if s != "fe-c" and s != first.get(u))
print(len(second), to_c, elsewhere)
EOF
)
read -r users to_c elsewhere <<<"$moved"
[[ $users == "$calls" && $to_c -gt 0 && $elsewhere == 0 ]] ||
    fail "after the reload: $users users placed, $to_c on fe-c, $elsewhere moved between fe-a and fe-b"
ok "the new server takes traffic" "($uac_summary; $to_c users to fe-c, 0 others moved)"

# ---- podman stop under load ------------------------------------------------------------------
stop_calls=300
before=$(log_sizes)
uac stop-under-load $stop_calls 100
# Traffic is flowing through siplb once the servers log REGISTERs again.
flowing() {
    placement "$before" "$(log_sizes)" "$work/placement3"
    [[ $(wc -l <"$work/placement3") -ge 20 ]]
}
poll 10 "load through siplb before the stop" flowing
t0=$(date +%s%N)
stopping=1
"${podman[@]}" stop -t $((grace + margin)) "$name" >"$work/stop.out" 2>&1 &
stop_pid=$!
pids+=("$stop_pid")
# SIGTERM (the image's STOPSIGNAL) starts siplb's graceful stop: /readyz turns 503 at once.
draining() {
    [[ $(curl -sS --max-time 1 "$ops/readyz" 2>/dev/null) == *"shutting down"* ]]
}
poll $grace "/readyz 503 shutting down after podman stop" draining
reap "$stop_pid"
took_ms=$((($(date +%s%N) - t0) / 1000000))
[[ $reaped == 0 ]] || fail "podman stop: exit $reaped: $(cat "$work/stop.out")"
reap "$uac_pid"
uac_result stop-under-load $stop_calls $reaped
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
[[ $exit_code == 0 ]] || fail "siplb's exit status in the container: $exit_code"
((took_ms < (grace + margin) * 1000)) || fail "podman stop took $took_ms ms (grace ${grace} s + $margin s)"
((took_ms >= (grace - 1) * 1000)) || fail "podman stop took $took_ms ms: the ${grace} s grace was not served"
ok "podman stop -t $((grace + margin)) under load" \
    "(exit status 0 after $took_ms ms, grace ${grace} s; sipp $uac_summary)"

say "container test: all checks passed in $((SECONDS - started)) s"
