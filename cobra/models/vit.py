"""SAK branch: a timm ViT whose patch tokens feed a CAM head and a SAP projection head, and whose
attention maps of every layer give the patch affinity and A_obj."""

import torch
from torch import nn

from cobra.config import ModelConfig
from cobra.models import backbones


class ViTBranch(nn.Module):
    """tokens (B, T, E) → CAM (B, C+1, N_h, N_w), SAP vectors (B, D, N_h, N_w), attention
    (B, L, T, T) averaged over heads. Any input size: position embeddings are interpolated and
    the input padded to a multiple of the patch size.

    With `full_attention=False` only the class token's row of each layer's attention is kept,
    (B, L, 1, T): the tokens go through the fused attention kernel, and the row is recomputed
    from that layer's q and k. That is all A_obj needs, and it spares the seed pass the T × T
    matrices (T ≈ 11,750 for a VOC image at scale 2.0 with 8 px patches)."""

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
        self.cam_head = nn.Conv2d(width, num_classes + 1, k, padding=k // 2, bias=cfg.vit_cam_bias)
        self.proj_head = backbones.projection_head(cfg, width)
        self._captured: list[torch.Tensor] = []
        self._class_row_only = False
        self._query: torch.Tensor | None = None
        self._scale = float(self.backbone.blocks[0].attn.scale)  # one head width in a plain ViT
        for block in self.backbone.blocks:
            # The fused kernel never materialises attention weights; the explicit path passes
            # the softmaxed weights through attn_drop, where a hook can read them. The class
            # row alone is rebuilt from q and k, which timm passes through q_norm and then
            # k_norm on both paths.
            block.attn.attn_drop.register_forward_hook(self._capture)
            block.attn.q_norm.register_forward_hook(self._capture_query)
            block.attn.k_norm.register_forward_hook(self._capture_class_row)

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output) -> None:
        self._captured.append(inputs[0].mean(dim=1))  # (B, heads, T, T) → (B, T, T)

    def _capture_query(self, module: nn.Module, inputs: tuple[torch.Tensor, ...],
                       q: torch.Tensor) -> None:
        if self._class_row_only:
            self._query = q[:, :, :1]  # (B, heads, 1, hd): the class token's query

    def _capture_class_row(self, module: nn.Module, inputs: tuple[torch.Tensor, ...],
                           k: torch.Tensor) -> None:
        if self._class_row_only:
            # the explicit path's softmax(q·scale @ kᵀ), for the class token's query alone
            row = ((self._query * self._scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            self._captured.append(row.mean(dim=1))  # (B, heads, 1, T) → (B, 1, T)

    def grid(self, h: int, w: int) -> tuple[int, int]:
        return -(-h // self.patch_size), -(-w // self.patch_size)

    def forward(self, x: torch.Tensor, full_attention: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) → CAM, SAP vectors, attention, and the patch tokens both heads read
        as a (B, E, N_h, N_w) map."""
        nh, nw = self.grid(*x.shape[-2:])
        self._captured, self._query = [], None
        self._class_row_only = not full_attention
        for block in self.backbone.blocks:
            block.attn.fused_attn = self._class_row_only
        tokens = self.backbone.forward_features(x)  # (B, T, E)
        attention = torch.stack(self._captured, dim=1)  # (B, L, T, T), or (B, L, 1, T)
        self._captured = []
        patches = tokens[:, self.num_prefix:].transpose(1, 2).reshape(x.shape[0], -1, nh, nw)
        cam = self.cam_head(patches)
        proj = backbones.project(self.proj_head, patches, cam)
        return cam, proj, attention, patches

    def head_parameters(self) -> dict[str, list[nn.Parameter]]:
        proj = list(self.proj_head.parameters()) if self.proj_head is not None else []
        return {"cam": list(self.cam_head.parameters()), "proj": proj}
