#!/usr/bin/env bash
# Certificates and keys for a Flower federation with TLS and node authentication.
#
#   infra/flower/make_certs.sh OUT_DIR [--host NAME]... SITE...
#
# Writes into OUT_DIR:
#   ca.crt, ca.key                  the certificate authority (keep ca.key offline; give ca.crt to every party)
#   server.crt, server.key          the SuperLink's TLS certificate (SAN: 127.0.0.1, localhost, each --host)
#   sites/SITE.key, sites/SITE.pub  one P-384 key pair per partner site, OpenSSH format, for Flower's node
#                                   authentication: the coordinator registers SITE.pub with
#                                   `flwr supernode register SITE.pub CONNECTION`; the site keeps SITE.key
#                                   and starts flower-supernode --auth-supernode-private-key SITE.key
# Everything is generated in a temporary folder and moved into place at the end, so an interrupted run
# leaves nothing half-written. Existing files are kept (a site added later gets a key; the CA is reused).
set -euo pipefail

usage() { echo "usage: $0 OUT_DIR [--host NAME]... SITE..." >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1; shift
HOSTS=()
SITES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --host) [ $# -ge 2 ] || usage; HOSTS+=("$2"); shift 2 ;;
    -h|--help) usage ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) [[ "$1" =~ ^[A-Za-z0-9._-]+$ ]] || { echo "site name '$1' may hold only letters, digits, . _ -" >&2; exit 2; }
       SITES+=("$1"); shift ;;
  esac
done
command -v openssl >/dev/null || { echo "openssl is required" >&2; exit 1; }

mkdir -p "$OUT/sites"
TMP=$(mktemp -d "$OUT/.make_certs.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

if [ ! -f "$OUT/ca.crt" ] || [ ! -f "$OUT/ca.key" ]; then
  openssl ecparam -name secp384r1 -genkey -noout -out "$TMP/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$TMP/ca.key" -sha384 -days 3650 -subj "/CN=ovseg federation CA" \
    -out "$TMP/ca.crt" 2>/dev/null
  mv "$TMP/ca.key" "$TMP/ca.crt" "$OUT/"
  rm -f "$OUT/server.crt" "$OUT/server.key"  # a new CA invalidates the old server certificate
fi

if [ ! -f "$OUT/server.crt" ] || [ ! -f "$OUT/server.key" ]; then
  SAN="IP:127.0.0.1,DNS:localhost"
  for h in "${HOSTS[@]+"${HOSTS[@]}"}"; do
    if [[ "$h" =~ ^[0-9.]+$ ]]; then SAN="$SAN,IP:$h"; else SAN="$SAN,DNS:$h"; fi
  done
  openssl ecparam -name secp384r1 -genkey -noout -out "$TMP/server.key" 2>/dev/null
  openssl req -new -key "$TMP/server.key" -subj "/CN=ovseg superlink" -out "$TMP/server.csr" 2>/dev/null
  printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" \
    "$SAN" > "$TMP/server.ext"
  openssl x509 -req -in "$TMP/server.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" -CAcreateserial \
    -CAserial "$TMP/ca.srl" -days 825 -sha384 -extfile "$TMP/server.ext" -out "$TMP/server.crt" 2>/dev/null
  mv "$TMP/server.key" "$TMP/server.crt" "$OUT/"
fi

for s in "${SITES[@]+"${SITES[@]}"}"; do
  [ -f "$OUT/sites/$s.key" ] && [ -f "$OUT/sites/$s.pub" ] && continue
  if command -v ssh-keygen >/dev/null; then
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "$s" -f "$TMP/$s.key"
    mv "$TMP/$s.key.pub" "$TMP/$s.pub"
  else  # the project's Python has `cryptography` (a Flower dependency)
    python3 - "$TMP/$s" <<'PY'
import sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
key = ec.generate_private_key(ec.SECP384R1())
open(sys.argv[1] + ".key", "wb").write(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
open(sys.argv[1] + ".pub", "wb").write(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
    serialization.PublicFormat.OpenSSH))
PY
  fi
  chmod 600 "$TMP/$s.key"
  mv "$TMP/$s.key" "$TMP/$s.pub" "$OUT/sites/"
done
chmod 600 "$OUT/ca.key" "$OUT/server.key"
echo "certificates in $OUT: ca.crt server.crt server.key; site keys: ${SITES[*]:-none}"
