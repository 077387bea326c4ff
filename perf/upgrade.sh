#!/usr/bin/env bash
# What clients see while the proxy is upgraded under load: wrk runs DURATION and, at
# AT, the proxy is replaced by a new process; connection errors, non-2xx answers
# and p99 latency, side by side:
#   aigw-usr2       aigw's handover (SIGUSR2: the binary at its path, sockets passed)
#   aigw-restart    SIGTERM, then start again (the baseline that refuses connections)
#   nginx-usr2      nginx's binary upgrade: USR2 to the master, then QUIT to the old one
#   haproxy-reload  HAProxy master-worker (-W) with `expose-fd listeners`, SIGUSR2 to the master
# Each in two modes: keep-alive clients, and a new connection per request
# (-H 'Connection: close').
#
# Knobs: DURATION=10 AT=5 (seconds) CONNS=32 THREADS=2 TARGETS="aigw-usr2 aigw-restart
#   nginx-usr2 haproxy-reload" MODES="keepalive close" PORT_BASE=17300 OUT=FILE, and
#   perf/lib.sh's (BUILD, PIN, KEEP, SHARDS...).
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
AT=${AT:-5}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
TARGETS=${TARGETS:-aigw-usr2 aigw-restart nginx-usr2 haproxy-reload}
MODES=${MODES:-keepalive close}
PORT_BASE=${PORT_BASE:-17300}
SHARDS=${SHARDS:-2}
# shellcheck source=perf/lib.sh
. perf/lib.sh
command -v wrk >/dev/null || die "wrk not found (make deps)"

# the proxy family's current processes, for the final stop (successors and new
# masters are not children of this script)
track() { STARTED+=("$@"); }

# upgrade_<target> KIND: replace the running proxy by a new process
upgrade_aigw() {
    local old=${PID[aigw]} new="" i
    kill -USR2 "$old"
    for i in $(seq 200); do
        new=$(sed -n 's/.*handover: serving as pid \([0-9]*\).*/\1/p' "$WORK/aigw.log" | tail -n 1)
        [ -n "$new" ] && break
        sleep 0.05
    done
    [ -n "$new" ] || { note "aigw: no successor"; return 1; }
    track "$new"
    PID[aigw]=$new
}
restart_aigw() {
    local old=${PID[aigw]}
    kill -TERM "$old"
    wait "$old" 2>/dev/null || true
    "${PIN_PROXY[@]}" "$AIGW" -c "$WORK/aigw.conf" >>"$WORK/aigw.log" 2>&1 &
    PID[aigw]=$!; track $!
}
upgrade_nginx() {
    local d=$WORK/nginx old i
    old=$(cat "$d/nginx.pid")
    kill -USR2 "$old"
    for i in $(seq 200); do [ -s "$d/nginx.pid.oldbin" ] && [ -s "$d/nginx.pid" ] && break; sleep 0.05; done
    track "$(cat "$d/nginx.pid")"
    kill -QUIT "$old"     # nginx's documented last step: the old master finishes gracefully
}
upgrade_haproxy() { kill -USR2 "${PID[haproxy]}"; }

# nginx as its binary upgrade needs it: daemonized (a master whose parent never
# changes ignores USR2, see ngx_signal_handler), so its pid comes from the pid file
start_nginx_daemon() {
    local d=$WORK/nginx i
    write_nginx_conf nginx ""
    "${PIN_PROXY[@]}" "$NGINX" -e "$d/error.log" -p "$d" -c "$d/nginx.conf" >"$WORK/nginx.log" 2>&1 \
        || return 1
    for i in $(seq 100); do [ -s "$d/nginx.pid" ] && break; sleep 0.1; done
    PID[nginx]=$(cat "$d/nginx.pid"); track "${PID[nginx]}"
    wait_port "${PORT[nginx]}" "${PID[nginx]}" nginx
}

start_haproxy_mw() {
    local cfg=$WORK/haproxy.cfg
    write_haproxy_conf haproxy "" "stats socket $WORK/haproxy.sock mode 600 expose-fd listeners level admin"
    "${PIN_PROXY[@]}" "$HAPROXY" -W -db -f "$cfg" >"$WORK/haproxy.log" 2>&1 &
    PID[haproxy]=$!; track $!
    wait_port "${PORT[haproxy]}" "${PID[haproxy]}" haproxy
}

# run TARGET MODE: one wrk run with the replacement at AT; prints a result row
run() {
    local target=$1 mode=$2 server action hdr=() out
    case $target in
    aigw-usr2) server=aigw action=upgrade_aigw ;;
    aigw-restart) server=aigw action=restart_aigw ;;
    nginx-usr2) server=nginx action=upgrade_nginx ;;
    haproxy-reload) server=haproxy action=upgrade_haproxy ;;
    *) die "unknown target $target" ;;
    esac
    case $server in
    aigw) start_aigw ;;
    nginx) start_nginx_daemon ;;
    haproxy) start_haproxy_mw ;;
    esac || die "$server did not start"
    [ "$mode" = close ] && hdr=(-H 'Connection: close')
    out=$WORK/wrk-$target-$mode.txt
    "${PIN_LOAD[@]}" wrk -t "$THREADS" -c "$CONNS" -d "${DURATION}s" --latency "${hdr[@]}" \
        -s perf/post-chat.lua "http://127.0.0.1:${PORT[$server]}" >"$out" 2>&1 &
    local load=$!
    sleep "$AT"
    "$action" || note "$target: the replacement failed"
    wait "$load" || true
    local requests errors non2xx p99
    requests=$(awk '/requests in/ { print $1 }' "$out")
    errors=$(awk -F'[ ,]+' '/Socket errors/ { print $5 + $7 + $9 + $11 }' "$out")
    non2xx=$(awk '/Non-2xx/ { print $NF }' "$out")
    p99=$(awk '$1 == "99%" { print $2 }' "$out")
    printf '%-15s %-9s %9s %8s %8s %10s\n' "$target" "$mode" "${requests:-?}" "${errors:-0}" "${non2xx:-0}" "${p99:-?}"
    stop_all
    PID=()
    rm -f "$WORK/nginx/nginx.pid" "$WORK/nginx/nginx.pid.oldbin" "$WORK/aigw.log"
}

check_ports_free
BACKEND_ARGS="--tps 0 --ttft-ms 0"
echo "# perf/upgrade.sh: wrk -t $THREADS -c $CONNS -d ${DURATION}s, the proxy replaced at ${AT}s; $(date -u +%FT%TZ)"
echo "# aigw shards = $SHARDS; nginx worker_processes 1; HAProxy nbthread 1; $(nproc) CPUs, PIN=$PIN"
printf '%-15s %-9s %9s %8s %8s %10s\n' target mode requests errors non-2xx p99
for target in $TARGETS; do
    for mode in $MODES; do
        start_backend || die "the backend did not start"
        run "$target" "$mode"
    done
done
