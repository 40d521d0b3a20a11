#!/usr/bin/env bash
# The test suite (README's test command runs set-up first, then this).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} COBRA_CACHE=${COBRA_CACHE:-$PWD/.cache/cobra}
# The operations drills (-m cluster: multi-node Ray, killed processes, MLflow outage; ~10 min)
# are left out by default to keep CI bounded; run them with: bash scripts/test.sh -m cluster
if [[ " $* " == *" -m "* ]]; then
  python -m pytest -q "$@"
else
  python -m pytest -q -m "not cluster" "$@"
fi
