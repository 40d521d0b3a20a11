"""The seed stage's CAM maths: multi-scale + flip CAMs of both branches for a batch of images of
one size (SPEC "Seeds"). Every scale and its flip go through the trained model; CAMs of the
image's positive classes are ReLU'd, upsampled to image size and summed; M_tran is taken as
ReLU(M_tran ⊗ A_obj); each class map is max-normalised."""

import numpy as np
import torch
import torch.nn.functional as F

from cobra.data import normalize_image
from cobra.models.cobra import CoBra
from cobra.ops.cams import max_normalize, normalize_attention


def to_image_size(maps: torch.Tensor, padded: tuple[int, int], scaled: tuple[int, int],
                   out: tuple[int, int]) -> torch.Tensor:
    """(B, K, Nh, Nw) grid maps → (B, K, H, W): the grid covers the padded input, so upsample to
    the padded size, crop the real (scaled) image, then resize to the original size."""
    maps = F.interpolate(maps, size=padded, mode="bilinear", align_corners=False)
    maps = maps[..., : scaled[0], : scaled[1]]
    return F.interpolate(maps, size=out, mode="bilinear", align_corners=False)


def scale_weight(a_obj: torch.Tensor, weighting: str) -> torch.Tensor:
    """(B, N_h, N_w) A_obj of one forward pass → the weight M_tran is multiplied by.

    A_obj's raw mean falls like 1/tokens (each layer's class-token row sums to at most 1), so
    `raw` (the authors) lets small scales dominate the sum over scales; `normalized` divides
    each pass by its own maximum so that every scale counts alike; `none` keeps that A_obj for
    the percentile protocol but leaves M_tran unweighted."""
    if weighting == "raw":
        return a_obj
    if weighting in ("normalized", "none"):
        return a_obj / a_obj.flatten(1).amax(1).clamp_min(1e-8)[:, None, None]
    raise ValueError(f"aobj weighting must be 'normalized', 'raw' or 'none', got '{weighting}'")


@torch.no_grad()
def multiscale_cams(model: CoBra, image: np.ndarray, keys: np.ndarray, scales: list[float],
                    flip: bool, aobj_weighting: str = "normalized") -> dict[str, np.ndarray]:
    """CAMs of classes `keys` (1..C) for one (H, W, 3) uint8 image, summed over scales and flips.

    Returns float32 arrays: `cam_cnn`/`cam_tran` (K, H, W) max-normalised to [0, 1] (absent when
    the branch is off) and `a_obj` (H, W) normalised to [0, 1] (ViT only). `aobj_weighting`
    (`seeds.aobj_weighting`) says how each pass's A_obj enters both sums."""
    return multiscale_cams_batch(model, [image], [keys], scales, flip, aobj_weighting)[0]


@torch.no_grad()
def multiscale_cams_batch(model: CoBra, images: list[np.ndarray], keys: list[np.ndarray],
                          scales: list[float], flip: bool, aobj_weighting: str = "normalized"
                          ) -> list[dict[str, np.ndarray]]:
    """`multiscale_cams` of several images of one size at once: per scale, every image and its
    flip go through the network as one batch (the model is in eval mode, so an image's CAMs do
    not depend on its batch mates; tests/test_seeds.py checks it)."""
    device = next(model.parameters()).device
    h, w = images[0].shape[:2]
    if any(image.shape[:2] != (h, w) for image in images):
        raise ValueError("multiscale_cams_batch needs images of one size; group them by size")
    base = torch.stack([normalize_image(image) for image in images]).to(device)  # (N, 3, H, W)
    views = 2 if flip else 1
    sums: list[dict[str, torch.Tensor]] = [{} for _ in images]
    for scale in scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(base, size=size, mode="bilinear", align_corners=False)
        if flip:  # (N·2, 3, h, w): each image followed by its flip
            x = torch.stack([x, x.flip(-1)], dim=1).flatten(0, 1)
        out = model(x, affinity=False)  # A_obj needs only the class token's attention row
        nh, nw = model.patch_grid(*size)
        padded = (nh * model.patch_size, nw * model.patch_size)
        weight = scale_weight(out.a_obj, aobj_weighting) if out.cam_vit is not None else None
        for i, image_keys in enumerate(keys):
            views_of_i = slice(i * views, (i + 1) * views)
            maps: dict[str, torch.Tensor] = {}
            if out.cam_cnn is not None:
                maps["cam_cnn"] = F.relu(out.cam_cnn[views_of_i][:, image_keys])
            if weight is not None:
                a = weight[views_of_i]
                tran = out.cam_vit[views_of_i][:, image_keys]
                maps["cam_tran"] = F.relu(tran if aobj_weighting == "none" else tran * a[:, None])
                maps["a_obj"] = a[:, None]
            _accumulate(sums[i], maps, padded, size, (h, w), flip)
    return [_normalised(total) for total in sums]


def _accumulate(sums: dict[str, torch.Tensor], maps: dict[str, torch.Tensor],
                padded: tuple[int, int], size: tuple[int, int], out: tuple[int, int],
                flip: bool) -> None:
    """Add one scale's (views, K, Nh, Nw) maps of one image, brought to image size, to `sums`."""
    for name, m in maps.items():
        if m.shape[1] == 0:
            # an image with no foreground class: no maps to resize (interpolate refuses an
            # empty tensor); its seed is all background and is still scored
            sums[name] = m.new_zeros((0, *out))
            continue
        m = to_image_size(m, padded, size, out)
        if flip:
            m = m[:1] + m[1:].flip(-1)
        sums[name] = sums.get(name, 0) + m[0]


def _normalised(sums: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    result = {}
    for name, total in sums.items():
        arr = total.float().cpu().numpy()
        if name == "a_obj":
            result[name] = normalize_attention(arr[0]).astype(np.float32)
        else:
            result[name] = max_normalize(arr).astype(np.float32)
    return result


def size_groups(ids: list[str], sizes: list[tuple[int, int]], batch: int) -> list[list[str]]:
    """Image ids in batches of at most `batch` images of one size (VOC has few distinct sizes,
    so most batches are full)."""
    by_size: dict[tuple[int, int], list[str]] = {}
    for image_id, size in zip(ids, sizes, strict=True):
        by_size.setdefault(size, []).append(image_id)
    return [group[i:i + batch] for group in by_size.values()
            for i in range(0, len(group), batch)]
