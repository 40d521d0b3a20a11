#!/usr/bin/env bash
# The test suite (README's test command runs set-up first, then this).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} COBRA_CACHE=${COBRA_CACHE:-$PWD/.cache/cobra}
python -m pytest -q "$@"
