#!/usr/bin/env bash
# The GPU check (issue 24), for one lent machine: run from the repo root; $OUT = a folder that
# comes back. Each section of benchmarks/gpu_check.py runs under its own limit (the limits sum to
# under 8 minutes), so a compile that hangs or an out-of-memory batch costs that section alone:
#   data       the voc-shape synthetic set (VOC-sized JPEGs, 20 classes, train_aug)
#   train      the step, ResNet-152 + DeiT-S, 224 px, B32: fp32, bf16, bf16+channels_last
#   compile    bf16+channels_last+torch.compile (a failure to compile is a row with its error)
#   maxbatch   the largest batch that fits (bf16+channels_last), and its img/s
#   profile    torch.profiler's top ops by device time, and the share of the step the GPU idles
#   authors    the authors'-style step (fp32, eager, CAP/SAP per anchor: baselines.py), the
#              baseline of the fastest arm in the same run
#   loader     train_aug from the decoded cache with 8 and 16 workers (files with 8)
#   seeds      8 VOC-sized images, 7 scales + flip: batched vs the per-scale loop
#   rehearsal  every stage at VOC's image sizes (benchmarks/rehearsal.py); needs pydensecrf and
#              segmentation_models_pytorch, else one row says what is missing
# Rows (the benchmark's JSON schema) go to $OUT/gpu-<date>.json and, on a GPU,
# benchmarks/results/gpu-<date>.json; the log to $OUT/gpu_check.log; the table is printed last.
# Needs torch, timm, numpy, pyyaml, pillow, scipy; no network (random-init weights).
#
# COBRA_GPU_CHECK_DRY=1: the CPU dry run, every size shrunk (tiny backbones, batch 2, 64 px), to
# prove the script runs end to end; its rows are marked dry_run, its file is gpu-dryrun-<date>.json
# in $OUT only. Without it, a machine with no CUDA device is refused (exit 2).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/cobra-gpu-check}
DRY=${COBRA_GPU_CHECK_DRY:-0}
mkdir -p "$OUT"
rm -f "$OUT/rows.jsonl"
export COBRA_CACHE="$OUT/cache" COBRA_SYSTEM_METRICS=0 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
LOG="$OUT/gpu_check.log"
flags=()
[[ $DRY == 1 ]] && flags=(--dry-run)

{
  echo "== machine ($(date -u +%FT%TZ))"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "no nvidia-smi"
  "$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, \
'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$LOG"
if [[ $DRY != 1 ]] && ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "error: no CUDA device here; the GPU check will not report CPU numbers as GPU ones" \
       "(COBRA_GPU_CHECK_DRY=1 runs the CPU dry run)" | tee -a "$LOG" >&2
  exit 2
fi

failed=0
section() {  # name, limit in seconds
  echo "== $1 (limit $2 s)" | tee -a "$LOG"
  timeout "$2" "$PY" -m benchmarks.gpu_check "$1" --out "$OUT" "${flags[@]}" >>"$LOG" 2>&1
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "   section $1 exited $rc (124 = past its limit); its rows so far are kept" | tee -a "$LOG"
    failed=1
  fi
}
section data 30
section train 60
section compile 80
section maxbatch 35
section profile 25
section authors 40
section loader 50
section seeds 45
section rehearsal 95
"$PY" -m benchmarks.gpu_check collect --out "$OUT" "${flags[@]}" 2>>"$LOG" | tee -a "$LOG"
exit "$failed"
