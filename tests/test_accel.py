"""The GPU fast paths, checked on CPU: bf16 autocast and channels_last give the plain path's
losses (and gradients) within tolerance."""

from __future__ import annotations

import pytest
import torch

from cobra import accel, losses
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


# bf16 keeps 8 significant bits: each rounding is off by at most u = 2⁻⁸ relative.
BF16_U = 2.0**-8


@pytest.fixture(scope="module")
def peaked(setup):
    """The tiny model with its ViT's query/key weights scaled 8×, so each attention row is peaked
    as a trained ViT's is. A random-init ViT attends almost uniformly: its patch affinities differ
    by less than bf16 can resolve, and the top-k selections of L_cap among those near-ties are
    arbitrary in any precision, which no tolerance on the loss can follow."""
    cfg, _, images, labels = setup
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=20).train()
    with torch.no_grad():
        for block in model.vit.backbone.blocks:
            qk_rows = 2 * block.attn.qkv.weight.shape[1]
            block.attn.qkv.weight[:qk_rows] *= 8.0
    return cfg, model, images, labels


@pytest.mark.parametrize("native_bf16", [True, False], ids=["onednn", "reference-kernels"])
def test_bf16_autocast_gives_the_same_losses_within_bf16_precision(peaked, native_bf16):
    """Both CPU paths: oneDNN's kernels (native bf16 where the CPU has AVX512-BF16 or AMX) and
    PyTorch's reference kernels (oneDNN off)."""
    cfg, model, images, labels = peaked
    plain, grad = tiny_step(model, images, labels, cfg)
    with torch.backends.mkldnn.flags(enabled=native_bf16):
        fast, grad_bf16 = tiny_step(model, images, labels, cfg, amp="bf16")
    # The losses run in fp32 (losses.full_precision), so only their inputs carry bf16 rounding.
    # A similarity of two rounded unit vectors is off by at most 2u, a logit s/τ by 2u/τ, and
    # −log softmax moves by at most twice its largest logit change: 4u/τ for L_cap and L_sap.
    # The other terms see the network's rounding through a few layers: 8u relative.
    contrastive = 4 * BF16_U / cfg.loss.tau
    for key, value in plain.items():
        if key in ("loss_cap", "loss_sap"):
            assert fast[key] == pytest.approx(value, abs=contrastive), key
        elif key != "loss":
            assert fast[key] == pytest.approx(value, rel=8 * BF16_U, abs=1e-4), key
    lambda_proj = cfg.loss.lambda_proj
    assert fast["loss"] == pytest.approx(plain["loss"], abs=2 * lambda_proj * contrastive
                                         + 8 * BF16_U * plain["loss"])
    # the step goes the same way (deep random-init layers amplify bf16 noise, so no allclose)
    cosine = torch.nn.functional.cosine_similarity(grad.flatten(), grad_bf16.flatten(), dim=0)
    assert cosine > 0.95


def test_losses_add_no_rounding_of_their_own_under_autocast():
    """The same bf16 inputs give the same loss under autocast as outside it: the contrastive
    logits, their log-sum-exp and the CAM differences are computed in fp32."""
    torch.manual_seed(1)
    z = torch.nn.functional.normalize(torch.randn(2, 36, 16), dim=2).bfloat16()
    affinity = torch.rand(2, 36, 36).bfloat16()
    cams = torch.randn(2, 2, 5, 6, 6).bfloat16()
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    expected = (losses.cap_loss(z, affinity, 3, 9, 0.1),
                losses.sap_loss(z, cams[0], labels, 9, 3, 0.1),
                losses.cam_consistency_loss(cams[0], cams[1], labels, (24, 24)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = (losses.cap_loss(z, affinity, 3, 9, 0.1),
               losses.sap_loss(z, cams[0], labels, 9, 3, 0.1),
               losses.cam_consistency_loss(cams[0], cams[1], labels, (24, 24)))
    for value, reference in zip(got, expected, strict=True):
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, reference, rtol=1e-6, atol=1e-6)


def test_fast_paths_are_off_on_cpu_by_default(setup):
    cfg, model, _, _ = setup
    assert cfg.train.amp == "none" and cfg.train.channels_last is None
    assert not accel.use_channels_last(model, CPU, cfg.train.channels_last)
    assert accel.loader_options(CPU) == {"pin_memory": False}


@pytest.mark.parametrize("avx512_bf16, amx, warned", [(False, False, True), (True, False, False),
                                                      (False, True, False)])
def test_bf16_on_a_cpu_that_emulates_it_is_warned_about(monkeypatch, avx512_bf16, amx, warned):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    warning = accel.slow_amp_warning("bf16", CPU)
    assert (warning is not None) == warned
    if warned:
        assert "train.amp=none" in warning
    assert accel.slow_amp_warning("none", CPU) is None
    assert accel.slow_amp_warning("bf16", torch.device("cuda")) is None
