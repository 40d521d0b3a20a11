"""Seed making: how each scale's pass enters the multi-scale sum (`seeds.aobj_weighting`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cobra.models.output import CoBraOutput
from cobra.stages.seed_cams import multiscale_cams

LAYERS = 12  # A_obj sums one class-token row (≤ 1 in total) per layer


class HalvesViT(torch.nn.Module):
    """A ViT-only stand-in: the small pass (≤ 64 px wide) lights the left half of class 1's CAM,
    any larger pass the right half; A_obj is flat at its mean LAYERS / tokens, so its raw scale
    falls with the token count as a real ViT's does."""

    patch_size = 16

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the device

    def patch_grid(self, h: int, w: int) -> tuple[int, int]:
        return -(-h // self.patch_size), -(-w // self.patch_size)

    def forward(self, x: torch.Tensor, affinity: bool = True) -> CoBraOutput:
        b, (nh, nw) = x.shape[0], self.patch_grid(*x.shape[-2:])
        cam = torch.zeros(b, 2, nh, nw)
        if x.shape[-1] <= 64:
            cam[:, 1, :, : nw // 2] = 1.0
        else:
            cam[:, 1, :, nw // 2 :] = 1.0
        a_obj = torch.full((b, nh, nw), LAYERS / (nh * nw))
        return CoBraOutput(
            logits_cnn=None,
            logits_vit=None,
            cam_cnn=None,
            cam_vit=cam,
            proj_cnn=None,
            proj_vit=None,
            attention=None,
            affinity=None,
            a_obj=a_obj,
        )


@pytest.mark.parametrize(("weighting", "small_over_large"), [("normalized", 1.0), ("raw", 64 / 16)])
def test_per_scale_weights_of_the_seed_sum(weighting, small_over_large):
    # scale 1.0 → 4×4 = 16 tokens (A_obj 0.75), scale 2.0 → 8×8 = 64 tokens (A_obj 0.1875):
    # raw A_obj weighs the small pass 64/16 = 4× the large one, normalised A_obj weighs both 1×
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    cams = multiscale_cams(
        HalvesViT(), image, np.array([1]), [1.0, 2.0], flip=False, aobj_weighting=weighting
    )
    # far from the middle, where the halves' upsampled edges overlap, one pass holds alone
    left, right = cams["cam_tran"][0, 32, 4], cams["cam_tran"][0, 32, 59]
    assert left / right == pytest.approx(small_over_large, rel=1e-4)


def test_unknown_weighting_is_rejected():
    with pytest.raises(ValueError, match="weighting"):
        multiscale_cams(
            HalvesViT(),
            np.zeros((32, 32, 3), np.uint8),
            np.array([1]),
            [1.0],
            flip=False,
            aobj_weighting="log",
        )


def test_aobj_weighting_follows_fidelity_unless_set():
    from cobra.config import load_config, switch

    assert switch(load_config(None, []), "seeds.aobj_weighting") == "normalized"
    assert switch(load_config(None, ["loss.fidelity=code"]), "seeds.aobj_weighting") == "raw"
    set_alone = load_config(None, ["loss.fidelity=code", "seeds.aobj_weighting=normalized"])
    assert switch(set_alone, "seeds.aobj_weighting") == "normalized"


def test_batched_seeds_equal_one_image_and_one_pass_at_a_time():
    import torch

    from benchmarks.baselines import loop_multiscale_cams
    from cobra.config import load_config
    from cobra.models import build_model
    from cobra.stages.seed_cams import multiscale_cams_batch, size_groups
    from tests.conftest import TINY_OVERRIDES

    torch.manual_seed(0)
    model = build_model(load_config(None, TINY_OVERRIDES).model, num_classes=5).eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (37, 50, 3), dtype=np.uint8) for _ in range(3)]
    keys = [np.array([1, 3]), np.array([2]), np.array([], dtype=np.int64)]
    scales = [0.5, 1.0, 1.5]
    batched = multiscale_cams_batch(model, images, keys, scales, flip=True)
    for image, image_keys, got in zip(images, keys, batched, strict=True):
        want = loop_multiscale_cams(model, image, image_keys, scales, flip=True)
        assert set(got) == set(want) == {"cam_cnn", "cam_tran", "a_obj"}
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-4)
    groups = size_groups(["a", "b", "c", "d"], [(2, 3), (3, 2), (2, 3), (2, 3)], batch=2)
    assert sorted(groups) == [["a", "c"], ["b"], ["d"]]


class SpikyViT(HalvesViT):
    """HalvesViT whose class token attends to one corner patch only (a sink)."""

    def forward(self, x: torch.Tensor, affinity: bool = True) -> CoBraOutput:
        out = super().forward(x, affinity)
        out.cam_vit[:, 1] = 1.0
        out.a_obj.zero_()
        out.a_obj[:, 0, 0] = 1.0
        return out


def test_unweighted_tran_keeps_the_cam_where_a_sink_holds_all_of_a_obj():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    weighted, unweighted = (
        multiscale_cams(SpikyViT(), image, np.array([1]), [1.0], flip=False, aobj_weighting=w)
        for w in ("normalized", "none"))
    assert weighted["cam_tran"][0, 60, 60] == 0.0  # far from the sink, A_obj zeroes M_tran
    np.testing.assert_allclose(unweighted["cam_tran"][0], 1.0, rtol=1e-4)  # the CAM, everywhere
    np.testing.assert_allclose(unweighted["a_obj"], weighted["a_obj"])  # still there for θ
