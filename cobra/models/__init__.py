"""CoBra's two branches over timm backbones, and one constructor for the whole model."""

import torch

from cobra.config import ModelConfig
from cobra.models import backbones
from cobra.models.cobra import CoBra
from cobra.models.output import CoBraOutput

__all__ = ["CoBra", "CoBraOutput", "build_model", "num_patches", "patch_size"]


def build_model(cfg: ModelConfig, num_classes: int) -> CoBra:
    """CoBra for `num_classes` foreground classes (the CAM heads add background)."""
    return CoBra(cfg, num_classes)


def patch_size(cfg: ModelConfig) -> int:
    """Input pixels per patch-grid cell of the model `cfg` builds: the ViT's patch, or the CNN's
    stride when the ViT branch is off (`CoBra.patch_size`). The ViT is built on the meta device,
    so no weights are made or read."""
    if cfg.branches == "cnn":
        return cfg.cnn_stride
    with torch.device("meta"):
        vit = backbones.create(cfg.vit, False, True, num_classes=0)
    return int(vit.patch_embed.patch_size[0])


def num_patches(cfg: ModelConfig, image_size: int) -> int:
    """M, the patches of a square `image_size` crop (what L_cap's and L_sap's k count)."""
    side = -(-image_size // patch_size(cfg))
    return side * side
