"""CoBra's losses (paper Eq. 1–4) as vectorised functions of tensors and scalars.

Shapes: B batch, C foreground classes (index 0 = background in every C+1 tensor), N_h × N_w
patch grid, M = N_h·N_w patches, D projection size. The guiding side of each complementary loss
is detached (one-way knowledge transfer): L_cap learns from the ViT's affinity, L_sap from the
CNN's CAM. The slow references these must match live in tests/test_losses.py."""

import functools
import math
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F

from cobra.errors import ConfigError

_Fn = TypeVar("_Fn", bound=Callable)


def full_precision(fn: _Fn) -> _Fn:
    """Run a loss with autocast off, its bf16/fp16 tensor arguments upcast to fp32.

    Under bf16 autocast (8 bits of mantissa, a relative rounding of up to 2⁻⁹) the contrastive
    logits z·zᵀ/τ would carry that rounding times 1/τ (10× at τ = 0.1) into exp and log-sum-exp,
    and the CAM differences and means over thousands of terms compound it: on CPUs with native
    bf16 L_cap came out 7.7 % off. The network's own bf16 rounding stays in the inputs; the
    losses add none. They are a sliver of the step's FLOPs, so fp32 costs nothing measurable."""

    def upcast(value):  # half-width floats only: fp64 (the tests' references) stays fp64
        if torch.is_tensor(value) and value.is_floating_point() and value.element_size() < 4:
            return value.float()
        return value

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = tuple(upcast(a) for a in args)
        kwargs = {k: upcast(v) for k, v in kwargs.items()}
        device = next(a.device for a in (*args, *kwargs.values()) if torch.is_tensor(a))
        with torch.autocast(device.type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@full_precision
def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss (what both codebases use where the paper says "softmax").

    logits, labels: (B, C)."""
    return F.multilabel_soft_margin_loss(logits, labels)


@full_precision
def cam_consistency_loss(cam_cnn: torch.Tensor, cam_vit: torch.Tensor, labels: torch.Tensor,
                         size: tuple[int, int], form: str = "paper") -> torch.Tensor:
    """L_cam after bilinear upsampling of both maps to the input size.

    `form="paper"`: mean |M_cnn − M_tran| over all C+1 maps plus the same over each image's
    positive classes, `align_corners=False`. `form="code"`: the authors' optimised term, the
    first mean only, upsampled with `align_corners=True` (their positive-class term is computed
    but left out of the loss).

    cam_cnn, cam_vit: (B, C+1, N_h, N_w); labels: (B, C) multi-hot; size: (H, W)."""
    if form not in ("paper", "code"):
        raise ValueError(f"form must be 'paper' or 'code', got '{form}'")
    corners = form == "code"
    up_cnn = F.interpolate(cam_cnn, size=size, mode="bilinear", align_corners=corners)
    up_vit = F.interpolate(cam_vit, size=size, mode="bilinear", align_corners=corners)
    diff = (up_cnn - up_vit).abs().mean(dim=(2, 3))  # (B, C+1)
    if form == "code":
        return diff.mean()
    positive = labels > 0.5
    fg_diff = diff[:, 1:][positive]
    fg_term = fg_diff.mean() if fg_diff.numel() else diff.new_zeros(())
    return diff.mean() + fg_term


@full_precision
def info_nce(z: torch.Tensor, pos_idx: torch.Tensor, neg_idx: torch.Tensor, tau: float,
             *, neg_exp_over_tau: bool = False) -> torch.Tensor:
    """Mean over all B·M anchors of the per-anchor InfoNCE loss (SPEC, Eq. 1–2):

        ℓ_i = (1/|P⁺|) Σ_{j∈P⁺} −log( e^{s_ij/τ} / (e^{s_ij/τ} + Σ_{k∈P⁻} e^{s_ik/τ}) ),  s = z·zᵀ

    z: (B, M, D) L2-normalised; pos_idx: (B, M, Kp), neg_idx: (B, M, Kn) long indices into M.
    `neg_exp_over_tau` reproduces the authors' SAP bug, negatives weighted e^{s}/τ instead of
    e^{s/τ}. Computed in log space, so small τ cannot overflow."""
    sim = torch.bmm(z, z.transpose(1, 2))  # (B, M, M)
    pos = sim.gather(2, pos_idx) / tau  # (B, M, Kp)
    neg_sim = sim.gather(2, neg_idx)  # (B, M, Kn)
    neg = neg_sim - math.log(tau) if neg_exp_over_tau else neg_sim / tau
    neg_lse = torch.logsumexp(neg, dim=2, keepdim=True)  # log Σ_k e^{·}: (B, M, 1)
    per_pair = torch.logaddexp(pos, neg_lse) - pos  # −log softmax of the positive: (B, M, Kp)
    return per_pair.mean(dim=2).mean()


def _flatten_patches(z: torch.Tensor) -> torch.Tensor:
    """(B, D, N_h, N_w) or (B, M, D) → (B, M, D), L2-normalised along D."""
    if z.dim() == 4:
        z = z.flatten(2).transpose(1, 2)
    return F.normalize(z, dim=2)


def select_pairs(scores: torch.Tensor, k_pos: int, k_neg: int, exclude_self: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor positives (top-k_pos) and negatives (bottom-k_neg) of scores (B, M, M): the
    selection both projection losses make (and cobra.diagnostics scores)."""
    m = scores.shape[-1]
    check_k(k_pos + int(exclude_self), m, "k_pos")
    check_k(k_neg, m, "k_neg")
    pos_scores = scores
    if exclude_self:
        eye = torch.eye(m, dtype=torch.bool, device=scores.device)
        pos_scores = scores.masked_fill(eye, float("-inf"))
    pos_idx = pos_scores.topk(k_pos, dim=2).indices
    neg_idx = scores.topk(k_neg, dim=2, largest=False).indices
    return pos_idx, neg_idx


@full_precision
def token_affinity(patches: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair of ViT patch tokens: (B, E, N_h, N_w) → (B, M, M), in
    fp32 under autocast too (L_cap's top-k reads its margins)."""
    z = _flatten_patches(patches)
    return torch.bmm(z, z.transpose(1, 2))


@full_precision
def cap_loss(z_cnn: torch.Tensor, affinity: torch.Tensor, k_pos: int, k_neg: int, tau: float,
             *, exclude_self: bool = False) -> torch.Tensor:
    """L_cap (Eq. 1): every CNN patch vector is an anchor; positives / negatives are the patches
    with the highest / lowest ViT affinity in its row.

    z_cnn: (B, M, D) or (B, D, N_h, N_w); affinity: (B, M, M), detached here (one-way)."""
    z = _flatten_patches(z_cnn)
    pos_idx, neg_idx = select_pairs(affinity.detach(), k_pos, k_neg, exclude_self)
    return info_nce(z, pos_idx, neg_idx, tau)


def sap_pseudo_labels(cam_cnn: torch.Tensor, labels: torch.Tensor, absent: str = "mask",
                      bg: float | None = None) -> torch.Tensor:
    """Pseudo class per patch: the argmax of `sap_class_scores` (B, M) long in 0..C.

    With the background channel (`bg=None`) the argmax is taken after a softmax over
    background + the image's classes, as the paper writes it (the softmax does not change it)."""
    return sap_class_scores(cam_cnn, labels, absent, bg).argmax(dim=1)


def sap_class_scores(cam_cnn: torch.Tensor, labels: torch.Tensor, absent: str = "mask",
                     bg: float | None = None) -> torch.Tensor:
    """Per-patch scores of background and every class that L_sap ranks by: (B, C+1, M).

    `bg=None`: the CNN CAM's own channels, background channel included; absent classes are
    removed (-inf) or, with `absent="zero"`, zeroed as in the authors' code, so an absent class
    can still win where every present score is negative.
    `bg=t`: each present class's ReLU'd map max-normalised over the image (as seeds are), absent
    classes removed, and background scored 2t − max_c s_c, which wins the argmax exactly where
    every class score is below t and ranks patches by how far they are from every class.
    cam_cnn: (B, C+1, N_h, N_w); labels: (B, C)."""
    if absent not in ("mask", "zero"):
        raise ValueError(f"absent must be 'mask' or 'zero', got '{absent}'")
    scores = cam_cnn.flatten(2)  # (B, C+1, M)
    if bg is not None:
        classes = _present_class_maps(scores, labels, absent_value=float("-inf"))
        return torch.cat([2 * bg - classes.amax(dim=1, keepdim=True), classes], dim=1)
    present = torch.cat([labels.new_ones(labels.shape[0], 1), labels], dim=1) > 0.5
    if absent == "mask":
        return scores.masked_fill(~present[:, :, None], float("-inf"))
    return scores * present[:, :, None]


def _present_class_maps(scores: torch.Tensor, labels: torch.Tensor, absent_value: float
                        ) -> torch.Tensor:
    """Each present class's ReLU'd map max-normalised over its image, as seeds normalise it;
    absent classes set to `absent_value`. scores: (B, C+1, M) → (B, C, M)."""
    classes = scores[:, 1:].relu()
    classes = classes / classes.amax(dim=2, keepdim=True).clamp_min(1e-5)
    return classes.masked_fill(labels[:, :, None] <= 0.5, absent_value)


@full_precision
def seed_space(cam: torch.Tensor, labels: torch.Tensor, bg: float) -> torch.Tensor:
    """A branch's projection as the scores its seed is the argmax of (`loss.proj_space: seed`):
    background 2·bg − max_c s_c and each present class's max-normalised map s_c, absent classes 0.

    A class map's background channel and its absent classes' channels are never read by a seed,
    so a contrast over the whole map (`model.proj_head: cam`) can be met there; here every
    direction the contrast moves is one the seed reads. In fp32 under autocast, as the losses
    that read it: its max-normalisation would otherwise add bf16 rounding of its own.
    cam: (B, C+1, N_h, N_w), same shape out."""
    classes = _present_class_maps(cam.flatten(2), labels, absent_value=0.0)
    background = 2 * bg - classes.amax(dim=1, keepdim=True)
    return torch.cat([background, classes], dim=1).view_as(cam)


def sap_scores(cam_cnn: torch.Tensor, labels: torch.Tensor, absent: str = "mask",
               bg: float | None = None) -> torch.Tensor:
    """L_sap's ranking scores: row i holds every patch's score for anchor i's pseudo class.

    cam_cnn: (B, C+1, N_h, N_w); labels: (B, C). Returns (B, M, M)."""
    class_scores = sap_class_scores(cam_cnn, labels, absent, bg)  # (B, C+1, M)
    pseudo = class_scores.argmax(dim=1)  # (B, M)
    if bg is None:  # the raw channels: absent classes must not leak -inf into a row
        class_scores = cam_cnn.flatten(2)
    return class_scores.gather(1, pseudo[:, :, None].expand(-1, -1, class_scores.shape[2]))


@full_precision
def sap_loss(z_vit: torch.Tensor, cam_cnn: torch.Tensor, labels: torch.Tensor, k_pos: int,
             k_neg: int, tau: float, *, absent: str = "mask", bg: float | None = None,
             exclude_self: bool = False, neg_exp_over_tau: bool = False) -> torch.Tensor:
    """L_sap (Eq. 2): every ViT patch vector is an anchor; for its pseudo class c (from the CNN's
    CAM), positives / negatives are the patches with the highest / lowest CNN score for c.

    z_vit: (B, M, D) or (B, D, N_h, N_w); cam_cnn: (B, C+1, N_h, N_w), detached here (one-way);
    labels: (B, C) multi-hot; `bg`: see `sap_class_scores`."""
    z = _flatten_patches(z_vit)
    rows = sap_scores(cam_cnn.detach(), labels, absent, bg)
    pos_idx, neg_idx = select_pairs(rows, k_pos, k_neg, exclude_self)
    return info_nce(z, pos_idx, neg_idx, tau, neg_exp_over_tau=neg_exp_over_tau)


def check_k(k: int, num_patches: int, name: str) -> None:
    """k must be a count the patch grid can supply: 1 ≤ k ≤ N²."""
    if not 1 <= k <= num_patches:
        raise ConfigError(
            f"{name}={k} but the patch grid has only {num_patches} patches at this input size; "
            f"use 1..{num_patches} (or a larger data.image_size)")
