# Sourced by demo.sh and test.sh: create .venv with Python 3.11 and install the project once.
set -euo pipefail
cd "$(dirname "$0")"
# bubblewrap: the sandbox custom syft functions run in (datasite/sandbox.py); tests need it
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q && apt-get install -y --no-install-recommends bubblewrap
  else
    sudo apt-get update -q && sudo apt-get install -y --no-install-recommends bubblewrap
  fi
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "dp-datasite needs Python 3.11"'
# the console's browser tests drive Debian's chromium through playwright (no browser download)
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.dp-datasite-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi
