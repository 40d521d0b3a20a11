"""The GPU fast paths, checked on CPU: bf16 autocast and channels_last give the plain path's
losses (and gradients) within tolerance."""

from __future__ import annotations

import pytest
import torch

from cobra import accel
from cobra.config import load_config
from cobra.models import build_model
from cobra.objective import compute_losses
from tests.conftest import TINY_OVERRIDES

CPU = torch.device("cpu")


def tiny_step(model, images, labels, cfg, amp: str = "none", nhwc: bool = False):
    """Losses and the CNN CAM head's gradient of one step."""
    model.zero_grad(set_to_none=True)
    x = accel.to_device(images, CPU, nhwc)
    with accel.autocast(CPU, amp):
        out = model(x)
        terms = compute_losses(out, labels, cfg.loss, epoch=0, input_size=tuple(x.shape[-2:]))
    terms.total.backward()
    grad = model.cnn.cam_head.weight.grad.clone()
    return {k: v for k, v in terms.as_floats().items()}, grad


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = load_config(None, TINY_OVERRIDES)
    model = build_model(cfg.model, num_classes=20).train()
    images = torch.randn(4, 3, 64, 64)
    labels = (torch.rand(4, 20) < 0.2).float()
    labels[:, 0] = 1.0
    return cfg, model, images, labels


def test_channels_last_gives_the_same_losses_and_gradients(setup):
    cfg, model, images, labels = setup
    plain, grad = tiny_step(model, images, labels, cfg)
    assert accel.use_channels_last(model, CPU, enabled=True)
    assert model.cnn.cam_head.weight.is_contiguous(memory_format=torch.channels_last)
    fast, grad_nhwc = tiny_step(model, images, labels, cfg, nhwc=True)
    model.cnn.to(memory_format=torch.contiguous_format)
    for key, value in plain.items():
        assert fast[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    torch.testing.assert_close(grad_nhwc, grad, rtol=1e-3, atol=1e-5)


def test_bf16_autocast_gives_the_same_losses_within_bf16_precision(setup):
    cfg, model, images, labels = setup
    plain, grad = tiny_step(model, images, labels, cfg)
    fast, grad_bf16 = tiny_step(model, images, labels, cfg, amp="bf16")
    for key, value in plain.items():
        # bf16 keeps 8 bits of mantissa (~0.4 %); a deep net compounds it to a few percent
        assert fast[key] == pytest.approx(value, rel=5e-2, abs=2e-2), key
    # the step goes the same way (deep random-init layers amplify bf16 noise, so no allclose)
    cosine = torch.nn.functional.cosine_similarity(grad.flatten(), grad_bf16.flatten(), dim=0)
    assert cosine > 0.95


def test_fast_paths_are_off_on_cpu_by_default(setup):
    cfg, model, _, _ = setup
    assert cfg.train.amp == "none" and cfg.train.channels_last is None
    assert not accel.use_channels_last(model, CPU, cfg.train.channels_last)
    assert accel.loader_options(CPU) == {"pin_memory": False}
