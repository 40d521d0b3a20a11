"""The GPU check's measurements, one section per call (benchmarks/gpu_check.sh runs them all,
each under its own time limit, so a compile that hangs or a batch that runs out of memory costs
its section alone).

    python -m benchmarks.gpu_check SECTION --out DIR [--dry-run]

Sections: data (the voc-shape set the others read), train (the step in fp32, bf16,
bf16 + channels_last, bf16 + channels_last at batch 32), compile (bf16 + channels_last + torch.compile), maxbatch (the largest
batch that fits, bf16 + channels_last), profile (torch.profiler's top ops by device time and the
share of the step the device sits idle), authors (the step as the authors' code runs it: fp32,
eager, CAP/SAP one anchor at a time, baselines.loop_info_nce), loader (the decoded cache with 8 and
16 workers, files with 8), seeds (batched vs the per-scale loop at VOC size), rehearsal (every
stage at VOC's image sizes), collect (the rows as the benchmark's JSON, gpu-<date>.json).

The train, maxbatch, profile and authors steps run on one batch kept on the device, so they time
the step alone; the loader rows say whether the loader keeps up with it. Every loss term is on
(the epoch after the terms' start epochs).

`--dry-run` shrinks everything (tiny backbones, batch 2, 64 px images) and runs on the CPU to
prove the script runs end to end; its rows are marked dry_run and never written to
benchmarks/results/. Without it, a machine with no CUDA device is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import baselines, bench, rehearsal  # noqa: E402
from cobra import accel  # noqa: E402
from cobra.config import Config, load_config  # noqa: E402

SECTIONS = ("data", "train", "compile", "maxbatch", "profile", "authors", "loader", "seeds", "rehearsal",
            "collect")
SMALL_MODELS = ("model.cnn=resnet18", "model.vit=deit_tiny_patch16_224",
                "masks.irn.backbone=resnet18", "segment.encoder=resnet18")


@dataclass(frozen=True)
class Sizes:
    model: tuple[str, ...]  # config overrides naming the model and crop
    batch: int
    steps: int
    max_batch: int  # the search for the largest batch stops here
    workers: tuple[int, ...]  # loader arms from the decoded cache
    data_images: int  # voc-shape images written for the steps and the loader
    long_side: int
    seeds_images: int
    seeds_scales: tuple[float, ...]
    authors_steps: int
    rehearsal_images: int
    rehearsal_extra: tuple[str, ...]
    compile_backend: str  # torch.compile's; the dry run traces with "eager" (no code generation)


FULL = Sizes(model=("model.pretrained=false", "model.embed_dim=256"), batch=32, steps=10,
             max_batch=1024, workers=(8, 16), data_images=128, long_side=500, seeds_images=8,
             seeds_scales=tuple(bench.VOC_SCALES), authors_steps=1, rehearsal_images=2,
             rehearsal_extra=(), compile_backend="inductor")
DRY = Sizes(model=("model.pretrained=false", "model.embed_dim=32", "model.cnn=resnet18",
                   "model.vit=deit_tiny_patch16_224", "data.image_size=64",
                   "data.resize_long=[64, 96]", "loss.k_sap_pos=4", "loss.k_sap_neg=2",
                   "loss.k_cap_pos=2", "loss.k_cap_neg=4"),
            batch=2, steps=1, max_batch=8, workers=(1, 2), data_images=8, long_side=64,
            seeds_images=1, seeds_scales=(0.5, 1.0), authors_steps=1, rehearsal_images=1,
            rehearsal_extra=SMALL_MODELS, compile_backend="eager")


class Check:
    """One section's context: sizes, device, where rows and data go."""

    def __init__(self, out: Path, dry_run: bool) -> None:
        self.out, self.dry_run = out, dry_run
        self.sizes = DRY if dry_run else FULL
        self.device = torch.device("cpu" if dry_run else "cuda")
        self.data_root = out / "data"
        os.environ.setdefault("COBRA_CACHE", str(out / "cache"))

    def config(self, *extra: str) -> Config:
        return load_config(rehearsal.VOC_CONFIG, [
            *self.sizes.model, "data.dataset=voc", f"data.root={self.data_root}",
            "data.num_workers=0", "train.progress=false", *extra])

    def add(self, r: dict) -> None:
        r = {**r, "device": self.device_name(), "dry_run": self.dry_run}
        print(json.dumps(r), flush=True)
        with (self.out / "rows.jsonl").open("a") as f:
            f.write(json.dumps(r) + "\n")

    def device_name(self) -> str:
        return "cpu (dry run)" if self.dry_run else torch.cuda.get_device_name()


# ------------------------------------------------------------------------------------------------
# The training step on one device-resident batch


def _every_term_on(cfg: Config) -> int:
    """An epoch at which every loss term is on (they switch on after their start epochs)."""
    return max(cfg.loss.cam_start_epoch, cfg.loss.proj_start_epoch)


class Step:
    """forward + losses + backward + SGD step of CoBra on one batch kept on the device."""

    def __init__(self, check: Check, batch: int, amp: str, channels_last: bool,
                 compile_backend: str | None = None) -> None:
        from cobra.data import build_train_dataset, resolve_train_split
        from cobra.models import build_model
        from cobra.stages.train import build_optimizer

        cfg = check.config(f"train.amp={amp}")
        device = check.device
        accel.configure_backend(device)
        torch.manual_seed(0)
        data = build_train_dataset(cfg, resolve_train_split(cfg))
        items = [data[i] for i in range(min(batch, len(data)))]
        self.set_images = torch.stack([it["image"] for it in items])
        self.set_labels = torch.stack([it["label"] for it in items])
        self.model = build_model(replace(cfg.model, pretrained=False),
                                 data.num_classes).to(device).train()
        self.nhwc = accel.use_channels_last(self.model, device, channels_last)
        self.device = device
        self.set_batch(batch)
        self.forward = (torch.compile(self.model, backend=compile_backend) if compile_backend
                        else self.model)
        self.optimizer = build_optimizer(self.model, cfg)
        self.cfg, self.amp = cfg, amp

    def set_batch(self, batch: int) -> None:
        """The device-resident batch: the set's images, repeated when the batch is larger."""
        self.images = self.labels = None  # freed before the next batch is made
        repeat = -(-batch // len(self.set_images))
        self.images = accel.to_device(self.set_images.repeat(repeat, 1, 1, 1)[:batch],
                                      self.device, self.nhwc)
        self.labels = self.set_labels.repeat(repeat, 1)[:batch].to(self.device)
        self.batch = batch

    def step(self) -> None:
        from cobra.objective import compute_losses

        with accel.autocast(self.device, self.amp):
            out = self.forward(self.images)
            terms = compute_losses(out, self.labels, self.cfg.loss, _every_term_on(self.cfg),
                                   tuple(self.images.shape[-2:]))
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.optimizer.step()

    def rate(self, steps: int, warmup: int = 2) -> float:
        """img/s over `steps` steps after `warmup` (cuDNN autotuning, compilation)."""
        for _ in range(warmup):
            self.step()
        bench.sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        bench.sync(self.device)
        return self.batch * steps / (time.perf_counter() - start)


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# name, amp, channels_last, compiled
ARMS = (("fp32", "none", False, False), ("bf16", "bf16", False, False),
        ("bf16+channels_last", "bf16", True, False))
COMPILED = ("bf16+channels_last+compile", "bf16", True, True)


def _train_arm(check: Check, name: str, amp: str, nhwc: bool, compiled: bool) -> None:
    """One arm's row: img/s and its ratio to this run's fp32 arm."""
    s = check.sizes
    _reset_peak(check.device)
    start = time.perf_counter()
    try:
        step = Step(check, s.batch, amp, nhwc, s.compile_backend if compiled else None)
        img_s = step.rate(s.steps)
    except Exception as exc:  # noqa: BLE001 - a compile failure is a result, not a crash
        check.add(bench.row(f"train {name} (B{s.batch})", float("nan"), "img/s",
                            target="compiles and runs", met=False,
                            error=f"{type(exc).__name__}: {str(exc)[:300]}"))
        return
    fp32 = next((r["value"] for r in read_rows(check.out)
                 if r["row"] == f"train fp32 (B{s.batch})"), img_s)
    check.add(bench.row(f"train {name} (B{s.batch})", round(img_s, 1), "img/s",
                        baseline=round(fp32, 1), ratio=round(img_s / fp32, 2),
                        target="ratio to fp32 in this run", amp=amp, channels_last=nhwc,
                        compiled=compiled and s.compile_backend, batch=s.batch, steps=s.steps,
                        peak_memory_gib=_peak_gib(check.device),
                        section_s=round(time.perf_counter() - start, 1)))


def section_train(check: Check) -> None:
    for arm in ARMS:
        _train_arm(check, *arm)


def section_compile(check: Check) -> None:
    """Apart from the eager arms: compiling may take minutes, or hang, under its own limit."""
    _train_arm(check, *COMPILED)


def section_maxbatch(check: Check) -> None:
    """Double the batch from 2 x 32 until it no longer fits (bf16 + channels_last)."""
    s = check.sizes
    best: tuple[int, float, float | None] | None = None
    step = Step(check, s.batch, "bf16", True)  # one model for every batch size
    batch = 2 * s.batch
    while batch <= s.max_batch:
        _reset_peak(check.device)
        try:
            step.set_batch(batch)
            best = (batch, step.rate(2, warmup=1), _peak_gib(check.device))
        except torch.cuda.OutOfMemoryError:
            step.optimizer.zero_grad(set_to_none=True)  # the failed step's gradients
            break
        batch *= 2
    if best is None:
        check.add(bench.row(f"train bf16+channels_last (largest batch, > B{s.batch} fails)",
                            float("nan"), "img/s", target="fits", met=False))
        return
    check.add(bench.row(f"train bf16+channels_last (B{best[0]}, largest that fits)",
                        round(best[1], 1), "img/s", target=f"doubling from B{2 * s.batch} up "
                        f"to B{s.max_batch}", batch=best[0], peak_memory_gib=best[2],
                        next_failed=batch <= s.max_batch))


def section_profile(check: Check) -> None:
    """torch.profiler over a few bf16 + channels_last steps: top ops by device time (self), and
    the share of the wall time no kernel ran (kernel durations summed, one stream)."""
    from torch.profiler import ProfilerActivity, profile

    s = check.sizes
    step = Step(check, s.batch, "bf16", True)
    step.rate(1, warmup=2)
    cuda = check.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    steps = max(3, s.steps // 2)
    with profile(activities=activities) as prof:
        bench.sync(check.device)
        start = time.perf_counter()
        for _ in range(steps):
            step.step()
        bench.sync(check.device)
        wall_us = (time.perf_counter() - start) * 1e6
    key = "self_device_time_total" if cuda else "self_cpu_time_total"

    def self_time(event) -> float:
        return getattr(event, key, None) or getattr(event, "self_cuda_time_total", 0.0)

    averages = [e for e in prof.key_averages() if self_time(e) > 0]
    top = sorted(averages, key=self_time, reverse=True)[:15]
    busy_us = None
    if cuda:
        kernels = [e for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA]
        busy_us = sum(e.time_range.elapsed_us() for e in kernels)
    total = sum(self_time(e) for e in averages) or 1.0
    ops = [{"op": e.key, "ms_per_step": round(self_time(e) / 1e3 / steps, 3),
            "share": round(self_time(e) / total, 3), "calls_per_step": e.count // steps}
           for e in top]
    for op in ops:
        print(f"  {op['share']:6.1%} {op['ms_per_step']:9.3f} ms/step  {op['calls_per_step']:5d}"
              f"x  {op['op']}", file=sys.stderr)
    idle = None if busy_us is None else round(max(0.0, 1 - busy_us / wall_us), 3)
    check.add(bench.row(f"profile bf16+channels_last (B{s.batch}): device idle share",
                        idle if idle is not None else float("nan"), "share",
                        target="< 0.1 (the device kept busy)",
                        met=None if idle is None else idle < 0.1,
                        step_ms=round(wall_us / 1e3 / steps, 1), top_ops=ops,
                        time_kind="device" if cuda else "cpu (dry run: no device time)"))


def _loop_info_nce(z, pos_idx, neg_idx, tau, *, neg_exp_over_tau: bool = False):
    if neg_exp_over_tau:
        raise ValueError("the authors' arm runs loss.fidelity=paper (no e^s/tau negatives)")
    return baselines.loop_info_nce(z, pos_idx, neg_idx, tau)


def section_authors(check: Check) -> None:
    """The step as the authors' code runs it, the baseline of the fastest arm of this run."""
    from cobra import losses

    s = check.sizes
    real = losses.info_nce
    losses.info_nce = _loop_info_nce  # CAP and SAP look it up at call time
    try:
        step = Step(check, s.batch, "none", False)
        img_s = step.rate(s.authors_steps, warmup=1)
    finally:
        losses.info_nce = real
    fastest = max((r["value"] for r in read_rows(check.out)
                   if r["row"].startswith("train ") and r["value"] == r["value"]), default=None)
    ratio = None if fastest is None else round(fastest / img_s, 2)
    check.add(bench.row(f"authors fp32 eager, CAP/SAP per anchor (B{s.batch})", round(img_s, 2),
                        "img/s", baseline=round(img_s, 2), ratio=ratio,
                        target="fastest train arm >= 5x this", met=None if ratio is None
                        else ratio >= 5, steps=s.authors_steps))


def section_data(check: Check) -> None:
    """The voc-shape set the steps and the loader read."""
    from cobra.data.synthetic import write_synthetic

    s = check.sizes
    cfg = load_config(None, ["data.synthetic.shape=voc",
                             f"data.synthetic.num_train={s.data_images // 2}",
                             f"data.synthetic.num_val={s.data_images // 4}",
                             f"data.synthetic.num_train_aug={s.data_images}",
                             f"data.synthetic.long_side={s.long_side}"])
    start = time.perf_counter()
    write_synthetic(check.data_root, cfg.data.synthetic)
    print(f"data: {s.data_images} voc-shape images in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)


def section_loader(check: Check) -> None:
    """Loader img/s of train_aug from the decoded cache with each worker count (and from the
    files with the first), past the workers' start-up, beside the fastest step of this run."""
    from torch.utils.data import Subset

    s = check.sizes
    files, cached = bench.loader_arms(check.config())
    step = max((r["value"] for r in read_rows(check.out)
                if r["row"].startswith("train ") and r["value"] == r["value"]), default=None)
    arms = [(f"cache, {w} workers", cached, w) for w in s.workers]
    arms.append((f"files, {s.workers[0]} workers", files, s.workers[0]))
    for name, dataset, workers in arms:
        repeats = max(1, (12 * s.batch) // len(dataset) + 1)
        looped = Subset(dataset, list(range(len(dataset))) * repeats)
        img_s = _steady_rate(looped, s.batch, workers)
        check.add(bench.row(f"loader train_aug {name} (B{s.batch}, VOC-sized JPEGs)",
                            round(img_s, 1), "img/s", baseline=step,
                            ratio=None if not step else round(img_s / step, 2),
                            target="loader >= fastest step", met=None if not step
                            else img_s >= step, workers=workers))


def _steady_rate(dataset, batch: int, workers: int) -> float:
    """img/s from the first batch on (the workers' start-up left out)."""
    from cobra.stages.train import make_loader

    loader = iter(make_loader(dataset, batch, workers, 0, shuffle=True,
                          pin_memory=torch.cuda.is_available()))
    next(loader)
    start, n = time.perf_counter(), 0
    for b in loader:
        n += b["image"].shape[0]
    return n / (time.perf_counter() - start)


def section_seeds(check: Check) -> None:
    s = check.sizes
    cfg = check.config()
    check.add(bench.seeds_row(cfg, check.device, s.seeds_images, list(s.seeds_scales),
                              repeats=1 if check.dry_run else 2))


def section_rehearsal(check: Check) -> None:
    """Every stage at VOC's image sizes (benchmarks/rehearsal.py); on a GPU its stages use it."""
    import importlib.util

    missing = [m for m in ("pydensecrf", "segmentation_models_pytorch")
               if importlib.util.find_spec(m) is None]
    if missing:
        check.add(bench.row("rehearsal (skipped)", float("nan"), "", target="runs", met=False,
                            error=f"not installed here: {', '.join(missing)}"))
        return
    s = check.sizes
    extra = (*s.rehearsal_extra, *(("train.device=cpu",) if check.dry_run else ()))
    for r in rehearsal.rehearsal_rows(s.rehearsal_images, s.long_side, extra,
                                      check.out / "rehearsal"):
        check.add(r)


def read_rows(out: Path) -> list[dict]:
    path = out / "rows.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def section_collect(check: Check) -> None:
    """The rows as the benchmark's JSON: $OUT/gpu-<date>.json, and for a real run
    benchmarks/results/gpu-<date>.json (a dry run never writes there)."""
    rows = read_rows(check.out)
    date = time.strftime("%Y-%m-%d", time.gmtime())
    meta = {"torch": torch.__version__, "device": check.device_name(), "dry_run": check.dry_run,
            "cpus": os.cpu_count(), "date": date}
    name = f"gpu-dryrun-{date}.json" if check.dry_run else f"gpu-{date}.json"
    text = json.dumps({"meta": meta, "rows": rows}, indent=2)
    (check.out / name).write_text(text)
    if not check.dry_run:
        results = ROOT / "benchmarks" / "results"
        results.mkdir(parents=True, exist_ok=True)
        (results / name).write_text(text)
    if check.dry_run:
        print("DRY RUN on the CPU with tiny sizes: these are not GPU numbers")
    bench.print_table(rows)
    for r in rows:
        for op in r.get("top_ops", []):
            print(f"  {op['share']:6.1%} {op['ms_per_step']:9.3f} ms/step "
                  f"{op['calls_per_step']:5d}x  {op['op'][:80]}")
    print(f"rows: {check.out / name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=SECTIONS)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny sizes on the CPU: proves the script runs, measures nothing")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here: the GPU check measures a GPU and will not report CPU "
              "numbers as GPU ones; set COBRA_GPU_CHECK_DRY=1 (gpu_check.sh) or pass --dry-run "
              "for the CPU dry run", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out.resolve(), args.dry_run)
    globals()[f"section_{args.section}"](check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
