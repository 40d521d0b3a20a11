"""Checkpoints: written atomically, loaded with `weights_only=True`, always carrying their config."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from cobra import config as config_mod
from cobra.errors import StageInputError
from cobra.layout import atomic_write_bytes


def save_checkpoint(path: Path, *, model: torch.nn.Module, cfg: config_mod.Config, epoch: int,
                    optimizer: torch.optim.Optimizer | None = None,
                    extra: dict[str, Any] | None = None) -> None:
    """Serialise to memory first, then write tmp + fsync + rename: a crash or a full disk while
    writing leaves the previous checkpoint intact."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "config": config_mod.to_dict(cfg),
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


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
    return config_mod.from_dict(state["config"])
