"""CoBra's two branches over timm backbones, and one constructor for the whole model."""

from __future__ import annotations

from cobra.config import ModelConfig
from cobra.models.cobra import CoBra
from cobra.models.output import CoBraOutput

__all__ = ["CoBra", "CoBraOutput", "build_model"]


def build_model(cfg: ModelConfig, num_classes: int) -> CoBra:
    """CoBra for `num_classes` foreground classes (the CAM heads add background)."""
    return CoBra(cfg, num_classes)
