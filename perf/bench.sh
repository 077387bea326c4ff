#!/usr/bin/env bash
# Side-by-side benchmark: wrk against one aigw-mockllm backend directly, and through
# aigw (1 shard), nginx (1 worker) and HAProxy (1 thread), in one run, alternating.
# Prints req/s, p50, p99 and the proxy's CPU time per request. See perf/README.md.
#
# Knobs (environment):
#   DURATION=10s CONNECTIONS=64 ROUNDS=3 WARMUP=1s   each measured wrk run
#   TARGETS="direct aigw aigw-ai aigw-keys nginx haproxy"  SCENARIOS="get post post2k stream"
#   PIN=auto|0|1 PROXY_CPU=0 LOAD_CPU=1  PORT_BASE=17000  KEEP=1 (keep the temp dir)
#   BUILD=build AIGW MOCKLLM NGINX HAPROXY WRK (binaries); AIGW_BASE=path: targets aigw-base, aigw-keys-base
#   are aigw and aigw-keys from that binary (an earlier build), for before/after in one run
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
WRK=${WRK:-wrk}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-1s}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-3}
TARGETS=${TARGETS:-direct aigw aigw-ai aigw-keys nginx haproxy}
SCENARIOS=${SCENARIOS:-get post post2k stream}
PORT_BASE=${PORT_BASE:-17000}
SHARDS=1   # read by perf/lib.sh: the comparison is one core against one core
export SHARDS
CLK_TCK=$(getconf CLK_TCK)
# shellcheck source=perf/lib.sh
. perf/lib.sh

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer"
command -v "$WRK" >/dev/null || die "wrk not found (make deps installs it)"
command -v curl >/dev/null || die "curl not found (make deps installs it)"

declare -A SCRIPT=([get]=perf/get-models.lua [post]=perf/post-chat.lua [post2k]=perf/post-chat-2k.lua
                   [stream]=perf/stream-chat.lua)
declare -A LABEL=([get]="GET /v1/models" [post]="POST /v1/chat/completions"
                  [post2k]="POST /v1/chat/completions, 2 KiB body"
                  [stream]="POST /v1/chat/completions, SSE stream of 64 tokens")
for s in $SCENARIOS; do [ -n "${SCRIPT[$s]:-}" ] || die "unknown scenario '$s' (get, post, post2k, stream)"; done
for t in $TARGETS; do [ -n "${PORT[$t]:-}" ] || die "unknown target '$t' (direct, aigw, aigw-ai, aigw-keys, aigw-base, aigw-keys-base, nginx, haproxy)"; done

# A first request each way must answer 200, or the figures would measure errors.
check_target() {
    local t=$1 s code
    for s in $SCENARIOS; do
        if [ "$s" = get ]; then
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $BENCH_KEY" \
                "http://127.0.0.1:${PORT[$t]}/v1/models" || true)
        else
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H 'Content-Type: application/json' \
                -H "Authorization: Bearer $BENCH_KEY" \
                -d "{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":16}" \
                "http://127.0.0.1:${PORT[$t]}/v1/chat/completions" || true)
        fi
        if [ "$code" != 200 ]; then
            note "$t: ${LABEL[$s]} answered ${code:-nothing}, not 200; left out"
            return 1
        fi
    done
}

check_ports_free
start_backend || die "the backend did not start"
ACTIVE=()
for t in $TARGETS; do
    if start_target "$t" && check_target "$t"; then ACTIVE+=("$t"); else note "$t: left out of this run"; fi
done
[ ${#ACTIVE[@]} -gt 0 ] || die "no target to measure"

if [ "$PIN" = 1 ]; then
    pinning="proxy on CPU $PROXY_CPU, backend and wrk on CPU $LOAD_CPU (direct: wrk on CPU $PROXY_CPU)"
else
    pinning="off"
fi
echo "bench: ${ACTIVE[*]}; wrk -t1 -c$CONNECTIONS -d$DURATION, $ROUNDS round(s), warm-up $WARMUP; pinning: $pinning"

run_wrk() { # run_wrk TARGET SCENARIO DURATION: wrk's report on stdout
    local t=$1 s=$2 pin=("${PIN_LOAD[@]}")
    # Direct has no proxy: wrk takes the proxy's CPU so the backend has one to itself.
    if [ "$t" = direct ]; then pin=("${PIN_PROXY[@]}"); fi
    "${pin[@]}" "$WRK" -t1 -c"$CONNECTIONS" -d"$3" --latency -s "$REPO/${SCRIPT[$s]}" \
        "http://127.0.0.1:${PORT[$t]}"
}

# One line per run: target scenario round req/s p50_ms p99_ms cpu_us_per_req errors
RESULTS=$WORK/results
: >"$RESULTS"
n=${#ACTIVE[@]}
for round in $(seq "$ROUNDS"); do
    for s in $SCENARIOS; do
        for k in $(seq 0 $((n - 1))); do
            # Rotate the order every round so no target always runs first or last.
            t=${ACTIVE[$(((k + round - 1) % n))]}
            run_wrk "$t" "$s" "$WARMUP" >/dev/null 2>&1 || true
            before=$(cpu_ticks "${PID[$t]}")
            out=$(run_wrk "$t" "$s" "$DURATION" 2>&1) || { note "wrk failed against $t:"; echo "$out" >&2; exit 1; }
            after=$(cpu_ticks "${PID[$t]}")
            line=$(grep '^AIGW_RESULT' <<<"$out") || { note "no result from wrk against $t:"; echo "$out" >&2; exit 1; }
            echo "$line" | awk -v t="$t" -v s="$s" -v round="$round" -v ticks=$((after - before)) -v hz="$CLK_TCK" '{
                for (i = 2; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] }
                err = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_status"] + r["err_timeout"]
                rps = r["requests"] / (r["duration_us"] / 1e6)
                cpu = r["requests"] > 0 ? ticks * 1e6 / hz / r["requests"] : 0
                printf "%s %s %d %.1f %.3f %.3f %.2f %d\n", t, s, round, rps, r["p50_us"] / 1000, r["p99_us"] / 1000, cpu, err
            }' >>"$RESULTS"
            tail -n 1 "$RESULTS" | awk '{
                printf "  round %d  %-4s  %-8s %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms  %7.2f us CPU/req%s\n",
                    $3, $2, $1, $4, $5, $6, $7, ($8 > 0 ? "  ERRORS " $8 : "") }'
        done
    done
done

# ---- summary: the median over rounds, and ratios against nginx ------------------------
median_of() { # median_of TARGET SCENARIO COLUMN
    awk -v t="$1" -v s="$2" -v c="$3" '$1 == t && $2 == s { print $c }' "$RESULTS" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
echo
echo "Median of $ROUNDS round(s). CPU us/req: user+system time of the proxy (all threads, and"
echo "nginx's worker) per completed request; for 'direct', of the backend itself."
for s in $SCENARIOS; do
    echo
    echo "${LABEL[$s]}  (wrk -t1 -c$CONNECTIONS -d$DURATION)"
    printf '  %-8s %10s %9s %9s %11s %7s %11s %9s\n' target "req/s" "p50 ms" "p99 ms" "CPU us/req" errors "req/s/ngx" "CPU/ngx"
    nginx_rps="" nginx_cpu=""
    if [[ " ${ACTIVE[*]} " == *" nginx "* ]]; then
        nginx_rps=$(median_of nginx "$s" 4)
        nginx_cpu=$(median_of nginx "$s" 7)
    fi
    for t in "${ACTIVE[@]}"; do
        err=$(awk -v t="$t" -v s="$s" '$1 == t && $2 == s { e += $8 } END { print e + 0 }' "$RESULTS")
        awk -v t="$t" -v rps="$(median_of "$t" "$s" 4)" -v p50="$(median_of "$t" "$s" 5)" \
            -v p99="$(median_of "$t" "$s" 6)" -v cpu="$(median_of "$t" "$s" 7)" -v err="$err" \
            -v nrps="$nginx_rps" -v ncpu="$nginx_cpu" 'BEGIN {
                rr = (nrps + 0 > 0) ? sprintf("%.2f", rps / nrps) : "-"
                cr = (ncpu + 0 > 0 && t != "direct") ? sprintf("%.2f", cpu / ncpu) : "-"
                printf "  %-8s %10.0f %9.3f %9.3f %11.2f %7d %11s %9s\n", t, rps, p50, p99, cpu, err, rr, cr
            }'
    done
done
