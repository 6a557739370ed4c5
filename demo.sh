#!/usr/bin/env bash
# Set everything up and run the demo: a local datasite, a researcher's DP-SGD job submitted,
# reviewed, run, released, and its result and privacy report printed.
source "$(dirname "$0")/scripts_common.sh"
exec .venv/bin/python -m demo.run "$@"
