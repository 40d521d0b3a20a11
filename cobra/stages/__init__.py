"""The pipeline's stages, in the order they hand over through the run directory.

Each stage is one module with `run(cfg, layout, reporter, force=False) -> dict[str, float]`
(`train.run` takes `resume_from` instead of `force`). A stage reads its inputs from the files an
earlier stage wrote (`cobra.stages.outputs`), never from that stage's module, and is skipped when
its fingerprint (`cobra.stages.common`) says its outputs are current. Importing this package
imports every stage module, so they keep heavy imports (segmentation-models-pytorch,
pydensecrf) inside the functions that need them."""

from collections.abc import Callable

from cobra.errors import CobraError
from cobra.stages import ir_labels, irn, masks, seeds, segment, train

# After `train`: what `final` runs, in order.
POST_TRAIN_STAGES = ("seeds", "ir_labels", "irn", "masks", "segment")
ALL_STAGES = ("train", *POST_TRAIN_STAGES)

_MODULES = {"train": train, "seeds": seeds, "ir_labels": ir_labels, "irn": irn, "masks": masks,
            "segment": segment}
# Stage name → the metrics it reports, each declared by the stage itself.
METRICS: dict[str, tuple[str, ...]] = {name: stage.METRICS for name, stage in _MODULES.items()}
# Stage name → the function that runs it.
STAGES: dict[str, Callable[..., dict[str, float]]] = {
    name: stage.run for name, stage in _MODULES.items()}


def get_stage(name: str) -> Callable[..., dict[str, float]]:
    """The run function of stage `name`; an unknown name is one line listing the stages."""
    if name not in STAGES:
        raise CobraError(f"unknown stage '{name}'; choose one of {', '.join(ALL_STAGES)}")
    return STAGES[name]
