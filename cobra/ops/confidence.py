"""Inter-pixel-relation (IR) labels (SPEC "Masks", IRN's `cam_to_ir_label`).

Two background scores split each image's class maps into confident foreground (class ids),
confident background (0) and unknown (255); both hard maps are refined by denseCRF first.
`aobj_thresholds` gives the authors' per-image scores derived from A_obj (paper §9.1)."""

import math
from typing import Any

import numpy as np

from cobra.ops.crf import crf_label

UNKNOWN = 255


def _conf_map(image: np.ndarray, cam: np.ndarray, id_map: np.ndarray, score: float,
              crf: dict[str, Any]) -> np.ndarray:
    """(K, H, W) maps + a background score → (H, W) class ids after a CRF over K+1 labels."""
    padded = np.concatenate([np.full((1, *cam.shape[1:]), score, dtype=cam.dtype), cam])
    # argmax picks the first maximum, so a map equal to the score counts as background (IRN).
    return id_map[crf_label(image, padded.argmax(axis=0), cam.shape[0] + 1, **crf)]


def ir_label(image: np.ndarray, cam: np.ndarray, keys: np.ndarray, conf_fg: float,
             conf_bg: float, crf: dict[str, Any] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 image + (K, H, W) maps in [0, 1] + (K,) ids 1..C → (H, W) uint8 IR label.

    Confident foreground (a map beats `conf_fg` after CRF) keeps its class id, confident
    background (no map beats `conf_bg` after CRF, so background under both scores) is 0, the rest
    is 255. `crf` holds keyword arguments for `crf_label` (gt_prob, iters, gauss_sxy, ...)."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 3:
        raise ValueError(f"cam must be (K, H, W), got shape {cam.shape}")
    if conf_bg > conf_fg:
        raise ValueError(f"conf_bg ({conf_bg}) must not exceed conf_fg ({conf_fg})")
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if keys.shape[0] != cam.shape[0]:
        raise ValueError(f"{keys.shape[0]} keys for {cam.shape[0]} class maps")
    crf = dict(crf or {})
    id_map = np.concatenate([[0], keys])
    fg = _conf_map(image, cam, id_map, conf_fg, crf)
    bg = _conf_map(image, cam, id_map, conf_bg, crf)
    out = fg.copy()
    out[fg == 0] = UNKNOWN
    # Confident background needs both maps to agree: even the low score found no object there.
    out[(fg == 0) & (bg == 0)] = 0
    return out.astype(np.uint8)


def aobj_thresholds(a_obj: np.ndarray, percentile: float, step: float,
                    gap: float) -> tuple[float, float]:
    """(H, W) A_obj in [0, 1] → (conf_fg, conf_bg), the authors' per-image IR-label scores.

    conf_bg is the largest multiple of `step` (authors: 0.05) strictly below the `percentile`-th
    percentile p of A_obj (authors: 93rd): the lower end of the bracket holding p, or the bracket
    below when p sits exactly on a multiple, as their `get_bounds` does. conf_fg = conf_bg + `gap`
    (authors: 0.5). Nothing is clipped, as in their code: p ≥ 0.5 + step gives conf_fg ≥ 1, so
    no class map (max-normalised to < 1) is confident foreground; p = 0 gives conf_bg < 0, so no
    pixel is confident background."""
    if step <= 0:
        raise ValueError(f"step must be positive, got {step}")
    p = float(np.percentile(np.asarray(a_obj, dtype=np.float64), percentile))
    k = round(p / step)
    # a p within float noise of a multiple (0.35 / 0.05 = 6.999...) counts as that multiple
    below = k - 1 if abs(p / step - k) < 1e-9 else math.floor(p / step)
    bg = round(below * step, 10)
    return float(round(bg + gap, 10)), float(bg)


def ir_label_quality(ir: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """(H, W) IR label + (H, W) ground truth → (confident, correct, total) pixel counts.

    Only pixels with gt != 255 count; precision = correct / confident and coverage =
    confident / total, accumulated over a whole set by the caller."""
    ir, gt = np.asarray(ir), np.asarray(gt)
    if ir.shape != gt.shape:
        raise ValueError(f"IR label {ir.shape} and ground truth {gt.shape} differ in size")
    valid = gt != UNKNOWN
    confident = valid & (ir != UNKNOWN)
    correct = confident & (ir.astype(np.int64) == gt.astype(np.int64))
    return int(confident.sum()), int(correct.sum()), int(valid.sum())
