"""timm backbones for both branches, and where their weights come from.

`model.pretrained`: true → timm's hub weights (needs network or a filled HF cache), false → random
init, a path → local weights: a file (one branch) or a directory holding `<timm name>.safetensors`
(or .pth/.pt/.bin) per backbone. Local files go through timm's own loader (`pretrained_cfg_overlay`
with `file=`), so position embeddings are resized and classifier heads dropped exactly as for hub
weights."""

from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from cobra.config import ModelConfig
from cobra.errors import ConfigError
from cobra.models import small_vit  # noqa: F401  (registers the cobra_vit_* models with timm)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def weights_file(pretrained: bool | str, timm_name: str, single_branch: bool) -> Path | None:
    """The local weights file for `timm_name`, or None when `pretrained` is not a path."""
    if isinstance(pretrained, bool):
        return None
    path = Path(pretrained).expanduser()
    if path.is_dir():
        for suffix in WEIGHT_SUFFIXES:
            candidate = path / f"{timm_name}{suffix}"
            if candidate.is_file():
                return candidate
        raise ConfigError(f"model.pretrained directory '{path}' holds no weights for "
                          f"'{timm_name}'; add {timm_name}.safetensors (or .pth) there")
    if path.is_file():
        if not single_branch:
            raise ConfigError(f"model.pretrained='{path}' is one file but both branches need "
                              f"weights; point it at a directory with one file per backbone")
        return path
    raise ConfigError(f"model.pretrained path '{path}' does not exist; give a weights file or "
                      f"directory, true for hub weights, or false for random init")


def create(timm_name: str, pretrained: bool | str, single_branch: bool, **kwargs: Any
           ) -> torch.nn.Module:
    """timm.create_model with CoBra's weight-source rule; unknown names are a ConfigError."""
    if not timm.is_model(timm_name):
        close = timm.list_models(f"*{timm_name.split('_')[0]}*")[:5]
        hint = f"; e.g. {', '.join(close)}" if close else ""
        raise ConfigError(f"'{timm_name}' is not a timm model name{hint}")
    local = weights_file(pretrained, timm_name, single_branch)
    if local is not None:
        return timm.create_model(timm_name, pretrained=True,
                                 pretrained_cfg_overlay={"file": str(local)}, **kwargs)
    try:
        return timm.create_model(timm_name, pretrained=bool(pretrained), **kwargs)
    except (OSError, RuntimeError) as exc:
        if not pretrained:
            raise
        raise ConfigError(f"cannot fetch hub weights for '{timm_name}' ({type(exc).__name__}); "
                          f"go online, or set model.pretrained to a local weights directory, "
                          f"or false") from None


def undo_last_stride(stage: nn.Module) -> None:
    """Give a last stage stride 1 without dilation (the authors' and IRN's way to output stride
    16): every stride-2 convolution or pooling in it becomes stride 1."""
    for module in stage.modules():
        if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
            module.stride = (1, 1)
        elif isinstance(module, (nn.AvgPool2d, nn.MaxPool2d)) and module.stride not in (1, (1, 1)):
            module.stride, module.kernel_size, module.padding = 1, 1, 0


def projection_head(cfg: ModelConfig, channels: int) -> nn.Conv2d | None:
    """A branch's CAP/SAP head: a 1x1 conv to `model.embed_dim` (paper), or None when
    `model.proj_head` is `cam` and the branch's class map itself is the projection."""
    return None if cfg.proj_head == "cam" else nn.Conv2d(channels, cfg.embed_dim, 1, bias=False)


def project(head: nn.Conv2d | None, features: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """The L2-normalised projection vectors (B, D, N_h, N_w) of one branch."""
    return F.normalize(head(features) if head is not None else cam, dim=1)
