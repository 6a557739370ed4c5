#!/usr/bin/env bash
# Generate each datasite's secrets for docker-compose.yml, one file each (mode 0600, no newline):
#   <OUTDIR>/<site>/root_password   32 characters [A-Za-z0-9]       (datasite root login)
#   <OUTDIR>/<site>/signing_key     hex-encoded 32-byte ed25519 seed  (the server's identity)
#   <OUTDIR>/<site>/db_password     32 hex characters                 (its PostgreSQL)
# Usage: ./make-secrets.sh [OUTDIR [SITE...]]   default: compose/secrets hospital-a hospital-b
# Existing files are kept: a new signing key would change the site's identity, and PostgreSQL
# reads its password only when its volume is first created.
# Needs python3 (PyNaCl used when installed; any 32 random bytes are a valid seed) or openssl.
set -euo pipefail
umask 077

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-"$here/secrets"}
shift || true
sites=("$@")
((${#sites[@]})) || sites=(hospital-a hospital-b)

py=${PYTHON:-}
if [[ -z $py ]]; then
  for c in python3 python; do
    if command -v "$c" >/dev/null 2>&1; then py=$c; break; fi
  done
fi
have_openssl() { command -v openssl >/dev/null 2>&1; }
[[ -n $py ]] || have_openssl || { echo "make-secrets.sh: needs python3 or openssl" >&2; exit 1; }

signing_key() {
  if [[ -n $py ]]; then
    "$py" -c 'import nacl.signing; print(nacl.signing.SigningKey.generate().encode().hex())' 2>/dev/null \
      || "$py" -c 'import secrets; print(secrets.token_bytes(32).hex())'
  else
    openssl rand -hex 32
  fi
}

root_password() {
  if [[ -n $py ]]; then
    "$py" -c 'import secrets, string; a = string.ascii_letters + string.digits; print("".join(secrets.choice(a) for _ in range(32)))'
  else
    local p=""
    while ((${#p} < 32)); do p+=$(openssl rand -base64 48 | tr -dc 'A-Za-z0-9'); done
    echo "${p:0:32}"
  fi
}

db_password() {  # hex: safe inside postgresql://user:PASSWORD@host URLs without escaping
  if [[ -n $py ]]; then
    "$py" -c 'import secrets; print(secrets.token_hex(16))'
  else
    openssl rand -hex 16
  fi
}

write_secret() {  # write_secret FILE LENGTH GENERATOR
  local file=$1 length=$2 gen=$3 value
  if [[ -s $file ]]; then
    chmod 600 "$file"
    echo "kept    $file"
    return
  fi
  value=$("$gen")
  if ((${#value} != length)); then
    echo "make-secrets.sh: $gen produced ${#value} characters, expected $length" >&2
    exit 1
  fi
  printf '%s' "$value" > "$file"
  chmod 600 "$file"
  echo "created $file"
}

mkdir -p "$out"
for site in "${sites[@]}"; do
  [[ $site =~ ^[A-Za-z0-9_-]+$ ]] || { echo "make-secrets.sh: bad site name $site" >&2; exit 1; }
  mkdir -p "$out/$site"
  chmod 700 "$out/$site"
  write_secret "$out/$site/root_password" 32 root_password
  write_secret "$out/$site/signing_key" 64 signing_key
  write_secret "$out/$site/db_password" 32 db_password
done
if (($(id -u) == 0)); then
  echo "Secrets are in $out, owned by root, but the datasites run as a non-root user"
  echo "(uid DATASITE_UID, default 1000) that must read them: chown -R 1000:1000 $out"
else
  echo "Secrets are in $out (owner uid $(id -u)). Build the images as that user:"
  echo "  DATASITE_UID=$(id -u) DATASITE_GID=$(id -g) docker compose up -d --build"
fi
