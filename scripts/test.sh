#!/usr/bin/env bash
# The test suite, in .venv (or $SLKD_VENV), made and filled as quickstart.sh does.
# Tests that need mdistiller use $SLKD_MDISTILLER_PATH, else ./mdistiller when present, else
# an installed mdistiller, and skip (saying why) without one; see the README's Tests section
# for the other hosts and SLKD_REQUIRE_HOSTS. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SLKD_VENV:-.venv}"
source scripts/venv.sh
if [ -z "${SLKD_MDISTILLER_PATH:-}" ] && [ -d mdistiller/mdistiller ]; then
  export SLKD_MDISTILLER_PATH="$PWD/mdistiller"
fi
exec "$PY" -m pytest -q "$@"
