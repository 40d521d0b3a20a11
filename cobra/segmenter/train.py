"""Fully supervised training of the segmentation network on the pseudo masks (SPEC "Segmentation")."""

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cobra.config import SegmentConfig
from cobra.errors import StageInputError
from cobra.runtime import EpochInfo, PolyLR, train_one_epoch


def param_groups(model: nn.Module, lr: float, head_lr_mult: float) -> list[dict]:
    """Encoder parameters at `lr`, everything else (decoder, head) at head_lr_mult x lr."""
    encoder = getattr(model, "encoder", None)
    enc_ids = {id(p) for p in encoder.parameters()} if isinstance(encoder, nn.Module) else set()
    enc = [p for p in model.parameters() if p.requires_grad and id(p) in enc_ids]
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in enc_ids]
    groups = [{"params": enc, "lr": lr}, {"params": head, "lr": lr * head_lr_mult}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: SegmentConfig) -> torch.optim.Optimizer:
    """SGD (the paper's) or AdamW over the encoder / head groups of `param_groups`."""
    groups = param_groups(model, cfg.lr, cfg.head_lr_mult)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _freeze_batchnorm(model: nn.Module) -> None:
    """Put BatchNorm layers in eval mode (running statistics, no update)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _loss_fn(model: nn.Module, device: torch.device):
    """batch → (cross-entropy with 255 ignored, named terms), or None for a batch with nothing
    to learn."""
    def losses(batch: dict):
        images = batch["image"].to(device, non_blocking=True)
        masks = batch["mask"].to(device, non_blocking=True)
        if bool((masks == 255).all()):
            # Nothing to learn (crops of fully ignored masks); the mean over 0 pixels is NaN.
            return None
        loss = F.cross_entropy(model(images), masks, ignore_index=255)
        return loss, {"seg_loss": loss}

    return losses


def train_segmenter(model: nn.Module, dataset: Dataset, cfg: SegmentConfig,
                    device: torch.device | str, progress: bool = True,
                    on_epoch: Callable[[int, dict], None] | None = None,
                    num_workers: int = 0) -> dict[str, float]:
    """SGD or AdamW + (warm-up and) poly lr, cross-entropy (255 ignored) over batches {"image": (B,3,S,S), "mask": (B,S,S)}.

    Returns {"seg_loss": mean loss of the last epoch}; `on_epoch(epoch, metrics)` (epoch from 0)
    gets {"seg_loss", "lr"} after every epoch. A NaN/inf loss raises NonFiniteLossError."""
    n = len(dataset)
    if n == 0:
        raise ValueError("the segmentation training set is empty")
    device = torch.device(device)
    model.to(device)
    batch_size = min(cfg.batch_size, n)
    # A full batch every step (BatchNorm, poly schedule) unless the whole set fits in one batch.
    drop_last = n > cfg.batch_size
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=drop_last,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=num_workers > 0)
    optimizer = build_optimizer(model, cfg)
    schedule = PolyLR(optimizer, len(loader) * cfg.epochs, cfg.poly_power,
                      round(cfg.warmup_epochs * len(loader)))
    single = batch_size == 1
    if single:
        # BatchNorm cannot train on one image (DeepLabV3+'s pooled ASPP branch is 1x1 and fails).
        print("warning: segment batch of 1 image: BatchNorm layers are frozen", file=sys.stderr)
    losses = _loss_fn(model, device)
    result: dict[str, float] = {}
    for epoch in range(cfg.epochs):
        model.train()
        if single:
            _freeze_batchnorm(model)
        info = EpochInfo(epoch, epoch * len(loader), "segmentation loss",
                         "lower segment.lr or check the data", f"segment {epoch + 1}/{cfg.epochs}")
        result = train_one_epoch(loader, losses, optimizer, schedule, device, info, progress,
                                 len(loader))
        if not result:
            raise StageInputError("every training crop of the segmentation set is 255 (ignore); "
                                  "check the masks, or run stage 'masks' again")
        if on_epoch is not None:
            on_epoch(epoch, {**result, "lr": optimizer.param_groups[0]["lr"]})
    return result
