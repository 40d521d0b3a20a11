"""The mechanism diagnostics against hand-computed examples on tiny grids, and the warning for
projection losses that never switch on."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cobra import diagnostics as diag
from cobra.config import LossConfig, load_config
from cobra.objective import projections_never_start
from cobra.sweep.spec import load_sweep
from tests.conftest import TINY_OVERRIDES, run_cli, set_args


def test_patch_majority_labels_take_the_most_common_known_class():
    # a 4x4 mask on a 2x2 grid: each patch is 2x2 pixels
    mask = torch.tensor([[[1, 1, 2, 2],
                          [1, 0, 2, 255],
                          [255, 255, 0, 3],
                          [255, 255, 3, 3]]])
    labels = diag.patch_majority_labels(mask, (2, 2))
    # patch 0: 1,1,1,0 → 1; patch 1: 2,2,2 (ignore left out) → 2; patch 2: all ignore → unknown;
    # patch 3: 0,3,3,3 → 3
    assert labels.tolist() == [[1, 2, diag.UNKNOWN, 3]]


def test_selection_precision_of_a_selection_known_by_construction():
    labels = torch.tensor([[1, 1, 2, 0, diag.UNKNOWN]])
    # anchor 0 (class 1): positives 1 (same), 2 (other) → 1/2; negatives 3 (other), 4 (unknown)
    # anchor 1 (class 1): positives 0, 1 (both same) → 2/2; negatives 2, 3 (both other)
    # anchor 2 (class 2): positives 2, 3 → 1/2;            negatives 0, 2 → 1/2
    # anchor 3 (class 0): positives 3, 4 → 1/1 (unknown partner not counted); negatives 0, 1
    # anchor 4 (unknown): not an anchor
    pos = torch.tensor([[[1, 2], [0, 1], [2, 3], [3, 4], [0, 1]]])
    neg = torch.tensor([[[3, 4], [2, 3], [0, 2], [0, 1], [2, 3]]])
    pos_p, neg_p = diag.selection_precision(pos, neg, labels)
    assert pos_p == pytest.approx((1 + 2 + 1 + 1) / (2 + 2 + 2 + 1))
    assert neg_p == pytest.approx((1 + 2 + 1 + 2) / (1 + 2 + 2 + 2))
    # object anchors only (class > 0): anchors 0, 1, 2
    pos_fg, neg_fg = diag.selection_precision(pos, neg, labels, anchors=labels > 0)
    assert pos_fg == pytest.approx(4 / 6) and neg_fg == pytest.approx(4 / 5)


def test_selection_metrics_score_the_losses_own_selection():
    """A ViT affinity that links exactly the patches of one object: L_cap's positives are all
    precise, whatever k± (up to the object's size)."""
    labels_grid = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 0]])  # 3x3 patches, object = class 1
    flat = labels_grid.flatten()
    affinity = (flat[:, None] == flat[None, :]).float()[None] + 0.01 * torch.rand(1, 9, 9)
    mask = labels_grid.repeat_interleave(2, 0).repeat_interleave(2, 1)[None]  # 6x6 px
    cam = torch.zeros(1, 2, 3, 3)
    cam[0, 1] = (labels_grid == 1).float()  # the CNN's CAM marks the object
    out = _output(cam_cnn=cam, affinity=affinity, proj_vit=torch.zeros(1, 9, 4))
    cfg = LossConfig(k_cap_pos=3, k_cap_neg=4, k_sap_pos=3, k_sap_neg=4)
    got = diag.selection_metrics(out, torch.tensor([[1.0]]), mask, cfg)
    assert got["cap_pos_precision"] == 1.0 and got["cap_neg_precision"] == 1.0
    assert got["cap_pos_precision_fg"] == 1.0 and got["sap_pos_precision_fg"] == 1.0
    assert got["sap_neg_precision_fg"] == 1.0  # negatives of an object anchor: the 4 lowest


def test_a_term_that_cannot_reach_a_branch_has_zero_gradient_there():
    feats_cnn = torch.randn(2, 3, 4, 4, requires_grad=True)
    feats_vit = torch.randn(2, 5, 4, 4, requires_grad=True)
    weighted = {
        "cls": 0.5 * (feats_cnn**2).sum() + 0.5 * (feats_vit**2).sum(),  # ∂/∂F = F
        "cap": 3.0 * feats_cnn.sum(),  # reaches the CNN only: ∂/∂F = 3 everywhere
        "off": torch.zeros(()),  # a term switched off
    }
    norms = diag.term_gradient_norms(weighted, {"cnn": feats_cnn, "vit": feats_vit})
    assert norms["grad_cnn_cls"].item() == pytest.approx(feats_cnn.norm().item(), rel=1e-6)
    assert norms["grad_vit_cls"].item() == pytest.approx(feats_vit.norm().item(), rel=1e-6)
    assert norms["grad_cnn_cap"].item() == pytest.approx(3.0 * math.sqrt(2 * 3 * 4 * 4))
    assert norms["grad_vit_cap"].item() == 0.0
    assert norms["grad_cnn_off"].item() == 0.0 and norms["grad_vit_off"].item() == 0.0
    ratios = diag.gradient_ratios({k: v.item() for k, v in norms.items()})
    assert ratios["ratio_cnn_cap"] == pytest.approx(3.0 * math.sqrt(96) / feats_cnn.norm().item())
    assert ratios["ratio_vit_cap"] == 0.0


def test_the_one_way_losses_reach_only_the_branch_they_teach():
    """In CoBra itself: L_cap's gradient on the ViT's features is zero (the affinity is
    detached), as is L_sap's on the CNN's (the CAM is detached); both reach their own branch."""
    from cobra.models import build_model
    from cobra.objective import compute_losses

    cfg = load_config(None, TINY_OVERRIDES)
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=8).train()
    out = model(torch.randn(2, 3, 64, 64))
    labels = torch.tensor([[1.0, 0, 0, 1, 0, 0, 0, 0], [0, 1.0, 0, 0, 0, 0, 0, 0]])
    terms = compute_losses(out, labels, cfg.loss, epoch=0, input_size=(64, 64))
    norms = diag.term_gradient_norms(terms.weighted(cfg.loss),
                                     {"cnn": out.features_cnn, "vit": out.features_vit})
    assert norms["grad_vit_cap"].item() == 0.0 and norms["grad_cnn_sap"].item() == 0.0
    assert norms["grad_cnn_cap"].item() > 0 and norms["grad_vit_sap"].item() > 0


def test_coverage_and_leakage_of_a_constructed_cam():
    # 1 image, 1 foreground class, a 4x4 map at input size (no upsampling)
    mask = torch.tensor([[[1, 1, 0, 0],
                          [1, 1, 0, 0],
                          [0, 0, 0, 0],
                          [0, 0, 0, 255]]])
    cam = torch.zeros(1, 2, 4, 4)
    cam[0, 1, 0, :3] = 1.0  # covers object pixels (0,0), (0,1) and background (0,2)
    cam[0, 1, 3, 3] = 1.0  # an ignore pixel: counts nowhere
    coverage, leakage = diag.coverage_and_leakage(cam, torch.tensor([[1.0]]), mask, 0.5)
    assert coverage == pytest.approx(2 / 4) and leakage == pytest.approx(1 / 3)
    # a class absent from the image's labels is not counted as activation
    coverage, leakage = diag.coverage_and_leakage(cam, torch.tensor([[0.0]]), mask, 0.5)
    assert coverage == 0.0 and math.isnan(leakage)


def test_projections_that_never_start_are_named():
    cfg = LossConfig(proj_start_epoch=5)
    warning = projections_never_start(cfg, epochs=5, both_branches=True)
    assert "loss.proj_start_epoch=5" in warning and "train.epochs=5" in warning
    assert projections_never_start(cfg, epochs=6, both_branches=True) is None
    assert projections_never_start(cfg, epochs=2, both_branches=False) is None
    off = LossConfig(proj_start_epoch=5, use_cap=False, use_sap=False)
    assert projections_never_start(off, epochs=2, both_branches=True) is None


def test_a_sweep_whose_projections_never_start_says_so(tmp_path: Path):
    path = tmp_path / "s.yaml"
    path.write_text("overrides: {train.epochs: 2}\nspace:\n  loss.k_cap_pos: [2, 4]\n"
                    "  loss.proj_start_epoch: [0, 2]\n")
    assert "loss.proj_start_epoch=2" in load_sweep(path).projection_warning()
    path.write_text("overrides: {train.epochs: 2}\nspace:\n  loss.proj_start_epoch: [0, 1]\n")
    assert load_sweep(path).projection_warning() is None


def test_train_warns_when_the_projections_never_start(tiny_overrides, capsys):
    code, result, err = run_cli(["train", "--no-seeds", *set_args(
        [*tiny_overrides, "loss.proj_start_epoch=1", "train.diagnostics=false"])], capsys)
    assert code == 0 and result is not None
    assert "warning: loss.proj_start_epoch=1 but train.epochs=1" in err


def test_diagnostics_do_not_change_what_is_trained(tiny_overrides, tmp_path):
    """Training with the diagnostics on gives the same weights, bit for bit, as with them off,
    and logs every diag/* metric each epoch."""
    from cobra.checkpoint import load_checkpoint
    from cobra.layout import new_run
    from cobra.reporting import Reporter
    from cobra.stages import train

    class Keep(Reporter):
        def __init__(self):
            self.epochs = []

        def log_epoch(self, epoch, metrics, checkpoint=None):
            self.epochs.append(dict(metrics))

    weights, logged = [], []
    for on in (True, False):
        cfg = load_config(None, [*tiny_overrides, f"train.diagnostics={str(on).lower()}",
                                 "train.diag_grad_every=1", f"run.dir={tmp_path / str(on)}"])
        layout = new_run(cfg.run.dir, None)
        reporter = Keep()
        train.run(cfg, layout, reporter)
        weights.append(load_checkpoint(layout.last_checkpoint)["model"])
        logged.append(reporter.epochs[-1])
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    names = {k for k in logged[0] if k.startswith("diag/")}
    assert {"diag/ratio_cnn_cap", "diag/ratio_vit_sap", "diag/cap_pos_precision_fg",
            "diag/sap_neg_precision", "diag/coverage_vit", "diag/leakage_cnn"} <= names
    assert not any(k.startswith("diag/") for k in logged[1])


def _output(**fields) -> diag.CoBraOutput:
    base = dict.fromkeys(("logits_cnn", "logits_vit", "cam_cnn", "cam_vit", "proj_cnn",
                          "proj_vit", "attention", "affinity", "a_obj"))
    return diag.CoBraOutput(**{**base, **fields})
