#!/usr/bin/env bash
# Certificates and keys for a Flower federation with TLS and SuperNode authentication, made with openssl only.
#
#   infra/flower/make_certs.sh OUT_DIR [--host NAME] SITE...
#   infra/flower/make_certs.sh certs --host flower.example.org hospital-a lab-b
#
# Writes into OUT_DIR:
#   ca.crt  ca.key           a private CA (ECDSA P-384, 10 years). ca.crt goes to every partner and to the
#                            submitting user (`root-certificates`); ca.key never leaves the coordinator.
#   server.crt  server.key   the SuperLink's TLS certificate, signed by the CA, with subjectAltName
#                            IP 127.0.0.1, DNS localhost and, with --host, NAME (a DNS name or an IP address).
#   <site>.key  <site>.pub   per partner site: an ECDSA P-384 key pair in OpenSSH format, the format that
#                            `flower-supernode --auth-supernode-private-key` and `flwr supernode register` read.
#                            <site>.key stays at the site; the coordinator registers <site>.pub.
#
# Safe to run again: an existing CA and existing site keys are kept (certificates and registrations already handed
# out stay valid); the server certificate is issued again only when it is missing, was not signed by this CA, or
# lacks the --host name. Everything is generated in a temporary folder inside OUT_DIR and moved into place, so an
# interrupted run never leaves a half-written file under a final name.
set -euo pipefail

usage() { echo "usage: $0 OUT_DIR [--host NAME] SITE..." >&2; exit 2; }
die() { echo "make_certs.sh: $*" >&2; exit 1; }

[[ $# -ge 1 ]] || usage
OUT=$1; shift
HOST=""
SITES=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --host) [[ $# -ge 2 && -n $2 ]] || usage; HOST=$2; shift 2 ;;
    --host=*) HOST=${1#--host=}; [[ -n $HOST ]] || usage; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) SITES+=("$1"); shift ;;
  esac
done
command -v openssl >/dev/null || die "openssl is not installed"
for s in "${SITES[@]+"${SITES[@]}"}"; do
  [[ $s =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "site name '$s' must be letters, digits, '.', '_' or '-'"
  [[ $s != ca && $s != server ]] || die "site name '$s' would overwrite the CA or server files"
done
if [[ -n $HOST && ! $HOST =~ ^[A-Za-z0-9.:-]+$ ]]; then die "--host '$HOST' is not a host name or IP address"; fi

mkdir -p "$OUT"
umask 077
TMP=$(mktemp -d "$OUT/.make_certs.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
DAYS_CA=3650
DAYS_SERVER=825

# ---------------------------------------------------------------- CA
if [[ ! -s $OUT/ca.crt || ! -s $OUT/ca.key ]]; then
  openssl ecparam -name secp384r1 -genkey -noout -out "$TMP/ca.key"
  openssl req -x509 -new -key "$TMP/ca.key" -sha384 -days $DAYS_CA -subj "/CN=ovseg Flower CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$TMP/ca.crt" 2>/dev/null
  CA_KEY=$TMP/ca.key; CA_CRT=$TMP/ca.crt
  echo "new CA: $OUT/ca.crt"
else
  CA_KEY=$OUT/ca.key; CA_CRT=$OUT/ca.crt
  echo "keeping CA: $OUT/ca.crt"
fi

# ---------------------------------------------------------------- SuperLink server certificate
SAN="IP:127.0.0.1,DNS:localhost"
if [[ -n $HOST ]]; then
  if [[ $HOST =~ ^[0-9.]+$ || $HOST == *:* ]]; then SAN="$SAN,IP:$HOST"; else SAN="$SAN,DNS:$HOST"; fi
fi
need_server=1
if [[ -s $OUT/server.crt && -s $OUT/server.key && $CA_CRT == "$OUT/ca.crt" ]] \
   && openssl verify -CAfile "$CA_CRT" "$OUT/server.crt" >/dev/null 2>&1; then
  need_server=0
  if [[ -n $HOST ]] && ! openssl x509 -in "$OUT/server.crt" -noout -ext subjectAltName 2>/dev/null \
       | grep -Eq "(DNS|IP Address):$HOST(,|$)"; then
    need_server=1
  fi
fi
if [[ $need_server == 1 ]]; then
  openssl ecparam -name secp384r1 -genkey -noout -out "$TMP/server.key"
  openssl req -new -key "$TMP/server.key" -subj "/CN=${HOST:-localhost}" -out "$TMP/server.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=$SAN" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" > "$TMP/server.ext"
  openssl x509 -req -in "$TMP/server.csr" -CA "$CA_CRT" -CAkey "$CA_KEY" -set_serial "0x$(openssl rand -hex 16)" -sha384 \
    -days $DAYS_SERVER -extfile "$TMP/server.ext" -out "$TMP/server.crt" 2>/dev/null
  openssl verify -CAfile "$CA_CRT" "$TMP/server.crt" >/dev/null || die "the new server certificate does not verify"
  echo "new server certificate ($SAN): $OUT/server.crt"
else
  echo "keeping server certificate: $OUT/server.crt"
fi

# ---------------------------------------------------------------- per-site keys, OpenSSH format
# Flower reads OpenSSH-format EC keys (cryptography's load_ssh_private_key / load_ssh_public_key); openssl writes
# PEM only, so the OpenSSH encoding (RFC 4251 strings, RFC 5656 ECDSA, the openssh-key-v1 container) is built
# here from the key's raw numbers.
hex_of() { printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n'; }       # text -> hex
u32() { printf '%08x' "$1"; }
sstr() { u32 $(( ${#1} / 2 )); printf '%s' "$1"; }                  # hex -> SSH string (length-prefixed)
unhex() { printf '%b' "$(printf '%s' "$1" | sed 's/../\\x&/g')"; }   # hex -> bytes
ec_field() {  # hex of the "priv:" or "pub:" block of `openssl ec -text`
  openssl ec -in "$1" -text -noout 2>/dev/null \
    | awk -v f="$2:" '$1 == f {on = 1; next} /^[A-Za-z]/ {on = 0} on' | tr -d ' :\n'
}
ssh_keypair() {  # PEM EC key $1, comment $2 -> $1.openssh (private) and $1.openssh.pub
  local pem=$1 comment=$2 type curve q d check blob priv pad i
  type=$(hex_of ecdsa-sha2-nistp384); curve=$(hex_of nistp384)
  q=$(ec_field "$pem" pub); d=$(ec_field "$pem" priv)
  [[ ${#q} == 194 ]] || die "unexpected public point length in $pem"
  d=$(printf '%s' "$d" | sed -E 's/^(00)+//')
  [[ $d =~ ^[89a-f] ]] && d="00$d"                                 # mpint: positive, two's complement
  check=$(openssl rand -hex 4)
  blob=$(sstr "$type")$(sstr "$curve")$(sstr "$q")
  priv=$check$check$(sstr "$type")$(sstr "$curve")$(sstr "$q")$(sstr "$d")$(sstr "$(hex_of "$comment")")
  pad=$(( (8 - (${#priv} / 2) % 8) % 8 ))
  for (( i = 1; i <= pad; i++ )); do priv+=$(printf '%02x' $i); done
  {
    echo "-----BEGIN OPENSSH PRIVATE KEY-----"
    unhex "$(hex_of openssh-key-v1)00$(sstr "$(hex_of none)")$(sstr "$(hex_of none)")$(sstr "")$(u32 1)$(sstr "$blob")$(sstr "$priv")" \
      | openssl base64 -A | fold -w 70; echo
    echo "-----END OPENSSH PRIVATE KEY-----"
  } > "$pem.openssh"
  echo "ecdsa-sha2-nistp384 $(unhex "$blob" | openssl base64 -A) $comment" > "$pem.openssh.pub"
}
NEW_SITES=()
for s in "${SITES[@]+"${SITES[@]}"}"; do
  if [[ -s $OUT/$s.key && -s $OUT/$s.pub ]]; then
    echo "keeping site key: $OUT/$s.key"
    continue
  fi
  openssl ecparam -name secp384r1 -genkey -noout -out "$TMP/$s.pem"
  ssh_keypair "$TMP/$s.pem" "$s"
  mv "$TMP/$s.pem.openssh" "$TMP/$s.key"; mv "$TMP/$s.pem.openssh.pub" "$TMP/$s.pub"
  NEW_SITES+=("$s")
done

# ---------------------------------------------------------------- move into place (rename within OUT_DIR)
for f in ca.crt ca.key server.key server.crt; do
  if [[ -f $TMP/$f ]]; then mv -f "$TMP/$f" "$OUT/$f"; fi
done
for s in "${NEW_SITES[@]+"${NEW_SITES[@]}"}"; do
  mv -f "$TMP/$s.key" "$OUT/$s.key"; mv -f "$TMP/$s.pub" "$OUT/$s.pub"
  echo "new site key: $OUT/$s.key (register $OUT/$s.pub on the SuperLink)"
done
chmod 644 "$OUT/ca.crt" "$OUT/server.crt" "$OUT"/*.pub 2>/dev/null || true
