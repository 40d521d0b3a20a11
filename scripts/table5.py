#!/usr/bin/env python
"""Table 5 of the paper on any trained run: the mask mIoU each seed source gives (M_cnn, M_tran,
their mean, their max, M_fuse), every other setting equal.

    python scripts/table5.py runs/demo --out runs/table5 --jobs 2

Each mode gets its own copy of the run (config, checkpoint and the seed files, hard-linked: the
seed files hold M_cnn, M_tran and A_obj apart, so no mode recomputes them) and runs the ordinary
`launch.py stage ir_labels irn masks` there with `seeds.fusion` set, so every row can be inspected
later like any run. Other `--set` overrides apply to every row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from launch_json import ROOT, launch

MODES = {"cnn": "M_cnn", "tran": "M_tran", "avg": "(M_cnn + M_tran)/2",
         "max": "max{M_cnn, M_tran}", "fuse": "M_fuse"}
KEPT = ("config.yaml", "checkpoints", "seeds")  # what a mode's copy starts from


def copy_run(run: Path, dest: Path) -> None:
    """A fresh copy of `run`'s trained state under `dest`, large files hard-linked."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in KEPT:
        src = run / name
        if src.is_dir():
            shutil.copytree(src, dest / name, copy_function=os.link)
        elif src.exists():
            shutil.copy2(src, dest / name)


def stages(run: Path, mode: str, overrides: list[str], threads: int) -> dict:
    """seeds (scored under `mode`) → IR labels → IRN → masks in `run`; its final JSON line."""
    return launch(["stage", "seeds", "ir_labels", "irn", "masks", "--run-dir", str(run)],
                  [f"seeds.fusion={mode}", "train.progress=false", *overrides], threads)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory with a trained checkpoint")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "table5")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--jobs", type=int, default=1, help="modes at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per mode")
    parser.add_argument("--json", type=Path, help="also write every mode's result here")
    args = parser.parse_args()
    if not (args.run / "checkpoints" / "last.pt").exists():
        print(f"error: {args.run} has no checkpoints/last.pt; train it first", file=sys.stderr)
        return 2

    def one(mode: str) -> dict:
        dest = args.out / mode
        copy_run(args.run, dest)
        result = {"mode": mode, **stages(dest, mode, args.overrides, args.threads)}
        print(json.dumps(result), flush=True)
        return result

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, args.modes))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"\nTable 5 on {args.run}")
    print(f"{'source for mask':22s} {'seed mIoU':>10s} {'IR precision':>13s} {'mask mIoU':>10s}")
    for r in results:
        cells = [r.get(k) for k in ("seed_miou", "ir_label_precision", "mask_miou")]
        print(f"{MODES[r['mode']]:22s} " + " ".join(
            f"{c:>{w}.1f}" if isinstance(c, (int, float)) else f"{'–':>{w}s}"
            for c, w in zip(cells, (10, 13, 10), strict=True)))
    failed = [r for r in results if "error" in r]
    if failed:
        print(f"{len(failed)} mode(s) failed: {failed[0]['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
