"""CoBra's benchmark: every figure is a ratio against a baseline measured in the same run.

    python benchmarks/bench.py [--rows train,seeds,masks,miou,losses] [--sweep] [--json PATH]
    python launch.py bench ...                  (the same)
    python launch.py bench --rows rehearsal     (configs/voc.yaml through every stage at VOC's
                                                 image sizes on CPU: benchmarks/rehearsal.py)

The train rows include the demo's loader, reading the decoded cache vs decoding the image files,
beside the step's consumption. CPU rows fit in about 5 minutes on 2 cores; with CUDA the train and seeds rows also run on the
GPU at the paper's size (ResNet-152 + DeiT-S at 224 px, batch 32; bf16 vs fp32, MFU, peak
memory). `--sweep` adds a real Ray sweep of >= 60 s trials (several minutes): its overhead and the
checkpoint bytes each trial leaves. Heavy optional modules (ray, mlflow, pydensecrf) are imported
only by the rows that need them, so the GPU rows run where none is installed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import baselines  # noqa: E402
from benchmarks.baselines import row  # noqa: E402
from cobra import accel  # noqa: E402
from cobra.config import Config, load_config  # noqa: E402
from cobra.errors import OneLineParser  # noqa: E402

# Dense bf16 Tensor-Core peak (FLOP/s) per device name, for MFU.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}
DEMO = ROOT / "configs" / "demo.yaml"
PAPER_MODEL = ["model.cnn=resnet152", "model.vit=deit_small_patch16_224", "model.embed_dim=256",
               "model.pretrained=false", "data.image_size=224", "data.resize_long=[240, 320]",
               "data.num_workers=0", "train.progress=false"]
VOC_SIZE = (375, 500)  # (H, W) of most PASCAL VOC images
VOC_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device | None = None) -> float:
    """Seconds one call takes (the device's queue drained on both sides)."""
    if device is not None:
        sync(device)
    start = time.perf_counter()
    fn()
    if device is not None:
        sync(device)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------
# Train step


class _TrainStep:
    """The real training step (stages.train's pieces) on one config, batch and precision."""

    def __init__(self, cfg: Config, device: torch.device, batch: int, amp: str) -> None:
        from cobra.data import build_train_dataset, resolve_train_split
        from cobra.models import build_model
        from cobra.stages.train import make_loader

        accel.configure_backend(device)
        self.cfg, self.device, self.amp = cfg, device, amp
        self.train_set = build_train_dataset(cfg, resolve_train_split(cfg))
        self.model = build_model(replace(cfg.model, pretrained=False),
                                 self.train_set.num_classes).to(device)
        self.nhwc = accel.use_channels_last(self.model, device, cfg.train.channels_last)
        self.model.train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.loader = make_loader(self.train_set, batch, cfg.data.num_workers, 0, shuffle=True,
                              pin_memory=accel.loader_options(device)["pin_memory"])
        self.batches = iter(self.loader)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = next(self.batches, None)
        if b is None:  # a new epoch of the loader
            self.batches = iter(self.loader)
            b = next(self.batches)
        return (accel.to_device(b["image"], self.device, self.nhwc),
                b["label"].to(self.device))

    def forward(self, images: torch.Tensor):
        return self.model(images)

    def losses(self, out, labels: torch.Tensor, images: torch.Tensor):
        from cobra.objective import compute_losses

        return compute_losses(out, labels, self.cfg.loss, 0, tuple(images.shape[-2:]))

    def step(self) -> int:
        """One step as the trainer runs it (no wait for the device); images consumed."""
        images, labels = self.next_batch()
        with accel.autocast(self.device, self.amp):
            terms = self.losses(self.forward(images), labels, images)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.optimizer.step()
        return images.shape[0]


def _phase_times(step: _TrainStep, steps: int) -> tuple[dict[str, float], float]:
    """Seconds per phase (data, forward, losses, backward, optimizer) over `steps` steps, each
    phase waited for; and the FLOPs of forward + losses + backward per image, counted on an
    untimed warm-up step (cuDNN autotuning, the allocator) on CUDA."""
    device = step.device
    parts = dict.fromkeys(("data", "forward", "losses", "backward", "optimizer"), 0.0)
    flops = 0.0
    for i in range(steps + 1):
        marks = [time.perf_counter()]
        images, labels = step.next_batch()
        marks.append(_now(device))
        counter = _flop_counter() if i == 0 and device.type == "cuda" else contextlib.nullcontext()
        with counter:
            with accel.autocast(device, step.amp):
                out = step.forward(images)
                marks.append(_now(device))
                terms = step.losses(out, labels, images)
                marks.append(_now(device))
            step.optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
        marks.append(_now(device))
        step.optimizer.step()
        marks.append(_now(device))
        if i == 0:
            if not isinstance(counter, contextlib.nullcontext):
                flops = counter.get_total_flops() / images.shape[0]
            continue
        for key, a, b in zip(parts, marks, marks[1:], strict=False):
            parts[key] += b - a
    return parts, flops


def train_step_row(name: str, cfg: Config, device: torch.device, batch: int, steps: int,
                   amp: str) -> dict:
    """img/s of the real training step (stages.train's pieces) and where its time goes: data
    (the DataLoader), forward, losses, backward, optimizer; MFU and peak memory on CUDA."""
    step = _TrainStep(cfg, device, batch, amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    parts, flops = _phase_times(step, steps)
    total = sum(parts.values())
    # The breakdown above waits for the device at every phase; the trainer does not (it reads
    # its losses every LossMeter.CHECK_EVERY steps), so img/s comes from the same steps again,
    # timed end to end with one wait at the end.
    sync(device)
    start = time.perf_counter()
    done = sum(step.step() for _ in range(steps))
    sync(device)
    img_s = done / (time.perf_counter() - start)
    loader_img_s = _loader_rate(step.train_set, batch, cfg.data.num_workers, min(steps, 4))
    extra = {"breakdown": {k: round(v / total, 3) for k, v in parts.items()},
             "batch": batch, "steps": steps, "amp": amp, "device": str(device),
             "loader_img_s": round(loader_img_s, 1)}
    if device.type == "cuda":
        extra["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        peak = _peak_bf16(device)
        if flops and peak:
            extra["tflops"] = round(flops * img_s / 1e12, 1)
            extra["mfu"] = round(flops * img_s / peak, 3)
    # data keeps up when the loader alone delivers at least what the step consumes
    return row(f"train {name} ({device.type}, {amp}, B{batch})", round(img_s, 2), "img/s",
               baseline=round(img_s, 2), ratio=round(loader_img_s / img_s, 2),
               target="loader/step >= 1", met=loader_img_s >= img_s, **extra)


def loader_row(name: str, cfg: Config, step: dict, batch: int, batches: int,
               repeats: int = 3) -> dict:
    """Loader img/s reading the decoded cache vs decoding the image files (the same items in the
    same order, data.num_workers as configured), beside the train step's consumption (`step`,
    a train_step_row of the same config)."""
    start = time.perf_counter()
    files, cached = loader_arms(cfg)
    open_s = time.perf_counter() - start  # decodes the split on a first run, else opens it
    workers = cfg.data.num_workers
    # Labels come from the masks, decoded once per process and kept (VOCSource): from the second
    # epoch of a num_workers=0 run (the demo) the loader's cost is the image. One untimed pass
    # warms them for the measured items, for both arms (they share the source).
    _loader_rate(cached, batch, workers, batches)
    rates: dict[str, list[float]] = {"files": [], "cache": []}
    for _ in range(repeats):  # alternated, best kept: the machine may be busy with other work
        rates["files"].append(_loader_rate(files, batch, workers, batches))
        rates["cache"].append(_loader_rate(cached, batch, workers, batches))
    from_files, from_cache = max(rates["files"]), max(rates["cache"])
    consumed = step["value"]
    return row(f"loader {name}: decoded cache vs files (B{batch}, {workers} workers)",
               round(from_cache, 1), "img/s", baseline=round(from_files, 1),
               ratio=round(from_cache / from_files, 2), target="cache >= files and >= step",
               met=from_cache >= from_files and from_cache >= consumed,
               step_img_s=consumed, files_per_step=round(from_files / consumed, 2),
               cache_per_step=round(from_cache / consumed, 2), cache_open_s=round(open_s, 2),
               images=batch * batches)


def loader_arms(cfg: Config):
    """Two train datasets over one source: images decoded from the files, and read from the
    decoded cache."""
    from cobra.data import TrainDataset, build_source, resolve_train_split
    from cobra.data.decoded_cache import decoded_images

    source = build_source(cfg, resolve_train_split(cfg))
    size, resize_long = cfg.data.image_size, tuple(cfg.data.resize_long)
    store = decoded_images(source)
    if store is None:
        raise RuntimeError("the decoded cache does not fit on $COBRA_CACHE's filesystem; "
                           "point COBRA_CACHE at one with room to run the loader row")
    return (TrainDataset(source, size, resize_long),
            TrainDataset(source, size, resize_long, store))


def _return_freed_memory() -> None:
    """Hand the heap's freed pages back to the OS. The seeds row's loop arm peaks at ~8 GB (every
    layer's T x T attention at scale 2.0), which glibc keeps after it is freed; while the kernel
    reclaims it, the next row's two pool workers ran ~18 % slower (masks 1.61x right after the
    seeds row, 1.84-2.0x alone)."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _now(device: torch.device) -> float:
    sync(device)
    return time.perf_counter()


def _loader_rate(dataset, batch: int, workers: int, batches: int) -> float:
    from cobra.stages.train import make_loader

    loader = iter(make_loader(dataset, batch, workers, 1, shuffle=True))
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += next(loader)["image"].shape[0]
    return n / (time.perf_counter() - start)


def _flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False)


def _peak_bf16(device: torch.device) -> float | None:
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def bf16_ratio_row(fp32: dict, bf16: dict) -> dict:
    ratio = bf16["value"] / fp32["value"]
    return row("train paper bf16 / fp32 (cuda)", bf16["value"], "img/s", baseline=fp32["value"],
               ratio=round(ratio, 2), target="mfu >= 0.35 (bf16)",
               met=bf16.get("mfu", 0) >= 0.35, mfu_bf16=bf16.get("mfu"), mfu_fp32=fp32.get("mfu"))


# ------------------------------------------------------------------------------------------------
# Seeds


def seeds_row(cfg: Config, device: torch.device, images: int, scales: list[float],
              repeats: int = 1) -> dict:
    """Multi-scale + flip CAMs at VOC size: the stage's path (scales' flips batched, the ViT's
    fused attention with the class row alone) vs one training forward per scale and per flip
    (baselines.loop_multiscale_cams). `batching_alone` is the ratio to the same loop with the
    class-row forward, so the row says how much each change brings."""
    from cobra.models import build_model
    from cobra.stages.seed_cams import multiscale_cams_batch

    torch.manual_seed(0)
    model = build_model(replace(cfg.model, pretrained=False), 20).to(device).eval()
    rng = np.random.default_rng(0)
    pics = [rng.integers(0, 256, (*VOC_SIZE, 3), dtype=np.uint8) for _ in range(images)]
    keys = [np.array([1 + i % 20, 1 + (i + 7) % 20]) for i in range(images)]
    multiscale_cams_batch(model, pics[:1], keys[:1], scales[:2], True)  # warm-up

    def loop(affinity: bool) -> None:
        for p, k in zip(pics, keys, strict=True):
            baselines.loop_multiscale_cams(model, p, k, scales, True, affinity=affinity)

    # on CUDA each method runs twice and keeps its faster time: cuDNN autotunes every new shape
    fast = min(timed(lambda: multiscale_cams_batch(model, pics, keys, scales, True), device)
               for _ in range(repeats))
    slow = min(timed(lambda: loop(True), device) for _ in range(repeats))
    unbatched = min(timed(lambda: loop(False), device) for _ in range(repeats))
    return row(f"seeds {cfg.model.cnn}+{cfg.model.vit} ({device.type}, {images} img, "
               f"{len(scales)} scales+flip)", round(images / fast, 3), "img/s",
               baseline=round(images / slow, 3), ratio=round(slow / fast, 2),
               target=f"stage >= 3x loop (batching alone: {unbatched / fast:.2f}x)",
               met=slow / fast >= 3.0, batching_alone=round(unbatched / fast, 2))


# ------------------------------------------------------------------------------------------------
# Masks


def masks_row(images: int, workers: int) -> dict:
    """Random walk at VOC size + both mask rules with their denseCRFs per image (the masks
    stage's per-image work), on a pool of started workers vs one process. The stage starts its
    pool once for all its images (VOC: 1,464 to 10,582), so the workers' start-up is measured
    apart and reported beside the ratio, not spread over this row's few images."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    jobs = list(range(images))
    _mask_job_init()
    one = timed(lambda: [_mask_job(job) for job in jobs])  # torch at its default threads
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_mask_worker_init) as pool:
        # one job per worker that waits long enough for every worker to be started
        startup = timed(lambda: list(pool.map(time.sleep, [1.0] * workers))) - 1.0
        pool_s = timed(lambda: list(pool.map(_mask_job, jobs)))
    return row(f"masks walk+CRF ({images} img at VOC size, {workers} workers)",
               round(images / pool_s, 3), "img/s", baseline=round(images / one, 3),
               ratio=round(one / pool_s, 2), target=">= 1.7x on 2 cores", met=one / pool_s >= 1.7,
               startup_s=round(startup, 1),
               ratio_with_startup=round(one / (pool_s + startup), 2))


_MASK_CFG: dict = {}


def _mask_job_init() -> None:
    if "cfg" not in _MASK_CFG:
        _MASK_CFG["cfg"] = load_config(None, ["masks.rule.crf.enabled=true"])


def _mask_worker_init() -> None:
    """As the masks stage's pool workers: one thread each, the stage's modules imported."""
    import cobra.stages.masks  # noqa: F401

    torch.set_num_threads(1)
    _mask_job_init()


def _mask_job(seed: int) -> int:
    """The masks stage's per-image work on a synthetic VOC-sized image with two classes."""
    from cobra.stages.masks import MASK_RULES, rule_masks, to_image_size, walk

    cfg = _MASK_CFG["cfg"]
    rng = np.random.default_rng(seed)
    h, w = VOC_SIZE
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    boundary = torch.from_numpy(rng.random((h // 4 + 1, w // 4), dtype=np.float32) ** 4)
    cam = rng.random((2, h, w), dtype=np.float32)
    rw = walk(cfg, boundary, cam)
    rw_up = to_image_size(rw, (h, w))
    for rule in MASK_RULES:
        rule_masks(cfg, rule, image, rw_up, np.array([3, 8]))
    return seed


# ------------------------------------------------------------------------------------------------
# mIoU and losses


def miou_row(images: int) -> dict:
    """confusion_matrix + mean_iou over a VOC-val-sized set vs a bare np.bincount pass."""
    from cobra.metrics import confusion_matrix, mean_iou

    rng = np.random.default_rng(0)
    pool = 16
    preds = [rng.integers(0, 21, VOC_SIZE, dtype=np.uint8) for _ in range(pool)]
    gts = [np.where(rng.random(VOC_SIZE) < 0.05, 255, p).astype(np.uint8) for p in preds]
    order = [i % pool for i in range(images)]

    def real():
        conf = np.zeros((21, 21), np.int64)
        for i in order:
            conf += confusion_matrix(preds[i], gts[i], 21)
        return mean_iou(conf)

    def bare():
        return baselines.bincount_confusion([preds[i] for i in order], [gts[i] for i in order], 21)

    fast, floor = timed(real), timed(bare)
    return row(f"mIoU ({images} VOC-sized images)", round(fast, 3), "s", baseline=round(floor, 3),
               ratio=round(fast / floor, 2), target="<= 1.5x bincount", met=fast / floor <= 1.5)


def losses_row(batch: int = 32, patches: int = 196, dim: int = 256, loop_images: int = 2
               ) -> dict:
    """CAP + SAP forward + backward at the paper's shapes vs a per-anchor loop (given the same
    positive/negative indices, so the loop skips the selection the real code includes)."""
    from cobra import losses

    torch.manual_seed(0)
    side = int(math.isqrt(patches))
    z_cnn = torch.randn(batch, patches, dim, requires_grad=True)
    z_vit = torch.randn(batch, patches, dim, requires_grad=True)
    affinity = torch.rand(batch, patches, patches)
    cam = torch.randn(batch, 21, side, side)
    labels = (torch.rand(batch, 20) < 0.15).float()
    kp, kn = 20, 5

    def real():
        total = (losses.cap_loss(z_cnn, affinity, kp, kn, 0.1)
                 + losses.sap_loss(z_vit, cam, labels, kp, kn, 0.1))
        total.backward()

    z1 = torch.nn.functional.normalize(z_cnn.detach(), dim=2).requires_grad_()
    z2 = torch.nn.functional.normalize(z_vit.detach(), dim=2).requires_grad_()
    pos1, neg1 = losses.select_pairs(affinity, kp, kn, False)
    pos2, neg2 = losses.select_pairs(torch.rand(batch, patches, patches), kp, kn, False)

    n = loop_images

    def loop():
        total = (baselines.loop_info_nce(z1[:n], pos1[:n], neg1[:n], 0.1)
                 + baselines.loop_info_nce(z2[:n], pos2[:n], neg2[:n], 0.1))
        total.backward()

    real()
    fast = min(timed(real) for _ in range(3))
    # every anchor costs the loop the same, so its time on n images is scaled to the batch
    slow = timed(loop) * batch / n
    return row(f"losses CAP+SAP fwd+bwd (B{batch}, {patches} patches, D{dim})",
               round(fast * 1e3, 1), "ms", baseline=round(slow * 1e3, 1),
               ratio=round(slow / fast, 1), target=">= 50x loop", met=slow / fast >= 50,
               note=f"loop timed on {n} of {batch} images, scaled by {batch / n:g}")


# ------------------------------------------------------------------------------------------------
# Sweep (opt-in)


def sweep_rows(trials: int, concurrency: int, workdir: Path) -> list[dict]:
    """A real sweep (Ray + Optuna + MLflow): wall ÷ (Σ trial compute ÷ concurrency), and the
    checkpoint bytes each trial leaves ÷ its model's fp32 weight bytes."""
    import yaml

    from cobra import tracking
    from cobra.sweep.spec import load_sweep
    from cobra.sweep.tuner import run_sweep

    workdir.mkdir(parents=True, exist_ok=True)
    store = tracking.Store(f"sqlite:///{workdir / 'mlflow.db'}")
    os.environ["MLFLOW_TRACKING_URI"] = store.uri
    # A user's store exists before their sweep: its one-time creation (MLflow's schema
    # migrations, a few seconds) is not the sweep's overhead.
    store.client.search_experiments()
    # the demo recipe, 3 epochs: 60-75 s of compute per trial on an idle 2-core machine
    sweep = {"name": f"bench-{int(time.time())}", "base": str(DEMO),
             "overrides": {"train.epochs": 3, "train.max_steps_per_epoch": None,
                           "seeds.max_images": 8, "train.progress": False},
             "space": {"loss.k_cap_pos": list(range(1, trials + 1))},
             "search": {"algorithm": "grid", "seed": 0}, "resources": {"cpu": 1},
             "max_concurrent": concurrency, "storage": str(workdir / "ray_results"),
             "mlflow": {"experiment": "bench"}}
    path = workdir / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    start = time.perf_counter()
    result = run_sweep(load_sweep(path))
    wall = time.perf_counter() - start
    runs = tracking.trials_of(store, result["parent_run_id"])
    compute = sum(r.seconds or 0.0 for r in runs)
    overhead = wall / (compute / concurrency)
    storage = Path(result["experiment_dir"])
    ratios = []
    for r in runs:
        trial_dir = next(storage.glob(f"*_{r.tags[tracking.tags.RAY_TRIAL_ID]}"))
        weights = torch.load(trial_dir / "run/checkpoints/last.pt", weights_only=True)["model"]
        fp32 = sum(v.numel() * 4 for v in weights.values() if v.is_floating_point())
        stored = sum(f.stat().st_size for f in trial_dir.rglob("*.pt"))
        stored += tracking.artifact_size(store, r.run_id, "checkpoints")
        ratios.append(stored / fp32)
    mean_trial = compute / max(len(runs), 1)
    return [row(f"sweep overhead ({len(runs)} trials of ~{mean_trial:.0f} s, {concurrency} "
                f"at once)", round(wall, 1), "s", baseline=round(compute / concurrency, 1),
                ratio=round(overhead, 3), target="<= 1.15x", met=overhead <= 1.15,
                trial_seconds=round(mean_trial, 1)),
            row("checkpoint bytes per trial / fp32 weights", round(max(ratios), 2), "x",
                ratio=round(max(ratios), 2), target="<= 3x", met=max(ratios) <= 3.0)]


# ------------------------------------------------------------------------------------------------


def print_table(rows: list[dict]) -> None:
    print(f"{'row':66} {'value':>10} {'unit':6} {'baseline':>10} {'ratio':>7}  target")
    for r in rows:
        met = "" if r["met"] is None else ("met" if r["met"] else "MISSED")
        base = "" if r["baseline"] is None else r["baseline"]
        ratio = "" if r["ratio"] is None else r["ratio"]
        print(f"{r['row'][:66]:66} {r['value']:>10} {r['unit']:6} {base!s:>10} "
              f"{ratio!s:>7}  {r['target']} {met}")


def demo_sweep_precision_row(demo: Config, device: torch.device) -> dict:
    """The demo step at the demo sweep's precision (sweeps/demo.yaml's train.amp and
    train.channels_last) against fp32: what brings its twelve trials under ten minutes."""
    import yaml

    overrides = yaml.safe_load((ROOT / "sweeps" / "demo.yaml").read_text())["overrides"]
    amp, nhwc = overrides["train.amp"], overrides["train.channels_last"]
    fp32 = train_step_row("demo", demo, device, 16, 8, "none")
    fast = train_step_row("demo", replace(demo, train=replace(demo.train, channels_last=nhwc)),
                          device, 16, 8, amp)
    ratio = fast["value"] / fp32["value"]
    return row(f"train demo sweep ({amp}, channels_last={nhwc}) / fp32 ({device.type}, B16)",
               fast["value"], "img/s", baseline=fp32["value"], ratio=round(ratio, 2),
               target="ratio >= 1.4 (the demo sweep under 10 min)", met=ratio >= 1.4,
               native_bf16=accel.slow_amp_warning("bf16", device) is None)


Add = Callable[[Callable[[], "dict | list[dict]"]], None]


def cpu_rows(wanted: set[str], add: Add) -> None:
    cpu = torch.device("cpu")
    demo = load_config(DEMO, ["train.progress=false"])
    if "train" in wanted:
        demo_step = train_step_row("demo", demo, cpu, 16, 3, "none")
        add(lambda: demo_step)
        add(lambda: loader_row("demo", demo, demo_step, 16, 8))
        add(lambda: demo_sweep_precision_row(demo, cpu))
        add(lambda: train_step_row("paper", load_config(None, PAPER_MODEL), cpu, 2, 2, "none"))
    if "seeds" in wanted:
        add(lambda: seeds_row(demo, cpu, 1, VOC_SCALES))
        _return_freed_memory()
    if "masks" in wanted:
        add(lambda: masks_row(16, 2))
    if "miou" in wanted:
        add(lambda: miou_row(1449))
    if "losses" in wanted:
        add(losses_row)


def gpu_rows(wanted: set[str], add: Add) -> None:
    """The paper's model at 224 px: batch 32 in fp32 and bf16, and seeds of 8 VOC-size images."""
    gpu = torch.device("cuda")
    if "train" in wanted:
        loaders = f"data.num_workers={min(8, os.cpu_count() or 1)}"
        paper_gpu = load_config(None, [*PAPER_MODEL, loaders])
        fp32 = train_step_row("paper", paper_gpu, gpu, 32, 10, "none")
        bf16 = train_step_row("paper", paper_gpu, gpu, 32, 10, "bf16")
        for r in (fp32, bf16):
            add(lambda r=r: r)
        add(lambda: bf16_ratio_row(fp32, bf16))
    if "seeds" in wanted:
        add(lambda: seeds_row(load_config(None, PAPER_MODEL), gpu, 8, VOC_SCALES, repeats=2))


def _parser() -> OneLineParser:
    # a usage mistake is one line, as for every other launch.py command
    parser = OneLineParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="train,seeds,masks,miou,losses",
                        help="comma-separated: train, seeds, masks, miou, losses, rehearsal "
                        "(not in the default: about 5 minutes on 2 cores)")
    parser.add_argument("--rehearsal-images", type=int, default=1,
                        help="rehearsal: images per stage after training (training: a batch "
                        "of 4 x as many)")
    parser.add_argument("--rehearsal-long-side", type=int, default=500,
                        help="rehearsal: long side of the images (VOC: 500)")
    parser.add_argument("--rehearsal-set", action="append", default=[], metavar="KEY=VALUE",
                        help="rehearsal: a config override after the rehearsal's own")
    parser.add_argument("--rehearsal-dir", type=Path, default=None,
                        help="rehearsal: keep its data, run and log here (default: a "
                        "temporary directory, removed)")
    parser.add_argument("--gpu-only", action="store_true",
                        help="only the CUDA rows (train and seeds at the paper's size)")
    parser.add_argument("--sweep", action="store_true",
                        help="also run a real sweep of >= 60 s trials (several minutes)")
    parser.add_argument("--json", type=Path, default=Path("bench.json"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    wanted = set(args.rows.split(","))
    unknown = wanted - {"train", "seeds", "masks", "miou", "losses", "rehearsal"}
    if unknown:
        print(f"error: unknown row '{sorted(unknown)[0]}'; choose from train, seeds, masks, "
              f"miou, losses, rehearsal", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available()
    if args.gpu_only and not cuda:
        print("error: --gpu-only but no CUDA device is visible; drop --gpu-only",
              file=sys.stderr)
        return 2
    rows: list[dict] = []

    def add(fn: Callable[[], dict | list[dict]]) -> None:
        got = fn()
        for r in got if isinstance(got, list) else [got]:
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)

    if not args.gpu_only:
        cpu_rows(wanted, add)
        if "rehearsal" in wanted:
            from benchmarks.rehearsal import rehearsal_rows

            add(lambda: rehearsal_rows(args.rehearsal_images, args.rehearsal_long_side,
                                       tuple(args.rehearsal_set), args.rehearsal_dir))
    if cuda:
        gpu_rows(wanted, add)
    if args.sweep:
        add(lambda: sweep_rows(4, 2, Path("bench-sweep").resolve()))
    meta = {"torch": torch.__version__, "cuda": torch.cuda.get_device_name() if cuda else None,
            "cpus": os.cpu_count(), "threads": torch.get_num_threads()}
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
