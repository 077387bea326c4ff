#!/usr/bin/env bash
# Shared limits benchmark (issue 11): three aigw on loopback sharing one
# redis-server ([cluster]) in front of one aigw-mockllm, one key's traffic spread
# evenly over the three by one wrk each. Prints, and writes to OUT, a table of:
#   - accuracy = admitted ÷ what the limit allows over the run (capacity + rate ×
#     duration), for a requests-per-minute limit and for a tokens-per-minute limit
#     (admitted tokens: answers × the mock's usage, checked against aigw_tokens_total),
#     at several offered rates and sync_intervals; Redis commands per second
#     (INFO stats total_commands_processed) against requests per second;
#   - the same load on three independent hosts (no [cluster]): the N× over-admission
#     that [cluster] fixes;
#   - CPU per request of the three aigw (user + system, /proc/PID/stat) with [cluster]
#     on and off, a key whose limits never fire, wrk as fast as it goes: the hot path.
# Every run is a fresh key (a full bucket at its start), so points do not share state.
#
# Knobs (environment):
#   DURATION=5 (s per point)  RATES="50 200 800" (offered req/s over the three)
#   CPU_ROUNDS=3 (hot-path rounds, on and off in turns)
#   SYNCS="20ms 50ms 200ms"  RPM=6000  BURST=1s  MAX_TOKENS=16 (a request then uses
#   6 + 16 tokens: TPM defaults to RPM × 22, the same limit in tokens)  CONNS=2 (per
#   gateway, paced)  CPU_CONNS=8 (per gateway, unpaced)  CPU_SYNC=50ms
#   SHARDS=1  PIN=auto|0|1 PROXY_CPU=0 LOAD_CPU=1  PORT_BASE=17400  KEEP=1
#   OUT=perf/results/cluster-DATE.md  BUILD AIGW MOCKLLM REDIS_SERVER
# Total: about (len(SYNCS) × len(RATES) × 2 + 4) × DURATION + start-ups (~2.5 min by default).
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
RATES=${RATES:-50 200 800}
SYNCS=${SYNCS:-20ms 50ms 200ms}
RPM=${RPM:-6000}
BURST=${BURST:-1s}
MAX_TOKENS=${MAX_TOKENS:-16}
TOKENS_PER_REQUEST=$((6 + MAX_TOKENS))   # the mock's usage for cluster-chat.lua's prompt
TPM=${TPM:-$((RPM * TOKENS_PER_REQUEST))}
CONNS=${CONNS:-2}
CPU_CONNS=${CPU_CONNS:-8}
CPU_SYNC=${CPU_SYNC:-50ms}
CPU_ROUNDS=${CPU_ROUNDS:-3}
PORT_BASE=${PORT_BASE:-17400}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
OUT=${OUT:-perf/results/cluster-$(date -u +%Y%m%d-%H%M%S).md}
SHARDS=${SHARDS:-1}
export SHARDS MAX_TOKENS
# shellcheck source=perf/lib.sh
. perf/lib.sh

isnum() { [[ $1 =~ ^[0-9]+$ ]]; }
for v in DURATION RPM TPM MAX_TOKENS CONNS CPU_CONNS PORT_BASE; do
    isnum "${!v}" && [ "${!v}" -gt 0 ] || die "$v must be a positive integer, not '${!v}'"
done
for r in $RATES; do isnum "$r" && [ "$r" -gt 0 ] || die "RATES: '$r' is not a positive integer"; done
[[ $BURST =~ ^[0-9]+s$ ]] || die "BURST must be whole seconds (e.g. 1s), not '$BURST'"
BURST_S=${BURST%s}
for f in "$AIGW" "$MOCKLLM"; do [ -x "$f" ] || die "$f not found; run 'make' first"; done
for c in wrk curl "$REDIS_SERVER" redis-cli; do command -v "$c" >/dev/null || die "$c not found (make deps installs it)"; done

HOSTS=3
PORT_REDIS=$((PORT_BASE + 30))
GW_PORTS=() GW_ADMIN=()
for i in 0 1 2; do
    GW_PORTS+=($((PORT_BASE + 31 + 2 * i)))
    GW_ADMIN+=($((PORT_BASE + 32 + 2 * i)))
    BIN["gw$i"]=$AIGW
done
for p in "$PORT_BASE" "$PORT_REDIS" "${GW_PORTS[@]}" "${GW_ADMIN[@]}"; do
    if port_open "$p"; then die "port $p on 127.0.0.1 is in use; set PORT_BASE to a free range"; fi
done
CLK_TCK=$(getconf CLK_TCK)

# ---- keys: one per measured point, so each starts from a full bucket ----
NKEYS=$(($(wc -w <<<"$SYNCS") * $(wc -w <<<"$RATES") + 1))   # the points below
: >"$WORK/keys"
key_of() { printf 'sk-aigw-cluster-bench-%s-00000000000000000000' "$1"; }
for k in $(seq "$NKEYS"); do
    for tier in req tok; do
        name=$tier$k
        hash=$(printf '%s' "$(key_of "$name")" | sha256sum | cut -d' ' -f1)
        echo "$name sha256:$hash tier=$tier models=$MODEL" >>"$WORK/keys"
    done
done
for name in hot-on hot-off; do
    hash=$(printf '%s' "$(key_of "$name")" | sha256sum | cut -d' ' -f1)
    echo "$name sha256:$hash tier=hot models=$MODEL" >>"$WORK/keys"
done
NEXT_KEY=1

# ---- processes ----
start_redis() {
    "${PIN_LOAD[@]}" "$REDIS_SERVER" --port "$PORT_REDIS" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$WORK" --daemonize no >"$WORK/redis.log" 2>&1 &
    PID[redis]=$!; STARTED+=($!)
    wait_port "$PORT_REDIS" "${PID[redis]}" redis
}
# Commands Redis ran (those a script calls included), and script calls (one per sync batch): "commands scripts".
redis_commands() {
    redis-cli -p "$PORT_REDIS" INFO all | tr -d '\r' | awk -F'[:,=]' '
        $1 == "total_commands_processed" { c = $2 }
        $1 == "cmdstat_evalsha" || $1 == "cmdstat_eval" { s += $3 }
        END { printf "%d %d\n", c, s }'
}

# stop_pid PID: SIGTERM, wait (bounded, 10 s), SIGKILL; forgets it.
stop_pid() {
    local p=$1 i keep=()
    kill -TERM "$p" 2>/dev/null || true
    for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    for i in "${STARTED[@]}"; do [ "$i" = "$p" ] || keep+=("$i"); done
    STARTED=("${keep[@]}")
}

# start_gateways SYNC_INTERVAL|off: the three aigw, with [cluster] at that interval or without it.
start_gateways() {
    local i cluster=""
    if [ "$1" != off ]; then
        cluster="[cluster]
redis = 127.0.0.1:$PORT_REDIS
sync_interval = $1
on_redis_down = local"
    fi
    for i in 0 1 2; do
        run_aigw "gw$i" "${GW_PORTS[$i]}" "${GW_ADMIN[$i]}" ai "[keys]
auth = required
file = $WORK/keys

[tier req]
requests_per_minute = $RPM
burst = $BURST

[tier tok]
tokens_per_minute = $TPM
burst = $BURST

[tier hot]
requests_per_minute = 1000000000
tokens_per_minute = 10000000000
daily_tokens = 1000000000000

$cluster" || die "aigw gw$i did not start"
    done
    if [ "$1" != off ]; then
        for i in 0 1 2; do wait_redis_up "${GW_ADMIN[$i]}" || die "gw$i never reached Redis; see $WORK/gw$i.log"; done
    fi
}
stop_gateways() { local i; for i in 0 1 2; do stop_pid "${PID[gw$i]}"; done; }

metric_sum() { # metric_sum ADMIN_PORT REGEX: the sum of the samples whose line matches
    local text
    text=$(curl -sf --max-time 2 --retry 2 "http://127.0.0.1:$1/metrics") || { note "cannot scrape 127.0.0.1:$1/metrics"; return 1; }
    awk -v re="$2" '$0 ~ re && $1 !~ /^#/ { s += $NF } END { printf "%.0f\n", s }' <<<"$text"
}
wait_redis_up() { # wait_redis_up ADMIN_PORT: bounded (10 s)
    local i
    for i in $(seq 100); do
        [ "$(metric_sum "$1" '^aigw_cluster_redis_up ' 2>/dev/null)" = 1 ] && return 0
        sleep 0.1
    done
    return 1
}
tokens_of() { # tokens_of NAME: aigw_tokens_total of key NAME over the three gateways
    local i s=0 v
    for i in 0 1 2; do
        v=$(metric_sum "${GW_ADMIN[$i]}" "^aigw_tokens_total[{].*key=\"$1\"")
        s=$((s + v))
    done
    echo "$s"
}

# run_wrk NAME DELAY_MS CONNS SECONDS: one wrk per gateway at once; prints
# "requests admitted errors duration_s" summed over the three.
run_wrk() {
    local i pids=()
    for i in 0 1 2; do
        BENCH_KEY=$(key_of "$1") DELAY_MS=$2 "${PIN_LOAD[@]}" wrk -t1 -c"$3" -d"$4s" --timeout 5s \
            -s perf/cluster-chat.lua "http://127.0.0.1:${GW_PORTS[$i]}" >"$WORK/wrk$i.out" 2>&1 &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || true; done
    cat "$WORK"/wrk[012].out | awk '/^AIGW_RESULT/ {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] }
        req += r["requests"]; st += r["err_status"]
        err += r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"]
        if (r["duration_us"] / 1e6 > d) d = r["duration_us"] / 1e6; n++ }
        END { if (n != 3) exit 1; printf "%d %d %d %.3f\n", req, req - st, err, d }' ||
        { cat "$WORK"/wrk[012].out >&2; die "wrk did not report (see above)"; }
}

# ---- one measured point ----
RESULTS=$WORK/results
: >"$RESULTS"
# point MODE(cluster|independent) SYNC RATE: a requests-limit run and a tokens-limit run
point() {
    local mode=$1 sync=$2 rate=$3 delay nreq ntok c0 c1 s0 s1 t0 t1 req adm err dur tok cap allow
    delay=$(awk -v h=$HOSTS -v c="$CONNS" -v r="$rate" 'BEGIN { d = h * c * 1000 / r; printf "%d", (d < 1 ? 1 : d + 0.5) }')
    [ "$NEXT_KEY" -le "$NKEYS" ] || die "more points than keys"
    nreq=req$NEXT_KEY ntok=tok$NEXT_KEY
    NEXT_KEY=$((NEXT_KEY + 1))
    # requests per minute
    read -r c0 s0 < <(redis_commands)
    read -r req adm err dur < <(run_wrk "$nreq" "$delay" "$CONNS" "$DURATION")
    read -r c1 s1 < <(redis_commands)
    cap=$(awk -v r="$RPM" -v b="$BURST_S" 'BEGIN { printf "%.0f", r / 60 * b }')
    allow=$(awk -v c="$cap" -v r="$RPM" -v d="$dur" 'BEGIN { printf "%.0f", c + r / 60 * d }')
    echo "$mode $sync $rate req $req $adm $err $dur $allow $((c1 - c0)) $((s1 - s0))" >>"$RESULTS"
    # tokens per minute: admitted tokens as the gateways counted them
    read -r c0 s0 < <(redis_commands)
    t0=$(tokens_of "$ntok")
    read -r req adm err dur < <(run_wrk "$ntok" "$delay" "$CONNS" "$DURATION")
    t1=$(tokens_of "$ntok")
    read -r c1 s1 < <(redis_commands)
    # the mock's usage is the same for every answer: admitted tokens = admitted
    # requests × that; the gateways' own count is a cross-check
    tok=$((adm * TOKENS_PER_REQUEST))
    [ $((t1 - t0)) -eq "$tok" ] || note "tokens: aigw_tokens_total rose by $((t1 - t0)), $adm answers × $TOKENS_PER_REQUEST = $tok"
    cap=$(awk -v r="$TPM" -v b="$BURST_S" 'BEGIN { printf "%.0f", r / 60 * b }')
    allow=$(awk -v c="$cap" -v r="$TPM" -v d="$dur" 'BEGIN { printf "%.0f", c + r / 60 * d }')
    echo "$mode $sync $rate tok $req $tok $err $dur $allow $((c1 - c0)) $((s1 - s0))" >>"$RESULTS"
    tail -n 2 "$RESULTS" | awk '{ printf "  %-11s sync %-5s offered %4d/s  %s: %6d requests, admitted %7d of %7d allowed (%.2f)  redis %.0f scripts/s %.0f cmd/s%s\n",
        $1, $2, $3, $4, $5, $6, $9, ($9 > 0 ? $6 / $9 : 0), $11 / $8, $10 / $8, ($7 > 0 ? "  ERRORS " $7 : "") }' >&2
}

# cpu_point MODE NAME: wrk as fast as it goes on a key whose limits never fire;
# prints "MODE req/s cpu_us_per_req redis_cmds_per_s redis_cpu_us_per_req"
cpu_point() {
    local mode=$1 name=$2 i before=0 after=0 rb ra c0 c1 s0 s1 req adm err dur
    run_wrk "$name" 0 "$CPU_CONNS" 1 >/dev/null     # warm-up
    for i in 0 1 2; do before=$((before + $(cpu_ticks "${PID[gw$i]}"))); done
    rb=$(cpu_ticks "${PID[redis]}"); read -r c0 s0 < <(redis_commands)
    read -r req adm err dur < <(run_wrk "$name" 0 "$CPU_CONNS" "$DURATION")
    for i in 0 1 2; do after=$((after + $(cpu_ticks "${PID[gw$i]}"))); done
    ra=$(cpu_ticks "${PID[redis]}"); read -r c1 s1 < <(redis_commands)
    [ "$adm" -eq "$req" ] && [ "$err" -eq 0 ] || note "cpu $mode: $((req - adm)) refused, $err errors"
    awk -v m="$mode" -v req="$req" -v d="$dur" -v t=$((after - before)) -v rt=$((ra - rb)) -v hz="$CLK_TCK" \
        -v c=$((c1 - c0)) -v sc=$((s1 - s0)) 'BEGIN { printf "cpu %s %.0f %.2f %.0f %.3f %.0f\n", m, req / d, t * 1e6 / hz / req, c / d, rt * 1e6 / hz / req, sc / d }' >>"$RESULTS"
    tail -n 1 "$RESULTS" | awk '{ printf "  cpu, cluster %-3s %8.0f req/s  %6.2f us CPU/req (3 aigw)  redis %.0f scripts/s %.0f cmd/s\n", $2, $3, $4, $7, $5 }' >&2
}

start_backend
start_redis
note "RPM=$RPM TPM=$TPM burst=$BURST, $HOSTS aigw (shards=$SHARDS), $DURATION s per point, rates: $RATES"
for sync in $SYNCS; do
    start_gateways "$sync"
    for rate in $RATES; do point cluster "$sync" "$rate"; done
    stop_gateways
done
start_gateways off
max_rate=$(tr ' ' '\n' <<<"$RATES" | sort -n | tail -n 1)
point independent - "$max_rate"
stop_gateways
# The hot path, on and off in turns (CPU_ROUNDS of each), so machine noise falls
# on both alike; the table shows every round and the medians.
for round in $(seq 1 "$CPU_ROUNDS"); do
    start_gateways "$CPU_SYNC"
    cpu_point on "hot-on-$round"
    stop_gateways
    start_gateways off
    cpu_point off "hot-off-$round"
    stop_gateways
done

# ---- the table ----
mkdir -p "$(dirname "$OUT")"
{
    echo "# perf/cluster.sh — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo
    echo "Three aigw (shards=$SHARDS) on loopback, one redis-server, one aigw-mockllm; one key's traffic"
    echo "spread evenly over the three by one wrk each ($CONNS connections per gateway, paced by wrk's delay()"
    echo "to the target rate; *sent* is what wrk managed); $DURATION s per"
    echo "point; a fresh key per point. Limits: requests_per_minute = $RPM, tokens_per_minute = $TPM"
    echo "(a request uses $TOKENS_PER_REQUEST tokens), burst = $BURST. *allowed* = capacity + rate × duration;"
    echo "*accuracy* = admitted ÷ allowed (1.00 when the offered load is above the limit and the"
    echo "limit holds exactly; below 1 when less is offered). *Redis* counts every command the"
    echo "three hosts sent: *scripts* the EVALSHA calls (one per sync batch), *cmd* every command run,"
    echo "those the script calls included (they grow with the keys in a batch; the keys file holds"
    echo "$((2 * NKEYS + 2)) keys, each leased its floor)."
    echo
    echo "| hosts | sync | target req/s | sent req/s | requests: admitted / allowed | accuracy | tokens: admitted / allowed | accuracy | Redis scripts/s | Redis cmd/s |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk '$1 != "cpu" { k = $1 " " $2 " " $3; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
            row[k, $4] = $0 }
         END { for (i = 1; i <= n; i++) {
            split(row[order[i], "req"], a, " "); split(row[order[i], "tok"], b, " ")
            printf "| %s | %s | %d | %.0f | %d / %d | %.2f | %d / %d | %.2f | %.0f | %.0f |\n",
                (a[1] == "cluster" ? "3, [cluster]" : "3 independent"), a[2], a[3], a[5] / a[8],
                a[6], a[9], a[6] / a[9], b[6], b[9], b[6] / b[9], (a[11] + b[11]) / (a[8] + b[8]),
                (a[10] + b[10]) / (a[8] + b[8]) } }' "$RESULTS"
    echo
    echo "CPU per request on the hot path (a key whose limits never fire; wrk unpaced, $CPU_CONNS connections"
    echo "per gateway; user + system time of the three aigw ÷ requests; [cluster] at sync_interval = $CPU_SYNC):"
    echo
    echo "| [cluster] | req/s | µs CPU / request (3 aigw) | Redis scripts/s | Redis cmd/s | Redis µs CPU / request |"
    echo "|---|---:|---:|---:|---:|---:|"
    awk '$1 == "cpu" { printf "| %s | %.0f | %.2f | %.0f | %.0f | %.3f |\n", $2, $3, $4, $7, $5, $6 }' "$RESULTS"
    echo
    awk '$1 == "cpu" { v[$2, ++n[$2]] = $4 }
         function median(m,   i, j, t, a) { for (i = 1; i <= n[m]; i++) a[i] = v[m, i]
             for (i = 1; i <= n[m]; i++) for (j = i + 1; j <= n[m]; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
             return n[m] % 2 ? a[(n[m] + 1) / 2] : (a[n[m] / 2] + a[n[m] / 2 + 1]) / 2 }
         END { if (n["on"] && n["off"]) printf "Median µs CPU / request: on %.2f, off %.2f; on ÷ off = %.2f×\n",
                   median("on"), median("off"), median("on") / median("off") }' "$RESULTS"
} >"$OUT"
cat "$OUT"
note "written to $OUT"
