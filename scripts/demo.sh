#!/usr/bin/env bash
# The main job: the offline end-to-end demo (synthetic motion videos -> FIMA and MoCo pretraining
# -> zoo export -> linear probe and retrieval). Usage: scripts/demo.sh [OUT_DIR] [key=value ...]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
out="${1:-runs/demo}"
shift || true
exec "$PY" -m train demo --out "$out" "$@"
