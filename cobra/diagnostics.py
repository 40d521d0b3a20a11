"""CoBra's own mechanisms, measured every epoch: what each loss term pushes into each branch,
how precise the k± selections of L_cap and L_sap are, and how each branch's CAM covers objects
and leaks onto background.

- **Gradient norms.** ‖∂(λ·L_term)/∂F‖ for each weighted term and each branch's last feature map
  F (the one its CAM head reads), and each as a ratio of L_cls's on the same branch: a projection
  loss whose ratio is ~0 cannot move the CAM, whatever its k.
- **Selection precision** (the paper's argument for its k, supplement Table 10), on a fixed
  sample of training images with known masks: for every anchor patch with a known majority class,
  the share of its k⁺ positives that share that class and of its k⁻ negatives that do not. The
  selections are the losses' own (`losses.select_pairs` on the same scores).
- **Coverage and leakage** per branch, on a fixed sample of val images: the share of ground-truth
  object pixels whose (max-normalised, ReLU'd) CAM of their class reaches the seed threshold
  `seeds.fixed_bg`, and the share of those above-threshold pixels that are background.

Every function here is pure tensor maths; `GradientProbe` and `MechanismMonitor` read nothing
but what they are given."""

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cobra import losses, objective
from cobra.config import LossConfig
from cobra.models.output import CoBraOutput
from cobra.objective import LossTerms

IGNORE = 255
UNKNOWN = -1  # a patch whose pixels are all ignore: neither an anchor nor a counted partner
PREFIX = "diag/"


# ----------------------------------------------------------------------------------------------
# Gradient each term puts on each branch's last feature map


def term_gradient_norms(weighted: Mapping[str, torch.Tensor],
                        features: Mapping[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
    """‖∂term/∂F_branch‖₂ (over the whole batch) for every weighted term and branch.

    weighted: term name → scalar loss already multiplied by its λ; features: branch name →
    (B, ·, N_h, N_w) feature map in the graph (None: branch off). A term that does not reach a
    branch (the detached guide of a one-way loss) has norm 0. Keys: `grad_<branch>_<term>`.
    The graph is kept, so the step's backward() runs afterwards as usual."""
    present = {name: f for name, f in features.items() if f is not None and f.requires_grad}
    norms: dict[str, torch.Tensor] = {}
    for term, value in weighted.items():
        grads = [None] * len(present)
        if value.requires_grad:
            grads = torch.autograd.grad(value, list(present.values()), retain_graph=True,
                                        allow_unused=True)
        for (branch, feats), grad in zip(present.items(), grads, strict=True):
            norm = grad.float().norm() if grad is not None else feats.new_zeros((), dtype=torch.float32)
            norms[f"grad_{branch}_{term}"] = norm.detach()
    return norms


def gradient_ratios(norms: Mapping[str, float]) -> dict[str, float]:
    """Each term's gradient norm over L_cls's on the same branch: `ratio_<branch>_<term>`."""
    ratios = {}
    for key, value in norms.items():
        _, branch, term = key.split("_", 2)
        cls = norms.get(f"grad_{branch}_cls", 0.0)
        if term != "cls" and cls > 0:
            ratios[f"ratio_{branch}_{term}"] = value / cls
    return ratios


# ----------------------------------------------------------------------------------------------
# Selection precision


def patch_majority_labels(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The majority ground-truth class of each patch, ignore pixels left out.

    masks: (B, H, W) long, 255 = ignore (nearest-resized to whole patches when H, W are not
    multiples of the grid); returns (B, M) long, M = N_h·N_w, UNKNOWN where every pixel of the
    patch is ignore."""
    nh, nw = grid
    if masks.shape[1] % nh or masks.shape[2] % nw:  # nearest-resize to whole patches
        size = (nh * -(-masks.shape[1] // nh), nw * -(-masks.shape[2] // nw))
        masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].long()
    b, h, w = masks.shape
    num_classes = int(masks[masks != IGNORE].max().item()) + 1 if (masks != IGNORE).any() else 1
    valid = masks != IGNORE
    onehot = F.one_hot(torch.where(valid, masks, 0), num_classes) * valid[..., None]
    counts = onehot.reshape(b, nh, h // nh, nw, w // nw, num_classes).sum(dim=(2, 4))
    counts = counts.reshape(b, nh * nw, num_classes)
    return torch.where(counts.sum(dim=2) > 0, counts.argmax(dim=2), UNKNOWN)


def selection_precision(pos_idx: torch.Tensor, neg_idx: torch.Tensor, patch_labels: torch.Tensor,
                        anchors: torch.Tensor | None = None) -> tuple[float, float]:
    """(positive precision, negative precision) of a k± selection, in [0, 1].

    pos_idx: (B, M, Kp), neg_idx: (B, M, Kn) indices into M; patch_labels: (B, M) with UNKNOWN.
    Positive precision: over anchors with a known class, the share of their known positives of
    the anchor's class; negative precision: the share of known negatives of another class.
    `anchors` (B, M) bool restricts the anchors (e.g. object patches only). NaN when no pair
    counts."""
    anchor_class = patch_labels[:, :, None]  # (B, M, 1)
    keep = patch_labels != UNKNOWN
    if anchors is not None:
        keep &= anchors
    keep = keep[:, :, None]

    def share(idx: torch.Tensor, same: bool) -> float:
        partner = patch_labels.gather(1, idx.flatten(1)).reshape(idx.shape)  # (B, M, K)
        counted = keep & (partner != UNKNOWN)
        hits = (partner == anchor_class) if same else (partner != anchor_class)
        total = counted.sum().item()
        return (hits & counted).sum().item() / total if total else float("nan")

    return share(pos_idx, True), share(neg_idx, False)


def selections(out: CoBraOutput, labels: torch.Tensor, cfg: LossConfig
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The k± selections the losses make on this output: {"cap": ..., "sap": ...}."""
    chosen = {}
    affinity = objective.cap_affinity(out, cfg)
    if affinity is not None:
        chosen["cap"] = losses.select_pairs(affinity, cfg.k_cap_pos, cfg.k_cap_neg,
                                            cfg.exclude_self_pair)
    if out.cam_cnn is not None and out.proj_vit is not None:
        scores = losses.sap_scores(out.cam_cnn, labels, **objective.sap_options(cfg))
        chosen["sap"] = losses.select_pairs(scores, cfg.k_sap_pos, cfg.k_sap_neg,
                                            cfg.exclude_self_pair)
    return chosen


def selection_metrics(out: CoBraOutput, labels: torch.Tensor, masks: torch.Tensor,
                      cfg: LossConfig) -> dict[str, float]:
    """Precision of both losses' selections, over all anchors and over object anchors (`_fg`).

    labels: (B, C) multi-hot; masks: (B, H, W) ground truth of the same images at input size."""
    grid = out.cam_cnn.shape[-2:] if out.cam_cnn is not None else out.a_obj.shape[-2:]
    patch_labels = patch_majority_labels(masks, tuple(grid))
    result = {}
    for loss, (pos_idx, neg_idx) in selections(out, labels, cfg).items():
        for suffix, anchors in (("", None), ("_fg", patch_labels > 0)):
            pos, neg = selection_precision(pos_idx, neg_idx, patch_labels, anchors)
            result[f"{loss}_pos_precision{suffix}"] = pos
            result[f"{loss}_neg_precision{suffix}"] = neg
    return result


# ----------------------------------------------------------------------------------------------
# CAM coverage and leakage


def normalised_cams(cam: torch.Tensor, labels: torch.Tensor, size: tuple[int, int]
                    ) -> torch.Tensor:
    """ReLU'd foreground CAMs upsampled to `size`, each max-normalised to [0, 1], zero for
    classes absent from the image (as the seeds keep only the image's classes).

    cam: (B, C+1, N_h, N_w); labels: (B, C). Returns (B, C, H, W)."""
    fg = F.interpolate(cam[:, 1:].float().relu(), size=size, mode="bilinear", align_corners=False)
    peak = fg.amax(dim=(2, 3), keepdim=True).clamp_min(1e-5)
    return fg / peak * (labels > 0.5)[:, :, None, None]


def coverage_and_leakage(cam: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                         threshold: float) -> tuple[float, float]:
    """(coverage, leakage) in [0, 1] of one branch's CAMs at a seed threshold.

    Coverage: of the object pixels of the image's classes, the share whose own class's CAM is
    ≥ threshold. Leakage: of the pixels where some present class's CAM is ≥ threshold, the share
    that are background. masks: (B, H, W) long, 255 = ignore. NaN where nothing counts."""
    cams = normalised_cams(cam, labels, tuple(masks.shape[-2:]))  # (B, C, H, W)
    valid = masks != IGNORE
    objects = valid & (masks > 0)
    own = cams.gather(1, (masks.clamp(1, cams.shape[1]) - 1)[:, None]).squeeze(1)
    covered = (own >= threshold) & objects
    active = (cams.amax(dim=1) >= threshold) & valid
    leaked = active & (masks == 0)
    n_obj, n_active = objects.sum().item(), active.sum().item()
    coverage = covered.sum().item() / n_obj if n_obj else float("nan")
    leakage = leaked.sum().item() / n_active if n_active else float("nan")
    return coverage, leakage


def cam_metrics(out: CoBraOutput, labels: torch.Tensor, masks: torch.Tensor, threshold: float
                ) -> dict[str, float]:
    """coverage_<branch> and leakage_<branch> for each branch that is on."""
    result = {}
    for branch, cam in (("cnn", out.cam_cnn), ("vit", out.cam_vit)):
        if cam is not None:
            result[f"coverage_{branch}"], result[f"leakage_{branch}"] = coverage_and_leakage(
                cam, labels, masks, threshold)
    return result


# ----------------------------------------------------------------------------------------------
# What the training stage runs


@dataclass
class DiagnosticSample:
    """Fixed images with their masks, at the training input size: (B, 3, S, S), (B, C), (B, S, S)."""

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor


class GradientProbe:
    """Term gradient norms on every `every`-th training step, averaged over an epoch. The norms
    stay on the device until the epoch's end (reading one would stall the step queue)."""

    def __init__(self, every: int) -> None:
        self.every, self.calls, self.count = every, 0, 0
        self.sums: dict[str, torch.Tensor] = {}

    def observe(self, weighted: Mapping[str, torch.Tensor], out: CoBraOutput) -> None:
        self.calls += 1
        if (self.calls - 1) % self.every:
            return
        norms = term_gradient_norms(weighted, {"cnn": out.features_cnn, "vit": out.features_vit})
        for key, value in norms.items():
            self.sums[key] = self.sums.get(key, 0) + value
        self.count += 1

    def epoch_metrics(self) -> dict[str, float]:
        """The epoch's mean norms and their ratios to L_cls's; then starts a new epoch."""
        means = {k: float(v) / self.count for k, v in self.sums.items()} if self.count else {}
        self.sums, self.count, self.calls = {}, 0, 0
        return {**means, **gradient_ratios(means)}


@torch.no_grad()
def sample_metrics(model: torch.nn.Module, train_sample: DiagnosticSample | None,
                   val_sample: DiagnosticSample | None, cfg: LossConfig, threshold: float
                   ) -> dict[str, float]:
    """Selection precision on the training sample and CAM coverage / leakage on the val sample.
    The model is left in eval mode."""
    model.eval()
    result: dict[str, float] = {}
    if train_sample is not None:
        out = model(train_sample.images)
        result.update(selection_metrics(out, train_sample.labels, train_sample.masks, cfg))
    if val_sample is not None:
        out = model(val_sample.images, affinity=False)
        result.update(cam_metrics(out, val_sample.labels, val_sample.masks, threshold))
    return result


class MechanismMonitor:
    """What the training stage runs: the gradient probe on its steps, and after each epoch the
    samples' selection precision and CAM coverage / leakage. Metrics are named `diag/<name>`."""

    def __init__(self, loss_cfg: LossConfig, threshold: float, grad_every: int,
                 train_sample: DiagnosticSample | None, val_sample: DiagnosticSample | None,
                 device: torch.device) -> None:
        self.loss_cfg = loss_cfg
        self.threshold = threshold
        self.probe = GradientProbe(grad_every)
        self.train_sample = _to(train_sample, device)
        self.val_sample = _to(val_sample, device)

    def observe(self, terms: LossTerms, out: CoBraOutput) -> None:
        """Called with every training step's terms, before its backward()."""
        self.probe.observe(terms.weighted(self.loss_cfg), out)

    def epoch_metrics(self, model: torch.nn.Module) -> dict[str, float]:
        metrics = self.probe.epoch_metrics()
        metrics.update(sample_metrics(model, self.train_sample, self.val_sample, self.loss_cfg,
                                      self.threshold))
        return {PREFIX + k: v for k, v in metrics.items()}


def _to(sample: DiagnosticSample | None, device: torch.device) -> DiagnosticSample | None:
    return None if sample is None else DiagnosticSample(
        sample.images.to(device), sample.labels.to(device), sample.masks.to(device))
