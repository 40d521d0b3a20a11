"""SAK branch: a timm ViT whose patch tokens feed a CAM head and a SAP projection head, and whose
attention maps of every layer give the patch affinity and A_obj."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cobra.config import ModelConfig
from cobra.models import backbones


class ViTBranch(nn.Module):
    """tokens (B, T, E) → CAM (B, C+1, N_h, N_w), SAP vectors (B, D, N_h, N_w), attention
    (B, L, T, T) averaged over heads. Any input size: position embeddings are interpolated and
    the input padded to a multiple of the patch size."""

    def __init__(self, cfg: ModelConfig, num_classes: int, single_branch: bool) -> None:
        super().__init__()
        self.backbone = backbones.create(cfg.vit, cfg.pretrained, single_branch, num_classes=0,
                                         dynamic_img_size=True, dynamic_img_pad=True)
        if not hasattr(self.backbone, "blocks") or not hasattr(self.backbone, "patch_embed"):
            raise ValueError(f"{cfg.vit} is not a plain ViT (no blocks/patch_embed)")
        self.patch_size = int(self.backbone.patch_embed.patch_size[0])
        self.num_prefix = int(self.backbone.num_prefix_tokens)
        width = int(self.backbone.embed_dim)
        k = cfg.vit_cam_kernel
        self.cam_head = nn.Conv2d(width, num_classes + 1, k, padding=k // 2,
                                  bias=cfg.vit_cam_bias)
        self.proj_head = nn.Conv2d(width, cfg.embed_dim, 1, bias=False)
        self._captured: list[torch.Tensor] = []
        for block in self.backbone.blocks:
            # The fused kernel never materialises attention weights; the explicit path passes
            # the softmaxed weights through attn_drop, where a hook can read them.
            block.attn.fused_attn = False
            block.attn.attn_drop.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output) -> None:
        self._captured.append(inputs[0].mean(dim=1))  # (B, heads, T, T) → (B, T, T)

    def grid(self, h: int, w: int) -> tuple[int, int]:
        return -(-h // self.patch_size), -(-w // self.patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nh, nw = self.grid(*x.shape[-2:])
        self._captured = []
        tokens = self.backbone.forward_features(x)  # (B, T, E)
        attention = torch.stack(self._captured, dim=1)  # (B, L, T, T)
        self._captured = []
        patches = tokens[:, self.num_prefix:].transpose(1, 2)  # (B, E, M)
        patches = patches.reshape(x.shape[0], -1, nh, nw)
        cam = self.cam_head(patches)
        proj = F.normalize(self.proj_head(patches), dim=1)
        return cam, proj, attention

    def head_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"cam": list(self.cam_head.parameters()), "proj": list(self.proj_head.parameters())}
