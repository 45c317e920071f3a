#!/bin/bash
# Makes the certificates of the TLS tests with the openssl CLI (3.0), quietly:
#
#   tests/certs.sh DIR [trust-domain] [service...]
#
# DIR/ca.pem, ca.key          the test CA
# DIR/<svc>.pem, <svc>.key    per service (default: checkout ledger client): URI SAN
#                             spiffe://<trust-domain>/service/<svc> (default remora.test), DNS SANs
#                             <svc> and localhost, IP SAN 127.0.0.1, serverAuth + clientAuth
# DIR/expired.pem, .key       checkout's identity from the same CA, expired (2020)
# DIR/rogue-ca.pem, .key      another CA; DIR/rogue.pem, .key: checkout's identity from it
# DIR/noid.pem, .key          from the CA, valid, without any URI SAN
#
# All keys are EC P-256. Running it again with the same arguments keeps what is there.
set -eu

if [ $# -lt 1 ]; then
    echo "usage: $0 DIR [trust-domain] [service...]" >&2
    exit 2
fi
dir=$1
td=${2:-remora.test}
if [ $# -ge 2 ]; then shift 2; else shift; fi
if [ $# -gt 0 ]; then services=("$@"); else services=(checkout ledger client); fi

stamp="certs.sh v1 $td ${services[*]}"
files=(ca.pem ca.key expired.pem expired.key rogue-ca.pem rogue-ca.key rogue.pem rogue.key
    noid.pem noid.key)
for s in "${services[@]}"; do files+=("$s.pem" "$s.key"); done

mkdir -p "$dir"
if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$stamp" ]; then
    complete=1
    for f in "${files[@]}"; do [ -s "$dir/$f" ] || complete=0; done
    [ $complete = 1 ] && exit 0
fi
rm -f "$dir/.stamp"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Runs a command, showing its output only when it fails.
run() {
    local out
    if ! out=$("$@" 2>&1); then
        printf 'certs.sh: %s failed:\n%s\n' "$*" "$out" >&2
        exit 1
    fi
}

cat >"$work/openssl.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = \$ENV::SAN
[ca]
default_ca = test_ca
[test_ca]
database = $work/index.txt
new_certs_dir = $work
serial = $work/serial
default_md = sha256
policy = any
copy_extensions = none
[any]
commonName = supplied
CNF
: >"$work/index.txt"
echo 1000 >"$work/serial"

export OPENSSL_CONF=$work/openssl.cnf
export SAN=DNS:unused # the config reads it for every command
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc)

# ca NAME SUBJECT: a self-signed CA.
ca() {
    run openssl req -x509 "${ec[@]}" -keyout "$work/$1.key" -subj "$2" -days 3650 \
        -extensions ca_ext -out "$work/$1.pem"
}

# leaf NAME CA SAN: a certificate signed by CA with the given subjectAltName.
leaf() {
    SAN=$3 run openssl req -x509 "${ec[@]}" -keyout "$work/$1.key" -CA "$work/$2.pem" \
        -CAkey "$work/$2.key" -subj "/CN=$1" -days 825 -extensions leaf_ext -out "$work/$1.pem"
}

san() {
    echo "URI:spiffe://$td/service/$1, DNS:$1, DNS:localhost, IP:127.0.0.1"
}

ca ca "/O=remora test/CN=remora test CA"
ca rogue-ca "/O=rogue/CN=rogue CA"
for s in "${services[@]}"; do leaf "$s" ca "$(san "$s")"; done
leaf rogue rogue-ca "$(san checkout)"
leaf noid ca "DNS:noid, DNS:localhost, IP:127.0.0.1"

# The expired certificate: openssl ca is the 3.0 CLI's way to set a start date in the past.
run openssl req -new "${ec[@]}" -keyout "$work/expired.key" -subj /CN=expired \
    -out "$work/expired.csr"
SAN=$(san checkout) run openssl ca -batch -notext -cert "$work/ca.pem" -keyfile "$work/ca.key" \
    -startdate 20200101000000Z -enddate 20200201000000Z -extensions leaf_ext \
    -in "$work/expired.csr" -out "$work/expired.pem"

for f in "${files[@]}"; do cp "$work/$f" "$dir/$f"; done
chmod 600 "$dir"/*.key
echo "$stamp" >"$dir/.stamp"
