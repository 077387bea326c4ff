#!/usr/bin/env bash
# Side-by-side benchmark: wrk against one aigw-mockllm backend directly, and through
# aigw (1 shard), nginx (1 worker) and HAProxy (1 thread), in one run, alternating;
# over plain HTTP, or over TLS (the *-tls targets, `make bench-tls`).
# Prints req/s, p50, p99 and the proxy's CPU time per request. See perf/README.md.
#
# Knobs (environment):
#   DURATION=10s CONNECTIONS=64 ROUNDS=3 WARMUP=1s   each measured wrk run
#   TARGETS="direct aigw aigw-ai aigw-keys nginx haproxy"  SCENARIOS="get post post2k stream"
#   TLS: TARGETS="aigw-tls nginx-tls haproxy-tls aigw-tls-chacha nginx-tls-chacha haproxy-tls-chacha"
#        plus aigw-fast-tls aigw-fast-tls-chacha: aigw linked against the fast wolfSSL (AIGW_FAST=build/fast/aigw)
#        SCENARIOS="post stream handshake resume"  HS_CLIENTS=8 (parallel openssl s_time)
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
HS_CLIENTS=${HS_CLIENTS:-8}
[[ $HS_CLIENTS =~ ^[1-9][0-9]*$ ]] || die "HS_CLIENTS must be a positive integer"

declare -A SCRIPT=([get]=perf/get-models.lua [post]=perf/post-chat.lua [post2k]=perf/post-chat-2k.lua
                   [stream]=perf/stream-chat.lua)
declare -A LABEL=([get]="GET /v1/models" [post]="POST /v1/chat/completions"
                  [post2k]="POST /v1/chat/completions, 2 KiB body"
                  [stream]="POST /v1/chat/completions, SSE stream of 64 tokens"
                  [handshake]="TLS: a full handshake per request (GET /v1/models, HTTP/1.0)"
                  [resume]="TLS: a resumed handshake per request (GET /v1/models, HTTP/1.0)")
# handshake and resume: openssl s_time clients instead of wrk, TLS targets only
declare -A STIME_MODE=([handshake]=-new [resume]=-reuse)
for s in $SCENARIOS; do [ -n "${LABEL[$s]:-}" ] || die "unknown scenario '$s' (get, post, post2k, stream, handshake, resume)"; done
# applies TARGET SCENARIO: whether the scenario is measured on that target
applies() { is_tls "$1" || [ -z "${STIME_MODE[$2]:-}" ]; }
for t in $TARGETS; do [ -n "${PORT[$t]:-}" ] || die "unknown target '$t' ($TARGET_NAMES)"; done

# A first request each way must answer 200, or the figures would measure errors.
check_target() {
    local t=$1 s code
    for s in $SCENARIOS; do
        applies "$t" "$s" || continue
        # -k: the benchmark's certificate is signed by a throwaway CA nobody trusts
        if [ "$s" = get ] || [ -n "${STIME_MODE[$s]:-}" ]; then
            code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $BENCH_KEY" \
                "$(url_of "$t")/v1/models" || true)
        else
            code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 -H 'Content-Type: application/json' \
                -H "Authorization: Bearer $BENCH_KEY" \
                -d "{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":16}" \
                "$(url_of "$t")/v1/chat/completions" || true)
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

# What each TLS target negotiates with an OpenSSL client offering its defaults (as wrk
# and s_time do): version, cipher and key-exchange group.
for t in "${ACTIVE[@]}"; do
    is_tls "$t" || continue
    openssl s_client -connect "127.0.0.1:${PORT[$t]}" -brief </dev/null 2>&1 | awk -v t="$t" -F': ' '
        $1 == "Protocol version" { v = $2 } $1 == "Ciphersuite" { c = $2 } $1 ~ /Temp Key$/ { g = $2 }
        END { printf "negotiated: %-18s %s %s, %s\n", t, v ? v : "?", c ? c : "?", g ? g : "?" }'
done

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
    "${pin[@]}" "$WRK" -t1 -c"$CONNECTIONS" -d"$3" --latency -s "$REPO/${SCRIPT[$s]}" "$(url_of "$t")"
}

seconds_of() { # seconds_of 10s|2m|5: whole seconds, at least 1
    local v=$1 n
    case $v in *m) n=$((${v%m} * 60)) ;; *s) n=${v%s} ;; *) n=$v ;; esac
    [[ $n =~ ^[0-9]+$ ]] || die "cannot read '$v' as a duration (10s, 2m)"
    [ "$n" -ge 1 ] || n=1
    echo "$n"
}

# run_stime TARGET SCENARIO DURATION: HS_CLIENTS `openssl s_time` clients at once, each
# a TLS connection per GET /v1/models (HTTP/1.0: the server closes after the answer),
# full handshakes (-new) or resuming the session of its first connection (-reuse).
# s_time prints a mark per connection: 'r' when the session was resumed, '*' when not;
# those are counted, so a resume run that did not resume shows in the errors column.
# Prints an AIGW_RESULT line like the wrk scripts' (no latencies: p50_us=-1).
run_stime() {
    local t=$1 s=$2 secs i p failed=0 started=${#STARTED[@]} pids=()
    secs=$(seconds_of "$3")
    for i in $(seq "$HS_CLIENTS"); do
        "${PIN_LOAD[@]}" openssl s_time -connect "127.0.0.1:${PORT[$t]}" "${STIME_MODE[$s]}" -time "$secs" \
            -www /v1/models >"$WORK/stime.$i" 2>&1 &
        pids+=($!); STARTED+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
    STARTED=("${STARTED[@]:0:$started}")
    [ "$failed" -eq 0 ] || { note "$failed s_time client(s) failed against $t:"; tail -n 3 "$WORK/stime.1" >&2; }
    # "N connections in S real seconds" per client; the marks are on lines of their own
    cat "$WORK"/stime.* | awk -v s="$s" -v secs="$secs" -v failed="$failed" '
        / connections in [0-9]+ real seconds/ { n += $1 }
        /^[r*]+$/ { marks += length($0); r += gsub(/r/, "") }
        END {
            # a resume run counts every connection not resumed (the first of each client excepted) as an error
            bad = (s == "resume") ? marks - r : 0
            printf "AIGW_RESULT requests=%d duration_us=%d bytes=0 p50_us=-1 p90_us=-1 p99_us=-1 max_us=-1 " \
                   "err_connect=%d err_read=0 err_write=0 err_status=%d err_timeout=0 resumed=%d\n",
                   n, secs * 1e6, failed, bad, r
        }'
}

# run_load TARGET SCENARIO DURATION: the scenario's client; an AIGW_RESULT line in its output
run_load() {
    if [ -n "${STIME_MODE[$2]:-}" ]; then run_stime "$@"; else run_wrk "$@"; fi
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
            applies "$t" "$s" || continue
            run_load "$t" "$s" "$WARMUP" >/dev/null 2>&1 || true
            before=$(cpu_ticks "${PID[$t]}")
            out=$(run_load "$t" "$s" "$DURATION" 2>&1) || { note "the load failed against $t:"; echo "$out" >&2; exit 1; }
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
                lat = $5 < 0 ? sprintf("%28s", "") : sprintf("  p50 %7.3f ms  p99 %7.3f ms", $5, $6)
                printf "  round %d  %-9s %-18s %10.0f req/s%s  %7.2f us CPU/req%s\n",
                    $3, $2, $1, $4, lat, $7, ($8 > 0 ? "  ERRORS " $8 : "") }'
        done
    done
done

# ---- summary: the median over rounds, and ratios against nginx and HAProxy -----------
median_of() { # median_of TARGET SCENARIO COLUMN
    awk -v t="$1" -v s="$2" -v c="$3" '$1 == t && $2 == s { print $c }' "$RESULTS" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# peer_of TARGET SERVER: the SERVER target of TARGET's family (aigw-tls -> nginx-tls)
peer_of() {
    local suffix=""
    case $1 in *-tls-chacha) suffix=-tls-chacha ;; *-tls) suffix=-tls ;; esac
    echo "$2$suffix"
}
echo
echo "Median of $ROUNDS round(s). CPU us/req: user+system time of the proxy (all threads, and"
echo "nginx's worker) per completed request; for 'direct', of the backend itself. Ratios are"
echo "against nginx and HAProxy in the same run, over the same transport (plain, tls, tls-chacha)."
for s in $SCENARIOS; do
    client="wrk -t1 -c$CONNECTIONS -d$DURATION"
    [ -n "${STIME_MODE[$s]:-}" ] && client="$HS_CLIENTS x openssl s_time ${STIME_MODE[$s]} -time $(seconds_of "$DURATION"); req/s = handshakes/s, hs/s/core = 1e6 / CPU us"
    echo
    echo "${LABEL[$s]}  ($client)"
    printf '  %-18s %10s %9s %9s %11s %7s %10s %8s %8s %10s\n' target "req/s" "p50 ms" "p99 ms" "CPU us/req" errors \
        "req/s/ngx" "CPU/ngx" "CPU/hap" "hs/s/core"
    for t in "${ACTIVE[@]}"; do
        applies "$t" "$s" || continue
        ngx=$(peer_of "$t" nginx) hap=$(peer_of "$t" haproxy)
        err=$(awk -v t="$t" -v s="$s" '$1 == t && $2 == s { e += $8 } END { print e + 0 }' "$RESULTS")
        awk -v t="$t" -v rps="$(median_of "$t" "$s" 4)" -v p50="$(median_of "$t" "$s" 5)" \
            -v p99="$(median_of "$t" "$s" 6)" -v cpu="$(median_of "$t" "$s" 7)" -v err="$err" \
            -v nrps="$(median_of "$ngx" "$s" 4)" -v ncpu="$(median_of "$ngx" "$s" 7)" \
            -v hcpu="$(median_of "$hap" "$s" 7)" -v hs="${STIME_MODE[$s]:-}" 'BEGIN {
                rr = (nrps + 0 > 0) ? sprintf("%.2f", rps / nrps) : "-"
                cr = (ncpu + 0 > 0 && t != "direct") ? sprintf("%.2f", cpu / ncpu) : "-"
                hr = (hcpu + 0 > 0 && t != "direct") ? sprintf("%.2f", cpu / hcpu) : "-"
                lat = p50 < 0 ? sprintf(" %9s %9s", "-", "-") : sprintf(" %9.3f %9.3f", p50, p99)
                core = (hs != "" && cpu > 0) ? sprintf("%.0f", 1e6 / cpu) : "-"
                printf "  %-18s %10.0f%s %11.2f %7d %10s %8s %8s %10s\n", t, rps, lat, cpu, err, rr, cr, hr, core
            }'
    done
done
