"""The boundary network of IRN's inter-pixel relation family: a timm CNN whose features at every
stride are squeezed, brought to stride 4 and fused into one class-agnostic boundary map.

The displacement-field branch of IRN (instance centroids) is left out: semantic masks need only
the boundary map, which defines the random walk's affinities."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cobra.errors import ConfigError
from cobra.models import backbones

OUTPUT_STRIDE = 4


class BoundaryNet(nn.Module):
    """(B, 3, H, W) → boundary probability (B, ⌈H/4⌉, ⌈W/4⌉) in [0, 1].

    `layout="irn"` is IRN's edge branch: five levels, the stem after its max-pool (stride 4)
    and every stage, the last one at stride 16 instead of 32 (stride 1 without dilation).
    `layout="native"` takes the stages at stride ≥ 4 with the backbone's own strides (4–32)."""

    def __init__(self, timm_name: str, pretrained: bool | str, freeze_backbone: bool,
                 width: int = 32, layout: str = "irn") -> None:
        super().__init__()
        self.backbone = backbones.create(timm_name, pretrained, True, features_only=True)
        info = self.backbone.feature_info
        reductions = info.reduction()
        if layout == "irn":
            if reductions[0] != 2 or reductions[-2:] != [16, 32]:
                raise ConfigError(f"{timm_name} has feature strides {reductions}, not IRN's "
                                  f"2..16, 32; use masks.irn.layout=native")
            backbones.undo_last_stride(self.backbone.get_submodule(info.module_name()[-1]))
            self.levels = list(range(len(reductions)))
        elif layout == "native":
            self.levels = [i for i, r in enumerate(reductions) if r >= OUTPUT_STRIDE]
        else:
            raise ValueError(f"layout must be 'irn' or 'native', got '{layout}'")
        # IRN's first level is the stem after its max-pool; timm hands it over before the pool
        self.pool_first = layout == "irn"
        channels = info.channels()
        self.squeeze = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels[i], width, 1, bias=False),
                          nn.GroupNorm(4, width), nn.ReLU(inplace=True))
            for i in self.levels)
        self.fuse = nn.Conv2d(width * len(self.levels), 1, 1, bias=True)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> BoundaryNet:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # frozen features include frozen BatchNorm statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = -(-x.shape[-2] // OUTPUT_STRIDE), -(-x.shape[-1] // OUTPUT_STRIDE)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            feats = self.backbone(x)
            if self.pool_first:
                feats[0] = F.max_pool2d(feats[0], kernel_size=3, stride=2, padding=1)
        maps = [F.interpolate(squeeze(feats[i]), size=(h, w), mode="bilinear", align_corners=False)
                for squeeze, i in zip(self.squeeze, self.levels, strict=True)]
        return torch.sigmoid(self.fuse(torch.cat(maps, dim=1)))[:, 0]

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.squeeze.parameters(), *self.fuse.parameters()]


def load_cam_backbone(net: BoundaryNet, cobra_state: dict[str, torch.Tensor]) -> int:
    """Copy the trained CoBra CNN's backbone weights into the boundary net (same timm model);
    returns how many tensors were copied."""
    prefix = "cnn.backbone."
    weights = {k[len(prefix):]: v for k, v in cobra_state.items() if k.startswith(prefix)}
    own = net.backbone.state_dict()
    matched = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    net.backbone.load_state_dict(matched, strict=False)
    return len(matched)
