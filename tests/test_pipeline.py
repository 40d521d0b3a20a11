"""End to end on tiny settings: train → seeds through the real CLI, resume, reproducibility,
and the bad-input contract (exit code 2, one line, nothing overwritten)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cobra.config import load_config
from tests.conftest import run_cli, set_args

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_train_then_seeds_end_to_end(tiny_overrides, capsys):
    code, result, err = run_cli(["train", "--name", "e2e", *set_args(tiny_overrides)],
                                capsys)
    assert code == 0, err
    run_dir = Path(result["run_dir"])
    for key in ("loss", "loss_cls", "loss_cam", "loss_cap", "loss_sap", "cls_map_cnn",
                "cls_map_vit", "seed_miou", "seed_threshold", "seed_miou_aobj"):
        assert key in result, key
    assert 0.0 <= result["seed_miou"] <= 100.0
    # the checkpoint carries its config and loads without pickle
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert state["config"]["loss"]["k_sap_pos"] == 4
    seeds = sorted((run_dir / "seeds").glob("*.npz"))
    assert len(seeds) == 4
    with np.load(seeds[0], allow_pickle=False) as npz:
        k, h, w = npz["cam_cnn"].shape
        assert npz["cam_tran"].shape == (k, h, w)
        assert npz["a_obj"].shape == (h, w)
        assert npz["keys"].shape == (k,) and (npz["keys"] >= 1).all()
        assert npz["cam_cnn"].min() >= 0.0 and npz["cam_cnn"].max() <= 1.0 + 1e-6
    evaluation = json.loads((run_dir / "seeds/eval.json").read_text())
    assert {"fixed", "aobj"} <= set(evaluation)
    assert list((run_dir / "pictures").glob("*.png"))
    events = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events][0] == "params"
    assert any(e["kind"] == "epoch" for e in events)
    assert events[-1] == {**events[-1], "kind": "end", "status": "FINISHED"}


@pytest.mark.slow
def test_seeded_training_is_reproducible_and_resume_matches(tiny_overrides, capsys):
    two = [*tiny_overrides, "train.epochs=2"]
    results = []
    for name in ("a", "b"):
        code, result, err = run_cli(["train", "--no-seeds", "--name", name,
                                     *set_args(two)], capsys)
        assert code == 0, err
        results.append(result)
    assert results[0]["loss"] == results[1]["loss"]

    # the same two-epoch run interrupted right after its first checkpoint, then resumed:
    # the same numbers as the uninterrupted run
    from cobra.layout import new_run
    from cobra.reporting import Reporter
    from cobra.stages import train

    class InterruptAfterFirstEpoch(Reporter):
        def log_epoch(self, epoch, metrics, checkpoint=None):
            raise KeyboardInterrupt

    cfg = load_config(None, [*two, "run.name=c"])
    layout = new_run(cfg.run.dir, cfg.run.name)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, layout, InterruptAfterFirstEpoch())
    assert torch.load(layout.last_checkpoint, weights_only=True)["epoch"] == 0
    code, resumed, err = run_cli(["train", "--no-seeds", "--resume", str(layout.root)], capsys)
    assert code == 0, err
    assert resumed["loss"] == pytest.approx(results[0]["loss"], rel=1e-6)
    assert resumed["cls_map_cnn"] == pytest.approx(results[0]["cls_map_cnn"], rel=1e-6)


def test_bad_inputs_exit_2_with_one_line(tiny_overrides, tmp_path, capsys):
    cases = [
        ["train", "--set", "loss.k_sap_poss=3"],
        ["train", "--set", "train.epochs=many"],
        ["train", *set_args(tiny_overrides), "--set", "loss.k_sap_pos=500"],
        ["train", *set_args(tiny_overrides), "--set", f"data.root={tmp_path / 'missing'}"],
        ["stage", "seeds", "--run-dir", str(tmp_path / "nowhere")],
    ]
    for args in cases:
        code, result, err = run_cli(args, capsys)
        assert code == 2, (args, err)
        assert result is None
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err


def test_existing_run_directory_is_never_overwritten(tiny_overrides, capsys):
    cfg = load_config(None, tiny_overrides)
    run_dir = Path(cfg.run.dir) / "taken"
    run_dir.mkdir(parents=True)
    (run_dir / "precious.txt").write_text("keep me")
    code, _, err = run_cli(["train", "--name", "taken", *set_args(tiny_overrides)], capsys)
    assert code == 2 and "already exists" in err
    assert (run_dir / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in run_dir.iterdir()) == ["precious.txt"]


def test_corrupt_image_is_named(tiny_data_root, tiny_overrides, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_data_root, broken)
    victim = sorted((broken / "JPEGImages").iterdir())[0]
    victim.write_bytes(b"not an image at all")
    code, _, err = run_cli(["train", *set_args(tiny_overrides), "--set",
                            f"data.root={broken}"], capsys)
    assert code == 2
    assert victim.stem in err and len(err.strip().splitlines()) == 1


def test_launch_py_runs_from_another_directory(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), "config", "--set",
                           "loss.tau=0.07"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "tau: 0.07" in proc.stdout
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), "config", "--set",
                           "loss.taux=1"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: unknown config key 'loss.taux'; "
                                   "did you mean 'loss.tau'?")
