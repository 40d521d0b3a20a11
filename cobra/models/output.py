"""The one typed output of CoBra, identical in train and eval mode."""

from dataclasses import dataclass

import torch


@dataclass
class CoBraOutput:
    """Everything the losses, validation and seed making need from one forward pass.

    A field is None when its branch is switched off (`model.branches`). Grids are N_h × N_w
    patches at output stride 16 (both branches share it), M = N_h·N_w, L = ViT layers."""

    logits_cnn: torch.Tensor | None  # (B, C): GAP of the CNN CAM's foreground channels
    logits_vit: torch.Tensor | None  # (B, C)
    cam_cnn: torch.Tensor | None  # (B, C+1, N_h, N_w), channel 0 = background
    cam_vit: torch.Tensor | None  # (B, C+1, N_h, N_w)
    proj_cnn: torch.Tensor | None  # (B, M, D) CAP vectors v^c, L2-normalised
    proj_vit: torch.Tensor | None  # (B, M, D) SAP vectors v^s, L2-normalised
    attention: torch.Tensor | None  # (B, L, T, T) head-averaged attention of every layer
    # (or (B, L, 1, T), the class token's row alone, from a forward without affinity)
    affinity: torch.Tensor | None  # (B, M, M) patch affinity P = Σ_layers A[:, 1:, 1:]
    a_obj: torch.Tensor | None  # (B, N_h, N_w) class-token attention Σ_layers A[:, 0, 1:]
    # Each branch's last feature map, the one its CAM and projection heads read (what the
    # mechanism diagnostics take gradients against): (B, F, N_h, N_w) and (B, E, N_h, N_w).
    features_cnn: torch.Tensor | None = None
    features_vit: torch.Tensor | None = None
