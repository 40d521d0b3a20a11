"""CAK branch: a timm CNN at output stride 16 with a CAM head and a CAP projection head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cobra.config import ModelConfig
from cobra.models import backbones


def detaches_stage2(cfg: ModelConfig) -> bool:
    """Whether gradients stop below the second stage: `model.detach_stage2`, or when unset, on
    for pretrained backbones only (a random-init CNN must learn its low-level filters)."""
    if cfg.detach_stage2 is not None:
        return cfg.detach_stage2
    return cfg.pretrained is not False


def _batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class CNNBranch(nn.Module):
    """features (B, F, H/16, W/16) → CAM (B, C+1, ·) and CAP vectors (B, D, ·), L2-normalised."""

    def __init__(self, cfg: ModelConfig, num_classes: int, single_branch: bool) -> None:
        super().__init__()
        kwargs = {"features_only": True}
        if cfg.cnn_downsample == "dilate":
            kwargs["output_stride"] = 16
        self.backbone = backbones.create(cfg.cnn, cfg.pretrained, single_branch, **kwargs)
        info = self.backbone.feature_info
        reductions = info.reduction()
        if cfg.cnn_downsample == "stride":
            if reductions[-1] != 32 or reductions[-2] != 16:
                raise ValueError(f"{cfg.cnn} does not end in a stride-32 stage after a stride-16 "
                                 f"one; use model.cnn_downsample=dilate")
            backbones.undo_last_stride(self.backbone.get_submodule(info.module_name()[-1]))
        names = info.module_name()
        self.stem_names = self._stem(names[0])
        self.detach_after = names[2] if detaches_stage2(cfg) and len(names) > 2 else None
        channels = info.channels()[-1]
        self.cam_head = nn.Conv2d(channels, num_classes + 1, 1, bias=False)
        self.proj_head = nn.Conv2d(channels, cfg.embed_dim, 1, bias=False)
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
            for module in _batchnorms(self.backbone):
                module.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → last-stage features (B, F, ⌈H/16⌉, ⌈W/16⌉)."""
        for name, module in self.backbone.items():
            x = module(x)
            if name == self.detach_after:
                x = x.detach()
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) → CAM, CAP vectors and the features both heads read."""
        feats = self.features(x)
        cam = self.cam_head(feats)
        proj = F.normalize(self.proj_head(feats), dim=1)
        return cam, proj, feats

    def head_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"cam": list(self.cam_head.parameters()), "proj": list(self.proj_head.parameters())}
