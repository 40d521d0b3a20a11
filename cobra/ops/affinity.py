"""Pixel-pair labels and the affinity loss that trains the boundary network (IRN-style).

IR labels (255 = unknown) at the network's stride define, for every pixel p and offset o, a
pair (p, p+o): positive foreground (same class), positive background (both 0) or negative
(different labels). The boundary map B gives a_pq = 1 − max B on the segment p→q, pushed to 1 on
positive pairs and to 0 on negative ones."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cobra.ops.random_walk import Offset, path_max

UNKNOWN = 255


def _shifted(ir: torch.Tensor, offsets: Sequence[Offset]) -> torch.Tensor:
    """(B, h, w) labels → (B, O, h, w) label of each pixel's partner p+o (255 outside)."""
    h, w = ir.shape[-2:]
    r = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(ir, (r, r, r, r), value=UNKNOWN)
    return torch.stack([padded[:, r + dy:r + dy + h, r + dx:r + dx + w] for dy, dx in offsets],
                       dim=1)


def pair_labels(ir: torch.Tensor, offsets: Sequence[Offset]) -> dict[str, torch.Tensor]:
    """(B, h, w) long labels (255 unknown) → {'pos_fg', 'pos_bg', 'neg'}: bool (B, O, h, w).

    Pairs with an unknown pixel or a partner outside the image belong to no set."""
    if ir.dim() != 3:
        raise ValueError(f"ir must be (B, h, w), got shape {tuple(ir.shape)}")
    ir = ir.long()
    if len(offsets) == 0:
        empty = torch.zeros(*ir.shape[:1], 0, *ir.shape[1:], dtype=torch.bool, device=ir.device)
        return {"pos_fg": empty, "pos_bg": empty.clone(), "neg": empty.clone()}
    a = ir.unsqueeze(1)
    b = _shifted(ir, offsets)
    known = (a != UNKNOWN) & (b != UNKNOWN)
    same = known & (a == b)
    return {"pos_fg": same & (a != 0), "pos_bg": same & (a == 0), "neg": known & (a != b)}


def _half_offsets(offsets: Sequence[Offset]) -> list[Offset]:
    """One offset per ±o pair: (p, p+o) over all p is the same pair set as (q, q−o)."""
    seen: set[Offset] = set()
    for dy, dx in offsets:
        o = (int(dy), int(dx)) if (dy, dx) > (0, 0) else (-int(dy), -int(dx))
        if o != (0, 0):
            seen.add(o)
    return sorted(seen)


def affinity_loss(boundary: torch.Tensor, ir: torch.Tensor, offsets: Sequence[Offset],
                  eps: float = 1e-5) -> torch.Tensor:
    """(B, h, w) boundary in [0, 1] + (B, h, w) IR labels → scalar affinity loss.

    (pos + neg) / 2 with pos = (mean_pos_fg[−log a] + mean_pos_bg[−log a]) / 2 and
    neg = mean_neg[−log(1 − a)], each mean over its own pair count, as IRN's training loop (and
    the authors') sums them; an empty set contributes 0 (IRN divides by count + eps).
    Offsets o and −o give the same pairs (the segment maximum is symmetric), so only one of each
    is evaluated, which leaves every mean unchanged for a symmetric list and halves the work."""
    if boundary.shape != ir.shape:
        raise ValueError(f"boundary {tuple(boundary.shape)} and ir {tuple(ir.shape)} differ")
    half = _half_offsets(offsets)
    if not half:
        return boundary.sum() * 0.0
    labels = pair_labels(ir, half)
    a = 1.0 - path_max(boundary, half)  # (B, O, h, w)

    def mean(mask: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        # Masked sum over its count; an empty set gives an exact 0 that keeps the graph intact.
        return (loss * mask).sum() / mask.sum().clamp_min(1)

    pos = -torch.log(a + eps)
    neg = -torch.log(1.0 + eps - a)
    pos_fg = mean(labels["pos_fg"], pos)
    pos_bg = mean(labels["pos_bg"], pos)
    return ((pos_fg + pos_bg) / 2 + mean(labels["neg"], neg)) / 2
