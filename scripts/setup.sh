#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtual environment in .venv with the project and its
# test tools. Safe to re-run (pip skips what is already installed).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
# pydensecrf2 builds from source against numpy and Cython; give its build what it needs.
python -m pip install --quiet "setuptools>=68" wheel Cython numpy
python -m pip install --quiet -e ".[dev]"
python -c "import torch, timm, ray, optuna, mlflow, pydensecrf.densecrf; print('set-up ok: torch', torch.__version__, 'timm', timm.__version__, 'ray', ray.__version__)"
