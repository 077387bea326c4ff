#!/bin/sh
# Builds the optional fast wolfSSL that `make WOLFSSL=fast` links aigw against.
#
# Debian 12's libwolfssl has no x86-64 assembly and no AES-NI (AES-GCM runs in
# portable C). This script takes Debian's own source package of the installed
# version (never a copy in the tree, never a download outside Debian's archive),
# configures it with the flags debian/rules passes (so the API and ABI options
# aigw relies on -- OPENSSL_ALL, SNI, ALPN, tickets, TLS 1.3, SESSION_CERTS ...
# -- stay the same) plus the assembly options below, builds it out of the
# tree and installs it into build/wolfssl-fast/prefix. Nothing is installed
# system-wide except, when missing, the build tools (autoconf, automake,
# libtool, dpkg-dev) and a deb-src entry for the configured Debian mirrors.
#
# Idempotent: a second run with the same version and flags does nothing. Bounded:
# each step runs under `timeout`; the whole build takes about 3 minutes on 2 cores.
# Needs root (or sudo) only when it must add the deb-src entry or the build tools.
set -eu
cd "$(dirname "$0")/.."
FAST_FLAGS="--enable-intelasm --enable-aesni --enable-sp --enable-sp-asm"
OUT="$(pwd)/build/wolfssl-fast"
PREFIX="$OUT/prefix"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

VERSION=$(dpkg-query -W -f='${Version}' libwolfssl-dev 2>/dev/null) || {
    echo "wolfssl-fast: libwolfssl-dev is not installed (run scripts/deps.sh first)" >&2; exit 1; }
STAMP="wolfssl $VERSION $FAST_FLAGS"
if [ -f "$PREFIX/aigw-build-stamp" ] && [ "$(cat "$PREFIX/aigw-build-stamp")" = "$STAMP" ] &&
   [ -f "$PREFIX/include/wolfssl/options.h" ]; then
    echo "wolfssl-fast: $PREFIX is up to date ($STAMP)"
    exit 0
fi

missing=""
for p in dpkg-dev autoconf automake libtool; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "wolfssl-fast: installing build tools:$missing"
    # shellcheck disable=SC2086 # a list of package names
    DEBIAN_FRONTEND=noninteractive timeout 600 $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# apt-get source needs deb-src entries; when there are none, mirror every
# configured Debian `deb` entry (deb822 stanzas and one-line sources) as deb-src
# in a file of our own, leaving the existing files alone.
SRC_LIST=/etc/apt/sources.list.d/aigw-deb-src.sources
if ! grep -Eqs '^[[:space:]]*(deb-src[[:space:]]|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; then
    echo "wolfssl-fast: adding deb-src entries for the configured Debian mirrors in $SRC_LIST"
    tmp=$(mktemp)
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk 'BEGIN { RS = ""; ORS = "\n\n" }
             /(^|\n)URIs:[^\n]*debian/ && /(^|\n)Types:([^\n]* )?deb( [^\n]*)?(\n|$)/ && !/(^|\n)Enabled: *no/ {
                 sub(/Types:[^\n]*/, "Types: deb-src"); print }' "$f" >>"$tmp"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        sed -n 's/^[[:space:]]*deb\([[:space:]].*debian.*\)$/deb-src\1/p' "$f" >>"$tmp"
    done
    [ -s "$tmp" ] || { rm -f "$tmp"; echo "wolfssl-fast: no Debian mirror configured in /etc/apt" >&2; exit 1; }
    $SUDO install -m 0644 "$tmp" "$SRC_LIST"
    rm -f "$tmp"
    timeout 600 $SUDO apt-get update -qq
fi

UPSTREAM=${VERSION#*:}
UPSTREAM=${UPSTREAM%-*}
SRC="$OUT/src/wolfssl-$UPSTREAM"
if [ ! -f "$SRC/debian/changelog" ] || [ "$(dpkg-parsechangelog -l "$SRC/debian/changelog" -S Version)" != "$VERSION" ]; then
    echo "wolfssl-fast: apt-get source wolfssl=$VERSION into $OUT/src"
    rm -rf "$OUT/src"
    mkdir -p "$OUT/src"
    # deb-src entries whose index was never fetched: update once and retry
    (cd "$OUT/src" && timeout 600 apt-get source -qq "wolfssl=$VERSION") || {
        timeout 600 $SUDO apt-get update -qq
        (cd "$OUT/src" && timeout 600 apt-get source -qq "wolfssl=$VERSION"); }
fi

# Debian's configure flags, read from debian/rules (the override_dh_auto_configure
# continuation lines), so a change of packaging is followed rather than guessed.
DEB_FLAGS=$(awk '/dh_auto_configure --/ { on = 1; next }
                 on { line = $0; sub(/\\[[:space:]]*$/, "", line); print line; if ($0 !~ /\\[[:space:]]*$/) exit }' \
            "$SRC/debian/rules" | tr -s ' \t\n' ' ')
case "$DEB_FLAGS" in
    *--enable-distro*) ;;
    *) echo "wolfssl-fast: could not read Debian's configure flags from $SRC/debian/rules" >&2; exit 1 ;;
esac
# Debian's compiler flags (hardening=+all, as debian/rules exports).
CFLAGS=$(DEB_BUILD_MAINT_OPTIONS=hardening=+all dpkg-buildflags --get CFLAGS)
CPPFLAGS=$(DEB_BUILD_MAINT_OPTIONS=hardening=+all dpkg-buildflags --get CPPFLAGS)
LDFLAGS=$(DEB_BUILD_MAINT_OPTIONS=hardening=+all dpkg-buildflags --get LDFLAGS)
export CFLAGS CPPFLAGS LDFLAGS

echo "wolfssl-fast: configure $DEB_FLAGS $FAST_FLAGS"
[ -x "$SRC/configure" ] || (cd "$SRC" && timeout 600 autoreconf -fi >/dev/null 2>&1)
mkdir -p "$OUT/obj"
cd "$OUT/obj"
# Configured once per source and flags; make then only rebuilds what changed.
CONFIGURED="$SRC $DEB_FLAGS $FAST_FLAGS $CFLAGS"
if [ ! -f config.status ] || [ "$(cat aigw-configured 2>/dev/null)" != "$CONFIGURED" ]; then
    # shellcheck disable=SC2086 # the flag lists are word lists
    timeout 600 "$SRC/configure" --prefix="$PREFIX" $DEB_FLAGS $FAST_FLAGS >configure.log 2>&1 ||
        { tail -30 configure.log; exit 1; }
    echo "$CONFIGURED" >aigw-configured
fi
echo "wolfssl-fast: make (log: $OUT/obj/make.log)"
timeout 1800 make -j"$(nproc)" >make.log 2>&1 || { tail -30 make.log; exit 1; }
rm -rf "$PREFIX"
timeout 300 make install >install.log 2>&1 || { tail -30 install.log; exit 1; }
# A distro build does not install options.h (it is per architecture); Debian's
# libwolfssl-dev.install ships it from the build tree, and so do we.
install -m 0644 wolfssl/options.h "$PREFIX/include/wolfssl/options.h"

# The API options must be Debian's: every define of the system options.h that
# is not about arithmetic or assembly must also be in the fast one.
sysdefs=$(sed -n 's/^#define \([A-Z0-9_]*\).*/\1/p' /usr/include/wolfssl/options.h | sort -u)
fastdefs=$(sed -n 's/^#define \([A-Z0-9_]*\).*/\1/p' "$PREFIX/include/wolfssl/options.h" | sort -u)
lost=$(printf '%s\n' "$sysdefs" | grep -vxF "$fastdefs" | grep -Ev '^(WOLFSSL_SP_|SP_|TFM_|WOLFSSL_HAVE_SP_|HAVE___UINT128_T|WC_NO_HARDEN|WOLFSSL_NO_ASM)' || true)
if [ -n "$lost" ]; then
    echo "wolfssl-fast: the fast build lost options aigw may rely on: $(printf '%s\n' "$lost" | tr '\n' ' ')" >&2
    exit 1
fi
gained=$(printf '%s\n' "$fastdefs" | grep -vxF "$sysdefs" | tr '\n' ' ')
grep -q '^#define WOLFSSL_AESNI' "$PREFIX/include/wolfssl/options.h" ||
    { echo "wolfssl-fast: WOLFSSL_AESNI missing from the fast options.h" >&2; exit 1; }
echo "$STAMP" >"$PREFIX/aigw-build-stamp"
echo "wolfssl-fast: installed into $PREFIX (options added to Debian's: $gained)"
echo "wolfssl-fast: now 'make WOLFSSL=fast' builds build/fast/aigw against it"
