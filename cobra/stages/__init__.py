"""The pipeline's stages, in the order they hand over through the run directory.

Each stage module has `run(cfg, layout, reporter, force=False) -> dict[str, float]`; the `train`
stage also takes `resume_from`. Modules are imported on demand so a command pays only for the
stages it runs.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from cobra.errors import CobraError

# After `train`: what `final` runs, in order.
POST_TRAIN_STAGES = ("seeds", "ir_labels", "irn", "masks", "segment")
ALL_STAGES = ("train", *POST_TRAIN_STAGES)


def get_stage(name: str) -> ModuleType:
    if name not in ALL_STAGES:
        raise CobraError(f"unknown stage '{name}'; choose one of {', '.join(ALL_STAGES)}")
    return importlib.import_module(f"cobra.stages.{name}")
