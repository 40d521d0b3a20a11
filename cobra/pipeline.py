"""Compositions of stages: one sweep trial (train → seeds) and the final stage chain."""

from collections.abc import Iterable
from pathlib import Path

from cobra.config import Config
from cobra.data import build_source
from cobra.layout import RunLayout
from cobra.reporting import Reporter
from cobra.stages import POST_TRAIN_STAGES, get_stage, seeds, train
from cobra.weights import check_backbones


def run_trial(cfg: Config, layout: RunLayout, reporter: Reporter,
              resume_from: Path | None = None, stages: Iterable[str] = ("seeds",)
              ) -> dict[str, float]:
    """Train CoBra, then run `stages` (seeds first; a sweep's `stages:` may go on to masks):
    what one sweep trial measures."""
    stages = list(stages)
    if stages[:1] != ["seeds"]:
        raise ValueError(f"a trial's stages start with seeds, got {stages}")
    # the networks' and the seed split's problems are found before training, not after an
    # hour of it
    check_backbones(cfg)
    seeds.check_inputs(cfg, build_source(cfg, cfg.data.seed_split))
    train_metrics = train.run(cfg, layout, reporter, resume_from=resume_from)
    # each stage's fingerprint (checkpoint, settings, images) tells current outputs from stale
    stage_metrics = run_stages(cfg, layout, reporter, stages=stages)
    return {**train_metrics, **stage_metrics}


def run_stages(cfg: Config, layout: RunLayout, reporter: Reporter,
               stages: Iterable[str] = POST_TRAIN_STAGES, force: bool = False) -> dict[str, float]:
    """Run post-training stages in order over an existing run directory; merged metrics."""
    metrics: dict[str, float] = {}
    for name in stages:
        metrics.update(get_stage(name)(cfg, layout, reporter, force=force))
    return metrics
