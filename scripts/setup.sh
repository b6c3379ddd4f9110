#!/usr/bin/env bash
# Create .venv and install Crosspaths with its test tools; reruns only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "Python 3.11+ is required (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2; exit 1; }
command -v java >/dev/null || { echo "Java 17+ is required for the local Kafka broker (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
command -v mvn >/dev/null || { echo "Maven is required to fetch the Kafka jars (apt-get install maven)" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv ..." >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.crosspaths-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "Installing Crosspaths and its dependencies into .venv ..." >&2
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -e ".[test]"; } \
      > .venv/pip-install.log 2>&1; then
    tail -40 .venv/pip-install.log >&2
    echo "pip install failed; full log in .venv/pip-install.log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
