"""One checkpoint per trial: a finished run keeps the weights alone, the tracker's copy is fp16,
and the fp16 copy loses nothing the post-training stages need (seeds from it match)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cobra.checkpoint import _half, export_weights, load_checkpoint
from cobra.config import load_config
from cobra.layout import RunLayout
from cobra.ops.cams import cams_to_label
from cobra.reporting import Reporter
from cobra.stages import seeds as seeds_stage
from cobra.stages.outputs import fuse_seed, read_seed_arrays
from tests.conftest import run_cli, set_args


def weight_bytes(state: dict) -> int:
    return sum(v.numel() * v.element_size() for v in state["model"].values())


def test_half_keeps_integers_and_values_fp16_cannot_hold():
    assert _half(torch.tensor([1, 2])).dtype == torch.int64
    assert _half(torch.tensor([0.5, -2.0])).dtype == torch.float16
    assert _half(torch.tensor([1e5, 1.0])).dtype == torch.float32  # would overflow to inf
    assert _half(torch.tensor([1e-9, 2e-9])).dtype == torch.float32  # would flush to 0
    assert _half(torch.tensor([1e-9, 1.0])).dtype == torch.float16  # 1e-9 next to 1.0: noise
    assert _half(torch.zeros(3)).dtype == torch.float16


class StopAfterFirstEpoch(Reporter):
    def log_epoch(self, epoch, metrics, checkpoint=None):
        raise KeyboardInterrupt


@pytest.mark.slow
def test_only_an_unfinished_run_keeps_optimizer_state(tiny_overrides, tmp_path):
    from cobra.stages import train

    cfg = load_config(None, [*tiny_overrides, "train.epochs=2", "train.momentum=0.9"])
    layout = RunLayout(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, layout, StopAfterFirstEpoch())
    state = load_checkpoint(layout.last_checkpoint)
    assert state["epoch"] == 0 and state["optimizer"]["state"]  # momentum buffers: resumable
    train.run(cfg, layout, Reporter(), resume_from=layout.last_checkpoint)
    state = load_checkpoint(layout.last_checkpoint)
    assert state["epoch"] == 1 and state["optimizer"] is None
    # a finished checkpoint still resumes (to nothing left to train)
    train.run(cfg, layout, Reporter(), resume_from=layout.last_checkpoint)


@pytest.mark.slow
def test_fp16_export_is_half_the_bytes_and_seeds_from_it_match(tiny_overrides, tmp_path, capsys):
    code, result, err = run_cli(["train", "--name", "fp32", *set_args(tiny_overrides)], capsys)
    assert code == 0, err
    run32 = RunLayout(Path(result["run_dir"]))
    run16 = RunLayout(tmp_path / "fp16")
    run16.checkpoints.mkdir(parents=True)
    shutil.copy2(run32.config, run16.config)
    export_weights(run32.last_checkpoint, run16.last_checkpoint, half=True)

    full, half = load_checkpoint(run32.last_checkpoint), load_checkpoint(run16.last_checkpoint)
    assert half["optimizer"] is None and half["config"] == full["config"]
    assert weight_bytes(half) <= 0.55 * weight_bytes(full)
    assert run16.last_checkpoint.stat().st_size <= 0.56 * run32.last_checkpoint.stat().st_size

    cfg = load_config(run32.config)
    metrics32 = seeds_stage.run(cfg, run32, Reporter(), force=True)
    metrics16 = seeds_stage.run(cfg, run16, Reporter())
    assert abs(metrics16["seed_miou"] - metrics32["seed_miou"]) < 0.1
    agree = []
    for path in sorted(run32.seeds.glob("*.npz")):
        a = read_seed_arrays(path)
        b = read_seed_arrays(run16.seeds / path.name)
        for key in ("cam_cnn", "cam_tran", "a_obj"):
            np.testing.assert_allclose(b[key], a[key], atol=1e-2)
        t = metrics32["seed_threshold"]
        la = cams_to_label(fuse_seed(a, "fuse")["cam"], a["keys"], t)
        lb = cams_to_label(fuse_seed(b, "fuse")["cam"], b["keys"], t)
        agree.append((la == lb).mean())
    assert min(agree) >= 0.999
