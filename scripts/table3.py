#!/usr/bin/env python
"""Table 3 of the paper on any config: single branches, both with L_cam only, and full CoBra,
each trained with several seeds (and optionally on several generator draws of the synthetic set),
reported as mean ± std of seed mIoU and classification mAP.

    python scripts/table3.py configs/demo.yaml --seeds 0 1 2 --generators 0 1 --jobs 2

Every run is an ordinary `launch.py train` (its run directory under --runs), so any row can be
inspected or re-scored later. Runs share one budget: the config's, plus --set overrides.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from launch_json import ROOT, launch

ROWS = {
    "cnn only": ["model.branches=cnn"],
    "vit only": ["model.branches=vit"],
    "both, L_cam only": ["loss.use_cap=false", "loss.use_sap=false"],
    "full CoBra": [],
}
METRICS = ("seed_miou", "seed_miou_aobj", "cls_map_cnn", "cls_map_vit")


def train(config: str, sets: list[str], runs: Path, threads: int) -> dict:
    """One `launch.py train` run; its final JSON line, or the error it printed."""
    return launch(["train", config], ["train.progress=false", f"run.dir={runs}", *sets],
                  threads)


def summary(values: list[float]) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):5.1f} ± {std:4.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--generators", type=int, nargs="+", default=[0],
                        help="data.synthetic.seed values (different images, same generator)")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS),
                        metavar="ROW", help=f"rows to run, of: {', '.join(map(repr, ROWS))}")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "table3")
    parser.add_argument("--json", type=Path, help="also write every run's result here")
    args = parser.parse_args()

    jobs = [(gen, row, seed) for gen in args.generators for row in args.rows for seed in args.seeds]

    def one(job):
        gen, row, seed = job
        sets = [*args.overrides, *ROWS[row], f"train.seed={seed}", f"data.synthetic.seed={gen}"]
        result = train(args.config, sets, args.runs, args.threads)
        print(json.dumps({"generator": gen, "row": row, "seed": seed, **result}), flush=True)
        return {"generator": gen, "row": row, "seed": seed, **result}

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, jobs))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    failed = [r for r in results if "error" in r]
    for gen in args.generators:
        print(f"\nTable 3, generator seed {gen} (mean ± std over train seeds {args.seeds})")
        print(f"{'row':18s} " + " ".join(f"{m:>14s}" for m in METRICS))
        for row in args.rows:
            cell = [r for r in results if r["generator"] == gen and r["row"] == row
                    and "error" not in r]
            print(f"{row:18s} " + " ".join(
                f"{summary([r[m] for r in cell if r.get(m) is not None]):>14s}" for m in METRICS))
    if failed:
        print(f"{len(failed)} run(s) failed: {failed[0]['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
