"""Sweep files: every shipped one validates, grids expand as the paper's tables, names read well."""

from __future__ import annotations

from pathlib import Path

import pytest

from cobra.sweep.spec import grid_points, load_sweep, trial_name

SWEEPS = sorted((Path(__file__).resolve().parent.parent / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_shipped_sweeps_validate(path):
    spec = load_sweep(path)
    assert spec.name == path.stem and spec.space
    if spec.algorithm == "grid":
        assert spec.num_trials == len(grid_points(spec))


def test_table_4_grid_is_the_papers():
    spec = load_sweep(SWEEPS[0].parent / "k_ablation.yaml")
    points = grid_points(spec)
    assert len(points) == 16
    assert {p["loss.k_sap_neg"] for p in points} == {5, 10, 15, 20}
    assert spec.base.loss.k_sap_pos == spec.base.loss.k_cap_neg == 20


def test_trial_names_are_short_and_readable():
    assert trial_name({"loss.k_sap_neg": 5, "loss.k_cap_pos": 20}) == "ksap-=5_kcap+=20"
    assert trial_name({"loss.lambda_cam": 0.123456}) == "l1=0.123"
