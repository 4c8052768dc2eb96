#!/usr/bin/env bash
# The main job: the offline end-to-end demo (synthetic motion videos -> FIMA and MoCo pretraining
# -> zoo export -> linear probe and retrieval, with supervised / single-frame / random-init controls).
# Usage: scripts/demo.sh [OUT_DIR] [key=value ...]   (seed=1 for a second seed; python -m train demo
# --compare DIR DIR pools finished runs)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
out="${1:-runs/demo}"
shift || true
exec "$PY" -m train demo --out "$out" "$@"
