"""CoBra: the CNN (CAK) and ViT (SAK) branches side by side, one typed output."""

import torch
import torch.nn.functional as F
from torch import nn

from cobra.config import ModelConfig
from cobra.models.cnn import CNNBranch
from cobra.models.output import CoBraOutput
from cobra.models.vit import ViTBranch


def _gap_logits(cam: torch.Tensor) -> torch.Tensor:
    """Classification logits = global average of the CAM's foreground channels: (B, C)."""
    return cam[:, 1:].mean(dim=(2, 3))


def _tokens(maps: torch.Tensor) -> torch.Tensor:
    """(B, D, N_h, N_w) → (B, M, D)."""
    return maps.flatten(2).transpose(1, 2)


class CoBra(nn.Module):
    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        single = cfg.branches != "both"
        self.num_classes = num_classes
        self.cnn_stride = cfg.cnn_stride
        self.cnn = CNNBranch(cfg, num_classes, single) if cfg.branches in ("both", "cnn") else None
        self.vit = ViTBranch(cfg, num_classes, single) if cfg.branches in ("both", "vit") else None

    @property
    def patch_size(self) -> int:
        """Input pixels per grid cell (the ViT's patch; the CNN runs at the same stride)."""
        return self.vit.patch_size if self.vit is not None else self.cnn_stride

    def patch_grid(self, h: int, w: int) -> tuple[int, int]:
        """(N_h, N_w) for an (h, w) input."""
        p = self.patch_size
        return -(-h // p), -(-w // p)

    def forward(self, x: torch.Tensor, affinity: bool = True) -> CoBraOutput:
        """x: (B, 3, H, W) normalised images. `affinity=False` (the seed pass) skips the patch
        affinity and keeps only the class token's attention row per layer, enough for A_obj:
        `attention` is then (B, L, 1, T) and `affinity` None."""
        grid = self.patch_grid(*x.shape[-2:])
        cam_cnn = proj_cnn = cam_vit = proj_vit = attention = patch_affinity = a_obj = None
        feats_cnn = feats_vit = None
        if self.cnn is not None:
            cam_cnn, proj_cnn, feats_cnn = self.cnn(x)
            # a CNN whose padding rounds differently, or whose stride is not the ViT's patch
            if cam_cnn.shape[-2:] != grid:
                cam_cnn = F.interpolate(cam_cnn, size=grid, mode="bilinear", align_corners=False)
                proj_cnn = F.normalize(F.interpolate(proj_cnn, size=grid, mode="bilinear",
                                                     align_corners=False), dim=1)
            proj_cnn = _tokens(proj_cnn)
        if self.vit is not None:
            cam_vit, proj_vit, attention, feats_vit = self.vit(x, full_attention=affinity)
            proj_vit = _tokens(proj_vit)
            prefix = self.vit.num_prefix
            # Sums over layers in fp32: under bf16 autocast the top-k selections of L_cap read
            # the affinity, and a bf16 sum of L layers rounds away the margins between patches.
            layers = attention.float()
            patch_affinity = layers[:, :, prefix:, prefix:].sum(dim=1) if affinity else None
            a_obj = layers[:, :, 0, prefix:].sum(dim=1).reshape(-1, *grid)  # (B, N_h, N_w)
        return CoBraOutput(
            logits_cnn=_gap_logits(cam_cnn) if cam_cnn is not None else None,
            logits_vit=_gap_logits(cam_vit) if cam_vit is not None else None,
            cam_cnn=cam_cnn, cam_vit=cam_vit, proj_cnn=proj_cnn, proj_vit=proj_vit,
            attention=attention, affinity=patch_affinity, a_obj=a_obj,
            features_cnn=feats_cnn, features_vit=feats_vit)

    def param_groups(self, lr: float, head_lr_mult: float, weight_decay: float,
                     groups: str = "paper") -> list[dict]:
        """SGD groups: backbones at lr, new heads at lr × head_lr_mult (`groups="paper"`).

        `groups="code"` reproduces the authors' two optimizers: the CNN projection head is in
        neither, and the ViT's 10× group is its last two registered tensors, the CAM-head bias
        and the projection weight (their `head.bias` + `embed.weight`), so the CAM-head weight
        trains at the backbone lr."""
        if groups not in ("paper", "code"):
            raise ValueError(f"groups must be 'paper' or 'code', got '{groups}'")
        backbone, heads = [], []
        for branch in (self.cnn, self.vit):
            if branch is None:
                continue
            backbone += [p for p in branch.backbone.parameters() if p.requires_grad]
            parts = branch.head_parameters()
            if groups == "paper":
                heads += parts["cam"] + parts["proj"]
            elif branch is self.cnn:
                heads += parts["cam"]
            else:
                cam_head = branch.cam_head
                backbone.append(cam_head.weight)
                heads += [p for p in (cam_head.bias, *parts["proj"]) if p is not None]
        return [{"params": backbone, "lr": lr, "weight_decay": weight_decay, "name": "backbone"},
                {"params": heads, "lr": lr * head_lr_mult, "weight_decay": weight_decay,
                 "name": "heads"}]
