"""IRN-style mask refinement (SPEC "Masks"): IR labels → boundary network → random walk → masks.

Pure functions only: `crf` (denseCRF on hard or soft maps), `ir_labels` (confident fg / bg /
unknown labels and their quality), `affinity_labels` (pixel-pair labels and the boundary
network's affinity loss) and `random_walk` (transition from a boundary map, the walk itself and
the two mask rules).
"""

from cobra.masks.affinity_labels import affinity_loss, pair_labels
from cobra.masks.crf import crf_label, crf_probs
from cobra.masks.ir_labels import aobj_thresholds, ir_label, ir_label_quality
from cobra.masks.random_walk import (
    affinity,
    masks_from_rw,
    neighbour_offsets,
    path_max,
    random_walk,
    relative_labels,
    relative_masks,
    transition_matrix,
)

__all__ = [
    "affinity",
    "affinity_loss",
    "aobj_thresholds",
    "crf_label",
    "crf_probs",
    "ir_label",
    "ir_label_quality",
    "masks_from_rw",
    "neighbour_offsets",
    "pair_labels",
    "path_max",
    "random_walk",
    "relative_labels",
    "relative_masks",
    "transition_matrix",
]
