"""The training loop's loss meter: device-side sums that equal the per-step `.item()` sums, and
the first non-finite step found without reading the loss every step."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from cobra.errors import NonFiniteLossError
from cobra.runtime import EpochInfo, LossMeter, PolyLR, poly_lr, train_one_epoch


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
    got = meter.means()
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
    assert meter.means() == {}


def _batches(n: int) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    return [{"x": torch.randn(4, 3, generator=gen), "y": torch.randn(4, 1, generator=gen)}
            for _ in range(n)]


def test_one_epoch_is_the_plain_loop_it_replaces():
    """Same weights, lrs and mean loss as the loop each trainer wrote out before: lr set from
    the poly schedule, forward, backward, step, loss summed with .item(); skipped batches
    advance the schedule and are not averaged."""
    batches = _batches(7)
    skip = {2}

    def run(shared: bool) -> tuple[torch.Tensor, float, float]:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        if shared:
            def loss_fn(batch):
                if batch is batches[2]:
                    return None
                loss = torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])
                return loss, {"l": loss}
            info = EpochInfo(1, 7, "loss", "hint", "test")
            out = train_one_epoch(batches, loss_fn, opt, PolyLR(opt, 14, 0.9, 3),
                                  torch.device("cpu"), info)
            mean = out["l"]
        else:
            total, count = 0.0, 0
            for step, batch in enumerate(batches):
                opt.param_groups[0]["lr"] = poly_lr(0.1, 7 + step, 14, 0.9, 3)
                if step in skip:
                    continue
                loss = torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, count = total + loss.item(), count + 1
            mean = total / count
        return model.weight.detach().clone(), mean, opt.param_groups[0]["lr"]

    (w_new, mean_new, lr_new), (w_old, mean_old, lr_old) = run(True), run(False)
    assert torch.equal(w_new, w_old) and mean_new == mean_old and lr_new == lr_old


def test_a_diverging_epoch_raises_before_it_returns():
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e30)

    def loss_fn(batch):
        loss = model(batch["x"]).pow(2).mean() * 1e30
        return loss, {"loss": loss}

    info = EpochInfo(0, 0, "test loss", "lower the lr", "test")
    with pytest.raises(NonFiniteLossError, match="non-finite test loss at epoch 0 step"):
        train_one_epoch(_batches(5), loss_fn, opt, PolyLR(opt, 5, 0.9),
                        torch.device("cpu"), info)


def test_poly_lr_schedule_is_the_closed_form_and_resumes_from_its_state():
    """PolyLR gives every group poly_lr of its own base lr at each step, to the last bit, and a
    schedule loaded from a saved state (the checkpoint's) goes on with the same sequence."""
    def made() -> tuple[torch.optim.Optimizer, PolyLR]:
        params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
        opt = torch.optim.SGD([{"params": params[:1], "lr": 0.1},
                               {"params": params[1:], "lr": 1.0}])
        return opt, PolyLR(opt, 23, 0.9, warmup=5)

    opt, schedule = made()
    seen, saved = [], None
    for step in range(30):
        if step:
            schedule.step()
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        if step == 11:
            saved = copy.deepcopy(schedule.state_dict())
    assert seen == [[poly_lr(b, s, 23, 0.9, 5) for b in (0.1, 1.0)] for s in range(30)]
    opt, resumed = made()
    resumed.load_state_dict(saved)
    for step in range(12, 30):
        resumed.step()
        assert [g["lr"] for g in opt.param_groups] == seen[step]
