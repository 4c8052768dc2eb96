#!/usr/bin/env bash
# Create the project's virtual environment (once) and install fima-models into it with the
# train, dev and docs extras. Sourced by scripts/demo.sh and scripts/test.sh; sets $PY and $ROOT.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FIMA_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.fima-models-installed"

if [ ! -x "$PY" ]; then
  echo "setup: creating $VENV" >&2
  python3 -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "setup: installing torch and fima-models[train,dev,docs] into $VENV" >&2
  # torch first and pinned: this pair lies on local disk here, and timm needs torchvision beside it.
  "$PY" -m pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
  "$PY" -m pip install --quiet --disable-pip-version-check -e "$ROOT[train,dev,docs]"
  touch "$STAMP"
fi
export PY ROOT
