"""What data a run read, described for the tracker (MLflow's Datasets column): one entry per
split, with a digest of its image list so two runs on the same images show the same dataset."""

import hashlib
from collections.abc import Sequence
from typing import Any

from cobra.config import Config
from cobra.data import build_source, resolve_train_split
from cobra.data.datasets import data_root
from cobra.stages.common import stage_ids


def _digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


# Stages that score on the seed split (its context in MLflow names the ones a run ran), and
# stages that train a network on it after CoBra.
SCORED_ON_SEED_SPLIT = ("seeds", "masks")
TRAINED_ON_SEED_SPLIT = ("irn", "segment")


def dataset_splits(cfg: Config, stages: Sequence[str] = ("train", "seeds")
                   ) -> list[dict[str, Any]]:
    """What a run running `stages` read: the training split (when it trains CoBra), the
    validation split (classification mAP when it trains; segmentation when it segments) and
    the images the seeds are scored on (the seed split capped at seeds.max_images), each with a
    context naming the stages that used it."""
    root = str(data_root(cfg))
    entries = []
    val_uses = [*(["mAP"] if "train" in stages else []),
                *(["segmentation"] if "segment" in stages else [])]
    for context, split in (("training", resolve_train_split(cfg) if "train" in stages else None),
                           (_context("validation", val_uses), cfg.data.val_split)):
        if split is None:
            continue
        ids = list(build_source(cfg, split).ids)
        entries.append({"name": f"{cfg.data.dataset}/{split}", "context": context,
                        "source": root, "digest": _digest(ids), "num_images": len(ids)})
    seed_ids = stage_ids(cfg, build_source(cfg, cfg.data.seed_split))
    cap = f"[:{cfg.seeds.max_images}]" if cfg.seeds.max_images else ""
    scored = [s for s in SCORED_ON_SEED_SPLIT if s in stages]
    trained = [s for s in TRAINED_ON_SEED_SPLIT if s in stages]
    context = _context("scored", scored) + (f"; {_context('trains', trained)}" if trained else "")
    entries.append({"name": f"{cfg.data.dataset}/{cfg.data.seed_split}{cap}", "context": context,
                    "source": root, "digest": _digest(seed_ids), "num_images": len(seed_ids)})
    return entries


def _context(what: str, uses: Sequence[str]) -> str:
    return f"{what} ({', '.join(uses)})" if uses else what
