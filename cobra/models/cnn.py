"""CAK branch: a timm CNN at output stride 16 (or 8: `model.cnn_stride`) with a CAM head and a
CAP projection head."""

from __future__ import annotations

import torch
from torch import nn

from cobra.config import ModelConfig
from cobra.models import backbones


def detaches_stage2(cfg: ModelConfig) -> bool:
    """Whether gradients stop below the second stage: `model.detach_stage2`, or when unset, on
    for pretrained backbones only (a random-init CNN must learn its low-level filters)."""
    return cfg.detach_stage2 if cfg.detach_stage2 is not None else cfg.pretrained is not False


def _stages_above(cnn: str, reductions: list[int], names: list[str], stride: int) -> list[str]:
    """The stages that take the CNN beyond `stride`. Each must halve the resolution once, so
    that setting its stride to 1 lands the output exactly on `stride`."""
    later = reductions[reductions.index(stride):] if stride in reductions else []
    if not later or any(b != 2 * a for a, b in zip(later, later[1:], strict=False)):
        raise ValueError(f"{cnn}'s stages reduce by {reductions}, which does not pass through "
                         f"stride {stride} and then halve once per stage; use "
                         f"model.cnn_downsample=dilate")
    return names[len(reductions) - len(later) + 1:]


class CNNBranch(nn.Module):
    """features (B, F, H/s, W/s), s = model.cnn_stride → CAM (B, C+1, ·) and CAP vectors
    (B, D, ·), L2-normalised."""

    def __init__(self, cfg: ModelConfig, num_classes: int, single_branch: bool) -> None:
        super().__init__()
        kwargs = {"features_only": True}
        if cfg.cnn_downsample == "dilate":
            kwargs["output_stride"] = cfg.cnn_stride
        self.backbone = backbones.create(cfg.cnn, cfg.pretrained, single_branch, **kwargs)
        info = self.backbone.feature_info
        names = info.module_name()
        if cfg.cnn_downsample == "stride":
            for name in _stages_above(cfg.cnn, info.reduction(), names, cfg.cnn_stride):
                backbones.undo_last_stride(self.backbone.get_submodule(name))
        self.stem_names = self._stem(names[0])
        self.detach_after = names[2] if detaches_stage2(cfg) and len(names) > 2 else None
        channels = info.channels()[-1]
        self.cam_head = nn.Conv2d(channels, num_classes + 1, 1, bias=False)
        self.proj_head = backbones.projection_head(cfg, channels)
        # freeze_bn freezes statistics only: scale and shift still train (IRN's FixedBatchNorm)
        self.freeze_bn = cfg.freeze_bn
        if cfg.freeze_stem:
            for name in self.stem_names:
                self.backbone[name].requires_grad_(False)

    def _stem(self, first_feature: str) -> list[str]:
        """Children of the feature net up to and including the first feature module."""
        names = []
        for name in self.backbone:
            names.append(name)
            if name == first_feature:
                break
        return names

    def train(self, mode: bool = True) -> CNNBranch:
        super().train(mode)
        if self.freeze_bn:  # frozen running statistics (IRN): BatchNorm stays in eval mode
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → last-stage features (B, F, ⌈H/s⌉, ⌈W/s⌉)."""
        for name, module in self.backbone.items():
            x = module(x)
            if name == self.detach_after:
                x = x.detach()
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) → CAM, CAP vectors and the features both heads read."""
        feats = self.features(x)
        cam = self.cam_head(feats)
        proj = backbones.project(self.proj_head, feats, cam)
        return cam, proj, feats

    def head_parameters(self) -> dict[str, list[nn.Parameter]]:
        proj = list(self.proj_head.parameters()) if self.proj_head is not None else []
        return {"cam": list(self.cam_head.parameters()), "proj": proj}
