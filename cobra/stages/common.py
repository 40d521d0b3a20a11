"""What post-training stages share: which images they cover, input checks, parallel maps,
fingerprints that tell a complete output from a stale one, and the skip-or-redo decision."""

import hashlib
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cobra.config import Config, CRFConfig
from cobra.data.source import Source
from cobra.errors import StageInputError
from cobra.layout import RunLayout, atomic_write_text

# jobs queued per pool worker beyond the one it runs: enough that no worker waits for the next
POOL_AHEAD_PER_WORKER = 4
# images a stage draws as pictures (the first ones of its image list)
NUM_PICTURES = 4


def stage_ids(cfg: Config, source: Source, limit: int | None = None) -> list[str]:
    """The seed split's images this stage covers (the first `limit` or seeds.max_images)."""
    ids = list(source.ids)
    for cap in (cfg.seeds.max_images, limit):
        if cap:
            ids = ids[:cap]
    return ids


def require_files(paths: dict[str, Path], what: str, stage: str) -> None:
    """Every image's input exists, or one line naming the missing ones and the stage to run."""
    missing = [image_id for image_id, path in paths.items() if not path.exists()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3
                                           else "")
        raise StageInputError(f"{what} missing for {shown}; run stage '{stage}' first "
                              f"(or with --force)")


def fingerprint(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Stamp:
    """A stage's outputs are complete and current when its stamp file holds the same
    fingerprint (keyed on inputs and settings, never on "some output file exists")."""

    def __init__(self, directory: Path, value: str) -> None:
        self.path = directory / "fingerprint.txt"
        self.value = value

    def current(self) -> bool:
        return self.path.exists() and self.path.read_text() == self.value

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def write(self) -> None:
        atomic_write_text(self.path, self.value)


def skip_if_current(stamp: Stamp, layout: RunLayout, metrics: str, force: bool,
                    *outputs: Path) -> dict[str, float] | None:
    """A stage's preamble. Its outputs current (the stamp matches, every path in `outputs`
    exists) and no --force: the stage is skipped and returns its metrics as its last run
    recorded them in summary.json (the keys starting with `metrics`). Otherwise None, after
    clearing the stamp, so that outputs half rewritten by an interrupted run are never taken
    for complete."""
    if stamp.current() and all(path.exists() for path in outputs) and not force:
        return {k: v for k, v in layout.read_summary().items() if k.startswith(metrics)}
    stamp.clear()
    return None


def crf_kernels(crf: CRFConfig, iters: int) -> dict[str, float]:
    """A CRF section's iterations and pairwise kernels as `cobra.ops.crf` keyword arguments."""
    return {"iters": iters, "gauss_sxy": crf.gauss_sxy, "gauss_compat": crf.gauss_compat,
            "bi_sxy": crf.bilateral_sxy, "bi_srgb": crf.bilateral_srgb,
            "bi_compat": crf.bilateral_compat}


def mask_crf_args(cfg: Config) -> dict[str, float]:
    """The authors' second-CRF settings (`masks.rule.crf`, for the masks and for segmentation
    at test time); its iterations are the IR-label CRF's (`masks.ir_labels.crf.iters`: the
    authors share one setting)."""
    return crf_kernels(cfg.masks.rule.crf, cfg.masks.ir_labels.crf.iters)


def stamp_of(directory: Path) -> str | None:
    """The fingerprint a stage's complete outputs carry (None while they are incomplete): what a
    later stage keys on, so a redone stage with the same inputs and settings, whose files are
    new, redoes nothing after it."""
    path = directory / "fingerprint.txt"
    return path.read_text() if path.exists() else None


def file_signature(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def parallel_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int, desc: str,
                 progress: bool, initializer: Callable[..., None] | None = None,
                 initargs: tuple = (), total: int | None = None) -> Iterator[Any]:
    """fn over items on `workers` processes (0 = all cores; 1 = in this process), in order.

    One pool serves the whole call, and `items` is read lazily, a few per worker ahead of the
    results: a producer in this process (the boundary network on the GPU) keeps working while
    the pool does, memory stays bounded, and workers start once, not once per batch of images."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    if workers == 1 or (total is not None and total <= 1):
        if initializer:
            initializer(*initargs)
        for item in items:
            yield fn(item)
            bar.update()
    else:
        yield from _pool_map(fn, items, workers, bar, initializer, initargs)
    bar.close()


def _pool_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int, bar: tqdm,
              initializer: Callable[..., None] | None, initargs: tuple) -> Iterator[Any]:
    # spawn: the parent holds OpenMP threads (torch), which a forked child must not inherit
    context = multiprocessing.get_context("spawn")
    ahead = POOL_AHEAD_PER_WORKER * workers
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=initializer,
                               initargs=initargs)
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
                bar.update()
        while pending:
            yield pending.popleft().result()
            bar.update()
    finally:
        # a failed job or a consumer that stopped early: queued jobs are dropped, running ones end
        pool.shutdown(wait=True, cancel_futures=True)
