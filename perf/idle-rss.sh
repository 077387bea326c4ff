#!/usr/bin/env bash
# What an idle keep-alive client connection costs aigw in memory: RSS before, and while
# CONNS connections (each having made one request) are held open, per connection.
# Target for aigw: at most 4 KiB each. See perf/README.md.
#
# Knobs (environment):
#   CONNS=10000 HOLD=20 (seconds idleconns holds them; the reading is taken at once)
#   TARGET=aigw|nginx|haproxy (the others for comparison)  SHARDS=1 (aigw)
#   TARGET=aigw-tls|nginx-tls|haproxy-tls (or *-tls-chacha): TLS connections, each after
#     its handshake and one request; the holder then keeps only the socket
#   PIN=auto|0|1 PROXY_CPU=0 LOAD_CPU=1  PORT_BASE=17100  KEEP=1 (keep the temp dir)
#   BUILD=build AIGW MOCKLLM NGINX HAPROXY IDLECONNS (binaries)
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail

cd "$(dirname "$0")/.."
CONNS=${CONNS:-10000}
HOLD=${HOLD:-20}
TARGET=${TARGET:-aigw}
PORT_BASE=${PORT_BASE:-17100}
BATCH=64            # requests in flight while connecting: also the peak upstream pool size
LIMIT_KIB=4
# shellcheck source=perf/lib.sh
. perf/lib.sh
IDLECONNS=${IDLECONNS:-$BUILD/idleconns}

[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer"
[[ $HOLD =~ ^[1-9][0-9]*$ ]] || die "HOLD must be a whole number of seconds"
[ -x "$IDLECONNS" ] || die "$IDLECONNS not found; run 'make' (it builds perf/tools/*.c)"
[ "$TARGET" != direct ] || die "TARGET is the proxy to measure: aigw, nginx or haproxy (or aigw-tls, nginx-tls, haproxy-tls)"
# The proxy holds one descriptor per client; idleconns raises its own limit.
if [ "$(ulimit -n)" -lt $((CONNS + 1000)) ]; then
    die "ulimit -n is $(ulimit -n), $CONNS connections need $((CONNS + 1000)); raise the hard limit (ulimit -Hn) or run as root"
fi

check_ports_free
start_backend || die "the backend did not start"
start_target "$TARGET" || die "$TARGET did not start"
pid=${PID[$TARGET]}
addr=127.0.0.1:${PORT[$TARGET]}
tls_flag=() kind="keep-alive"
if is_tls "$TARGET"; then tls_flag=(-T); kind="TLS keep-alive"; fi

# Warm-up with the same request concurrency as the measurement: the upstream pool, the
# allocator's first arenas and anything built lazily land in the baseline, not in the
# per-connection figure.
"${PIN_LOAD[@]}" "$IDLECONNS" "${tls_flag[@]}" -n "$BATCH" -b "$BATCH" -s 1 -r /v1/models "$addr" >/dev/null \
    || die "warm-up requests through $TARGET failed"
sleep 1
rss_before=$(rss_kib "$pid")

"${PIN_LOAD[@]}" "$IDLECONNS" "${tls_flag[@]}" -n "$CONNS" -b "$BATCH" -s "$HOLD" -r /v1/models "$addr" \
    >"$WORK/idleconns.out" 2>"$WORK/idleconns.err" &
holder=$!
STARTED+=("$holder")
ready=$(wait_idleconns_ready "$holder" connections)
sleep 2                                               # let the proxy settle
rss_held=$(rss_kib "$pid")
conn_metric=""
if [ -n "${ADMIN_PORT[$TARGET]:-}" ] && command -v curl >/dev/null; then
    conn_metric=$(curl -s --max-time 2 "http://127.0.0.1:${ADMIN_PORT[$TARGET]}/metrics" | grep '^aigw_connections' | tr '\n' ' ' || true)
fi

kill -TERM "$holder" 2>/dev/null || true
wait "$holder" 2>/dev/null || true
held_line=$(grep '^held' "$WORK/idleconns.out" || true)
sleep 1
rss_after=$(rss_kib "$pid")

cat "$WORK/idleconns.err" >&2
echo "idle-rss: $TARGET, $ready idle $kind client connections (asked for $CONNS), each after one GET /v1/models"
[ -n "$held_line" ] && echo "  idleconns: $held_line"
[ -n "$conn_metric" ] && echo "  metrics:   $conn_metric"
awk -v b="$rss_before" -v h="$rss_held" -v a="$rss_after" -v n="$ready" -v lim="$LIMIT_KIB" -v t="$TARGET" 'BEGIN {
    per = (h - b) / n
    printf "  RSS before %d KiB, while held %d KiB, after they closed %d KiB\n", b, h, a
    printf "  growth %d KiB = %.2f KiB (%d bytes) per idle connection", h - b, per, per * 1024
    if (t == "aigw") printf "  [target <= %d KiB: %s]", lim, per <= lim ? "met" : "NOT met"
    printf "\n"
}'
