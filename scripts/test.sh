#!/usr/bin/env bash
# The test command (also what .ci/run calls): unit and end-to-end tests, then a strict docs build.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" -x
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
status=0
"$PY" -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "test: pytest collected no tests" >&2
  exit 1
fi
[ "$status" -eq 0 ] || exit "$status"
site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
"$PY" -m mkdocs build --strict --quiet --site-dir "$site"
echo "test: docs build ok"
