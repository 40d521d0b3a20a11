#!/usr/bin/env bash
# The GPU rows of the benchmark, for one lent machine (run from the repo root; $OUT = a folder
# that comes back). Needs torch, timm, numpy, pyyaml, pillow, scipy; not ray, mlflow, optuna or
# pydensecrf (the rows it runs never import them) and no network (random-init weights).
# Budget: about 4 minutes on one H200. Output: $OUT/bench_gpu.json, $OUT/bench_gpu.log and a
# short table printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/cobra-gpu-check}
mkdir -p "$OUT"
export COBRA_CACHE="$OUT/cache" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
{
  echo "== machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, \
'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/bench_gpu.log"
# train (ResNet-152 + DeiT-S, 224 px, batch 32: fp32 then bf16, img/s, MFU, peak memory) and
# seeds (8 VOC-sized images, 7 scales + flip: batched vs one pass per scale and flip)
timeout 230 "$PY" benchmarks/bench.py --gpu-only --rows train,seeds \
  --json "$OUT/bench_gpu.json" 2>>"$OUT/bench_gpu.log" | tee "$OUT/table.txt"
rc=${PIPESTATUS[0]}
echo "exit $rc (124 = ran past the 230 s limit; rows done so far are in bench_gpu.log)"
exit "$rc"
