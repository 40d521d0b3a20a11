"""The benchmark's baselines compute what the real code computes (so its ratios compare equal
work), and its GPU rows import nothing the lent GPU machine lacks (ray, mlflow, optuna,
pydensecrf)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from benchmarks import baselines, bench, gpu_check, rehearsal
from cobra import losses
from cobra.config import load_config
from cobra.data.decoded_cache import DecodedImages
from cobra.metrics import confusion_matrix

ROOT = Path(__file__).resolve().parent.parent
BLOCKER = '''
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"ray", "mlflow", "optuna", "pydensecrf"}:
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
'''


def test_bincount_baseline_is_the_confusion_matrix():
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 5, (7, 9), dtype=np.uint8) for _ in range(3)]
    gts = [np.where(rng.random((7, 9)) < 0.2, 255, rng.integers(0, 5, (7, 9))).astype(np.uint8)
           for _ in range(3)]
    want = sum(confusion_matrix(p, g, 5) for p, g in zip(preds, gts, strict=True))
    np.testing.assert_array_equal(baselines.bincount_confusion(preds, gts, 5), want)


def test_loop_info_nce_is_info_nce():
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(2, 9, 4), dim=2)
    pos, neg = losses.select_pairs(torch.rand(2, 9, 9), 3, 2, False)
    torch.testing.assert_close(baselines.loop_info_nce(z, pos, neg, 0.1),
                               losses.info_nce(z, pos, neg, 0.1))


def test_loader_row_compares_the_same_items(tiny_overrides, tmp_path, monkeypatch):
    """The loader row's two arms give the same items under the same seed: only where the pixels
    come from differs."""
    monkeypatch.setenv("COBRA_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, tiny_overrides)
    files, cached = bench.loader_arms(cfg)
    assert files.images is files.source and isinstance(cached.images, DecodedImages)
    torch.manual_seed(0)
    want = [files[i]["image"] for i in range(len(files))]
    torch.manual_seed(0)
    assert all(torch.equal(w, cached[i]["image"]) for i, w in enumerate(want))
    got = bench.loader_row("tiny", cfg, {"value": 1.0}, 4, 2, repeats=1)
    assert got["unit"] == "img/s" and got["value"] > 0 and got["baseline"] > 0
    assert got["cache_per_step"] == pytest.approx(got["value"], abs=0.1)  # step: 1 img/s
    assert got["images"] == 8


def test_gpu_rows_import_no_sweep_tracking_or_crf_package(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    code = ("import sys, benchmarks.bench, cobra.stages.train, cobra.stages.seeds\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "{'ray', 'mlflow', 'optuna', 'pydensecrf'}]\n"
            "assert not bad, bad\n"
            "try:\n    import ray\nexcept ImportError:\n    print('blocked')\n")
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "blocked"  # the blocker was active


# The bounded rehearsal: every stage at VOC's layout and class count, small images and backbones
SMALL_MODELS = ("model.cnn=resnet18", "model.vit=deit_tiny_patch16_224",
                "masks.irn.backbone=resnet18", "segment.encoder=resnet18")


@pytest.mark.slow
def test_rehearsal_runs_every_stage_with_its_own_peak_memory(tmp_path):
    """`bench --rows rehearsal` (bounded: 64 px long side, small backbones) runs configs/voc.yaml
    through every stage on the voc-shape set, one row per stage with its seconds per image, its
    own peak RSS and the extrapolation to a full VOC trial."""
    extra = [f"--rehearsal-set={o}" for o in SMALL_MODELS]
    out = tmp_path / "bench.json"
    assert bench.main(["--rows", "rehearsal", "--rehearsal-long-side", "64",
                       "--rehearsal-dir", str(tmp_path / "r"), "--json", str(out), *extra]) == 0
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == [f"rehearsal/{s}" for s in rehearsal.STAGES] + ["rehearsal/trial"]
    stages = [rows[f"rehearsal/{s}"] for s in rehearsal.STAGES]
    for r in stages:
        assert r["unit"] == "s/img" and r["value"] > 0 and r["full_voc_h"] > 0
        assert 0.2 < r["peak_rss_gib"] < 16
    # per stage, not the running maximum over the children, nor this (large) test process's
    # peak, which Linux carries into every child it starts: IR labels (no network) peak lower
    # than training did before them
    assert rows["rehearsal/ir_labels"]["peak_rss_gib"] < rows["rehearsal/train"]["peak_rss_gib"]
    assert rows["rehearsal/trial"]["value"] == pytest.approx(
        sum(r["full_voc_h"] for r in stages), abs=0.05)
    # extrapolated with the trial's 20 epochs, not the one the rehearsal trains
    train = rows["rehearsal/train"]
    assert train["full_voc_h"] >= train["value"] * 10_582 * 20 / 3600 * 0.99
    run = tmp_path / "r" / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["pretrained"] is False and saved["data"]["dataset"] == "voc"
    summary = json.loads((run / "summary.json").read_text())
    assert {"seed_miou", "mask_miou", "seg_miou"} <= set(summary)
    assert (tmp_path / "r" / "data" / "ImageSets" / "Segmentation" / "train_aug.txt").is_file()


def test_rehearsal_extrapolates_each_stage_to_a_full_voc_trial():
    cfg = load_config(rehearsal.VOC_CONFIG, [])
    train = {"stage_s": 12.0, "phases": {"steps": 8.0, "val": 1.0},
             "images": {"train": 4, "val": 1}}
    want = (2.0 * 10_582 + 1.0 * 1_449) * 20 + 3.0  # per image-epoch, val each epoch, fixed once
    assert rehearsal.full_voc_seconds("train", train, cfg) == pytest.approx(want)
    seg = {"stage_s": 30.0, "phases": {"steps": 10.0, "eval": 15.0},
           "images": {"seed": 1, "eval": 1}}
    want = 10.0 * 1_464 * 30 + 15.0 * 1_449 + 5.0
    assert rehearsal.full_voc_seconds("segment", seg, cfg) == pytest.approx(want)
    irn = {"stage_s": 6.0, "phases": {"steps": 4.0}, "images": {"seed": 2}}
    assert rehearsal.full_voc_seconds("irn", irn, cfg) == pytest.approx(2.0 * 1_464 * 4 + 2.0)
    seeds = {"stage_s": 100.0, "phases": {}, "images": {"seed": 1}}
    assert rehearsal.full_voc_seconds("seeds", seeds, cfg) == pytest.approx(100.0 * 1_464)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal needs a machine without CUDA")
def test_gpu_check_refuses_to_report_cpu_numbers_as_gpu_ones(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    env.pop("COBRA_GPU_CHECK_DRY", None)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
    assert not (tmp_path / "rows.jsonl").exists()


@pytest.mark.slow
def test_gpu_check_dry_run_rows_are_marked_and_kept_out_of_results(tmp_path, monkeypatch):
    """The CPU dry run's sections run and write rows in the benchmark's schema, marked dry_run,
    to $OUT alone: nothing lands in benchmarks/results/ as a GPU number."""
    monkeypatch.setenv("COBRA_CACHE", str(tmp_path / "cache"))
    results = ROOT / "benchmarks" / "results"
    before = set(results.glob("*")) if results.is_dir() else set()
    for section in ("data", "train", "collect"):
        assert gpu_check.main([section, "--out", str(tmp_path), "--dry-run"]) == 0
    written = list(tmp_path.glob("gpu-dryrun-*.json"))
    assert len(written) == 1
    data = json.loads(written[0].read_text())
    assert data["meta"]["dry_run"] is True
    names = [r["row"] for r in data["rows"]]
    assert names == ["train fp32 (B2)", "train bf16 (B2)", "train bf16+channels_last (B2)"]
    for r in data["rows"]:
        assert r["dry_run"] is True and r["device"] == "cpu (dry run)" and r["value"] > 0
        assert {"row", "value", "unit", "baseline", "ratio", "target", "met"} <= set(r)
    assert (set(results.glob("*")) if results.is_dir() else set()) == before


def test_bench_without_the_benchmarks_package_is_one_line(monkeypatch, capsys):
    # pyproject packages cobra* only: an installed cobra has no benchmarks/ (issue 22)
    import sys

    from cobra.cli import main

    monkeypatch.setitem(sys.modules, "benchmarks", None)
    monkeypatch.setitem(sys.modules, "benchmarks.bench", None)
    assert main(["bench", "--rows", "miou"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the benchmark is not installed") and "\n" not in err
