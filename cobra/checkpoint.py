"""Checkpoints: written atomically, loaded with `weights_only=True`, always carrying their config."""

import io
from pathlib import Path
from typing import Any

import torch

from cobra import config as config_mod
from cobra.errors import StageInputError
from cobra.layout import atomic_write_bytes


def save_checkpoint(path: Path, *, model: torch.nn.Module, cfg: config_mod.Config, epoch: int,
                    optimizer: torch.optim.Optimizer | None = None,
                    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
                    extra: dict[str, Any] | None = None) -> None:
    """Serialise to memory first, then write tmp + fsync + rename: a crash or a full disk while
    writing leaves the previous checkpoint intact."""
    state = {"model": model.state_dict(),
             "optimizer": optimizer.state_dict() if optimizer is not None else None,
             "schedule": schedule.state_dict() if schedule is not None else None,
             "epoch": epoch, "config": config_mod.to_dict(cfg), "extra": extra or {}}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


FP16_MAX = 65504.0


def _half(tensor: torch.Tensor) -> torch.Tensor:
    """fp32 → fp16 where that keeps the tensor as it is to fp16's own precision (relative error
    of the whole tensor ≤ 1e-3); fp16's range is small, so a tensor with values beyond it or
    mostly below it (a tiny BatchNorm variance) stays fp32 rather than becoming inf or 0."""
    if not tensor.is_floating_point() or tensor.dtype == torch.float16:
        return tensor
    x = tensor.detach().float()
    if x.numel() == 0 or x.abs().max() > FP16_MAX:
        return tensor
    half = x.half()
    norm = x.norm()
    if norm > 0 and (half.float() - x).norm() > 1e-3 * norm:
        return tensor
    return half


def export_weights(src: Path, dst: Path, half: bool = True) -> None:
    """A finished checkpoint for the tracker: the weights (fp16 where lossless enough; see
    tests/test_checkpoint.py) with epoch and config, no optimizer state. Loading it into the fp32
    model (`load_state_dict`) casts back, so every later stage reads it like `last.pt`."""
    state = load_checkpoint(src)
    model = {k: _half(v) if half else v for k, v in state["model"].items()}
    state = {**state, "model": model, "optimizer": None, "schedule": None,
             "extra": {**(state.get("extra") or {}), "weights_dtype": "float16" if half
                       else "float32"}}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(Path(dst), buffer.getvalue())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise StageInputError(f"checkpoint '{path}' does not exist; run stage 'train' first "
                              f"or check the path")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which, not a pickle traceback
        raise StageInputError(f"checkpoint '{path}' cannot be read ({type(exc).__name__}); "
                              f"it is corrupt or not a CoBra checkpoint") from None


def checkpoint_config(state: dict[str, Any]) -> config_mod.Config:
    """The validated Config a checkpoint was trained with."""
    return config_mod.from_dict(config_mod.upgrade_saved(state["config"]))


def check_model_matches(cfg: config_mod.Config, trained: config_mod.Config,
                        checkpoint: Path) -> None:
    """model.* cannot change after training: a requested value that differs from the
    checkpoint's is a mistake to report, not to ignore."""
    asked, have = config_mod.flatten(cfg.model), config_mod.flatten(trained.model)
    diff = [k for k in asked if k != "pretrained" and asked[k] != have[k]]
    if diff:
        k = diff[0]
        raise StageInputError(f"checkpoint '{checkpoint}' does not match the config: "
                              f"model.{k} is {have[k]!r} there but {asked[k]!r} here; model "
                              f"settings are fixed once trained (retrain to change them)")


# Keys a resumed run may change: how it runs, never what it trains.
RESUME_SAFE_KEYS = ("train.progress", "train.device", "train.channels_last",
                    "train.diagnostics", "train.diag_images", "train.diag_grad_every",
                    "data.num_workers", "data.decoded_cache")


def resume_safe(key: str) -> bool:
    return key in RESUME_SAFE_KEYS or key.startswith("run.")


def check_resume_matches(cfg: config_mod.Config, trained: config_mod.Config,
                         checkpoint: Path) -> None:
    """A checkpoint resumed under `cfg` must have been trained with the same settings (any key
    but the resume-safe ones), else the continued run mixes two recipes."""
    check_model_matches(cfg, trained, checkpoint)
    asked, have = config_mod.flatten(cfg), config_mod.flatten(trained)
    diff = [k for k in asked if not resume_safe(k) and asked[k] != have[k]]
    if diff:
        k = diff[0]
        raise StageInputError(f"checkpoint '{checkpoint}' was trained with {k}={have[k]!r} but "
                              f"the run's config.yaml says {asked[k]!r}; restore config.yaml or "
                              f"start a new run")
