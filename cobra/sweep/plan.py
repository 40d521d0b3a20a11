"""`launch.py sweep FILE --plan`: what a sweep would run and what it would cost, before anything
starts. Nothing is created: no Ray cluster (an existing one, `RAY_ADDRESS`, is only asked for
its resources), no trial, no MLflow run or experiment, no Optuna study on disk.

- the trials, named as their MLflow runs will be: the sweep's own searcher (`_optuna_search`)
  replayed on an in-memory study. A grid's and a random search's points do not depend on
  results, so every name is exact; a TPE search picks at random (seeded) until
  `TPE_STARTUP_TRIALS` trials have finished, and from their results after that.
- how many run at once: the sweep's `max_concurrent`, capped by what the cluster holds
  (its CPUs and GPUs divided by a trial's share).
- time: the median wall time of earlier FINISHED trials of the same base config
  (tag `cobra.base_config`) and stages in the MLflow store; with none, a rough figure per
  training image and epoch (`ROUGH_S_PER_IMAGE_EPOCH`), said to be an estimate."""

import math
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cobra import tracking
from cobra.sweep.spec import SweepSpec, trial_name
from cobra.sweep.tuner import TPE_STARTUP_TRIALS, _optuna_search

# Seconds per training image per epoch when nothing was measured. CPU: the demo sweep (4 trials
# of 10 epochs on 1,000 images of 96 px, two at a time on one core each, 9 min: README) at
# 0.027 s per image-epoch and core, scaled by pixels. GPU: docs/scale.md's planning throughput
# of ResNet + DeiT-S at 224 px on one A100-class card, about 200 img/s, scaled by pixels and by
# the trial's share of the card. Training only: seeds and later stages come on top.
ROUGH_S_PER_IMAGE_EPOCH = {"cpu": (0.027, 96), "gpu": (0.005, 224)}
# Training images per split when the dataset is not on this machine to count.
KNOWN_SPLIT_SIZES = {("voc", "train_aug"): 10582, ("voc", "train"): 1464, ("coco", "train"): 82783}


@dataclass(frozen=True)
class Capacity:
    """What the cluster a sweep would use holds in all."""

    cpus: float
    gpus: float
    where: str


@dataclass(frozen=True)
class TrialTime:
    """One trial's expected wall seconds and where the figure comes from."""

    seconds: float
    measured: int  # earlier trials behind the figure; 0: the rough estimate
    basis: str


def trial_names(spec: SweepSpec) -> tuple[list[str], int]:
    """Every trial's run name, in the order the sweep starts them, and how many of them are
    known before any result (the rest a TPE search picks from earlier trials' results)."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory"
    try:
        searcher = _optuna_search(spec, None)
        names = [trial_name(searcher.suggest(f"plan-{i}")) for i in range(spec.num_trials)]
    finally:
        optuna.logging.set_verbosity(level)
    known = min(spec.num_trials, TPE_STARTUP_TRIALS) if spec.algorithm == "tpe" else len(names)
    return names, known


def local_capacity() -> Capacity:
    """This machine as a local Ray sees it: the CPUs this process may use and the visible
    CUDA devices (CUDA_VISIBLE_DEVICES respected)."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return Capacity(float(cpus or 1), float(torch.cuda.device_count()),
                    "this machine (a local Ray)")


def cluster_capacity() -> Capacity:
    """The Ray cluster at `RAY_ADDRESS` (asked, not started), else this machine."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address:
        return local_capacity()
    import ray

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        resources = ray.cluster_resources()
    finally:
        ray.shutdown()
    return Capacity(float(resources.get("CPU", 0)), float(resources.get("GPU", 0)),
                    f"the Ray cluster at {address}")


def concurrent_trials(spec: SweepSpec, capacity: Capacity) -> int:
    """How many trials run at once: `max_concurrent`, as many as fit the cluster's totals
    (0: none fits, and Ray would wait for resources forever)."""
    fits = math.floor(capacity.cpus / spec.cpu + 1e-9)
    if spec.gpu > 0:
        fits = min(fits, math.floor(capacity.gpus / spec.gpu + 1e-9))
    return max(0, min(spec.max_concurrent, spec.num_trials, fits))


def training_images(spec: SweepSpec) -> int:
    """Images one training epoch reads (`train.max_steps_per_epoch` caps it)."""
    cfg = spec.base
    if cfg.data.dataset == "synthetic":
        images = cfg.data.synthetic.num_train
    else:
        split = cfg.data.train_split or ("train" if cfg.data.dataset == "coco" else "train_aug")
        listed = (Path(cfg.data.root or ".") / "ImageSets" / "Segmentation" / f"{split}.txt")
        images = (len(listed.read_text().split()) if cfg.data.dataset == "voc"
                  and listed.is_file() else KNOWN_SPLIT_SIZES.get((cfg.data.dataset, split), 10582))
    if cfg.train.max_steps_per_epoch:
        images = min(images, cfg.train.max_steps_per_epoch * cfg.train.batch_size)
    return images


def rough_trial_time(spec: SweepSpec) -> TrialTime:
    """The rough figure: images × epochs × seconds per image-epoch on the trial's share."""
    device = "gpu" if spec.gpu > 0 else "cpu"
    per_image, at_size = ROUGH_S_PER_IMAGE_EPOCH[device]
    share = spec.gpu if device == "gpu" else spec.cpu
    per_image *= (spec.base.data.image_size / at_size) ** 2 / share
    images = training_images(spec)
    epochs = spec.extreme("train.epochs", spec.base.train.epochs, max)
    return TrialTime(images * epochs * per_image, 0,
                     f"ESTIMATE, nothing measured: {images} images × {epochs} epochs × "
                     f"{per_image:.3g} s per image-epoch on {share:g} {device.upper()} (a rough "
                     f"figure for training alone; expect 2× either way)")


def measured_trial_time(spec: SweepSpec, store: tracking.Store) -> TrialTime | None:
    """The median wall time of earlier FINISHED trials of the same base config and stages."""
    try:
        seconds = tracking.finished_trial_seconds(store, spec.experiment, spec.base_digest(),
                                                  ",".join(spec.stages))
    except Exception as exc:  # an unreachable server: the plan still stands on the rough figure
        print(f"plan: MLflow store not read ({type(exc).__name__}); using the rough figure",
              file=sys.stderr)
        return None
    if not seconds:
        return None
    return TrialTime(statistics.median(seconds), len(seconds),
                     f"median of {len(seconds)} earlier FINISHED trials of this base config (tag "
                     f"{tracking.tags.BASE_CONFIG}={spec.base_digest()}) in {store.redacted}")


def plan_sweep(spec: SweepSpec, capacity: Capacity | None = None) -> dict[str, Any]:
    """The plan as a dict (what `launch.py sweep --plan` prints as its JSON line)."""
    names, known = trial_names(spec)
    capacity = capacity or cluster_capacity()
    at_once = concurrent_trials(spec, capacity)
    store = tracking.Store(tracking.resolve_tracking_uri())
    time = measured_trial_time(spec, store) or rough_trial_time(spec)
    waves = math.ceil(spec.num_trials / at_once) if at_once else None
    return {"sweep": spec.name, "algorithm": spec.algorithm, "num_trials": spec.num_trials,
            # names a TPE search picks from results are not known yet: only the others
            "trials": names[:known], "resources_per_trial": {"cpu": spec.cpu, "gpu": spec.gpu},
            "cluster": {"where": capacity.where, "cpu": capacity.cpus, "gpu": capacity.gpus},
            "concurrent": at_once, "waves": waves, "trial_s": round(time.seconds, 1),
            "measured_trials": time.measured, "estimate_basis": time.basis,
            "wall_s": round(waves * time.seconds, 1) if waves else None,
            "cpu_hours": round(spec.num_trials * time.seconds * spec.cpu / 3600, 3),
            "gpu_hours": round(spec.num_trials * time.seconds * spec.gpu / 3600, 3)}


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def format_plan(plan: dict[str, Any], spec: SweepSpec) -> str:
    """The plan for a terminal: the trials, what each asks, what runs at once, the cost."""
    lines = [f"sweep {spec.name}: {spec.algorithm}, {spec.num_trials} trials, ranked by "
             f"{spec.metric} ({spec.mode}); each runs {' → '.join(('train', *spec.stages))}",
             "trials (their MLflow run names):"]
    lines += [f"  {number:3d}  {name}" for number, name in enumerate(plan["trials"], 1)]
    if len(plan["trials"]) < spec.num_trials:
        lines.append(f"  {len(plan['trials']) + 1:3d}-{spec.num_trials}  picked by TPE from "
                     f"the results of the trials before them")
    cluster = plan["cluster"]
    lines.append(f"each trial asks {spec.cpu:g} CPU and {spec.gpu:g} GPU; {cluster['where']} "
                 f"holds {cluster['cpu']:g} CPU and {cluster['gpu']:g} GPU")
    if not plan["concurrent"]:
        lines.append("NO TRIAL FITS: Ray would wait for resources forever; lower 'resources:' "
                     "or use a cluster with more (RAY_ADDRESS)")
    else:
        lines.append(f"at once: {plan['concurrent']} (max_concurrent {spec.max_concurrent}), "
                     f"so {plan['waves']} wave(s)")
    lines.append(f"per trial: {_duration(plan['trial_s'])} ({plan['estimate_basis']})")
    if plan["wall_s"] is not None:
        early = " at most: ASHA stops some trials early" if spec.scheduler == "asha" else ""
        lines.append(f"wall time ≈ {_duration(plan['wall_s'])}; {plan['cpu_hours']:g} CPU-hours,"
                     f" {plan['gpu_hours']:g} GPU-hours{early}")
    lines.append("nothing was started: no Ray trial, no MLflow run, no Optuna study")
    return "\n".join(lines)


def print_plan(spec: SweepSpec) -> dict[str, Any]:
    """`launch.py sweep FILE --plan`: the plan on stderr, its dict for the JSON line."""
    plan = plan_sweep(spec)
    print(format_plan(plan, spec), file=sys.stderr)
    return plan
