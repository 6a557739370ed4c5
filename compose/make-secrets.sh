#!/usr/bin/env bash
# Generate each site's root password, signing key (hex ed25519 seed) and database password.
# Usage: ./make-secrets.sh [OUTDIR]   (default: compose/secrets). Existing files are kept.
set -euo pipefail
out=${1:-"$(dirname "$0")/secrets"}
umask 077
for site in hospital-a hospital-b; do
  mkdir -p "$out/$site"
  for f in root_password signing_key db_password; do
    target="$out/$site/$f"
    [ -s "$target" ] && continue
    case $f in
      signing_key) python3 -c 'import secrets; print(secrets.token_bytes(32).hex())' > "$target" ;;
      *) python3 -c 'import secrets; print(secrets.token_urlsafe(24)[:32])' > "$target" ;;
    esac
    chmod 600 "$target"
  done
done
echo "secrets written to $out"
