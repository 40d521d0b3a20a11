"""Shared fixtures: a tiny synthetic dataset and a tiny run config, both built once per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# Tests share 2 cores with each other's subprocesses (Ray workers); one thread each is fastest.
torch.set_num_threads(1)
os.environ.setdefault("COBRA_CACHE", str(Path(__file__).resolve().parent.parent / ".cache/cobra"))

TINY_OVERRIDES = [
    "model.cnn=resnet18",
    "model.vit=deit_tiny_patch16_224",
    "model.pretrained=false",
    "model.freeze_bn=false",
    "model.freeze_stem=false",
    "model.embed_dim=16",
    "loss.k_sap_pos=4",
    "loss.k_sap_neg=2",
    "loss.k_cap_pos=2",
    "loss.k_cap_neg=4",
    "loss.cam_start_epoch=0",
    "loss.proj_start_epoch=0",
    "data.image_size=64",
    "data.resize_long=[56, 80]",
    "data.num_workers=0",
    "data.synthetic.num_train=12",
    "data.synthetic.num_val=6",
    "data.synthetic.image_size=64",
    "train.epochs=1",
    "train.batch_size=4",
    "train.lr=0.01",
    "train.max_steps_per_epoch=2",
    "train.progress=false",
    "seeds.scales=[1.0]",
    "seeds.max_images=4",
    "masks.irn.backbone=resnet18",
    "masks.irn.crop=32",
    "masks.irn.batch_size=2",
    "masks.irn.epochs=1",
    "masks.irn.pair_radius=3",
    "masks.walk.radius=3",
    "masks.walk.exp_times=3",
    "masks.ir_labels.crf.iters=2",
    "masks.workers=1",
    "segment.encoder=tu-resnet18",
    "segment.encoder_weights=null",
    "segment.crop=32",
    "segment.resize_long=[32, 48]",
    "segment.batch_size=2",
    "segment.epochs=1",
    "segment.scales=[1.0]",
    "segment.flip=false",
    "segment.max_images=3",
]


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """The synthetic dataset at tiny size, written once for the whole session."""
    from cobra.config import load_config
    from cobra.data.synthetic import write_synthetic

    cfg = load_config(None, TINY_OVERRIDES)
    return write_synthetic(tmp_path_factory.mktemp("data") / "synthetic", cfg.data.synthetic)


@pytest.fixture
def tiny_overrides(tiny_data_root, tmp_path) -> list[str]:
    """Overrides for a tiny run writing under this test's tmp_path."""
    return [*TINY_OVERRIDES, f"data.root={tiny_data_root}", f"run.dir={tmp_path / 'runs'}"]


def run_cli(args: list[str], capsys) -> tuple[int, dict | None, str]:
    """Run `launch.py ARGS` in-process: (exit code, its final JSON line or None, stderr)."""
    from cobra.cli import main

    code = main(args)
    out = capsys.readouterr()
    lines = [ln for ln in out.out.splitlines() if ln.startswith("{")]
    return code, (json.loads(lines[-1]) if lines else None), out.err


def set_args(overrides: list[str]) -> list[str]:
    """["k=v", ...] → ["--set", "k=v", ...]."""
    return [arg for o in overrides for arg in ("--set", o)]


def trial_runs(client, experiment: str, status: str | None = None) -> list:
    """The sweep trials (MLflow runs tagged cobra.kind=trial) of `experiment`, optionally of one
    status: what the cluster drills read back to see where and how trials ran."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    where = "tags.`cobra.kind` = 'trial'"
    if status:
        where += f" and attributes.status = '{status}'"
    return client.search_runs([exp.experiment_id], where)
