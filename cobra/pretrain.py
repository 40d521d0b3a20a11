"""Built-in offline pretraining: `model.pretrained: builtin` and `launch.py pretrain`.

Where ImageNet weights cannot be had (no network, as on CI), each backbone the config names is
trained once for multi-label classification on the procedural corpus (`cobra.data.corpus`, disjoint
from the segmentation classes) and cached as `$COBRA_CACHE/weights/<key>/<timm name>.safetensors`,
where the key fingerprints the corpus version and every `pretrain.*` setting. The files are what
the offline path of `model.pretrained` loads (a directory of `<timm name>.safetensors`), so a
builtin run and a run pointed at that directory build the same model.

Writes are atomic (a temporary name, then a rename) and serialised by a lock file, so a killed
pretraining leaves no weights file that would be used and two trials starting together train once.
"""

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from cobra import metrics
from cobra.config import Config, PretrainConfig
from cobra.data import corpus
from cobra.data.synthetic import cache_dir
from cobra.data.transforms import normalize
from cobra.errors import ConfigError
from cobra.layout import atomic_write_text
from cobra.locks import locked
from cobra.models.backbones import undo_last_stride
from cobra.runtime import resolve_device

BUILTIN = "builtin"
SHIFT = 8  # random translation (pixels) of the training augmentation, with horizontal flips


def weights_dir(cfg: PretrainConfig) -> Path:
    """The cache directory of one pretraining recipe (corpus version + every setting)."""
    settings = dataclasses.asdict(cfg)
    settings.pop("parallel")  # how the work is spread, not what is learned
    recipe = {"corpus_version": corpus.CORPUS_VERSION, **settings}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "weights" / key


def backbones_of(cfg: Config) -> list[tuple[str, str]]:
    """(role, timm name) of every backbone the run's branches build."""
    return [(role, name) for role, name in (("cnn", cfg.model.cnn), ("vit", cfg.model.vit))
            if cfg.model.branches in ("both", role)]


def resolve(pretrained: bool | str, cfg: Config, roles: list[tuple[str, str]]) -> bool | str:
    """`pretrained` with `builtin` replaced by its weights directory (pretraining what is
    missing); any other value is returned unchanged."""
    if pretrained != BUILTIN:
        return pretrained
    return str(ensure(cfg.pretrain, roles, progress=cfg.train.progress, device=cfg.train.device)[0])


def ensure(cfg: PretrainConfig, roles: list[tuple[str, str]], progress: bool = True,
           device: str = "auto") -> tuple[Path, dict[str, dict[str, Any]]]:
    """Pretrain every (role, timm name) not cached yet; returns the directory and, per name,
    its held-out scores. Torch's RNG is left as it was (checking and training backbones draw
    from it), so a run that makes the weights first starts as one that finds them cached."""
    folder = weights_dir(cfg)
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        missing = [(role, name) for role, name in roles if not _usable(folder, name)]
        for role, name in missing:  # before any work, and only for what is to be trained
            check_supported(role, name)
        folder.mkdir(parents=True, exist_ok=True)
        with locked(folder / ".lock"):
            # checked again under the lock: another process may have made some meanwhile
            todo = [(role, name) for role, name in roles if not _usable(folder, name, repair=True)]
            if todo:
                print(f"making the builtin weights of {', '.join(name for _, name in todo)}: "
                      f"pretraining on the procedural corpus, once (cached in {folder})",
                      file=sys.stderr, flush=True)
                _pretrain_all(cfg, todo, folder, progress, resolve_device(device))
            scores = {name: json.loads((folder / f"{name}.json").read_text()) for _, name in roles}
    return folder, scores


def _record_path(weights: Path) -> Path:
    return weights.with_name(f"{weights.name}.sha256")


def _digest(path: Path) -> dict[str, Any]:
    """Size and sha256 of a file: what is recorded when cached weights are written."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return {"size": path.stat().st_size, "sha256": sha.hexdigest()}


def _usable(folder: Path, name: str, repair: bool = False) -> bool:
    """Whether the cached weights of `name` are there and are the bytes that were written
    (size and sha256 against the record made with them). A file cached before records were
    kept is adopted when safetensors can read it whole. With `repair` (under the lock), a
    damaged file is removed, named on stderr, and made again."""
    weights = folder / f"{name}.safetensors"
    if not weights.is_file():
        return False
    record = _record_path(weights)
    try:
        if record.is_file():
            ok = json.loads(record.read_text()) == _digest(weights)
        else:
            load_file(str(weights))
            ok = True
            if repair:
                atomic_write_text(record, json.dumps(_digest(weights)))
    except Exception:  # noqa: BLE001 - unreadable, truncated, a broken record: all "damaged"
        ok = False
    if not ok and repair:
        print(f"warning: cached weights '{weights}' are damaged (not the bytes written); "
              f"pretraining '{name}' again", file=sys.stderr, flush=True)
        weights.unlink(missing_ok=True)
        record.unlink(missing_ok=True)
    return ok


def _pretrain_all(cfg: PretrainConfig, todo: list[tuple[str, str]], folder: Path,
                  progress: bool, device: torch.device) -> None:
    """Train each backbone in `todo`. On a CPU with a core per backbone, each gets its own
    process and share of the threads: small networks use a second thread poorly, so two in
    parallel finish far sooner than one after the other (the demo's first run, measured)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or len(todo) == 1 or threads < len(todo) or not cfg.parallel:
        data = _corpus(cfg)
        for role, name in todo:
            _pretrain_one(cfg, role, name, data, folder, progress, device)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    share = threads // len(todo)
    with ProcessPoolExecutor(len(todo), mp_context=context) as pool:
        jobs = [pool.submit(_pretrain_in_process, cfg, role, name, folder, progress, share, i)
                for i, (role, name) in enumerate(todo)]
        for job in jobs:
            job.result()  # re-raises a child's error (e.g. a diverged run) here


def _pretrain_in_process(cfg: PretrainConfig, role: str, name: str, folder: Path,
                         progress: bool, threads: int, position: int) -> None:
    torch.set_num_threads(threads)
    _pretrain_one(cfg, role, name, _corpus(cfg), folder, progress, torch.device("cpu"), position)


def check_supported(role: str, name: str) -> None:
    """Builtin pretraining trains a timm CNN with feature maps, or a plain timm ViT."""
    if not timm.is_model(name):
        raise ConfigError(f"'{name}' is not a timm model name; model.pretrained=builtin needs "
                          f"one (e.g. resnet18, deit_tiny_patch16_224)")
    model = timm.create_model(name, pretrained=False)
    is_vit = hasattr(model, "blocks") and hasattr(model, "patch_embed")
    if role == "vit" and not is_vit:
        raise ConfigError(f"model.pretrained=builtin cannot pretrain '{name}' as the ViT branch: "
                          f"it is not a plain timm ViT; use one such as deit_tiny_patch16_224, "
                          f"or set model.pretrained to true, false or a weights directory")
    if role == "cnn" and (is_vit or not hasattr(model, "feature_info")):
        raise ConfigError(f"model.pretrained=builtin cannot pretrain '{name}' as the CNN branch: "
                          "it has no convolutional feature maps; use a timm CNN such as resnet18, "
                          "or set model.pretrained to true, false or a weights directory")


def _corpus(cfg: PretrainConfig) -> dict[str, dict[str, np.ndarray]]:
    return {"train": corpus.render_split(cfg.seed, 0, cfg.num_images, cfg.image_size),
            "val": corpus.render_split(cfg.seed, 1, cfg.num_val, cfg.image_size)}


class _Pretrainer(nn.Module):
    """A timm classifier plus a dense head: image logits (B, K) from the model's own pooling
    (GAP, or the class token) and per-position logits (B, K + 1, h, w) over background + K
    categories from its last feature map (CNN) or patch tokens (ViT).

    The dense head is token labeling (Jiang et al., "All Tokens Matter", 2021): every position
    also learns the category under it, which gives a small network far more signal per step than
    one label per image; on 2 CPU cores that is the difference between learning and not. Only
    the timm model's weights are kept; the dense head is dropped after pretraining."""

    def __init__(self, role: str, name: str, cfg: PretrainConfig) -> None:
        super().__init__()
        kwargs = {"img_size": cfg.image_size} if role == "vit" else {}
        self.model = timm.create_model(name, pretrained=False,
                                       num_classes=len(corpus.CATEGORY_NAMES), **kwargs)
        self.is_vit = role == "vit"
        if not self.is_vit:
            # Pretrain at the output stride CoBra's CNN branch runs at (16), so the weights meet
            # the geometry they will be fine-tuned in and the dense head sees a finer grid.
            last_stage = self.model.feature_info[-1]["module"]
            undo_last_stride(self.model.get_submodule(last_stage))
        width = self.model.embed_dim if self.is_vit else self.model.num_features
        self.dense = nn.Conv2d(width, len(corpus.CATEGORY_NAMES) + 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(x)
        logits = self.model.forward_head(feats)
        if self.is_vit:
            patches = feats[:, self.model.num_prefix_tokens:]  # (B, N, E)
            h, w = self.model.patch_embed.dynamic_feat_size(x.shape[-2:])
            feats = patches.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return logits, self.dense(feats)


def _batch(split: dict[str, np.ndarray], idx: np.ndarray, rng: np.random.Generator | None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (B, 3, S, S) normalised, labels (B, K), category maps (B, S, S) long; with `rng`,
    the same random flip and shift for image and map (a shift pads the map with background)."""
    x = torch.from_numpy(split["images"][idx]).permute(0, 3, 1, 2).float()
    y = torch.from_numpy(split["labels"][idx])
    cats = torch.from_numpy(split["categories"][idx]).long()
    if rng is None:
        return normalize(x), y, cats
    b, _, s, _ = x.shape
    flips = torch.from_numpy(rng.random(b) < 0.5)
    x[flips], cats[flips] = x[flips].flip(-1), cats[flips].flip(-1)
    x = F.pad(x, (SHIFT,) * 4, mode="reflect")
    cats = F.pad(cats, (SHIFT,) * 4, value=0)
    dy, dx = rng.integers(0, 2 * SHIFT + 1, (2, b))
    x = torch.stack([x[i, :, dy[i]:dy[i] + s, dx[i]:dx[i] + s] for i in range(b)])
    cats = torch.stack([cats[i, dy[i]:dy[i] + s, dx[i]:dx[i] + s] for i in range(b)])
    return normalize(x), y, cats


def _loss(logits: torch.Tensor, dense: torch.Tensor, labels: torch.Tensor, cats: torch.Tensor
          ) -> torch.Tensor:
    """Soft-target cross-entropy of the image logits (multi-hot labels share the mass) plus
    cross-entropy of the dense logits against the category under each cell's centre."""
    image = -(labels / labels.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    h, w = dense.shape[-2:]
    s = cats.shape[-1]
    ys = ((torch.arange(h, device=cats.device) + 0.5) * s / h).long()
    xs = ((torch.arange(w, device=cats.device) + 0.5) * s / w).long()
    target = cats[:, ys][:, :, xs]
    return image + F.cross_entropy(dense, target)


def _lr(cfg: PretrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up to `lr`, then cosine decay to zero."""
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))


@torch.no_grad()
def score_pretrainer(net: _Pretrainer, split: dict[str, np.ndarray], batch: int = 128
             ) -> dict[str, float]:
    """top-1 (% of images whose highest score is a present category) and mAP (%)."""
    net.eval()
    device = next(net.parameters()).device
    n = len(split["labels"])
    scores = torch.cat([
        net(_batch(split, np.arange(i, min(i + batch, n)), None)[0].to(device))[0].cpu()
        for i in range(0, n, batch)]).numpy()
    labels = split["labels"]
    top1 = labels[np.arange(n), scores.argmax(1)].mean() * 100.0
    return {"top1": round(float(top1), 2),
            "map": round(metrics.mean_average_precision(scores, labels), 2)}


def _pretrain_one(cfg: PretrainConfig, role: str, name: str, data: dict[str, dict[str, np.ndarray]],
                  folder: Path, progress: bool, device: torch.device, position: int = 0) -> None:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 1])
    net = _Pretrainer(role, name, cfg).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(data["train"]["labels"])
    steps_per_epoch = max(n // cfg.batch_size, 1)
    start = time.time()
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc=f"pretrain {name}", disable=not progress,
               leave=False, position=position)
    step = 0
    for _ in range(cfg.epochs):
        net.train()
        order = rng.permutation(n)
        for k in range(steps_per_epoch):
            idx = np.sort(order[k * cfg.batch_size:(k + 1) * cfg.batch_size])
            x, labels, cats = (t.to(device) for t in _batch(data["train"], idx, rng))
            for group in optimizer.param_groups:
                group["lr"] = _lr(cfg, step, steps_per_epoch)
            loss = _loss(*net(x), labels, cats)
            if not torch.isfinite(loss):
                raise ConfigError(f"pretraining {name} diverged (non-finite loss); lower "
                                  f"pretrain.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    scores = score_pretrainer(net, data["val"])
    scores.update(role=role, seconds=round(time.time() - start, 1), steps=step)
    atomic_write_text(folder / f"{name}.json", json.dumps(scores, indent=2))
    # The weights file is renamed into place last: its presence means "complete".
    state = {k: v.detach().cpu().contiguous() for k, v in net.model.state_dict().items()}
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    weights = folder / f"{name}.safetensors"
    try:
        save_file(state, str(tmp))
        # the record first: weights without one would be adopted unverified
        atomic_write_text(_record_path(weights), json.dumps(_digest(tmp)))
        os.replace(tmp, weights)
    finally:
        tmp.unlink(missing_ok=True)


def run(cfg: Config) -> dict[str, Any]:
    """`launch.py pretrain`: make (or find) the builtin weights of the config's backbones."""
    folder, scores = ensure(cfg.pretrain, backbones_of(cfg), progress=cfg.train.progress,
                            device=cfg.train.device)
    return {"weights_dir": str(folder), **{f"{name}_top1": s["top1"] for name, s in scores.items()},
            **{f"{name}_map": s["map"] for name, s in scores.items()}}
