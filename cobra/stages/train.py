"""Stage `train`: CoBra from image-level labels (paper §3.3, §10).

SGD (the paper's) or AdamW (`train.optimizer`) with an optional linear warm-up and poly decay,
new heads at `head_lr_mult` × lr, L_cam and the projection losses switched on
after their start epochs, per-epoch classification mAP of each branch over the whole validation
set, an atomic checkpoint every epoch. Reports through a `Reporter`; knows nothing of Ray/MLflow."""

import math
import random
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cobra import accel, diagnostics, metrics, pretrain
from cobra.checkpoint import (
    RESUME_SAFE_KEYS,
    check_resume_matches,
    checkpoint_config,
    load_checkpoint,
    resume_safe,
    save_checkpoint,
)
from cobra.config import Config, flatten, load_config, parse_override, save_config, switch
from cobra.data import build_eval_dataset, build_source, build_train_dataset, resolve_train_split
from cobra.data.transforms import eval_transform
from cobra.errors import ConfigError, StageInputError
from cobra.layout import RunLayout
from cobra.models import build_model
from cobra.models.cobra import CoBra
from cobra.objective import check_k_values, compute_losses
from cobra.reporting import Reporter
from cobra.runtime import EpochInfo, PolyLR, resolve_device, train_one_epoch
from cobra.weights import check_backbones

NONFINITE_HINT = "lower train.lr or check the data"
# What each epoch reports (an early-stopping scheduler acts on these), and what training reports.
EPOCH_METRICS = ("loss", "loss_cls", "loss_cam", "loss_cap", "loss_sap", "cls_map_cnn",
                 "cls_map_vit", "cls_map_mean")
METRICS = (*EPOCH_METRICS, "lr")


def resume_config(layout: RunLayout, overrides: list[str]) -> Config:
    """The config to continue a run with: its config.yaml, `--set` only on keys that cannot change
    what is trained, checked against the checkpoint it resumes from."""
    for text in overrides:
        key, _ = parse_override(text)
        if not resume_safe(key):
            raise ConfigError(f"--set {key} cannot change on --resume (the run is trained with "
                              f"its config.yaml); only {', '.join(RESUME_SAFE_KEYS)} and run.* "
                              f"can; start a new run to change it")
    cfg = load_config(layout.config, overrides, saved=True)
    if layout.last_checkpoint.exists():
        trained = checkpoint_config(load_checkpoint(layout.last_checkpoint))
        check_resume_matches(cfg, trained, layout.last_checkpoint)
    return cfg


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_loader(dataset, batch_size: int, workers: int, seed: int, shuffle: bool,
            pin_memory: bool = False, persistent: bool = False) -> DataLoader:
    # A generator seeded per epoch makes the order and the workers' augmentation streams a pure
    # function of (seed, epoch), so a resumed run replays exactly what an uninterrupted one sees.
    # That is why training workers are not persistent: a kept worker would carry its stream
    # across epochs. The validation loader has no randomness and keeps its workers.
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      drop_last=shuffle and len(dataset) >= batch_size, generator=generator,
                      persistent_workers=persistent and workers > 0, pin_memory=pin_memory)


def build_optimizer(model: CoBra, cfg: Config) -> torch.optim.Optimizer:
    """SGD (the paper's) or AdamW over the model's backbone / head groups."""
    groups = model.param_groups(cfg.train.lr, cfg.train.head_lr_mult, cfg.train.weight_decay,
                                groups=switch(cfg, "train.param_groups"))
    if cfg.train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.train.lr, momentum=cfg.train.momentum,
                           weight_decay=cfg.train.weight_decay)


@torch.no_grad()
def evaluate_classification(model: CoBra, loader: DataLoader, device: torch.device
                            ) -> dict[str, float]:
    """Classification mAP (%) of each branch over the whole loader (not per batch)."""
    model.eval()
    scores: dict[str, list[torch.Tensor]] = {"cnn": [], "vit": []}
    labels = []
    for batch in loader:
        out = model(batch["image"].to(device))
        for name, logits in (("cnn", out.logits_cnn), ("vit", out.logits_vit)):
            if logits is not None:
                scores[name].append(torch.sigmoid(logits).cpu())
        labels.append(batch["label"])
    y = torch.cat(labels).numpy()
    result = {f"cls_map_{name}": metrics.mean_average_precision(torch.cat(s).numpy(), y)
              for name, s in scores.items() if s}
    # one number per epoch whatever the branch setup: what an early-stopping scheduler watches
    result["cls_map_mean"] = float(np.mean(list(result.values())))
    return result


def _build_model(cfg: Config, weights: bool | str, num_classes: int, device: torch.device
                 ) -> tuple[CoBra, bool]:
    """CoBra on `device` from `weights` (`model.pretrained` resolved); whether its inputs go
    channels-last."""
    check_backbones(cfg, weights)
    model = build_model(replace(cfg.model, pretrained=weights), num_classes).to(device)
    nhwc = accel.use_channels_last(model, device, cfg.train.channels_last)
    grid = model.patch_grid(cfg.data.image_size, cfg.data.image_size)
    if cfg.model.branches == "both":
        check_k_values(cfg.loss, grid[0] * grid[1])
    return model, nhwc


def _resume(checkpoint: Path, model: CoBra, optimizer: torch.optim.Optimizer,
            schedule: PolyLR, device: torch.device) -> int:
    """Load a checkpoint's weights, optimizer and lr schedule state; the epoch to continue
    from."""
    state = load_checkpoint(checkpoint, map_location=device)
    try:
        model.load_state_dict(state["model"])
        if state["optimizer"] is not None:  # None: a finished run (see run's save)
            optimizer.load_state_dict(state["optimizer"])
        if state.get("schedule") is not None:  # None: a finished run, an older checkpoint
            schedule.load_state_dict(state["schedule"])
    except (RuntimeError, ValueError, KeyError, TypeError):
        raise StageInputError(f"checkpoint '{checkpoint}' does not fit the model of this "
                              f"run's config; resume with the config it was trained with "
                              f"or start a new run") from None
    return state["epoch"] + 1


def _mask_at(mask: np.ndarray, size: int) -> torch.Tensor:
    """(H, W) uint8 label map → (size, size) long, nearest (class indices must not blend)."""
    grid = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(grid, size=(size, size), mode="nearest")[0, 0].long()


def mechanism_monitor(cfg: Config, train_split: str, device: torch.device
                      ) -> diagnostics.MechanismMonitor | None:
    """The per-epoch mechanism diagnostics (`train.diagnostics`), on fixed train and val images
    scored at the seeds' fixed background score."""
    if not cfg.train.diagnostics:
        return None
    return diagnostics.MechanismMonitor(
        cfg.loss, cfg.seeds.fixed_bg, cfg.train.diag_grad_every,
        diagnostic_sample(cfg, train_split), diagnostic_sample(cfg, cfg.data.val_split), device)


def diagnostic_sample(cfg: Config, split: str) -> diagnostics.DiagnosticSample | None:
    """The first `train.diag_images` images of `split` with their masks, resized to the
    training input size as validation sees them; None when the split has no masks."""
    source = build_source(cfg, split)
    if not source.has_masks:
        return None
    size = cfg.data.image_size
    ids = source.ids[:cfg.train.diag_images]
    return diagnostics.DiagnosticSample(
        images=torch.stack([eval_transform(source.load_image(i), size) for i in ids]),
        labels=torch.stack([torch.from_numpy(source.labels(i)) for i in ids]),
        masks=torch.stack([_mask_at(source.load_mask(i), size) for i in ids]))


def _steps_per_epoch(cfg: Config, num_images: int) -> int:
    steps = math.floor(num_images / cfg.train.batch_size) or 1
    return min(steps, cfg.train.max_steps_per_epoch or steps)


def _loss_fn(cfg: Config, model: CoBra, device: torch.device, nhwc: bool, monitor):
    """(batch, epoch) → (total loss, named terms): one training step's forward and losses."""
    def losses(batch: dict, epoch: int):
        images = accel.to_device(batch["image"], device, nhwc)
        with accel.autocast(device, cfg.train.amp):
            out = model(images)
            terms = compute_losses(out, batch["label"].to(device), cfg.loss, epoch,
                                   tuple(images.shape[-2:]))
        if monitor is not None:
            monitor.observe(terms, out)
        return terms.total, terms.named()

    return losses


def _save_epoch(cfg: Config, layout: RunLayout, model: CoBra, optimizer: torch.optim.Optimizer,
                schedule: PolyLR, epoch: int) -> None:
    # After the last epoch nothing resumes training, so the optimizer state (as large as the
    # weights with momentum) is not kept: every copy of the final checkpoint (run directory,
    # Ray, MLflow) is the weights alone.
    finished = epoch + 1 == cfg.train.epochs
    save_checkpoint(layout.last_checkpoint, model=model, cfg=cfg, epoch=epoch,
                    optimizer=None if finished else optimizer,
                    schedule=None if finished else schedule)


def run(cfg: Config, layout: RunLayout, reporter: Reporter,
        resume_from: Path | None = None) -> dict[str, float]:
    """Train CoBra; returns the last epoch's metrics. Checkpoint: `layout.last_checkpoint`."""
    device = resolve_device(cfg.train.device)
    check_backbones(cfg)  # before the datasets: a wrong network name fails in a second
    accel.configure_backend(device)
    seed_everything(cfg.train.seed)
    train_set = build_train_dataset(cfg, resolve_train_split(cfg))
    val_set = build_eval_dataset(cfg, cfg.data.val_split)
    # a step of its own: `builtin` weights are made here (once, said on stderr, with progress)
    weights = pretrain.resolve(cfg.model.pretrained, cfg, pretrain.backbones_of(cfg))
    model, nhwc = _build_model(cfg, weights, train_set.num_classes, device)
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = _steps_per_epoch(cfg, len(train_set))
    # made before a resumed optimizer state brings back the lrs of the step it was saved at
    schedule = PolyLR(optimizer, steps_per_epoch * cfg.train.epochs, cfg.train.poly_power,
                      round(cfg.train.warmup_epochs * steps_per_epoch))
    start_epoch = 0 if resume_from is None else _resume(resume_from, model, optimizer, schedule,
                                                        device)
    save_config(cfg, layout.config)
    reporter.log_params(flatten(cfg))
    workers = cfg.data.num_workers
    pin = accel.loader_options(device)["pin_memory"]
    val_loader = make_loader(val_set, cfg.train.batch_size, workers, cfg.train.seed,
                             shuffle=False, pin_memory=pin, persistent=True)
    monitor = mechanism_monitor(cfg, resolve_train_split(cfg), device)
    losses = _loss_fn(cfg, model, device, nhwc, monitor)
    result: dict[str, float] = {}
    for epoch in range(start_epoch, cfg.train.epochs):
        torch.manual_seed(cfg.train.seed * 1009 + epoch)
        model.train()
        loader = make_loader(train_set, cfg.train.batch_size, workers,
                             cfg.train.seed * 1009 + epoch, shuffle=True, pin_memory=pin)
        info = EpochInfo(epoch, epoch * steps_per_epoch, "loss", NONFINITE_HINT,
                         f"epoch {epoch + 1}/{cfg.train.epochs}")
        result = train_one_epoch(islice(loader, steps_per_epoch),
                                 lambda batch, e=epoch: losses(batch, e), optimizer, schedule,
                                 device, info, cfg.train.progress, steps_per_epoch)
        result.update(evaluate_classification(model, val_loader, device))
        if monitor is not None:
            result.update(monitor.epoch_metrics(model))
        result["lr"] = optimizer.param_groups[0]["lr"]
        _save_epoch(cfg, layout, model, optimizer, schedule, epoch)
        reporter.log_epoch(epoch, result, checkpoint=layout.checkpoints)
    layout.update_summary({k: v for k, v in result.items() if k.startswith("cls_map")})
    return result
