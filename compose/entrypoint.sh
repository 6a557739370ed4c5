#!/usr/bin/env bash
# Container start: create the site once (keys and root password from secrets), then serve.
set -euo pipefail
: "${DATASITE_NAME:?}" "${DATASITE_HOME:?}" "${DATASITE_ROOT_PASSWORD_FILE:?}" "${DATASITE_KEY_FILE:?}"
if [ -z "${DATASITE_DB_URL:-}" ]; then
  db_password=$(cat "${DATASITE_DB_PASSWORD_FILE:?}")
  export DATASITE_DB_URL="postgresql://${DATASITE_DB_USER:?}:${db_password}@${DATASITE_DB_HOST:?}:5432/${DATASITE_DB_NAME:?}"
fi
datasite init "$DATASITE_NAME" --home "$DATASITE_HOME" --db "$DATASITE_DB_URL" \
  --root-password-file "$DATASITE_ROOT_PASSWORD_FILE" --key-file "$DATASITE_KEY_FILE" --exist-ok
exec datasite up "$DATASITE_NAME" --home "$DATASITE_HOME" --host 0.0.0.0 \
  --port "${DATASITE_PORT:-8080}" --foreground
