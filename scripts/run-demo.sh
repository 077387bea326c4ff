#!/bin/sh
# The demo behind `make run`: two aigw-mockllm on 127.0.0.1:8001 and :8002, and aigw
# on 127.0.0.1:8080 and https://127.0.0.1:8443 (admin 127.0.0.1:9090) in front of
# them with examples/aigw.conf, plus API keys: a fresh key from `aigw keygen`, in a
# "demo" tier with small limits, and a throwaway CA and certificate for TLS
# (tests/tls/make-certs.sh).
# Stays in the foreground with aigw's output; Ctrl-C, SIGTERM or SIGHUP stops all
# three. Other ports: AIGW_DEMO_LISTEN_PORT, AIGW_DEMO_ADMIN_PORT,
# AIGW_DEMO_TLS_PORT, AIGW_DEMO_BACKEND_PORTS="P1 P2".
set -u

cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
AIGW=$BUILD/aigw
MOCKLLM=$BUILD/aigw-mockllm
CONF=examples/aigw.conf
MODEL=mock-llama-3.1-8b
# Ports, as in examples/aigw.conf; another set from the environment (two backends).
LISTEN_PORT=${AIGW_DEMO_LISTEN_PORT:-8080}
ADMIN_PORT=${AIGW_DEMO_ADMIN_PORT:-9090}
TLS_PORT=${AIGW_DEMO_TLS_PORT:-8443}
BACKEND_PORTS=${AIGW_DEMO_BACKEND_PORTS:-8001 8002}
LOGDIR=$BUILD/demo

for f in "$AIGW" "$MOCKLLM"; do
    [ -x "$f" ] || { echo "run-demo: $f not found; build it first with 'make'" >&2; exit 1; }
done
[ -r "$CONF" ] || { echo "run-demo: $CONF not found" >&2; exit 1; }
# shellcheck disable=SC2086
set -- $BACKEND_PORTS
[ $# -eq 2 ] || { echo "run-demo: AIGW_DEMO_BACKEND_PORTS must name two ports" >&2; exit 1; }
command -v curl >/dev/null 2>&1 || { echo "run-demo: curl is needed (make deps installs it)" >&2; exit 1; }

# Whether something listens on a local TCP port, without sending it a request (a probe
# request would show up in aigw's access log and metrics). Without ss, curl's telnet://
# connects and sends nothing: exit 7 is "refused", 28 is "connected, timed out".
port_in_use() {
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
    else
        curl -s -o /dev/null --max-time 1 "telnet://127.0.0.1:$1" </dev/null
        [ $? -ne 7 ]
    fi
}

busy=""
for p in $BACKEND_PORTS $LISTEN_PORT $ADMIN_PORT $TLS_PORT; do
    port_in_use "$p" && busy="$busy $p"
done
if [ -n "$busy" ]; then
    echo "run-demo: port(s)$busy on 127.0.0.1 already in use; stop whatever listens there (ss -ltnp) and retry" >&2
    exit 1
fi

pids=""
stopping=0
# Stops what this script started, by PID, and waits for it, whatever ends the demo:
# Ctrl-C, SIGTERM (`make run` stopped by a supervisor or `timeout`), SIGHUP (the
# terminal went away; aigw alone would take it for a reload and stay), or aigw
# exiting. SIGTERM first (aigw drains, the mocks exit), SIGKILL for whatever still
# runs 5 s later. `jobs` reaps the children that have exited: a child exited but not
# yet waited for still answers `kill -0`.
stop_all() {
    [ "$stopping" -eq 1 ] && return
    stopping=1
    [ -n "$pids" ] || return
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null
    i=0
    while [ $i -lt 50 ]; do
        jobs >/dev/null 2>&1
        alive=""
        for p in $pids; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
        [ -z "$alive" ] && break
        sleep 0.1
        i=$((i + 1))
    done
    # shellcheck disable=SC2086
    [ -n "$alive" ] && kill -KILL $alive 2>/dev/null
    for p in $pids; do wait "$p" 2>/dev/null; done
}
trap 'stop_all; exit 0' INT TERM HUP
trap 'stop_all' EXIT

mkdir -p "$LOGDIR"
for p in $BACKEND_PORTS; do
    "$MOCKLLM" --listen "127.0.0.1:$p" --model "$MODEL" --tps 30 --ttft-ms 200 \
        >"$LOGDIR/mockllm-$p.log" 2>&1 &
    pids="$pids $!"
done

# Bounded wait (10 s) for a port to accept; fails early if the process died.
wait_port() {
    port=$1 pid=$2 name=$3 i=0
    while [ $i -lt 100 ]; do
        port_in_use "$port" && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "run-demo: $name exited during start-up" >&2
            return 1
        fi
        sleep 0.1
        i=$((i + 1))
    done
    echo "run-demo: $name did not accept on 127.0.0.1:$port within 10 s" >&2
    return 1
}

# shellcheck disable=SC2086
set -- $pids
for p in $BACKEND_PORTS; do
    wait_port "$p" "$1" "aigw-mockllm on :$p" || { tail -n 20 "$LOGDIR/mockllm-$p.log" >&2; exit 1; }
    shift
done

# A throwaway CA and server certificate (ECDSA P-256) for the TLS listener.
sh tests/tls/make-certs.sh "$LOGDIR/tls" || { echo "run-demo: making the demo certificates failed" >&2; exit 1; }

# The example configuration, with keys on: a new key (only its hash is written).
# keygen prints the keys-file line on stdout and the key itself on stderr.
"$AIGW" keygen demo demo >"$LOGDIR/keys" 2>"$LOGDIR/keygen.err" ||
    { cat "$LOGDIR/keygen.err" >&2; echo "run-demo: aigw keygen failed" >&2; exit 1; }
KEY=$(sed -n 's/^key: *//p' "$LOGDIR/keygen.err")
rm -f "$LOGDIR/keygen.err"
DEMO_CONF=$LOGDIR/aigw.conf
{
    # shellcheck disable=SC2086
    set -- $BACKEND_PORTS
    sed -e "s/127\.0\.0\.1:8080/127.0.0.1:$LISTEN_PORT/g" -e "s/127\.0\.0\.1:9090/127.0.0.1:$ADMIN_PORT/g" \
        -e "s/127\.0\.0\.1:8001/127.0.0.1:$1/g" -e "s/127\.0\.0\.1:8002/127.0.0.1:$2/g" "$CONF"
    cat <<KEYS

# added by scripts/run-demo.sh
[keys]
auth = required
file = keys

[tier demo]
requests_per_minute = 120
tokens_per_minute = 20000
max_tokens = 512
daily_tokens = 1000000

[tls]
listen = 127.0.0.1:$TLS_PORT
cert = tls/server.pem
key = tls/server.key
KEYS
} >"$DEMO_CONF"

"$AIGW" -c "$DEMO_CONF" &
aigw_pid=$!
pids="$pids $aigw_pid"
wait_port "$LISTEN_PORT" "$aigw_pid" "aigw" || exit 1

cat <<MSG

  aigw is running on http://127.0.0.1:$LISTEN_PORT in front of two aigw-mockllm
  (ports $BACKEND_PORTS; logs in $LOGDIR/), with examples/aigw.conf
  plus API keys ($DEMO_CONF). Your key, tier "demo" (120 requests and 20000
  tokens a minute): $KEY
  Try, from another terminal:

    KEY=$KEY

    curl -s http://127.0.0.1:$LISTEN_PORT/v1/chat/completions -H "Authorization: Bearer \$KEY" \\
      -H 'Content-Type: application/json' \\
      -d '{"model":"$MODEL","messages":[{"role":"user","content":"Hello"}],"max_tokens":16}'

    curl -N http://127.0.0.1:$LISTEN_PORT/v1/chat/completions -H "Authorization: Bearer \$KEY" \\
      -H 'Content-Type: application/json' \\
      -d '{"model":"$MODEL","messages":[{"role":"user","content":"Hello"}],"max_tokens":32,"stream":true}'

    curl -s http://127.0.0.1:$LISTEN_PORT/v1/models -H "Authorization: Bearer \$KEY"

  The same over TLS (a throwaway CA made for the demo):

    curl -s --cacert $LOGDIR/tls/ca.pem https://127.0.0.1:$TLS_PORT/v1/models -H "Authorization: Bearer \$KEY"

  Without the key: 401. Add -i to see the x-ratelimit-* headers.

  Metrics: http://127.0.0.1:$ADMIN_PORT/metrics
  Status page: http://127.0.0.1:$ADMIN_PORT/status  (JSON: /status.json)
  Ctrl-C stops the demo. aigw's output follows.

MSG

wait "$aigw_pid"
rc=$?
if [ "$stopping" -eq 0 ]; then
    echo "run-demo: aigw exited with status $rc" >&2
    stop_all
    exit "$rc"
fi
