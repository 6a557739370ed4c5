#!/usr/bin/env bash
# Set everything up and run the whole test suite (needs PostgreSQL on 127.0.0.1:5432).
source "$(dirname "$0")/scripts_common.sh"
exec .venv/bin/python -m pytest "$@"
