#!/bin/sh
# Makes the throwaway PKI the TLS tests, the fuzz target and the benchmarks use:
# nothing secret is committed, every run makes its own. ECDSA P-256 throughout
# (the fastest signatures on Debian's software-only wolfSSL).
#   tests/tls/make-certs.sh DIR
# DIR gets:
#   ca.pem ca.key                 the CA clients trust (also signs client certs)
#   server.pem server.key         CN aigw.test; SAN localhost, aigw.test, 127.0.0.1, ::1
#   server-chain.pem              server.pem + ca.pem
#   wild.pem wild.key             SAN *.wild.test, other.test (a second SNI certificate)
#   server2.pem server2.key       like server.pem with another serial (reload tests)
#   expired.pem expired.key       valid names, notAfter in the past
#   client.pem client.key         CN alice, O aigw-tests, signed by ca
#   wrongca.pem wrongca.key       a CA nobody trusts
#   wrongclient.pem wrongclient.key  CN mallory, signed by wrongca
#   rsa.pem rsa.key               RSA 2048 for aigw.test (clients without ECDSA)
set -eu
d=${1:?usage: make-certs.sh DIR}
mkdir -p "$d"
cd "$d"
[ -s wrongclient.pem ] && exit 0      # already made (idempotent)

ecparam() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }
# sign NAME SUBJ CA_PREFIX DAYS [SAN] [SERIAL]
sign() {
    name=$1 subj=$2 ca=$3 days=$4 san=${5:-} serial=${6:-}
    openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr" 2>/dev/null
    ext="$name.ext"
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=serverAuth,clientAuth"
        [ -n "$san" ] && echo "subjectAltName=$san"
    } >"$ext"
    set -- -req -in "$name.csr" -CA "$ca.pem" -CAkey "$ca.key" -out "$name.pem" -extfile "$ext"
    if [ -n "$serial" ]; then set -- "$@" -set_serial "$serial"; else set -- "$@" -CAcreateserial; fi
    openssl x509 "$@" -days "$days" 2>/dev/null
    rm -f "$name.csr" "$ext"
}
mkca() {
    ecparam "$1.key"
    openssl req -x509 -new -key "$1.key" -subj "$2" -days 3650 -out "$1.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

mkca ca "/CN=aigw test CA"
mkca wrongca "/CN=untrusted CA"
SAN_MAIN="DNS:localhost,DNS:aigw.test,IP:127.0.0.1,IP:::1"
ecparam server.key;  sign server "/CN=aigw.test" ca 825 "$SAN_MAIN" 4096
ecparam server2.key; sign server2 "/CN=aigw.test" ca 825 "$SAN_MAIN" 8192
ecparam wild.key;    sign wild "/CN=other.test" ca 825 "DNS:*.wild.test,DNS:other.test" 12288
ecparam client.key;  sign client "/CN=alice/O=aigw-tests" ca 825
ecparam wrongclient.key; sign wrongclient "/CN=mallory" wrongca 825
openssl genrsa -out rsa.key 2048 2>/dev/null; sign rsa "/CN=aigw.test" ca 825 "$SAN_MAIN"
cat server.pem ca.pem >server-chain.pem

# expired: a certificate whose validity ended yesterday, made with `openssl ca`
ecparam expired.key
mkdir -p expired-ca
: >expired-ca/index.txt
echo 1000 >expired-ca/serial
cat >expired-ca/ca.cnf <<CNF
[ ca ]
default_ca = x
[ x ]
dir = expired-ca
database = expired-ca/index.txt
new_certs_dir = expired-ca
serial = expired-ca/serial
default_md = sha256
policy = p
copy_extensions = none
x509_extensions = e
[ p ]
commonName = supplied
[ e ]
basicConstraints = CA:FALSE
subjectAltName = $SAN_MAIN
CNF
openssl req -new -key expired.key -subj "/CN=aigw.test" -out expired.csr 2>/dev/null
openssl ca -batch -config expired-ca/ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr \
    -out expired.pem -startdate 20200101000000Z -enddate 20200201000000Z -notext 2>/dev/null
rm -rf expired.csr expired-ca ./*.srl
chmod 600 ./*.key
