"""The VOC-shaped rehearsal: configs/voc.yaml through every stage on CPU, at VOC's image sizes.

    python launch.py bench --rows rehearsal [--rehearsal-images N] [--rehearsal-long-side PX]

Writes the synthetic set at VOC's shape (`data.synthetic.shape=voc`: 20 classes, 500 x 375-ish
JPEGs, a train_aug listing), then runs train, seeds, ir_labels, irn, masks and segment on it with
the paper's model and stage settings (ResNet-152 + DeiT-S, 224 px crops, seeds at 7 scales +
flip, IRN at 512 px crops, DeepLabV3+ R101 at 512 px with 5-scale + flip + CRF inference), random
initial weights, and a tiny budget: one training step of 4 images, one image (--rehearsal-images) through seeds, IR
labels, IRN, masks and segmentation (one epoch each of IRN and of segmentation; a segmentation
batch of one image trains with BatchNorm frozen), one val image scored. Each stage runs in a process of its own, so its peak resident
memory (`peak_rss_gib`: the stage's process or its largest worker, measured inside it) is its own.

Each row says the stage's seconds per image of its per-image work and extrapolates it to a full
VOC trial on this machine (train: 10,582 train_aug images x 20 epochs + the val pass each epoch;
seeds, IR labels, IRN (x its epochs) and masks on VOC train's 1,464 images; segmentation trained
on those masks x its epochs and scored on val's 1,449). Per-stage fixed costs (building the
model, loading the checkpoint) are counted once and spread over few images, so the extrapolations
lean high.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOC_CONFIG = ROOT / "configs" / "voc.yaml"
STAGES = ("train", "seeds", "ir_labels", "irn", "masks", "segment")
# PASCAL VOC 2012's image counts: what a full trial covers
VOC_TRAIN_AUG, VOC_TRAIN, VOC_VAL = 10_582, 1_464, 1_449

# Functions whose time is a stage's per-image work, timed apart from its fixed costs:
# stage -> [(module, function, phase)].
PHASES = {
    "train": [("cobra.stages.train", "train_one_epoch", "steps"),
              ("cobra.stages.train", "evaluate_classification", "val")],
    "irn": [("cobra.stages.irn", "train_one_epoch", "steps")],
    "segment": [("cobra.stages.segment", "train_segmenter", "steps"),
                ("cobra.stages.segment", "predict_and_score", "eval")],
}


def train_batch(images: int) -> int:
    """The rehearsal's one training step: a batch of 4 x `images` (train_aug holds that many)."""
    return 4 * images


def rehearsal_overrides(data_root: Path, images: int) -> list[str]:
    """configs/voc.yaml's settings kept, except: random init, the written set, a tiny budget of
    `images` images per stage, and every loss term on from the one epoch trained."""
    batch = train_batch(images)  # one training step
    return [
        "model.pretrained=false", "segment.encoder_weights=null",
        "data.dataset=voc", f"data.root={data_root}", "data.num_workers=0",
        "train.epochs=1", "train.max_steps_per_epoch=1", f"train.batch_size={batch}",
        "train.progress=false", f"train.diag_images={images}",
        # one epoch only: the terms a real trial switches on after its first epoch are on now
        "loss.cam_start_epoch=0", "loss.proj_start_epoch=0",
        f"seeds.max_images={images}", f"masks.max_images={images}",
        f"masks.irn.batch_size={images}", "masks.irn.epochs=1",
        f"segment.batch_size={max(images, 2)}", "segment.epochs=1", "segment.max_images=1",
    ]


def write_data(root: Path, images: int, long_side: int) -> float:
    """The voc-shape set the rehearsal reads; seconds taken."""
    from cobra.config import load_config
    from cobra.data.synthetic import write_synthetic

    cfg = load_config(None, ["data.synthetic.shape=voc", f"data.synthetic.num_train={images}",
                             f"data.synthetic.num_val={images}",
                             f"data.synthetic.num_train_aug={train_batch(images)}",
                             f"data.synthetic.long_side={long_side}"])
    start = time.perf_counter()
    write_synthetic(root, cfg.data.synthetic)
    return time.perf_counter() - start


def run_stage_process(stage: str, run_dir: Path, overrides: list[str], cache: Path,
                      log: Path) -> dict:
    """One stage in a child process; its report plus its peak RSS (the child's own or its
    largest worker's, as the child measured them)."""
    report = run_dir.parent / f"{stage}.json"
    cmd = [sys.executable, "-m", "benchmarks.rehearsal", "--stage", stage, "--run-dir",
           str(run_dir), "--report", str(report), *[f"--set={o}" for o in overrides]]
    env = {**os.environ, "COBRA_CACHE": str(cache), "COBRA_SYSTEM_METRICS": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        proc.wait()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"rehearsal stage '{stage}' exited {proc.returncode}:\n{tail}")
    result = json.loads(report.read_text())
    result["process_s"] = round(wall, 1)
    # Not wait4's ru_maxrss: Linux carries a parent's peak across fork + exec, so every stage
    # would report at least this process's own. The child measures itself (see child_main).
    result["peak_rss_gib"] = max(result["self_rss_gib"], result["workers_rss_gib"])
    return result


def own_peak_rss_gib() -> float:
    """This process's peak RSS since its exec (VmHWM); ru_maxrss where /proc is missing."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def full_voc_seconds(stage: str, r: dict, cfg) -> float:
    """The stage's seconds on this machine for a full VOC trial of `cfg` (configs/voc.yaml, with
    its epochs of CoBra, IRN and segmentation), from its rehearsal report."""
    phases, images, total = r["phases"], r["images"], r["stage_s"]
    fixed = total - sum(phases.values())
    if stage == "train":
        per_epoch = (phases["steps"] / images["train"] * VOC_TRAIN_AUG
                     + phases["val"] / images["val"] * VOC_VAL)
        return per_epoch * cfg.train.epochs + fixed
    if stage == "irn":
        return phases["steps"] / images["seed"] * VOC_TRAIN * cfg.masks.irn.epochs + fixed
    if stage == "segment":
        return (phases["steps"] / images["seed"] * VOC_TRAIN * cfg.segment.epochs
                + phases["eval"] / images["eval"] * VOC_VAL + fixed)
    return total / images["seed"] * VOC_TRAIN  # seeds, ir_labels, masks: all per image


def per_image_seconds(stage: str, r: dict) -> float:
    """Seconds of the stage's per-image work (a training image-epoch where it trains)."""
    if stage == "train":
        return r["phases"]["steps"] / r["images"]["train"]
    if stage in ("irn", "segment"):
        return r["phases"]["steps"] / r["images"]["seed"]
    return r["stage_s"] / r["images"]["seed"]


def rehearsal_rows(images: int = 1, long_side: int = 500, extra: tuple[str, ...] = (),
                   workdir: Path | None = None) -> list[dict]:
    """Run the rehearsal; one row per stage and one for the whole trial. `extra` overrides come
    last (the bounded test shrinks the model with them); `workdir` is kept when given."""
    from benchmarks.baselines import row
    from cobra.config import load_config

    keep = workdir is not None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="cobra-rehearsal-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        data_s = write_data(workdir / "data", images, long_side)
        overrides = [*rehearsal_overrides(workdir / "data", images), *extra]
        # a full trial is configs/voc.yaml as shipped: its epochs, not the rehearsal's one
        trial = load_config(VOC_CONFIG, [])
        rows, full_s = [], 0.0
        started = time.perf_counter()
        for stage in STAGES:
            r = run_stage_process(stage, workdir / "run", overrides, workdir / "cache",
                                  workdir / "rehearsal.log")
            full = full_voc_seconds(stage, r, trial)
            full_s += full
            got = row(f"rehearsal/{stage}", round(per_image_seconds(stage, r), 3), "s/img",
                      target=f"full VOC trial: {full / 3600:.2f} h here",
                      peak_rss_gib=r["peak_rss_gib"], stage_peak_rss_gib=r["self_rss_gib"],
                      stage_s=round(r["stage_s"], 1), process_s=r["process_s"],
                      images=r["images"],
                      phases={k: round(v, 1) for k, v in r["phases"].items()},
                      full_voc_h=round(full / 3600, 2))
            rows.append(got)
            print(f"rehearsal/{stage}: {r['stage_s']:.1f} s, peak {r['peak_rss_gib']} GiB",
                  file=sys.stderr, flush=True)
        wall = time.perf_counter() - started
        total = row("rehearsal/trial", round(full_s / 3600, 2), "h",
                    target="full VOC trial on this machine (sum of the stages)",
                    rehearsal_s=round(wall, 1), data_s=round(data_s, 1), images=images,
                    long_side=long_side, cpus=os.cpu_count(),
                    peak_rss_gib=max(r["peak_rss_gib"] for r in rows))
        rows.append(total)
        return rows
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# The child: one stage, timed


def _time_phases(stage: str, spent: dict[str, float]) -> None:
    """Wrap the stage's per-image work functions with a timer (they still run as they are)."""
    import importlib

    for module_name, function, phase in PHASES.get(stage, []):
        module = importlib.import_module(module_name)
        real = getattr(module, function)

        def timed(*args, _real=real, _phase=phase, **kwargs):
            start = time.perf_counter()
            try:
                return _real(*args, **kwargs)
            finally:
                spent[_phase] = spent.get(_phase, 0.0) + time.perf_counter() - start

        setattr(module, function, timed)


def _images(stage: str, cfg) -> dict[str, int]:
    """How many images the stage's timed work covered."""
    from cobra.data import build_source, resolve_train_split
    from cobra.stages.common import stage_ids

    seed = len(stage_ids(cfg, build_source(cfg, cfg.data.seed_split), cfg.masks.max_images))
    if stage == "train":
        train = len(build_source(cfg, resolve_train_split(cfg)).ids)
        return {"train": min(cfg.train.batch_size * (cfg.train.max_steps_per_epoch or 1), train)
                * cfg.train.epochs, "val": len(build_source(cfg, cfg.data.val_split).ids)}
    if stage == "segment":
        val = len(build_source(cfg, cfg.segment.eval_split).ids)
        return {"seed": seed * cfg.segment.epochs,
                "eval": min(val, cfg.segment.max_images or val)}
    if stage == "irn":
        return {"seed": seed * cfg.masks.irn.epochs}
    return {"seed": seed}


def child_main(stage: str, run_dir: Path, report: Path, overrides: list[str]) -> int:
    import resource

    from cobra.config import load_config
    from cobra.layout import new_run, open_run
    from cobra.reporting import FileReporter
    from cobra.stages import get_stage

    cfg = load_config(VOC_CONFIG, overrides)
    # the train stage makes the run directory the later stages open
    layout = new_run(run_dir.parent, run_dir.name) if stage == "train" else open_run(run_dir)
    spent: dict[str, float] = {}
    _time_phases(stage, spent)
    reporter = FileReporter(layout.metrics)
    start = time.perf_counter()
    get_stage(stage)(cfg, layout, reporter)
    stage_s = time.perf_counter() - start
    reporter.close("FINISHED")
    # workers (data loaders) count too; they start from this process's memory, not the parent's
    workers_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    report.write_text(json.dumps({"stage": stage, "stage_s": stage_s, "phases": spent,
                                  "images": _images(stage, cfg),
                                  "self_rss_gib": round(own_peak_rss_gib(), 2),
                                  "workers_rss_gib": round(workers_rss, 2)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one rehearsal stage (benchmarks/bench.py "
                                     "--rows rehearsal runs them all)")
    parser.add_argument("--stage", required=True, choices=STAGES)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    return child_main(args.stage, args.run_dir, args.report, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
