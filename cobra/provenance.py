"""What data a run read, described for the tracker (MLflow's Datasets column): one entry per
split, with a digest of its image list so two runs on the same images show the same dataset."""

from __future__ import annotations

import hashlib
from typing import Any

from cobra.config import Config
from cobra.data import build_source, resolve_train_split
from cobra.data.datasets import data_root
from cobra.stages.common import stage_ids


def _digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def dataset_splits(cfg: Config) -> list[dict[str, Any]]:
    """The training split, the validation split (classification mAP) and the images the
    seeds are scored on (the seed split capped at seeds.max_images)."""
    root = str(data_root(cfg))
    entries = []
    for context, split in (("training", resolve_train_split(cfg)),
                           ("validation", cfg.data.val_split)):
        ids = list(build_source(cfg, split).ids)
        entries.append({"name": f"{cfg.data.dataset}/{split}", "context": context,
                        "source": root, "digest": _digest(ids), "num_images": len(ids)})
    seed_ids = stage_ids(cfg, build_source(cfg, cfg.data.seed_split))
    cap = f"[:{cfg.seeds.max_images}]" if cfg.seeds.max_images else ""
    entries.append({"name": f"{cfg.data.dataset}/{cfg.data.seed_split}{cap}",
                    "context": "scored (seeds, masks)", "source": root,
                    "digest": _digest(seed_ids), "num_images": len(seed_ids)})
    return entries
