#!/usr/bin/env bash
# Fleet benchmark (issue 4): three aigw-mockllm backends of unequal capacity behind
# one aigw pool, an open-loop load of streaming chat completions at LOAD x the
# fleet's capacity, once per balancer and workload; prints completed/failed/shed,
# TTFT and total-time percentiles and the engines' prefix-cache hit rate side by
# side, and draws the TTFT distributions (a CDF per balancer, a panel per workload)
# as a PNG with gnuplot. See perf/README.md, "fleet.sh".
#
# Knobs (environment):
#   DURATION=30 (s of arrivals per run)  LOAD=0.8  RATE (req/s; default LOAD x capacity)
#   BALANCERS="round_robin least_outstanding capacity prefix"  (an entry may be
#     BALANCER:WORKLOAD, WORKLOAD one of plain prefixes multiturn sysprompt; without
#     one, each of WORKLOADS when set, else prefix runs prefixes and the others plain)
#   WORKLOADS="" (e.g. "plain prefixes multiturn sysprompt": every balancer on each)
#   BACKENDS="4 8 16" (--max-running of each)  TPS=50  TTFT_MS=50  MAX_TOKENS=100
#   PREFILL_TPS=4000  PREFIX_CACHE=12288 (tokens)  KV_PER_SEQ=0 (kv-capacity = max-running x this; 0: unlimited)
#   plain: PROMPT_BYTES=64   prefixes: SHARED_PREFIXES=16 PREFIX_BYTES=8192 SUFFIX_BYTES=64
#   multiturn: CONVERSATIONS=32 TURNS=8 TURN_BYTES=512 REPLY_BYTES=400
#   sysprompt: SYSTEM_BYTES=12288 (+ a user message of PROMPT_BYTES)
#   POOL_EXTRA="queue_weight = 2; prefix_weight = 1" (more [pool] lines, ';'-separated)
#   PLOT=FILE.png (the TTFT CDFs; default /tmp/aigw-fleet-ttft-cdf.png; PLOT=none: no picture)
#   ARRIVAL=poisson|fixed  SEED=1  TIMEOUT=60 (s, per request; also the drain)  MAX_OUTSTANDING=1000
#   SHARDS=1  PIN=auto|0|1 PROXY_CPU=0 LOAD_CPU=1  PORT_BASE=17200  KEEP=1  BUILD AIGW MOCKLLM FLEETLOAD
#   SCREENSHOT=FILE.png: headless Chromium saves aigw's /status page there, halfway
#     through the first balancer's run (docs/status-fleet.png is one)
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-30}
LOAD=${LOAD:-0.8}
RATE=${RATE:-}
BALANCERS=${BALANCERS:-round_robin least_outstanding capacity prefix}
BACKENDS=${BACKENDS:-4 8 16}
TPS=${TPS:-50}
TTFT_MS=${TTFT_MS:-50}
MAX_TOKENS=${MAX_TOKENS:-100}
PREFILL_TPS=${PREFILL_TPS:-4000}
PREFIX_CACHE=${PREFIX_CACHE:-12288}
KV_PER_SEQ=${KV_PER_SEQ:-0}
PROMPT_BYTES=${PROMPT_BYTES:-64}
SHARED_PREFIXES=${SHARED_PREFIXES:-16}
PREFIX_BYTES=${PREFIX_BYTES:-8192}
SUFFIX_BYTES=${SUFFIX_BYTES:-64}
CONVERSATIONS=${CONVERSATIONS:-32}
TURNS=${TURNS:-8}
TURN_BYTES=${TURN_BYTES:-512}
REPLY_BYTES=${REPLY_BYTES:-400}
SYSTEM_BYTES=${SYSTEM_BYTES:-12288}
WORKLOADS=${WORKLOADS:-}
POOL_EXTRA=${POOL_EXTRA:-}
PLOT=${PLOT:-${TMPDIR:-/tmp}/aigw-fleet-ttft-cdf.png}
ARRIVAL=${ARRIVAL:-poisson}
SEED=${SEED:-1}
TIMEOUT=${TIMEOUT:-60}
MAX_OUTSTANDING=${MAX_OUTSTANDING:-1000}
PORT_BASE=${PORT_BASE:-17200}
SHARDS=${SHARDS:-1}
SCREENSHOT=${SCREENSHOT:-}
export SHARDS
# shellcheck source=perf/lib.sh
. perf/lib.sh
FLEETLOAD=${FLEETLOAD:-$BUILD/fleetload}

isnum() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; }
for v in DURATION LOAD TPS TTFT_MS MAX_TOKENS PREFILL_TPS PREFIX_CACHE KV_PER_SEQ PROMPT_BYTES \
         SHARED_PREFIXES PREFIX_BYTES SUFFIX_BYTES CONVERSATIONS TURNS TURN_BYTES REPLY_BYTES \
         SYSTEM_BYTES SEED TIMEOUT MAX_OUTSTANDING; do
    isnum "${!v}" || die "$v must be a number, not '${!v}'"
done
[ -z "$RATE" ] || isnum "$RATE" || die "RATE must be a number, not '$RATE'"
for v in CONVERSATIONS TURNS TURN_BYTES SYSTEM_BYTES; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
awk -v t="$TPS" -v m="$MAX_TOKENS" -v d="$DURATION" 'BEGIN { exit !(t > 0 && m >= 1 && d > 0) }' ||
    die "TPS, MAX_TOKENS and DURATION must be above zero"
for f in "$AIGW" "$MOCKLLM" "$FLEETLOAD"; do [ -x "$f" ] || die "$f not found; run 'make' first"; done
command -v curl >/dev/null || die "curl not found (make deps installs it)"
is_workload() { case $1 in plain | prefixes | multiturn | sysprompt) return 0 ;; esac; return 1; }
for wl in $WORKLOADS; do is_workload "$wl" || die "WORKLOADS: '$wl' is plain, prefixes, multiturn or sysprompt"; done
# RUNS: one BALANCER:WORKLOAD per run, in order.
RUNS=()
for entry in $BALANCERS; do
    if [[ $entry == *:* ]]; then
        RUNS+=("$entry")
    elif [ -n "$WORKLOADS" ]; then
        for wl in $WORKLOADS; do RUNS+=("$entry:$wl"); done
    elif [ "$entry" = prefix ]; then
        RUNS+=("$entry:prefixes")
    else
        RUNS+=("$entry:plain")
    fi
done
for run in "${RUNS[@]}"; do
    is_workload "${run#*:}" || die "workload '${run#*:}' in '$run' is plain, prefixes, multiturn or sysprompt"
done
[ "$PLOT" = none ] || command -v gnuplot >/dev/null ||
    die "gnuplot not found for the picture (make deps installs gnuplot-nox); PLOT=none skips it"
[ "$PLOT" = none ] || PLOT=$(realpath -m "$PLOT")
if [ -n "$SCREENSHOT" ]; then
    command -v chromium >/dev/null || die "SCREENSHOT needs chromium (make deps installs it)"
    SCREENSHOT=$(realpath -m "$SCREENSHOT")
fi

read -r -a MR <<<"$BACKENDS"
[ ${#MR[@]} -ge 1 ] || die "BACKENDS is empty"
for m in "${MR[@]}"; do [[ $m =~ ^[1-9][0-9]*$ ]] || die "BACKENDS: '$m' is not a positive integer"; done
NB=${#MR[@]}
PORT_AIGW_FLEET=$((PORT_BASE + NB))
PORT_AIGW_FLEET_ADMIN=$((PORT_BASE + NB + 1))
FLEET_PORTS=$(seq "$PORT_BASE" "$PORT_AIGW_FLEET_ADMIN")
for p in $FLEET_PORTS; do
    if port_open "$p"; then die "port $p on 127.0.0.1 is in use; set PORT_BASE to a free range"; fi
done

# Capacity: a request holds one of a backend's max-running slots for TTFT plus
# (MAX_TOKENS - 1) / TPS (the first token comes at TTFT; the prefill of a short
# prompt is negligible), so the fleet
# completes sum(max-running) / that many requests per second at most.
SUM_MR=0
for m in "${MR[@]}"; do SUM_MR=$((SUM_MR + m)); done
read -r SERVICE_S CAPACITY < <(awk -v n="$SUM_MR" -v t="$TPS" -v m="$MAX_TOKENS" -v f="$TTFT_MS" \
    'BEGIN { s = f / 1000 + (m - 1) / t; printf "%.3f %.2f\n", s, n / s }')
[ -n "$RATE" ] || RATE=$(awk -v c="$CAPACITY" -v l="$LOAD" 'BEGIN { printf "%.2f", c * l }')
awk -v r="$RATE" 'BEGIN { exit !(r > 0) }' || die "the rate is 0; raise LOAD or set RATE"

start_backends() {
    local i kv args
    for i in $(seq 0 $((NB - 1))); do
        kv=$((MR[i] * KV_PER_SEQ))
        args=(--listen "127.0.0.1:$((PORT_BASE + i))" --model "$MODEL" --max-running "${MR[i]}"
              --tps "$TPS" --ttft-ms "$TTFT_MS" --max-tokens "$MAX_TOKENS")
        [ "$PREFILL_TPS" = 0 ] || args+=(--prefill-tps "$PREFILL_TPS")
        [ "$PREFIX_CACHE" = 0 ] || args+=(--prefix-cache "$PREFIX_CACHE")
        [ "$kv" = 0 ] || args+=(--kv-capacity "$kv")
        "${PIN_LOAD[@]}" "$MOCKLLM" "${args[@]}" >"$WORK/backend$i.log" 2>&1 &
        STARTED+=($!)
        wait_port $((PORT_BASE + i)) $! "backend$i" || return 1
    done
}

write_config() { # write_config BALANCER FILE
    {
        cat <<EOF
[server]
listen = 127.0.0.1:$PORT_AIGW_FLEET
shards = $SHARDS
max_connections = 100000

[admin]
listen = 127.0.0.1:$PORT_AIGW_FLEET_ADMIN

# Queued streams wait silently on the small backends; they must not be cut
# before the load generator's own timeout.
[timeouts]
first_byte = ${TIMEOUT}s
idle = ${TIMEOUT}s

[log]
access = off

[pool fleet]
balance = $1
max_outstanding = $MAX_OUTSTANDING
EOF
        [ -z "$POOL_EXTRA" ] || tr ';' '\n' <<<"$POOL_EXTRA" | sed 's/^ *//'
        for i in $(seq 0 $((NB - 1))); do echo "backend = 127.0.0.1:$((PORT_BASE + i))"; done
        cat <<EOF

[route chat]
path = /v1/chat/completions
pool = fleet
kind = ai
EOF
    } >"$2"
}

metric() { # metric PORT NAME: the sum of NAME's samples (or NAME_total's) on a backend's /metrics
    { curl -s --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null || true; } |
        awk -v n="$2" '$1 == n || index($1, n "{") == 1 || $1 == n "_total" || index($1, n "_total{") == 1 {
            s += $NF } END { printf "%d", s }'
}

# take_screenshot FILE NAME: /status as a 1680-pixel-wide browser window shows it,
# after the page's own refreshes have run for a few seconds
take_screenshot() {
    local d=$WORK/chromium
    mkdir -p "$d"
    if "${PIN_LOAD[@]}" timeout 60 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --user-data-dir="$d" --window-size=1680,1000 --virtual-time-budget=5000 \
        --screenshot="$1" "http://127.0.0.1:$PORT_AIGW_FLEET_ADMIN/status" >"$WORK/chromium.log" 2>&1; then
        note "$2: /status screenshot in $1"
    else
        note "$2: the /status screenshot failed (see $WORK/chromium.log with KEEP=1)"
    fi
}

RESULTS=$WORK/results
: >"$RESULTS"
NOTES=()
echo "fleet: $NB backends, max-running ${MR[*]} at $TPS tok/s each, TTFT $TTFT_MS ms;" \
    "$MAX_TOKENS tokens a request: ${SERVICE_S} s each, fleet capacity $CAPACITY req/s"
echo "fleet: open loop ($ARRIVAL) at $RATE req/s for $DURATION s per balancer, timeout $TIMEOUT s;" \
    "aigw shards=$SHARDS, max_outstanding=$MAX_OUTSTANDING; pinning: $([ "$PIN" = 1 ] &&
    echo "aigw on CPU $PROXY_CPU, backends and load on CPU $LOAD_CPU" || echo off)"

for run in "${RUNS[@]}"; do
    bal=${run%%:*}
    wl=${run#*:}
    name=$bal
    tag=$bal-$wl                     # for file names
    conf=$WORK/aigw-$tag.conf
    write_config "$bal" "$conf"
    if ! "$AIGW" -t -c "$conf" >"$WORK/check-$bal.log" 2>&1; then
        if grep -q "not supported\|round_robin or least_outstanding" "$WORK/check-$bal.log"; then
            echo "$name ($wl): not available in this build"
            NOTES+=("$name ($wl): not available in this build ($(head -n 1 "$WORK/check-$bal.log" | sed "s/^[^ ]*: //"))")
            continue
        fi
        note "$name: the configuration check failed:"
        cat "$WORK/check-$bal.log" >&2
        exit 1
    fi
    # Fresh backends every run: no queue, prefix cache or counter carried over.
    start_backends || die "a backend did not start"
    "${PIN_PROXY[@]}" "$AIGW" -c "$conf" >"$WORK/aigw-$bal-$wl.log" 2>&1 &
    STARTED+=($!)
    wait_port "$PORT_AIGW_FLEET" $! "aigw-$bal-$wl" || die "aigw did not start"

    load=(--port "$PORT_AIGW_FLEET" --rate "$RATE" --duration "$DURATION" --arrival "$ARRIVAL"
          --max-tokens "$MAX_TOKENS" --model "$MODEL" --timeout "$TIMEOUT" --seed "$SEED"
          --label "$name/$wl" --ttft-out "$WORK/ttft-$tag.txt")
    case $wl in
    prefixes) load+=(--shared-prefixes "$SHARED_PREFIXES" --prefix-bytes "$PREFIX_BYTES" --suffix-bytes "$SUFFIX_BYTES") ;;
    multiturn) load+=(--conversations "$CONVERSATIONS" --turns "$TURNS" --turn-bytes "$TURN_BYTES"
                      --reply-bytes "$REPLY_BYTES") ;;
    sysprompt) load+=(--system-bytes "$SYSTEM_BYTES" --prompt-bytes "$PROMPT_BYTES") ;;
    *) load+=(--prompt-bytes "$PROMPT_BYTES") ;;
    esac
    "${PIN_LOAD[@]}" "$FLEETLOAD" "${load[@]}" >"$WORK/load-$tag.out" 2>"$WORK/load-$tag.err" &
    lpid=$!; STARTED+=("$lpid")
    # While it runs: once a second, the longest waiting queue seen on each backend.
    declare -A maxwait=()
    for i in $(seq 0 $((NB - 1))); do maxwait[$i]=0; done
    for tick in $(seq $((${DURATION%.*} + ${TIMEOUT%.*} + 15))); do
        kill -0 "$lpid" 2>/dev/null || break
        if [ -n "$SCREENSHOT" ] && [ "$tick" -eq $((${DURATION%.*} / 2 + 1)) ]; then
            take_screenshot "$SCREENSHOT" "$name" &
            shot_pid=$!
            SCREENSHOT=""
        fi
        for i in $(seq 0 $((NB - 1))); do
            w=$(metric $((PORT_BASE + i)) vllm:num_requests_waiting)
            if [ "${w:-0}" -gt "${maxwait[$i]}" ]; then maxwait[$i]=$w; fi
        done
        sleep 1
    done
    rc=0
    wait "$lpid" || rc=$?
    [ "$rc" = 0 ] || { note "$name: fleetload exited with $rc:"; cat "$WORK/load-$tag.err" >&2; exit 1; }
    line=$(grep '^FLEET_RESULT' "$WORK/load-$tag.out") || die "$name: no result line from fleetload"
    sed 's/^fleetload /  /' "$WORK/load-$tag.err"
    per=""
    sum_q=0; sum_h=0
    for i in $(seq 0 $((NB - 1))); do
        p=$((PORT_BASE + i))
        done_n=$(metric "$p" vllm:request_success)
        q=$(metric "$p" vllm:prefix_cache_queries); h=$(metric "$p" vllm:prefix_cache_hits)
        sum_q=$((sum_q + q)); sum_h=$((sum_h + h))
        hit=$(awk -v q="$q" -v h="$h" 'BEGIN { if (q > 0) printf ", prefix-cache hits %.0f%%", 100 * h / q }')
        per="$per  [mr=${MR[i]}: $done_n done, max waiting ${maxwait[$i]}$hit]"
    done
    echo "  per backend:$per"
    # what decided aigw's picks (prefix: affinity or load), and for prefix_index = shared
    # the placements the shards copied from each other
    { curl -s --max-time 2 "http://127.0.0.1:$PORT_AIGW_FLEET_ADMIN/metrics" 2>/dev/null || true; } |
        awk '/^aigw_balance_decisions_total\{/ { n += $NF; if (index($1, "reason=\"affinity\"")) a += $NF }
             /^aigw_prefix_share_entries_total\{result="applied"/ { s = $NF }
             END { if (n > 0) printf "  aigw: %d picks, %d by affinity (%.0f%%), %d placements shared between shards\n",
                                      n, a, 100 * a / n, s }'
    # hit_pct: prefix-cache hits over queries, in tokens, over the whole fleet (-1: none queried)
    hit_pct=$(awk -v q="$sum_q" -v h="$sum_h" 'BEGIN { printf "%.1f", (q > 0 ? 100 * h / q : -1) }')
    echo "$name $wl $line hit_pct=$hit_pct" >>"$RESULTS"
    if [ -n "${shot_pid:-}" ]; then wait "$shot_pid" || true; shot_pid=""; fi
    stop_all
done

# ---- the table ----------------------------------------------------------------------
echo
echo "fleet: $RATE req/s offered (LOAD=$LOAD of $CAPACITY req/s) for $DURATION s, max-running ${MR[*]}," \
    "$MAX_TOKENS tokens at $TPS tok/s"
printf '  %-18s %-9s %5s %9s %6s %5s %9s %9s %9s %9s %6s %7s\n' balancer workload sent completed failed \
    shed "TTFT p50" "TTFT p90" "TTFT p99" "tot p99" "hits" "rr/p99"
awk '{
    name[NR] = $1; wl[NR] = $2
    for (i = 4; i <= NF; i++) { split($i, kv, "="); v[NR, kv[1]] = kv[2] }
    if ($1 == "round_robin") rr[$2] = v[NR, "ttft_p99_ms"]
} END {
    for (r = 1; r <= NR; r++) {
        ratio = "-"
        if ((wl[r] in rr) && v[r, "ttft_p99_ms"] > 0 && v[r, "completed"] > 0)
            ratio = sprintf("%.2fx", rr[wl[r]] / v[r, "ttft_p99_ms"])
        hits = v[r, "hit_pct"] < 0 ? "-" : sprintf("%.0f%%", v[r, "hit_pct"])
        printf "  %-18s %-9s %5d %9d %6d %5d %9.0f %9.0f %9.0f %9.0f %6s %7s\n", name[r], wl[r],
            v[r, "sent"], v[r, "completed"], v[r, "failed"], v[r, "shed"], v[r, "ttft_p50_ms"],
            v[r, "ttft_p90_ms"], v[r, "ttft_p99_ms"], v[r, "total_p99_ms"], hits, ratio
    }
}' "$RESULTS"
echo "  times in ms, over completed requests; hits = the engines' prefix-cache hits / queries, in tokens;"
echo "  rr/p99 = round_robin's TTFT p99 / this row's (same workload)"
for n in "${NOTES[@]}"; do echo "  $n"; done

# ---- the picture: TTFT CDFs, one panel per workload, one curve per balancer ---------
if [ "$PLOT" != none ] && [ -s "$RESULTS" ]; then
    read -r -a PLOT_WLS < <(awk '!seen[$2]++ { printf "%s ", $2 } END { print "" }' "$RESULTS")
    np=${#PLOT_WLS[@]}
    cols=$((np < 2 ? np : 2)); rows=$(((np + cols - 1) / cols))
    gp=$WORK/ttft-cdf.gp
    {
        echo "set terminal pngcairo noenhanced size $((560 * cols)),$((380 * rows + 30)) font 'sans,10'"
        echo "set output '$PLOT'"
        echo "set multiplot layout $rows,$cols title 'TTFT CDF: $RATE req/s for $DURATION s, max-running ${MR[*]}, prefill $PREFILL_TPS tok/s'"
        echo "set logscale x; set xlabel 'TTFT (ms, log scale)'; set ylabel 'fraction of completed requests'"
        echo "set yrange [0:1]; set grid; set key bottom right"
        for wl in "${PLOT_WLS[@]}"; do
            echo "set title '$wl'"
            plots=""
            while read -r bal; do
                f=$WORK/ttft-$bal-$wl.txt
                [ -s "$f" ] || continue
                plots="$plots${plots:+, }'$f' using 1:(1.0) smooth cnormal with lines lw 2 title '$bal'"
            done < <(awk -v w="$wl" '$2 == w { print $1 }' "$RESULTS")
            if [ -n "$plots" ]; then echo "plot $plots"; else echo "set label 1 'no completed request' at graph 0.5,0.5 center; plot NaN notitle; unset label 1"; fi
        done
        echo "unset multiplot"
    } >"$gp"
    if gnuplot "$gp" >"$WORK/gnuplot.log" 2>&1; then
        echo "  the TTFT distributions: $PLOT"
    else
        note "gnuplot failed:"
        cat "$WORK/gnuplot.log" >&2
    fi
fi
