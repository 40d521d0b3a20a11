"""The training loop's loss meter: device-side sums that equal the per-step `.item()` sums, and
the first non-finite step found without reading the loss every step."""

from __future__ import annotations

import math

import pytest
import torch

from cobra.errors import NonFiniteLossError
from cobra.runtime import LossMeter


def _terms(values: list[float]) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(v, dtype=torch.float32)
            for name, v in zip(("loss", "loss_cls", "loss_cam"), values, strict=True)}


def test_means_equal_python_sums_of_each_steps_item():
    gen = torch.Generator().manual_seed(0)
    steps = [torch.rand(3, generator=gen).mul(7).tolist() for _ in range(50)]
    meter = LossMeter(torch.device("cpu"))
    expected = {"loss": 0.0, "loss_cls": 0.0, "loss_cam": 0.0}
    for step, values in enumerate(steps):
        terms = _terms(values)
        meter.add(step, terms, terms["loss"])
        for name, value in terms.items():  # what the loop did before: one .item() per term
            expected[name] += value.item()
    meter.check("loss", 0, "hint")  # all finite: nothing raised
    got = meter.means(len(steps))
    assert got == {name: total / len(steps) for name, total in expected.items()}  # exact


def test_the_first_non_finite_step_is_named_with_its_terms():
    meter = LossMeter(torch.device("cpu"))
    for step, values in enumerate([[1.0, 0.5, 0.5], [1.0, 0.5, 0.5], [math.nan, math.nan, 0.5],
                                   [math.inf, 0.5, math.inf]]):
        terms = _terms(values)
        meter.add(step, terms, terms["loss"])
    with pytest.raises(NonFiniteLossError,
                       match=r"non-finite loss at epoch 3 step 2 \(loss, loss_cls, loss_cam\); "
                             r"lower the lr"):
        meter.check("loss", 3, "lower the lr")


def test_an_empty_epoch_has_no_means():
    meter = LossMeter(torch.device("cpu"))
    meter.check("loss", 0, "hint")
    assert meter.means(1) == {}
