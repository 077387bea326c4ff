#!/bin/sh
# Installs aigw's build, test and benchmark dependencies from Debian packages.
# Idempotent and quiet when everything is already there. prometheus is here for
# its promtool (the tests check examples/prometheus-alerts.yml with it).
set -eu
cd "$(dirname "$0")/.."
PKGS="build-essential pkg-config liburing-dev libwolfssl-dev libmimalloc-dev libhiredis-dev redis-server \
libcriterion-dev libinih-dev libxxhash-dev wrk nginx-light haproxy curl openssl \
clang libclang-rt-14-dev procps prometheus python3 chromium systemd logrotate groff-base man-db bsdextrautils \
gnuplot-nox"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
# The Node SDK test (tests/node) needs node and npm; Debian's when none is installed.
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
    echo "deps: installing$missing"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # policy-rc.d keeps Debian from starting the nginx/haproxy system services we only use as benchmark peers
    $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
    # Without such a policy, installing prometheus starts its server on port 9090 (aigw's
    # default admin port); only promtool is wanted.
    case "$missing" in
    *" prometheus"*)
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
            $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
        fi ;;
    esac
fi
# The openai SDK at the version package-lock.json pins (here, never at build time).
if [ ! -d tests/node/node_modules ]; then
    echo "deps: npm ci --prefix tests/node"
    npm ci --prefix tests/node --no-audit --no-fund >/dev/null
fi
# puppeteer-core drives Debian's chromium for the /status page test (tests/browser); it downloads no browser.
if [ ! -d tests/browser/node_modules ]; then
    echo "deps: npm ci --prefix tests/browser"
    npm ci --prefix tests/browser --no-audit --no-fund >/dev/null
fi
