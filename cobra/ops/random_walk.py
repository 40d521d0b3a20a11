"""Random walk over boundary-derived affinities, and masks from its maps (SPEC "Masks", IRN).

Pixels p and q = p + o (0 < |o| < radius) are linked with affinity a = (1 − max B on the
segment p→q)^β, where B is the boundary map (1 = boundary); every pixel also links to itself
with weight 1. Rows are normalised, so the walk x ← T x averages each pixel's neighbours and
leaves a constant field unchanged; 2^exp_times steps equal IRN's repeated squaring of T."""

import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

Offset = tuple[int, int]


def neighbour_offsets(radius: int) -> list[Offset]:
    """All (dy, dx) with 0 < dy² + dx² < radius², both signs (a symmetric neighbourhood)."""
    r = int(radius)
    return [(dy, dx) for dy in range(-r + 1, r) for dx in range(-r + 1, r)
            if 0 < dy * dy + dx * dx < r * r]


def _round_both(num: int, den: int) -> set[int]:
    """Pixels nearest to num/den; both neighbours at an exact half (keeps p→q and q→p equal)."""
    lo = -((-(2 * num - den)) // (2 * den))  # ceil(num/den − 1/2)
    hi = (2 * num + den) // (2 * den)  # floor(num/den + 1/2)
    return {lo, hi}


@lru_cache(maxsize=4096)
def segment_pixels(dy: int, dx: int, samples: int | None = None) -> tuple[Offset, ...]:
    """Pixel displacements on the segment 0 → (dy, dx): `samples` points (default
    max(|dy|, |dx|) + 1, one per row or column crossed), endpoints included."""
    n = samples if samples is not None else max(abs(dy), abs(dx)) + 1
    m = max(int(n) - 1, 1)
    # Exact integer arithmetic so rounding never depends on float noise.
    pts = {(y, x) for k in range(m + 1)
           for y in _round_both(k * dy, m) for x in _round_both(k * dx, m)}
    return tuple(sorted(pts))


def path_max(boundary: torch.Tensor, offsets: Sequence[Offset],
             samples: int | None = None) -> torch.Tensor:
    """(*, H, W) boundary → (*, len(offsets), H, W) max of the boundary on each segment p→p+o.

    A pixel whose target p+o lies outside the image gets 1.0 (no connection). Differentiable:
    with grad enabled the maximum is located without grad and then gathered, so autograd keeps
    one index per output (like max-pooling) instead of every sampled slice."""
    if boundary.dim() < 2:
        raise ValueError(f"boundary must be (*, H, W), got shape {tuple(boundary.shape)}")
    lead, (h, w) = boundary.shape[:-2], boundary.shape[-2:]
    flat = boundary.reshape(-1, h, w)
    nb = flat.shape[0]
    if len(offsets) == 0:
        return boundary.new_zeros(*lead, 0, h, w)
    r = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    # Padding with 1 makes every segment that leaves the image read as a full boundary.
    padded = F.pad(flat, (r, r, r, r), value=1.0)
    wp = w + 2 * r
    track = torch.is_grad_enabled() and boundary.requires_grad
    if track:
        ys = torch.arange(h, device=boundary.device).view(h, 1)
        xs = torch.arange(w, device=boundary.device).view(1, w)
        base = (ys + r) * wp + (xs + r)  # flat index of each pixel inside `padded`
        padded_flat = padded.reshape(nb, -1)
    outs = []
    for dy, dx in offsets:
        pix = segment_pixels(int(dy), int(dx), samples)
        with torch.no_grad():
            stack = torch.stack([padded[:, r + sy:r + sy + h, r + sx:r + sx + w]
                                 for sy, sx in pix])
            if not track:
                outs.append(stack.amax(dim=0))
                continue
            k = stack.argmax(dim=0)  # (nb, h, w) index into `pix`
            shift = torch.tensor([sy * wp + sx for sy, sx in pix], device=boundary.device)
            idx = (base + shift[k]).reshape(nb, -1)
        outs.append(padded_flat.gather(1, idx).view(nb, h, w))
    return torch.stack(outs, dim=1).reshape(*lead, len(offsets), h, w)


def affinity(boundary: torch.Tensor, radius: int,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(H, W) boundary → (rows, cols, values) of the row-stochastic (H·W, H·W) transition T.

    Pixels are indexed row-major (y·W + x). Edges p→p+o carry (1 − path_max)^β, edges leaving
    the image are dropped, each pixel keeps a self-loop of weight 1 (so no row is empty), and
    each row is divided by its sum. The affinities are symmetric, so T = D⁻¹A."""
    h, w = boundary.shape
    n = h * w
    b = boundary.float()
    offsets = neighbour_offsets(radius)
    a = (1.0 - path_max(b, offsets)).clamp_min(0.0).pow(beta)  # (O, H, W)
    ys = torch.arange(h, device=b.device).view(1, h, 1)
    xs = torch.arange(w, device=b.device).view(1, 1, w)
    off = torch.tensor(offsets, device=b.device, dtype=torch.long).view(-1, 2, 1, 1)
    o = len(offsets)
    ty = (ys + off[:, 0]).expand(o, h, w)  # (O, H, W) target rows
    tx = (xs + off[:, 1]).expand(o, h, w)  # (O, H, W) target columns
    inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
    src = (ys * w + xs).expand(o, h, w)
    rows = torch.cat([src[inside], torch.arange(n, device=b.device)])
    cols = torch.cat([(ty * w + tx)[inside], torch.arange(n, device=b.device)])
    vals = torch.cat([a[inside], torch.ones(n, device=b.device)])
    deg = torch.zeros(n, device=b.device).index_add_(0, rows, vals)
    return rows, cols, vals / deg[rows]


def transition_matrix(boundary: torch.Tensor, radius: int, beta: float) -> torch.Tensor:
    """(H, W) boundary → sparse CSR (H·W, H·W) row-stochastic transition T (see `affinity`)."""
    rows, cols, vals = affinity(boundary, radius, beta)
    n = boundary.shape[0] * boundary.shape[1]
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n),
                                  check_invariants=False).coalesce()
    # CSR: ~3× faster than COO for the repeated T @ x on CPU; its "beta" notice is noise here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return coo.to_sparse_csr()


def random_walk(x: torch.Tensor, boundary: torch.Tensor, radius: int, beta: float,
                steps: int, damp_boundary: bool = False) -> torch.Tensor:
    """(K, H, W) maps + (H, W) boundary → (K, H, W) maps after `steps` steps x ← T x.

    `damp_boundary` first multiplies the maps by (1 − boundary), as IRN's `propagate_to_edge`
    does: CAM mass sitting on a boundary is not trusted to belong to either side."""
    k, h, w = x.shape
    if boundary.shape != (h, w):
        raise ValueError(f"boundary {tuple(boundary.shape)} does not match maps {(h, w)}")
    boundary = boundary.to(x.device)
    t = transition_matrix(boundary, radius, beta)
    if damp_boundary:
        x = x * (1.0 - boundary.to(x.dtype))
    v = x.float().reshape(k, h * w).t().contiguous()  # (N, K): one sparse matmul per step
    for _ in range(int(steps)):
        v = t @ v
    return v.t().reshape(k, h, w)


def masks_from_rw(rw: np.ndarray, keys: np.ndarray, bg_score: float) -> np.ndarray:
    """(K, H, W) non-negative walk maps + (K,) ids → (H, W) uint8 mask (IRN sem_seg_bg_thres).

    Maps are divided by their global maximum, a background plane of `bg_score` is put first and
    the argmax (ties to background) is mapped through [0, *keys]."""
    rw = np.asarray(rw, dtype=np.float32)
    if rw.shape[0] == 0:
        return np.zeros(rw.shape[1:], dtype=np.uint8)
    peak = float(rw.max())
    norm = rw / peak if peak > 0 else rw
    padded = np.concatenate([np.full((1, *rw.shape[1:]), bg_score, dtype=np.float32), norm])
    ids = np.concatenate([[0], np.asarray(keys, dtype=np.int64).reshape(-1)])
    return ids[padded.argmax(axis=0)].astype(np.uint8)


def relative_labels(rw: np.ndarray, theta: float) -> np.ndarray:
    """(K, H, W) walk maps → (H, W) int64 index into [background, *classes] (0..K) by the
    authors' relative threshold.

    Reading of `θ·max_c + min_c`: class c claims pixel p where rw_c(p) ≥ θ·max(rw_c) + min(rw_c)
    (max and min over the image, taken literally, not θ·(max − min) + min). Where several
    classes claim p the one with the largest raw rw_c(p) wins (the authors zero unclaimed values
    and take the argmax); unclaimed pixels are background 0."""
    rw = np.asarray(rw, dtype=np.float32)
    if rw.shape[0] == 0:
        return np.zeros(rw.shape[1:], dtype=np.int64)
    flat = rw.reshape(rw.shape[0], -1)
    thr = theta * flat.max(axis=1) + flat.min(axis=1)
    claims = rw >= thr[:, None, None]
    best = np.where(claims, rw, -np.inf).argmax(axis=0)
    return np.where(claims.any(axis=0), best + 1, 0).astype(np.int64)
