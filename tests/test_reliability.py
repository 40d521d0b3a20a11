"""Reliability (issue 11): run directories owned by the process that made them, every bad input
refused before training, unexpected errors as one line plus a log, the run marked failed."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_cli, set_args
from PIL import Image

from cobra.config import ConfigError, load_config
from cobra.errors import CobraError, DataError
from cobra.layout import new_run


def _one_error_line(err: str) -> None:
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err


# ------------------------------------------------------------------------------------------------
# Run directories


def test_a_named_run_directory_is_created_exclusively(tmp_path):
    first = new_run(tmp_path, "same")
    with pytest.raises(CobraError, match="already exists; choose another --name"):
        new_run(tmp_path, "same")
    assert first.root.is_dir()


def test_default_names_never_collide_even_in_the_same_second(tmp_path, monkeypatch):
    import secrets

    roots = {new_run(tmp_path, None).root for _ in range(5)}
    assert len(roots) == 5
    # the suffix collides once (as it could across processes): the next try gets a fresh name
    suffixes = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(suffixes))
    monkeypatch.setattr("time.strftime", lambda fmt: "20260101-000000")
    a, b = new_run(tmp_path, None), new_run(tmp_path, None)
    assert (a.root.name, b.root.name) == ("20260101-000000-aaaaaa", "20260101-000000-bbbbbb")


def test_a_bad_run_never_deletes_a_live_run_with_the_same_name(tiny_overrides, capsys):
    # the live run has just made its (still empty) directory when the bad one starts
    live = new_run(load_config(None, tiny_overrides).run.dir, "shared")
    code, _, err = run_cli(["train", "--name", "shared", *set_args(tiny_overrides),
                            "--set", "loss.k_sap_pos=500"], capsys)
    assert code == 2 and "already exists" in err
    _one_error_line(err)
    assert live.root.is_dir()


def test_an_unwritable_run_dir_is_one_line_and_leaves_nothing(tiny_overrides, tmp_path,
                                                               monkeypatch, capsys):
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if "runs" in self.parts:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    code, _, err = run_cli(["train", *set_args(tiny_overrides)], capsys)
    assert code == 2 and "Read-only file system" in err and "run.dir" in err
    _one_error_line(err)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------
# Unexpected errors


def test_an_unexpected_error_is_one_line_with_its_log_and_the_run_kept(tiny_overrides,
                                                                      monkeypatch, capsys):
    from cobra.stages import train

    def boom(cfg, layout, reporter, resume_from=None):
        (layout.checkpoints).mkdir()
        (layout.last_checkpoint).write_bytes(b"stand-in")
        raise RuntimeError("something nobody anticipated")

    monkeypatch.setattr(train, "run", boom)
    code, result, err = run_cli(["train", "--no-seeds", "--name", "crash",
                                 *set_args(tiny_overrides)], capsys)
    assert code == 1 and result is None
    _one_error_line(err)
    assert "something nobody anticipated" in err
    run_dir = Path(load_config(None, tiny_overrides).run.dir) / "crash"
    assert f"(traceback in {run_dir / 'error.log'})" in err
    assert "Traceback" in (run_dir / "error.log").read_text()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "FAILED" and "nobody anticipated" in status["error"]
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == b"stand-in"


def test_an_unexpected_error_before_any_run_still_gets_a_log(monkeypatch, capsys):
    from cobra import cli

    def boom(args):
        raise ValueError("no run directory here")

    monkeypatch.setattr(cli, "cmd_config", boom)
    code, _, err = run_cli(["config"], capsys)
    assert code == 1
    _one_error_line(err)
    log = Path(err.rsplit("(traceback in ", 1)[1].rstrip(")\n"))
    assert "no run directory here" in log.read_text()
    log.unlink()


# ------------------------------------------------------------------------------------------------
# Config values


@pytest.mark.parametrize("override", [
    "loss.tau=.inf", "train.lr=.inf", "train.lr=.nan", "loss.lambda_cam=-.inf",
    "seeds.scales=[1.0, .nan]", "train.seed=100000000000000000000000", "train.seed=4294967296",
    "train.max_steps_per_epoch=-5", "train.max_steps_per_epoch=0", "seeds.max_images=-1",
    "masks.max_images=0", "segment.max_images=-3", "train.device=tpu:7", "train.device=cuda:x",
    "model.embed_dim=100000000000000000000000",
])
def test_non_finite_out_of_range_and_unknown_device_values_are_refused(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"'{key}"):
        load_config(None, [override])


def test_good_edge_values_are_still_accepted():
    cfg = load_config(None, ["train.seed=4294967295", "train.device=cuda:1", "seeds.max_images=1",
                             "train.max_steps_per_epoch=1", "masks.max_images=null"])
    assert cfg.train.seed == 2**32 - 1 and cfg.train.device == "cuda:1"


def test_bad_values_refuse_the_run_before_a_directory_is_made(tiny_overrides, tmp_path, capsys):
    for override in ("train.lr=.inf", "train.device=tpu:7", "train.seed=100000000000000000000000"):
        code, _, err = run_cli(["train", *set_args(tiny_overrides), "--set", override], capsys)
        assert code == 2, err
        _one_error_line(err)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ------------------------------------------------------------------------------------------------
# Data checked before training


def _copy(tiny_data_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_data_root, root)
    return root


def _first_seed_id(root: Path) -> str:
    return (root / "ImageSets/Segmentation/train.txt").read_text().split()[0]


def test_duplicate_class_names_are_refused(tiny_data_root, tmp_path):
    from cobra.data.voc import VOCSource

    root = _copy(tiny_data_root, tmp_path)
    names = (root / "classes.txt").read_text().split()
    (root / "classes.txt").write_text("\n".join([*names[:-1], names[1]]) + "\n")
    with pytest.raises(DataError, match=f"lists class '{names[1]}' twice"):
        VOCSource(root, "train")


def test_a_label_png_smaller_than_its_image_is_refused_before_training(tiny_data_root,
                                                                      tiny_overrides, tmp_path,
                                                                      capsys):
    root = _copy(tiny_data_root, tmp_path)
    victim = root / "SegmentationClass" / f"{_first_seed_id(root)}.png"
    with Image.open(victim) as img:
        img.crop((0, 0, img.width // 2, img.height // 2)).save(victim)
    code, _, err = run_cli(["train", *set_args(tiny_overrides), "--set", f"data.root={root}"],
                           capsys)
    assert code == 2 and str(victim) in err and "is 32x32 but its image" in err
    _one_error_line(err)
    assert not any((tmp_path / "runs").iterdir())  # refused before training: no run left


def test_an_image_larger_than_seeds_max_side_is_refused_before_training(tiny_overrides,
                                                                        tmp_path, capsys):
    code, _, err = run_cli(["train", *set_args(tiny_overrides), "--set", "seeds.max_side=32"],
                           capsys)
    assert code == 2 and "larger than seeds.max_side=32" in err
    _one_error_line(err)
    assert not any((tmp_path / "runs").iterdir())


def test_a_background_only_image_is_scored_not_a_crash(tiny_data_root, tiny_overrides, tmp_path,
                                                      capsys):
    root = _copy(tiny_data_root, tmp_path)
    image_id = _first_seed_id(root)
    mask = root / "SegmentationClass" / f"{image_id}.png"
    with Image.open(mask) as img:
        blank = Image.fromarray(np.zeros((img.height, img.width), dtype=np.uint8), mode="P")
        blank.putpalette(img.getpalette())
    blank.save(mask)
    code, result, err = run_cli(["train", "--name", "bg", *set_args(tiny_overrides),
                                 "--set", f"data.root={root}"], capsys)
    assert code == 0, err
    run_dir = Path(result["run_dir"])
    with np.load(run_dir / "seeds" / f"{image_id}.npz") as seed:
        assert seed["keys"].shape == (0,) and seed["cam_cnn"].shape[0] == 0
    evaluation = json.loads((run_dir / "seeds" / "eval.json").read_text())
    assert evaluation["num_images"] == 4  # seeds.max_images: the background-only one counts
    assert np.isfinite(result["seed_miou"])


# ------------------------------------------------------------------------------------------------
# Resume


def test_resume_refuses_changes_to_what_was_trained(tiny_overrides, capsys):
    code, result, err = run_cli(["train", "--no-seeds", "--name", "done",
                                 *set_args(tiny_overrides)], capsys)
    assert code == 0, err
    run_dir = Path(result["run_dir"])
    config_before = (run_dir / "config.yaml").read_text()
    checkpoint_before = (run_dir / "checkpoints/last.pt").read_bytes()

    # --set of a trained key: refused, config.yaml untouched
    code, _, err = run_cli(["train", "--no-seeds", "--resume", str(run_dir),
                            "--set", "loss.tau=0.5"], capsys)
    assert code == 2 and "loss.tau cannot change on --resume" in err
    _one_error_line(err)
    assert (run_dir / "config.yaml").read_text() == config_before

    # config.yaml edited to another model: the checkpoint disagrees, one line
    edited = yaml.safe_load(config_before)
    edited["model"]["embed_dim"] = 8
    (run_dir / "config.yaml").write_text(yaml.safe_dump(edited))
    code, _, err = run_cli(["train", "--no-seeds", "--resume", str(run_dir)], capsys)
    assert code == 2 and "model.embed_dim is 16 there but 8 here" in err
    _one_error_line(err)

    # another setting edited: named too
    edited["model"]["embed_dim"] = 16
    edited["loss"]["tau"] = 0.2
    (run_dir / "config.yaml").write_text(yaml.safe_dump(edited))
    code, _, err = run_cli(["train", "--no-seeds", "--resume", str(run_dir)], capsys)
    assert code == 2 and "loss.tau=0.1" in err
    _one_error_line(err)
    assert (run_dir / "checkpoints/last.pt").read_bytes() == checkpoint_before

    # keys that only change how it runs are fine (the run is already complete)
    (run_dir / "config.yaml").write_text(config_before)
    code, _, err = run_cli(["train", "--no-seeds", "--resume", str(run_dir),
                            "--set", "train.progress=false", "--set", "data.num_workers=0",
                            "--set", "train.device=cpu"], capsys)
    assert code == 0, err
    assert json.loads((run_dir / "status.json").read_text())["status"] == "FINISHED"


def test_an_unexpected_error_in_a_stage_marks_the_run_failed_and_keeps_it(tiny_overrides,
                                                                         monkeypatch, capsys):
    from cobra import pipeline

    run_dir = new_run(load_config(None, tiny_overrides).run.dir, "staged").root
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"train": {"progress": False}}))
    (run_dir / "summary.json").write_text('{"seed_miou": 50.0}')

    def boom(*args, **kwargs):
        raise MemoryError("out of memory in a stage")

    monkeypatch.setattr(pipeline, "run_stages", boom)
    code, _, err = run_cli(["stage", "masks", "--run-dir", str(run_dir)], capsys)
    assert code == 1 and f"(traceback in {run_dir / 'error.log'})" in err
    _one_error_line(err)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "FAILED"
    assert json.loads((run_dir / "summary.json").read_text()) == {"seed_miou": 50.0}


def test_a_run_directory_that_turns_unwritable_does_not_hide_the_error(tiny_overrides,
                                                                       monkeypatch, capsys):
    import os

    from cobra.stages import train

    def boom(cfg, layout, reporter, resume_from=None):
        layout.checkpoints.mkdir()
        layout.last_checkpoint.write_bytes(b"stand-in")

        def full_disk(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", full_disk)  # every atomic write fails from now on
        monkeypatch.setattr(type(reporter), "_write", full_disk)
        raise RuntimeError("the original problem")

    monkeypatch.setattr(train, "run", boom)
    code, _, err = run_cli(["train", "--no-seeds", *set_args(tiny_overrides)], capsys)
    monkeypatch.undo()
    assert code == 1 and "the original problem" in err
    _one_error_line(err)
    log = Path(err.rsplit("(traceback in ", 1)[1].rstrip(")\n"))
    assert "the original problem" in log.read_text()  # a temporary file took the traceback
    log.unlink()
