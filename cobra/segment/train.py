"""Fully supervised training of the segmentation network on the pseudo masks (SPEC "Segmentation")."""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cobra.config import SegmentConfig
from cobra.errors import NonFiniteLossError, StageInputError

HEAD_LR_MULT = 10.0  # new decoder/head layers learn 10x faster than the (pretrained) encoder
POLY_POWER = 0.9


def param_groups(model: nn.Module, lr: float) -> list[dict]:
    """Encoder parameters at `lr`, everything else (decoder, head) at HEAD_LR_MULT x lr."""
    encoder = getattr(model, "encoder", None)
    enc_ids = {id(p) for p in encoder.parameters()} if isinstance(encoder, nn.Module) else set()
    enc = [p for p in model.parameters() if p.requires_grad and id(p) in enc_ids]
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in enc_ids]
    groups = [{"params": enc, "lr": lr}, {"params": head, "lr": lr * HEAD_LR_MULT}]
    return [g for g in groups if g["params"]]


def _freeze_batchnorm(model: nn.Module) -> None:
    """Put BatchNorm layers in eval mode (running statistics, no update)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def train_segmenter(model: nn.Module, dataset: Dataset, cfg: SegmentConfig,
                    device: torch.device | str, progress: bool = True,
                    on_epoch: Callable[[int, dict], None] | None = None,
                    num_workers: int = 0) -> dict[str, float]:
    """SGD + poly lr, cross-entropy (255 ignored) over batches {"image": (B,3,S,S), "mask": (B,S,S)}.

    Returns {"seg_loss": mean loss of the last epoch}; `on_epoch(epoch, metrics)` (epoch from 0)
    gets {"seg_loss", "lr"} after every epoch. A NaN/inf loss raises NonFiniteLossError.
    """
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
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.SGD(param_groups(model, cfg.lr), lr=cfg.lr, momentum=0.9,
                                weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    single = batch_size == 1
    if single:
        # BatchNorm cannot train on one image (DeepLabV3+'s pooled ASPP branch is 1x1 and fails).
        print("warning: segment batch of 1 image: BatchNorm layers are frozen", file=sys.stderr)

    result: dict[str, float] = {}
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        if single:
            _freeze_batchnorm(model)
        total, count = 0.0, 0
        bar = tqdm(loader, total=steps_per_epoch, disable=not progress, leave=False,
                   desc=f"segment {epoch + 1}/{cfg.epochs}")
        for batch in bar:
            factor = (1.0 - min(step, total_steps) / max(total_steps, 1)) ** POLY_POWER
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
            images = batch["image"].to(device, non_blocking=True)
            masks = batch["mask"].to(device, non_blocking=True)
            step += 1
            if bool((masks == 255).all()):
                # Nothing to learn (crops of fully ignored masks); the mean over 0 pixels is NaN.
                continue
            logits = model(images)
            loss = F.cross_entropy(logits, masks, ignore_index=255)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"non-finite segmentation loss at epoch {epoch} step "
                                         f"{step - 1} ({loss.item()}); lower segment.lr or "
                                         f"check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            count += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        if count == 0:
            raise StageInputError("every training crop of the segmentation set is 255 (ignore); "
                                  "check the masks, or run stage 'masks' again")
        result = {"seg_loss": total / count}
        if on_epoch is not None:
            on_epoch(epoch, {**result, "lr": optimizer.param_groups[0]["lr"]})
    return result
