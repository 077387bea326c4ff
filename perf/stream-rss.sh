#!/usr/bin/env bash
# What a concurrent SSE stream costs aigw in memory: RSS before, and while STREAMS slow
# streamed chat completions are open through it at once (the mock sends one token a
# second, so nearly every stream is waiting for its next token), per stream.
# Target: at most 12 KiB each. See perf/README.md.
#
# Knobs (environment):
#   STREAMS=2000 HOLD=10 (seconds the streams are held; the reading is taken at once)
#   TARGET=aigw-ai|aigw|aigw-keys|nginx|haproxy  SHARDS=1 (aigw)
#   PIN=auto|0|1 PROXY_CPU=0 LOAD_CPU=1  PORT_BASE=17200  KEEP=1 (keep the temp dir)
#   BUILD=build AIGW MOCKLLM NGINX HAPROXY IDLECONNS (binaries)
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail

cd "$(dirname "$0")/.."
STREAMS=${STREAMS:-2000}
HOLD=${HOLD:-10}
TARGET=${TARGET:-aigw-ai}
PORT_BASE=${PORT_BASE:-17200}
BATCH=${BATCH:-128}     # streams being opened at once
LIMIT_KIB=12
# Each stream lasts 64 s (64 tokens at 1 token/s): longer than opening them all and HOLD.
BACKEND_ARGS="--tps 1 --ttft-ms 0 --max-tokens 64 --max-running 100000"
# shellcheck shell=bash source=perf/lib.sh
. perf/lib.sh
IDLECONNS=${IDLECONNS:-$BUILD/idleconns}

[[ $STREAMS =~ ^[1-9][0-9]*$ ]] || die "STREAMS must be a positive integer"
[[ $HOLD =~ ^[1-9][0-9]*$ ]] || die "HOLD must be a whole number of seconds"
[ -x "$IDLECONNS" ] || die "$IDLECONNS not found; run 'make' (it builds perf/tools/*.c)"
[ "$TARGET" != direct ] || die "TARGET is the proxy to measure: aigw, aigw-ai, aigw-keys, nginx or haproxy"
# The proxy holds two descriptors per stream (client and upstream).
if [ "$(ulimit -n)" -lt $((2 * STREAMS + 1000)) ]; then
    die "ulimit -n is $(ulimit -n), $STREAMS streams need $((2 * STREAMS + 1000)); raise the hard limit (ulimit -Hn) or run as root"
fi

check_ports_free
start_backend || die "the backend did not start"
start_target "$TARGET" || die "$TARGET did not start"
pid=${PID[$TARGET]}
addr=127.0.0.1:${PORT[$TARGET]}
path=/v1/chat/completions

# Warm-up: a few streams opened and dropped, so what is built on first use (the
# allocator's first arenas, the usage meters' first slab, the provided buffers touched
# by receives) is in the baseline, not in the per-stream figure. A short backend-side
# stream would do, but this mock streams at one token a second: hold for a second.
"${PIN_LOAD[@]}" "$IDLECONNS" -S -n 16 -b 16 -s 1 -r "$path" "$addr" >/dev/null \
    || die "warm-up streams through $TARGET failed"
sleep 1
rss_before=$(rss_kib "$pid")

"${PIN_LOAD[@]}" "$IDLECONNS" -S -n "$STREAMS" -b "$BATCH" -s "$HOLD" -r "$path" "$addr" \
    >"$WORK/idleconns.out" 2>"$WORK/idleconns.err" &
holder=$!
STARTED+=("$holder")
ready=$(wait_idleconns_ready "$holder" streams)
sleep 2                                               # a token or two on every stream
rss_held=$(rss_kib "$pid")
conn_metric=""
if [[ $TARGET == aigw* ]] && command -v curl >/dev/null; then
    admin_port=$PORT_AIGW_ADMIN
    [ "$TARGET" = aigw-ai ] && admin_port=$PORT_AIGW_AI_ADMIN
    [ "$TARGET" = aigw-keys ] && admin_port=$PORT_AIGW_KEYS_ADMIN
    conn_metric=$(curl -s --max-time 2 "http://127.0.0.1:$admin_port/metrics" | grep '^aigw_connections' | tr '\n' ' ' || true)
fi

kill -TERM "$holder" 2>/dev/null || true
wait "$holder" 2>/dev/null || true
held_line=$(grep '^held' "$WORK/idleconns.out" || true)

cat "$WORK/idleconns.err" >&2
echo "stream-rss: $TARGET, $ready concurrent SSE streams (asked for $STREAMS), 1 token/s each"
[ -n "$held_line" ] && echo "  idleconns: $held_line"
[ -n "$conn_metric" ] && echo "  metrics:   $conn_metric"
awk -v b="$rss_before" -v h="$rss_held" -v n="$ready" -v lim="$LIMIT_KIB" -v t="$TARGET" 'BEGIN {
    per = (h - b) / n
    printf "  RSS before %d KiB, while streaming %d KiB\n", b, h
    printf "  growth %d KiB = %.2f KiB (%d bytes) per stream", h - b, per, per * 1024
    if (t ~ /^aigw/) printf "  [target <= %d KiB: %s]", lim, per <= lim ? "met" : "NOT met"
    printf "\n"
}'
