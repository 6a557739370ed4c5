#!/usr/bin/env bash
# Container start for a dp-datasite: create the site once (signing key and root password from
# the docker secrets), then serve it in the foreground on 0.0.0.0.
#
# Environment (datasite.config.ENV_VARS, plus the DATASITE_DB_* parts of the database URL):
#   DATASITE_NAME, DATASITE_HOME, DATASITE_PORT (default 8080),
#   DATASITE_ROOT_PASSWORD_FILE, DATASITE_KEY_FILE   secret files (0600, owned by this user)
#   DATASITE_DB_URL      if unset, assembled here as
#                        postgresql://$DATASITE_DB_USER:<password>@$DATASITE_DB_HOST:$DATASITE_DB_PORT/$DATASITE_DB_NAME
#                        with the password read from $DATASITE_DB_PASSWORD_FILE, so that no
#                        password is ever written in docker-compose.yml. Without DATASITE_DB_HOST
#                        it stays empty and the site uses SQLite under its home.
# With arguments (`docker compose run --rm hospital-a bash`), runs them with that environment
# instead of starting the server.
set -euo pipefail
umask 077   # config.json holds the database URL (with its password): keep the home private

die() { echo "entrypoint: $*" >&2; exit 1; }

readable() {  # a secret file must exist and be readable by this (non-root) user
  [[ -e $1 ]] || die "$1 is missing: run compose/make-secrets.sh on the host first."
  [[ -r $1 ]] || die "$1 is not readable by uid $(id -u): the secret files are bind mounts that keep" \
    "their host owner and mode 0600; rebuild with DATASITE_UID=\$(id -u) DATASITE_GID=\$(id -g)" \
    "as the user who ran make-secrets.sh (docker compose build)."
}

: "${DATASITE_NAME:?DATASITE_NAME must be set}"
: "${DATASITE_HOME:?DATASITE_HOME must be set}"
: "${DATASITE_ROOT_PASSWORD_FILE:?DATASITE_ROOT_PASSWORD_FILE must be set}"
: "${DATASITE_KEY_FILE:?DATASITE_KEY_FILE must be set}"
DATASITE_PORT=${DATASITE_PORT:-8080}
export DATASITE_PORT

if [[ -z ${DATASITE_DB_URL:-} && -n ${DATASITE_DB_HOST:-} ]]; then
  : "${DATASITE_DB_USER:?DATASITE_DB_USER must be set with DATASITE_DB_HOST}"
  : "${DATASITE_DB_NAME:?DATASITE_DB_NAME must be set with DATASITE_DB_HOST}"
  : "${DATASITE_DB_PASSWORD_FILE:?DATASITE_DB_PASSWORD_FILE must be set with DATASITE_DB_HOST}"
  readable "$DATASITE_DB_PASSWORD_FILE"
  db_password=$(<"$DATASITE_DB_PASSWORD_FILE")
  # The datasite reads the password with urllib's urlparse, which does not percent-decode:
  # only unreserved URL characters can go into the URL as they are (make-secrets.sh makes hex).
  [[ $db_password =~ ^[A-Za-z0-9._~-]+$ ]] \
    || die "$DATASITE_DB_PASSWORD_FILE must hold letters, digits and . _ ~ - only."
  DATASITE_DB_URL="postgresql://${DATASITE_DB_USER}:${db_password}@${DATASITE_DB_HOST}:${DATASITE_DB_PORT:-5432}/${DATASITE_DB_NAME}"
  unset db_password
fi
DATASITE_DB_URL=${DATASITE_DB_URL:-}
export DATASITE_DB_URL

if (($#)); then
  exec "$@"
fi

readable "$DATASITE_ROOT_PASSWORD_FILE"
readable "$DATASITE_KEY_FILE"

# First start: create keys/config from the secrets. Later starts: the home (volume) already
# holds them and --exist-ok leaves it as it is.
datasite init "$DATASITE_NAME" --home "$DATASITE_HOME" --db "$DATASITE_DB_URL" \
  --root-password-file "$DATASITE_ROOT_PASSWORD_FILE" --key-file "$DATASITE_KEY_FILE" --exist-ok

exec datasite up "$DATASITE_NAME" --home "$DATASITE_HOME" --host 0.0.0.0 \
  --port "${DATASITE_PORT:-8080}" --foreground
