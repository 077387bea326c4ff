# shellcheck shell=bash
# Shared by perf/bench.sh and perf/idle-rss.sh (bash, sourced from the repository root):
# start one aigw-mockllm backend and aigw, nginx or HAProxy in front of it, each from a
# config written to a temp dir; measure their CPU time and RSS; stop exactly what was
# started, on any exit.
#
# Callers set, before sourcing: PORT_BASE. Knobs: BUILD AIGW MOCKLLM NGINX HAPROXY,
# PIN=auto|0|1, PROXY_CPU, LOAD_CPU, KEEP=1 (keep the temp dir), SHARDS (aigw).

BUILD=${BUILD:-build}
AIGW=${AIGW:-$BUILD/aigw}
MOCKLLM=${MOCKLLM:-$BUILD/aigw-mockllm}
NGINX=${NGINX:-/usr/sbin/nginx}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
PIN=${PIN:-auto}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
KEEP=${KEEP:-0}
SHARDS=${SHARDS:-1}
MODEL=${MODEL:-mock-llama-3.1-8b}
export MODEL

PORT_BACKEND=$PORT_BASE
PORT_AIGW=$((PORT_BASE + 1))
PORT_AIGW_ADMIN=$((PORT_BASE + 2))
PORT_NGINX=$((PORT_BASE + 3))
PORT_HAPROXY=$((PORT_BASE + 4))
PORT_AIGW_AI=$((PORT_BASE + 5))
PORT_AIGW_AI_ADMIN=$((PORT_BASE + 6))
PORT_AIGW_KEYS=$((PORT_BASE + 7))
PORT_AIGW_KEYS_ADMIN=$((PORT_BASE + 8))
ALL_PORTS="$PORT_BACKEND $PORT_AIGW $PORT_AIGW_ADMIN $PORT_NGINX $PORT_HAPROXY $PORT_AIGW_AI $PORT_AIGW_AI_ADMIN"
PORT_AIGW_BASE=$((PORT_BASE + 9))
PORT_AIGW_BASE_ADMIN=$((PORT_BASE + 10))
PORT_AIGW_KEYS_BASE=$((PORT_BASE + 11))
PORT_AIGW_KEYS_BASE_ADMIN=$((PORT_BASE + 12))
ALL_PORTS="$ALL_PORTS $PORT_AIGW_KEYS $PORT_AIGW_KEYS_ADMIN $PORT_AIGW_BASE $PORT_AIGW_BASE_ADMIN"
ALL_PORTS="$ALL_PORTS $PORT_AIGW_KEYS_BASE $PORT_AIGW_KEYS_BASE_ADMIN"
# The TLS targets (issue 10): each server as its operator would set it up with the
# same ECDSA P-256 certificate (*-tls), and all three held to TLS 1.3 with
# TLS_CHACHA20_POLY1305_SHA256 only (*-tls-chacha), like for like: OpenSSL has
# AES-NI here, the linked wolfSSL has no AES hardware path.
PORT_AIGW_TLS=$((PORT_BASE + 13))
PORT_AIGW_TLS_PLAIN=$((PORT_BASE + 14))
PORT_AIGW_TLS_ADMIN=$((PORT_BASE + 15))
PORT_AIGW_TLS_CHACHA=$((PORT_BASE + 16))
PORT_AIGW_TLS_CHACHA_PLAIN=$((PORT_BASE + 17))
PORT_AIGW_TLS_CHACHA_ADMIN=$((PORT_BASE + 18))
PORT_NGINX_TLS=$((PORT_BASE + 19))
PORT_NGINX_TLS_CHACHA=$((PORT_BASE + 20))
PORT_HAPROXY_TLS=$((PORT_BASE + 21))
PORT_HAPROXY_TLS_CHACHA=$((PORT_BASE + 22))
ALL_PORTS="$ALL_PORTS $PORT_AIGW_TLS $PORT_AIGW_TLS_PLAIN $PORT_AIGW_TLS_ADMIN $PORT_AIGW_TLS_CHACHA"
ALL_PORTS="$ALL_PORTS $PORT_AIGW_TLS_CHACHA_PLAIN $PORT_AIGW_TLS_CHACHA_ADMIN $PORT_NGINX_TLS"
ALL_PORTS="$ALL_PORTS $PORT_NGINX_TLS_CHACHA $PORT_HAPROXY_TLS $PORT_HAPROXY_TLS_CHACHA"
# aigw-fast-tls, aigw-fast-tls-chacha: aigw-tls and aigw-tls-chacha from the binary
# linked against the wolfSSL with assembly and AES-NI (AIGW_FAST; `make WOLFSSL=fast`
# builds build/fast/aigw), side by side with Debian's in one run.
AIGW_FAST=${AIGW_FAST:-build/fast/aigw}
PORT_AIGW_FAST_TLS=$((PORT_BASE + 23))
PORT_AIGW_FAST_TLS_PLAIN=$((PORT_BASE + 24))
PORT_AIGW_FAST_TLS_ADMIN=$((PORT_BASE + 25))
PORT_AIGW_FAST_TLS_CHACHA=$((PORT_BASE + 26))
PORT_AIGW_FAST_TLS_CHACHA_PLAIN=$((PORT_BASE + 27))
PORT_AIGW_FAST_TLS_CHACHA_ADMIN=$((PORT_BASE + 28))
ALL_PORTS="$ALL_PORTS $PORT_AIGW_FAST_TLS $PORT_AIGW_FAST_TLS_PLAIN $PORT_AIGW_FAST_TLS_ADMIN"
ALL_PORTS="$ALL_PORTS $PORT_AIGW_FAST_TLS_CHACHA $PORT_AIGW_FAST_TLS_CHACHA_PLAIN $PORT_AIGW_FAST_TLS_CHACHA_ADMIN"
# aigw-trace001, aigw-trace1: aigw-keys with [tracing] at sample_ratio 0.01 and 1.0,
# exporting to an OTLP sink (an nginx answering 200 to every POST, so what is
# measured is aigw's cost of recording, encoding and sending spans)
PORT_AIGW_TRACE001=$((PORT_BASE + 29))
PORT_AIGW_TRACE001_ADMIN=$((PORT_BASE + 30))
PORT_AIGW_TRACE1=$((PORT_BASE + 31))
PORT_AIGW_TRACE1_ADMIN=$((PORT_BASE + 32))
PORT_OTLP_SINK=$((PORT_BASE + 33))
ALL_PORTS="$ALL_PORTS $PORT_AIGW_TRACE001 $PORT_AIGW_TRACE001_ADMIN $PORT_AIGW_TRACE1 $PORT_AIGW_TRACE1_ADMIN $PORT_OTLP_SINK"
TLS_CHACHA_OPENSSL=TLS_CHACHA20_POLY1305_SHA256
TLS_CHACHA_WOLFSSL=TLS13-CHACHA20-POLY1305-SHA256
# aigw: every route raw (proxied as is); aigw-ai: chat completions on a kind = ai
# route (the body read, checked as an OpenAI request and routed by its model);
# aigw-keys: aigw-ai plus API keys and a tier's rate limits (high enough never
# to fire): the whole AI request path
# aigw-base, aigw-keys-base: aigw and aigw-keys again, from another binary
# (AIGW_BASE, e.g. a build of an earlier commit), for before/after in one run
AIGW_BASE=${AIGW_BASE:-}
declare -A PORT=([direct]=$PORT_BACKEND [aigw]=$PORT_AIGW [aigw-ai]=$PORT_AIGW_AI [aigw-keys]=$PORT_AIGW_KEYS
                 [aigw-base]=$PORT_AIGW_BASE [aigw-keys-base]=$PORT_AIGW_KEYS_BASE
                 [nginx]=$PORT_NGINX [haproxy]=$PORT_HAPROXY
                 [aigw-tls]=$PORT_AIGW_TLS [aigw-tls-chacha]=$PORT_AIGW_TLS_CHACHA
                 [nginx-tls]=$PORT_NGINX_TLS [nginx-tls-chacha]=$PORT_NGINX_TLS_CHACHA
                 [haproxy-tls]=$PORT_HAPROXY_TLS [haproxy-tls-chacha]=$PORT_HAPROXY_TLS_CHACHA
                 [aigw-fast-tls]=$PORT_AIGW_FAST_TLS [aigw-fast-tls-chacha]=$PORT_AIGW_FAST_TLS_CHACHA
                 [aigw-trace001]=$PORT_AIGW_TRACE001 [aigw-trace1]=$PORT_AIGW_TRACE1)
declare -A BIN=([direct]=$MOCKLLM [aigw]=$AIGW [aigw-ai]=$AIGW [aigw-keys]=$AIGW [nginx]=$NGINX [haproxy]=$HAPROXY
                [aigw-base]=${AIGW_BASE:-/nonexistent} [aigw-keys-base]=${AIGW_BASE:-/nonexistent}
                [aigw-tls]=$AIGW [aigw-tls-chacha]=$AIGW [nginx-tls]=$NGINX [nginx-tls-chacha]=$NGINX
                [haproxy-tls]=$HAPROXY [haproxy-tls-chacha]=$HAPROXY
                [aigw-fast-tls]=$AIGW_FAST [aigw-fast-tls-chacha]=$AIGW_FAST
                [aigw-trace001]=$AIGW [aigw-trace1]=$AIGW)
# aigw's admin listener per aigw target (metrics)
declare -A ADMIN_PORT=([aigw]=$PORT_AIGW_ADMIN [aigw-ai]=$PORT_AIGW_AI_ADMIN [aigw-keys]=$PORT_AIGW_KEYS_ADMIN
                       [aigw-base]=$PORT_AIGW_BASE_ADMIN [aigw-keys-base]=$PORT_AIGW_KEYS_BASE_ADMIN
                       [aigw-tls]=$PORT_AIGW_TLS_ADMIN [aigw-tls-chacha]=$PORT_AIGW_TLS_CHACHA_ADMIN
                       [aigw-fast-tls]=$PORT_AIGW_FAST_TLS_ADMIN [aigw-fast-tls-chacha]=$PORT_AIGW_FAST_TLS_CHACHA_ADMIN
                       [aigw-trace001]=$PORT_AIGW_TRACE001_ADMIN [aigw-trace1]=$PORT_AIGW_TRACE1_ADMIN)
TARGET_NAMES="direct, aigw, aigw-ai, aigw-keys, aigw-base, aigw-keys-base, nginx, haproxy,
  aigw-tls, nginx-tls, haproxy-tls, aigw-tls-chacha, nginx-tls-chacha, haproxy-tls-chacha,
  aigw-fast-tls, aigw-fast-tls-chacha, aigw-trace001, aigw-trace1"
is_tls() { [[ $1 == *-tls || $1 == *-tls-chacha ]]; }
# url_of TARGET: the base URL clients use
url_of() { if is_tls "$1"; then echo "https://127.0.0.1:${PORT[$1]}"; else echo "http://127.0.0.1:${PORT[$1]}"; fi; }
# Every request of every target carries this key (wrk scripts, checks); only
# aigw-keys checks it, the others pass it on as any header.
BENCH_KEY=${BENCH_KEY:-sk-aigw-bench0000000000000000000000000000000000000}
export BENCH_KEY
declare -A PID=()      # target -> pid of the process started for it
STARTED=()             # every pid started, in order
PROG=$(basename "$0" .sh)

die() { echo "$PROG: $*" >&2; exit 1; }
note() { echo "$PROG: $*" >&2; }

# Pinning on a 2-CPU box: the server under test gets PROXY_CPU to itself; the load
# side (backend and load generator) shares LOAD_CPU. Prefixes, not functions, so "$!"
# is the program's own pid (taskset execs it), not a subshell's.
if [ "$PIN" = auto ]; then
    if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then PIN=1; else PIN=0; fi
fi
PIN_PROXY=() PIN_LOAD=()
if [ "$PIN" = 1 ]; then PIN_PROXY=(taskset -c "$PROXY_CPU"); PIN_LOAD=(taskset -c "$LOAD_CPU"); fi

# Descriptors for tens of thousands of connections on both sides of a proxy; children
# inherit the limit. Raising the hard limit needs root; otherwise take what there is.
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d "${TMPDIR:-/tmp}/aigw-$PROG.XXXXXX")

stop_all() {
    local pids=() p c i alive
    [ ${#STARTED[@]} -gt 0 ] || return 0
    for p in "${STARTED[@]}"; do
        pids+=("$p")
        # nginx workers: should the master die first, they must go too.
        for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do pids+=("$c"); done
    done
    kill -TERM "${STARTED[@]}" 2>/dev/null || true
    for i in $(seq 50); do
        alive=()
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
        [ ${#alive[@]} -eq 0 ] && break
        if [ "$i" -eq 50 ]; then kill -KILL "${alive[@]}" 2>/dev/null || true; fi
        sleep 0.1
    done
    wait 2>/dev/null || true
    STARTED=()
}
lib_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all
    if [ -n "$(ls -A "$WORK")" ] && { [ "$KEEP" = 1 ] || [ $rc -ne 0 ]; }; then
        note "logs and configs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap lib_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
check_ports_free() {
    local p
    for p in $ALL_PORTS; do
        if port_open "$p"; then die "port $p on 127.0.0.1 is in use; set PORT_BASE to a free range"; fi
    done
}
wait_port() { # wait_port PORT PID NAME: bounded (10 s)
    local i
    for i in $(seq 100); do
        port_open "$1" && return 0
        if ! kill -0 "$2" 2>/dev/null; then
            note "$3 exited during start-up; the end of $WORK/$3.log:"
            tail -n 20 "$WORK/$3.log" >&2
            return 1
        fi
        sleep 0.1
    done
    note "$3 did not accept on 127.0.0.1:$1 within 10 s"
    return 1
}

# The pid and its children (nginx's workers) — what a target's cost is charged to.
# shellcheck disable=SC2046 # one pid per word, on purpose
family() { echo "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); }

# CPU time in clock ticks, user + system, all threads, of a process and its children.
cpu_ticks() {
    local total=0 p f fields
    for p in $(family "$1"); do
        f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        f=${f##*) }                                # drop "pid (comm) ": comm may hold spaces
        read -r -a fields <<<"$f"
        total=$((total + fields[11] + fields[12])) # utime, stime: fields 14 and 15
    done
    echo "$total"
}

# Resident set size in KiB of a process and its children.
rss_kib() {
    local total=0 p v
    for p in $(family "$1"); do
        v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null) || continue
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

start_backend() {
    [ -x "$MOCKLLM" ] || die "$MOCKLLM not found; run 'make' first"
    # BACKEND_ARGS: how the mock generates (perf/stream-rss.sh wants slow streams)
    # shellcheck disable=SC2086 # options, one per word
    "${PIN_LOAD[@]}" "$MOCKLLM" --listen "127.0.0.1:$PORT_BACKEND" --model "$MODEL" \
        ${BACKEND_ARGS:---tps 0 --ttft-ms 0} >"$WORK/backend.log" 2>&1 &
    PID[direct]=$!; STARTED+=($!)
    wait_port "$PORT_BACKEND" "${PID[direct]}" backend
}

# Keep-alive and header timeouts are long so idle connections stay for perf/idle-rss.sh;
# they change nothing for busy ones.
# run_aigw TARGET PORT ADMIN_PORT CHAT_ROUTE_KIND [EXTRA_CONFIG]
# (the binary: ${BIN[TARGET]}; a binary older than [pool] keepalive gets none)
run_aigw() {
    local t=$1 conf=$WORK/$1.conf keepalive="keepalive = 64"
    cat >"$conf" <<EOF
${5:-}

[server]
listen = 127.0.0.1:$2
shards = $SHARDS
max_connections = 100000

[admin]
listen = 127.0.0.1:$3

[timeouts]
keepalive = 300s
client_header = 300s

[log]
access = off

[pool bench]
backend = 127.0.0.1:$PORT_BACKEND
max_outstanding = 4096
$keepalive

[route chat]
path = /v1/chat/completions
pool = bench
kind = $4

[route models]
path = /v1/models
pool = bench
kind = raw

[route all]
path = /v1/*
pool = bench
kind = raw
EOF
    if ! "${BIN[$t]}" -t -c "$conf" >/dev/null 2>&1; then
        sed -i '/^keepalive = 64$/d' "$conf"     # an aigw from before [pool] keepalive
    fi
    "${PIN_PROXY[@]}" "${BIN[$t]}" -c "$conf" >"$WORK/$t.log" 2>&1 &
    PID[$t]=$!; STARTED+=($!)
    wait_port "$2" "${PID[$t]}" "$t" || return 1
    if is_tls "$t"; then wait_port "${PORT[$t]}" "${PID[$t]}" "$t"; fi
}

start_aigw() { run_aigw aigw "$PORT_AIGW" "$PORT_AIGW_ADMIN" raw; }
start_aigw_base() { run_aigw aigw-base "$PORT_AIGW_BASE" "$PORT_AIGW_BASE_ADMIN" raw; }
start_aigw_ai() { run_aigw aigw-ai "$PORT_AIGW_AI" "$PORT_AIGW_AI_ADMIN" ai; }
start_aigw_keys() { run_aigw_keys aigw-keys "$PORT_AIGW_KEYS" "$PORT_AIGW_KEYS_ADMIN"; }
start_aigw_keys_base() { run_aigw_keys aigw-keys-base "$PORT_AIGW_KEYS_BASE" "$PORT_AIGW_KEYS_BASE_ADMIN"; }
# run_aigw_keys TARGET PORT ADMIN_PORT [EXTRA_CONFIG]: the whole AI request path,
# with the model's prices (cost accounting and metrics by model on)
run_aigw_keys() {
    local hash
    hash=$(printf '%s' "$BENCH_KEY" | sha256sum | cut -d' ' -f1)
    echo "bench sha256:$hash tier=bench models=$MODEL" >"$WORK/keys"
    run_aigw "$1" "$2" "$3" ai "${4:-}

[model $MODEL]
input_per_mtok = 0.10
output_per_mtok = 0.30

[keys]
auth = required
file = $WORK/keys

[tier bench]
requests_per_minute = 1000000000
tokens_per_minute = 10000000000
max_tokens = 4096
daily_tokens = 1000000000000
"
}

start_aigw_trace001() { start_otlp_sink && run_aigw_keys aigw-trace001 "$PORT_AIGW_TRACE001" "$PORT_AIGW_TRACE001_ADMIN" "$(tracing_conf 0.01)"; }
start_aigw_trace1() { start_otlp_sink && run_aigw_keys aigw-trace1 "$PORT_AIGW_TRACE1" "$PORT_AIGW_TRACE1_ADMIN" "$(tracing_conf 1.0)"; }
tracing_conf() { printf '[tracing]\notlp_endpoint = http://127.0.0.1:%s/v1/traces\nsample_ratio = %s\n' "$PORT_OTLP_SINK" "$1"; }
# One nginx worker answering 200 to every POST: the collector the trace targets
# export to (started once, shared by them; it runs on the load generator's CPU).
start_otlp_sink() {
    [ -n "${PID[otlp-sink]:-}" ] && return 0
    local d=$WORK/otlp-sink user_line=""
    mkdir -p "$d/tmp"
    [ "$(id -u)" -eq 0 ] && user_line="user root root;"
    cat >"$d/nginx.conf" <<EOF
$user_line
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body;
    client_max_body_size 64m;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$PORT_OTLP_SINK;
        location / { return 200 '{}'; }
    }
}
EOF
    "${PIN_LOAD[@]}" "$NGINX" -e "$d/error.log" -p "$d" -c "$d/nginx.conf" -g 'daemon off;' \
        >"$WORK/otlp-sink.log" 2>&1 &
    PID[otlp-sink]=$!; STARTED+=($!)
    wait_port "$PORT_OTLP_SINK" "${PID[otlp-sink]}" otlp-sink
}

# The one certificate every TLS target serves: ECDSA P-256, SAN 127.0.0.1 and localhost
# (made per run by tests/tls/make-certs.sh; nothing secret is committed).
TLS_CERTS=$WORK/certs
ensure_certs() {
    [ -s "$TLS_CERTS/server.pem" ] && return 0
    command -v openssl >/dev/null || { note "openssl not found (make deps installs it)"; return 1; }
    sh tests/tls/make-certs.sh "$TLS_CERTS" >/dev/null || { note "tests/tls/make-certs.sh failed"; return 1; }
    cat "$TLS_CERTS/server.pem" "$TLS_CERTS/server.key" >"$TLS_CERTS/haproxy.pem"   # HAProxy's crt: both in one
}

# aigw with [tls]: its [server] listener stays (plaintext, unused by the benchmark).
# aigw-tls takes the defaults (the cipher order fastest on the linked wolfSSL);
# aigw-tls-chacha is held to TLS 1.3 and ChaCha20-Poly1305 like the other *-chacha.
run_aigw_tls() { # run_aigw_tls TARGET PLAIN_PORT ADMIN_PORT [EXTRA [tls] LINES]
    ensure_certs || return 1
    run_aigw "$1" "$2" "$3" raw "[tls]
listen = 127.0.0.1:${PORT[$1]}
cert = $TLS_CERTS/server.pem
key = $TLS_CERTS/server.key
${4:-}"
}
start_aigw_tls() { run_aigw_tls aigw-tls "$PORT_AIGW_TLS_PLAIN" "$PORT_AIGW_TLS_ADMIN"; }
start_aigw_tls_chacha() {
    run_aigw_tls aigw-tls-chacha "$PORT_AIGW_TLS_CHACHA_PLAIN" "$PORT_AIGW_TLS_CHACHA_ADMIN" "min_version = 1.3
ciphers = $TLS_CHACHA_WOLFSSL"
}
start_aigw_fast_tls() { run_aigw_tls aigw-fast-tls "$PORT_AIGW_FAST_TLS_PLAIN" "$PORT_AIGW_FAST_TLS_ADMIN"; }
start_aigw_fast_tls_chacha() {
    run_aigw_tls aigw-fast-tls-chacha "$PORT_AIGW_FAST_TLS_CHACHA_PLAIN" "$PORT_AIGW_FAST_TLS_CHACHA_ADMIN" "min_version = 1.3
ciphers = $TLS_CHACHA_WOLFSSL"
}

start_nginx() { run_nginx nginx ""; }
# nginx-tls: what an operator writes (certificate, key, TLS 1.2 and 1.3); the rest,
# session tickets included, is nginx's default.
start_nginx_tls() {
    ensure_certs || return 1
    run_nginx nginx-tls "ssl" "ssl_certificate $TLS_CERTS/server.pem;
        ssl_certificate_key $TLS_CERTS/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;"
}
start_nginx_tls_chacha() {
    ensure_certs || return 1
    run_nginx nginx-tls-chacha "ssl" "ssl_certificate $TLS_CERTS/server.pem;
        ssl_certificate_key $TLS_CERTS/server.key;
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites $TLS_CHACHA_OPENSSL;"
}
# write_nginx_conf TARGET LISTEN_FLAGS [SERVER_LINES]: $WORK/TARGET/nginx.conf, one
# worker proxying to the backend with upstream keep-alive
write_nginx_conf() {
    local t=$1 d=$WORK/$1 user_line=""
    mkdir -p "$d/tmp"
    # As root, nginx would switch its worker to "nobody" (and Debian has no such group):
    # keep it on the invoking user, like the other targets.
    [ "$(id -u)" -eq 0 ] && user_line="user root root;"
    cat >"$d/nginx.conf" <<EOF
$user_line
worker_processes 1;
worker_rlimit_nofile $(ulimit -n);
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 30000; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    upstream backend {
        server 127.0.0.1:$PORT_BACKEND;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:${PORT[$t]} $2;
        ${3:-}
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

# run_nginx TARGET LISTEN_FLAGS [SERVER_LINES]: nginx in the foreground
run_nginx() {
    local t=$1 d=$WORK/$1
    write_nginx_conf "$@"
    "${PIN_PROXY[@]}" "$NGINX" -e "$d/error.log" -p "$d" -c "$d/nginx.conf" -g 'daemon off;' \
        >"$WORK/$t.log" 2>&1 &
    PID[$t]=$!; STARTED+=($!)
    wait_port "${PORT[$t]}" "${PID[$t]}" "$t"
}

start_haproxy() { run_haproxy haproxy ""; }
# haproxy-tls: "ssl crt" on the bind line and HAProxy's defaults (TLS 1.2 and up,
# tickets on); haproxy-tls-chacha: TLS 1.3 and ChaCha20-Poly1305 only.
start_haproxy_tls() { ensure_certs && run_haproxy haproxy-tls "ssl crt $TLS_CERTS/haproxy.pem"; }
start_haproxy_tls_chacha() {
    ensure_certs && run_haproxy haproxy-tls-chacha \
        "ssl crt $TLS_CERTS/haproxy.pem ssl-min-ver TLSv1.3 ciphersuites $TLS_CHACHA_OPENSSL"
}
# write_haproxy_conf TARGET BIND_OPTIONS [GLOBAL_LINE]: $WORK/TARGET.cfg, one
# thread, HTTP keep-alive both sides
write_haproxy_conf() {
    local t=$1
    # HAProxy reserves two descriptors per connection and, by default, refuses to start
    # when the limit is lower. Idle clients (perf/idle-rss.sh) need one each, so where the
    # hard limit is low, let it start anyway with as many as the descriptors allow.
    local maxconn=$(($(ulimit -n) - 100)) limits=""
    [ "$maxconn" -gt 30000 ] && maxconn=30000
    [ $((2 * maxconn + 100)) -gt "$(ulimit -n)" ] && limits="no strict-limits"
    cat >"$WORK/$t.cfg" <<EOF
global
    nbthread 1
    maxconn $maxconn
    $limits
    ${3:-}

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 60s
    timeout http-keep-alive 300s
    timeout http-request 300s

frontend bench
    bind 127.0.0.1:${PORT[$t]} $2
    default_backend backend

backend backend
    server mockllm 127.0.0.1:$PORT_BACKEND
EOF
}

# run_haproxy TARGET BIND_OPTIONS: HAProxy in the foreground
run_haproxy() {
    local t=$1
    write_haproxy_conf "$@"
    "${PIN_PROXY[@]}" "$HAPROXY" -db -f "$WORK/$t.cfg" >"$WORK/$t.log" 2>&1 &
    PID[$t]=$!; STARTED+=($!)
    wait_port "${PORT[$t]}" "${PID[$t]}" "$t"
}

# start_target NAME: start the proxy NAME (the backend must be up); 1 if unavailable.
start_target() {
    local t=$1
    [ -n "${PORT[$t]:-}" ] || die "unknown target '$t' ($TARGET_NAMES)"
    [ "$t" = direct ] && return 0
    [ -x "${BIN[$t]}" ] || { note "$t: ${BIN[$t]} not found"; return 1; }
    "start_${t//-/_}" || { note "$t: did not start"; return 1; }
}

# wait_idleconns_ready PID WHAT: waits (120 s at most) for the idleconns holder PID,
# writing to $WORK/idleconns.out, to report its WHAT (connections, streams) open;
# prints how many, or dies with its errors.
wait_idleconns_ready() {
    local holder=$1 ready="" _
    for _ in $(seq 1200); do
        ready=$(awk '$1 == "ready" { print $2 }' "$WORK/idleconns.out")
        [ -n "$ready" ] && break
        kill -0 "$holder" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$ready" ]; then
        cat "$WORK/idleconns.err" >&2
        die "idleconns did not get its $2 open"
    fi
    echo "$ready"
}
