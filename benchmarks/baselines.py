"""The slow ways the benchmark measures the real code against: the same results, computed the
way a first implementation (or the authors' code) would. tests/test_bench.py checks that each
gives the real code's answer, so a ratio compares equal work. `row` is one line of the
benchmark's table: a figure beside the baseline it is measured against."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cobra.data import normalize_image
from cobra.ops.cams import max_normalize, normalize_attention
from cobra.stages.seed_cams import scale_weight, to_image_size


@torch.no_grad()
def loop_multiscale_cams(model, image: np.ndarray, keys: np.ndarray, scales: list[float],
                         flip: bool, aobj_weighting: str = "normalized",
                         affinity: bool = True) -> dict[str, np.ndarray]:
    """`multiscale_cams` with one forward pass per scale and per flip (batch of one), each the
    training forward (every layer's T × T attention, as the authors' seed pass keeps it) unless
    `affinity=False` asks for the seed pass's class-row forward."""
    device = next(model.parameters()).device
    h, w = image.shape[:2]
    base = normalize_image(image).to(device)[None]
    sums: dict[str, torch.Tensor] = {}
    for scale in scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(base, size=size, mode="bilinear", align_corners=False)
        nh, nw = model.patch_grid(*size)
        padded = (nh * model.patch_size, nw * model.patch_size)
        for flipped in (False, True) if flip else (False,):
            out = model(x.flip(-1) if flipped else x, affinity=affinity)
            maps = {}
            if out.cam_cnn is not None:
                maps["cam_cnn"] = F.relu(out.cam_cnn[:, keys])
            if out.cam_vit is not None:
                a = scale_weight(out.a_obj, aobj_weighting)
                maps["cam_tran"] = F.relu(out.cam_vit[:, keys] * a[:, None])
                maps["a_obj"] = a[:, None]
            for name, m in maps.items():
                if m.shape[1] == 0:  # no foreground class: nothing to resize
                    sums[name] = m.new_zeros((0, h, w))
                    continue
                m = to_image_size(m, padded, size, (h, w))[0]
                sums[name] = sums.get(name, 0) + (m.flip(-1) if flipped else m)
    result = {}
    for name, total in sums.items():
        arr = total.float().cpu().numpy()
        result[name] = (normalize_attention(arr[0]) if name == "a_obj"
                        else max_normalize(arr)).astype(np.float32)
    return result


def loop_info_nce(z: torch.Tensor, pos_idx: torch.Tensor, neg_idx: torch.Tensor,
                  tau: float) -> torch.Tensor:
    """`losses.info_nce` one anchor at a time, in the authors' style (a Python loop over the
    batch and the patches, torch ops per anchor)."""
    b_count, m, _ = z.shape
    total = z.new_zeros(())
    for b in range(b_count):
        for i in range(m):
            anchor = z[b, i]
            pos = z[b, pos_idx[b, i]] @ anchor / tau  # (Kp,)
            neg = torch.logsumexp(z[b, neg_idx[b, i]] @ anchor / tau, dim=0)
            total = total + (torch.logaddexp(pos, neg) - pos).mean()
    return total / (b_count * m)


def bincount_confusion(preds: list[np.ndarray], gts: list[np.ndarray], k: int) -> np.ndarray:
    """The floor for `metrics.confusion_matrix` over a set: one bare bincount per image."""
    total = np.zeros(k * k, np.int64)
    for pred, gt in zip(preds, gts, strict=True):
        keep = gt != 255
        total += np.bincount(gt[keep].astype(np.int64) * k + pred[keep], minlength=k * k)
    return total.reshape(k, k)


def row(name: str, value: float, unit: str, baseline: float | None = None,
        ratio: float | None = None, target: str = "", met: bool | None = None, **extra) -> dict:
    return {"row": name, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio,
            "target": target, "met": met, **extra}
