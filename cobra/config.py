"""Typed run configuration: defaults < YAML file < `--set key=value` overrides.

Every knob has a dotted name (`loss.k_sap_pos`, `model.embed_dim`, ...). Sweeps, MLflow params and
checkpoints all use these names, so they are the public contract of the project. Unknown keys,
wrong types and out-of-range values raise `ConfigError` naming the dotted key."""

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cobra.errors import ConfigError

# Seeds feed numpy (< 2**32) and torch (seed * 1009 + epoch must stay within 64 bits).
SEED_MAX = 2**32 - 1
# The key a sweep's `repeats` vary: its values are replicates of one setting, averaged in a
# report, never an ablation axis.
REPLICATE_KEY = "train.seed"
# Every integer key must fit a 64-bit integer: torch, numpy and MLflow all store them so.
INT_MAX = 2**63 - 1
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")

# ----------------------------------------------------------------------------------------------
# Field helpers: validation rules travel with the field as dataclass metadata. Any dataclass
# declared with them (these sections, a sweep file's in `cobra.sweep.spec`) is read by `build`.


def knob(default: Any, *, choices: Iterable[Any] | None = None, ge: float | None = None,
         gt: float | None = None, le: float | None = None, help: str = "") -> Any:  # noqa: A002
    """A dataclass field with its default, its allowed values or bounds, and its help text."""
    meta = {"choices": tuple(choices) if choices else None, "ge": ge, "gt": gt, "le": le,
            "help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


_f = knob  # short, for the long tables of knobs below


# ----------------------------------------------------------------------------------------------
# Sections. Each lives next to the code that reads it in spirit; they are gathered here so the
# whole contract can be read (and validated) in one place.


@dataclass
class ModelConfig:
    cnn: str = _f("resnet152", help="timm name of the CNN (CAK) branch backbone")
    vit: str = _f("deit_small_patch16_224", help="timm name of the ViT (SAK) branch backbone")
    branches: str = _f("both", choices=("both", "cnn", "vit"),
                       help="`cnn`/`vit` train one branch alone (Table 3's single-branch rows)")
    embed_dim: int = _f(256, ge=1, help="D, the CAP/SAP projection size (Table 11)")
    proj_head: str = _f(
        "conv", choices=("conv", "cam"),
        help="CAP/SAP projection of each branch: conv = a 1x1 conv head to embed_dim (paper); "
        "cam = the branch's own class map (D = classes + 1), so L_cap and L_sap shape the maps "
        "seeds are made from rather than a side head the CAM head never reads")
    pretrained: bool | str = _f(
        True, help="true: timm hub weights; false: random init; builtin: backbones pretrained "
        "offline on the procedural corpus (`launch.py pretrain`, cached, made on first use); a "
        "path: a local weights file (single branch) or a directory holding "
        "<timm_name>.safetensors|.pth per backbone")
    cnn_stride: int = _f(
        16, choices=(8, 16),
        help="output stride of the CNN branch: 16 as in the paper, where it equals the ViT's "
        "16 px patch; set it to the ViT's patch size so both branches share one patch grid "
        "(an 8 px ViT with a stride-16 CNN leaves L_cap contrasting upsampled CNN vectors)")
    cnn_downsample: str = _f(
        "stride", choices=("stride", "dilate"),
        help="how the CNN reaches model.cnn_stride: later stages at stride 1 without dilation "
        "(authors) or timm's dilated output_stride")
    freeze_bn: bool = _f(
        True, help="BatchNorm layers stay in eval mode (frozen running statistics) while their "
        "scale and shift train, as in IRN and the authors' code; the stem's BN follows freeze_stem")
    freeze_stem: bool = _f(True, help="CNN stem (first conv and its BN) takes no gradient (IRN)")
    detach_stage2: bool | None = _f(
        None, help="stop gradients below the CNN's second stage, so its first two stages keep "
        "their weights (the authors' code, IRN lineage). None: on when model.pretrained is not "
        "false, because only pretrained low-level filters are worth keeping; a randomly "
        "initialised CNN must learn them")
    vit_cam_kernel: int = _f(3, ge=1, help="kernel size of the ViT CAM head (authors: 3)")
    vit_cam_bias: bool = _f(True, help="ViT CAM head has a bias, as in the authors' code (the "
                            "paper is silent; the CNN CAM head has none in either)")


@dataclass
class LossConfig:
    k_sap_pos: int = _f(20, ge=1, help="k+ for L_sap: top-k patches by the pseudo class score")
    k_sap_neg: int = _f(5, ge=1, help="k- for L_sap: bottom-k patches by the pseudo class score")
    k_cap_pos: int = _f(5, ge=1, help="k+ for L_cap: top-k patches by ViT patch affinity")
    k_cap_neg: int = _f(20, ge=1, help="k- for L_cap: bottom-k patches by ViT patch affinity")
    lambda_cam: float = _f(0.1, ge=0.0, help="λ1, weight of L_cam")
    lambda_proj: float = _f(0.1, ge=0.0, help="λ2, weight of L_sap + L_cap")
    lambda_sap: float | None = _f(None, ge=0.0,
                                  help="weight of L_sap alone (Table 12); None: lambda_proj")
    lambda_cap: float | None = _f(None, ge=0.0,
                                  help="weight of L_cap alone (Table 12); None: lambda_proj")
    tau: float = _f(0.1, gt=0.0, help="InfoNCE temperature τ")
    cam_start_epoch: int = _f(1, ge=0, help="epochs trained before L_cam switches on")
    proj_start_epoch: int = _f(1, ge=0, help="epochs trained before L_sap and L_cap switch on")
    use_cam: bool = _f(True, help="include L_cam (Table 3)")
    use_cap: bool = _f(True, help="include L_cap (Table 3)")
    use_sap: bool = _f(True, help="include L_sap (Table 3)")
    exclude_self_pair: bool = _f(False, help="drop the anchor itself from its positive set")
    sap_bg: float | None = _f(
        None, gt=0.0, le=1.0,
        help="L_sap's background: None = the CNN CAM's background channel wins the argmax "
        "(paper), although no loss teaches that channel where the background is; a score in "
        "(0, 1) = a patch is background where every present class's max-normalised CNN score "
        "falls below it (IRN's fixed background score), and background rows rank patches by "
        "their lowest class score")
    proj_space: str = _f(
        "head", choices=("head", "seed"),
        help="the vectors L_cap and L_sap contrast: head = each branch's projection "
        "(model.proj_head; paper); seed = each branch's seed scores at every patch (present "
        "classes' max-normalised maps and the background score 2·loss.sap_bg − their max), so "
        "the contrast moves only what a seed reads, not the background or absent-class channels "
        "of the class map. Needs loss.sap_bg and model.proj_head: cam")
    cap_affinity: str = _f(
        "attention", choices=("attention", "tokens"),
        help="L_cap's patch affinity from the ViT: attention = the patch-to-patch attention "
        "summed over layers (paper); tokens = cosine similarity of the last layer's patch "
        "tokens, for ViTs whose attention rows all peak on the same few sink tokens")
    cam_form: str | None = _f(
        None, choices=("paper", "code"),
        help="L_cam: paper = mean|ΔM| over all maps + the same over positive classes, "
        "align_corners=False; code = the authors' optimised term, the first mean only, "
        "align_corners=True (about half the paper's)")
    fidelity: str = _f(
        "paper", choices=("paper", "code"),
        help="`code` reproduces the authors' released recipe (see SPEC.md): exp(s)/τ in SAP, "
        "absent classes zeroed before the pseudo-label softmax, and every switch marked "
        "'None follows loss.fidelity' takes the code's behaviour unless it is set")


@dataclass
class SyntheticConfig:
    num_train: int = _f(240, ge=1, help="images in the synthetic train split")
    num_val: int = _f(80, ge=1, help="images in the synthetic val split")
    image_size: int = _f(128, ge=32, help="side of the square synthetic images")
    seed: int = _f(0, ge=0, le=SEED_MAX,
                   help="generator seed: the same seed writes the same dataset")
    shape: str = _f(
        "demo", choices=("demo", "voc"),
        help="demo: 8 classes, square PNG images of image_size (the demo's set); voc: PASCAL "
        "VOC's shape for rehearsals at scale: 20 classes (the four families in five part "
        "colours), JPEG images of VOC's sizes (mostly long_side x 3/4 landscape, some "
        "portrait), an optional train_aug listing")
    long_side: int = _f(500, ge=32, help="voc shape: the long side of most images (VOC: 500)")
    num_train_aug: int = _f(
        0, ge=0, help="voc shape: images listed in train_aug (train plus extra images whose "
        "masks go in SegmentationClassAug, as SBD's); 0 = no train_aug (VOC: 10582)")


@dataclass
class DataConfig:
    dataset: str = _f("synthetic", choices=("synthetic", "voc", "coco"))
    root: str | None = _f(
        None, help="dataset root (VOC layout for synthetic/voc, COCO 2014 for coco); "
        "synthetic with no root is written to a cache dir keyed by its generator settings")
    image_size: int = _f(224, ge=16, help="training crop side; the ViT patch grid follows it")
    resize_long: list[int] = _f([320, 640], help="random resize range of the long side [lo, hi]")
    train_split: str | None = _f(None, help="None: train_aug if present, else train")
    val_split: str = _f("val")
    seed_split: str = _f("train", help="split on which seeds and masks are made and scored")
    num_workers: int = _f(2, ge=0)
    on_bad_file: str = _f("fail", choices=("fail", "skip"),
                          help="corrupt or missing images: fail listing them, or skip counting")
    decoded_cache: bool = _f(
        True, help="classification datasets read images decoded once into "
        "$COBRA_CACHE/decoded/<fingerprint> (memory-mapped, shared by every process on the "
        "node) instead of decoding each file every epoch; the pixels are bit-identical. The "
        "first use decodes the whole split (VOC train_aug: ~6 GB) and fails on a corrupt image "
        "then, not at its first load")
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class TrainConfig:
    epochs: int = _f(20, ge=1)
    batch_size: int = _f(32, ge=1)
    lr: float = _f(0.1, gt=0.0, help="backbone lr; new heads get lr × head_lr_mult")
    head_lr_mult: float = _f(10.0, gt=0.0)
    weight_decay: float = _f(1e-4, ge=0.0)
    momentum: float = _f(
        0.0, ge=0.0, le=1.0,
        help="SGD momentum. The IRN lineage passed weight_decay positionally into momentum, so "
        "the published runs trained with none; set it explicitly here")
    poly_power: float = _f(0.9, ge=0.0)
    optimizer: str = _f(
        "sgd", choices=("sgd", "adamw"),
        help="sgd: the paper's (momentum train.momentum); adamw: for short budgets from small "
        "pretrained backbones (the demo), where SGD's 10x head step overshoots")
    warmup_epochs: float = _f(0.0, ge=0.0, help="linear lr warm-up before the poly decay")
    param_groups: str | None = _f(
        None, choices=("paper", "code"),
        help="paper: every new head at lr × head_lr_mult; code: the authors' optimizers, CNN "
        "projection head left out, ViT 10× group = CAM-head bias + projection weight (their "
        "head.bias + embed.weight), ViT CAM-head weight at the backbone lr")
    seed: int = _f(0, ge=0, le=SEED_MAX)
    device: str = _f("auto", help="auto, cpu, cuda, cuda:N")
    amp: str = _f("none", choices=("bf16", "none"),
                  help="mixed precision of the forward pass and losses: bf16 autocast (GPUs "
                  "with bf16, and CPU), none = fp32")
    channels_last: bool | None = _f(
        None, help="NHWC weights and inputs for the CNN branch; None = on CUDA only")
    max_steps_per_epoch: int | None = _f(None, ge=1,
                                         help="cap steps per epoch (smoke tests, demos)")
    progress: bool = _f(True, help="show a progress bar")
    diagnostics: bool = _f(
        True, help="log CoBra's mechanism diagnostics every epoch (diag/*: each loss term's "
        "gradient on each branch's features, the precision of the k± selections, CAM coverage "
        "and leakage); they read the model and never change what it learns")
    diag_images: int = _f(64, ge=1, help="fixed train and val images the diagnostics score")
    diag_grad_every: int = _f(10, ge=1, help="training steps between two gradient probes")


@dataclass
class SeedsConfig:
    fusion: str = _f("fuse", choices=("cnn", "tran", "avg", "max", "fuse", "fuse_code"),
                     help="how M_cnn and M_tran are combined (Table 5); fuse_code = fuse")
    scales: list[float] = _f([0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0])
    flip: bool = _f(True, help="add each scale's horizontal flip")
    batch_images: int = _f(
        4, ge=1, help="images of one size whose scales and flips go through the network as one "
        "batch (memory grows with it; the seed pass keeps only the class token's attention row, so "
        "a VOC image at scale 2.0 costs activations, not T × T attention maps)")
    aobj_weighting: str | None = _f(
        None, choices=("normalized", "raw", "none"),
        help="A_obj weighing M_tran in the sum over scales: normalized = divided by its maximum "
        "in each pass, so every scale counts alike; raw = as the network gives it (the "
        "authors), whose mean falls like 1/tokens, so small scales weigh most (~16× 0.5 vs 2.0); "
        "none = M_tran alone, for a ViT whose class token attends to a few sink patches (A_obj "
        "is still made for the percentile protocol)")
    fixed_bg: float = _f(0.15, ge=0.0, le=1.0, help="IRN's fixed background score")
    threshold_grid: list[float] = _f([round(0.05 * i, 2) for i in range(1, 20)],
                                     help="fixed background scores swept on ground truth")
    percentile_grid: list[float] = _f([float(p) for p in range(50, 100, 5)],
                                      help="A_obj percentiles θ swept (the paper's protocol)")
    max_images: int | None = _f(None, ge=1, help="make seeds for only the first N images")
    max_side: int = _f(
        4096, ge=16, help="largest side the seed pass runs at: an image's side times the "
        "largest of seeds.scales (the default admits a 2048 px image at scale 2.0). Multi-scale "
        "CAMs need memory growing with that area (a 6000 px side, or scale 100, asks for "
        "hundreds of GB), so it is checked before training starts; downscale such images, drop "
        "the scale or raise this")


@dataclass
class CRFConfig:
    """A denseCRF's label confidence and pairwise kernels: one class for both CRFs, each
    section with its own defaults (those of its parent's field) and its one key of its own."""

    gt_prob: float = _f(0.7, gt=0.0, le=0.999, help="denseCRF unary confidence in the labels "
                        "(masks.rule.crf: the relative rule's hard-label mask CRF)")
    gauss_sxy: float = _f(3.0, gt=0.0)
    gauss_compat: float = _f(3.0, ge=0.0)
    bilateral_sxy: float = _f(50.0, gt=0.0)
    bilateral_srgb: float = _f(5.0, gt=0.0)
    bilateral_compat: float = _f(10.0, ge=0.0)


@dataclass
class IRLabelCRFConfig(CRFConfig):
    """`masks.ir_labels.crf`: the denseCRF that refines each side of the IR labels (IRN's
    `crf_inference_label`)."""

    iters: int = _f(10, ge=1, help="denseCRF mean-field iterations (IR labels; the mask CRF, "
                    "masks.rule.crf, runs as many: the authors share one setting)")


@dataclass
class IRLabelsConfig:
    """`masks.ir_labels`: stage `ir_labels`, confident foreground / background from the seeds."""

    threshold_source: str | None = _f(
        None, choices=("fixed", "aobj"),
        help="IR-label thresholds: fixed = conf_fg/conf_bg (IRN's, our default); aobj = per image "
        "from A_obj (the paper's §9.1 and the authors' code)")
    conf_fg: float = _f(0.30, ge=0.0, le=1.0, help="confident-foreground background score")
    conf_bg: float = _f(0.05, ge=0.0, le=1.0, help="confident-background background score")
    aobj_percentile: float = _f(93.0, ge=0.0, le=100.0,
                                help="aobj source: the percentile of A_obj that sets conf_bg")
    aobj_round: float = _f(0.05, gt=0.0, help="aobj source: conf_bg = the largest multiple of "
                           "this step below the percentile (the authors' bracket)")
    aobj_gap: float = _f(0.5, ge=0.0, le=1.0, help="aobj source: conf_fg = conf_bg + gap")
    crf: IRLabelCRFConfig = field(default_factory=IRLabelCRFConfig)


@dataclass
class BoundaryNetConfig:
    """`masks.irn`: stage `irn`, the boundary network trained on the IR labels (IRN)."""

    backbone: str = _f(
        "resnet50", help="timm CNN of the boundary network (IRN: ResNet-50); when it names the "
        "run's model.cnn, it starts from the trained CoBra CNN instead of model.pretrained")
    freeze_backbone: bool = _f(True, help="train only the boundary head (IRN detaches the "
                               "backbone features)")
    layout: str = _f(
        "irn", choices=("irn", "native"),
        help="boundary network levels: irn = IRN's edge branch, 5 levels (the stem after its "
        "max-pool, stages 1-4) with the last stage at stride 16 (both codebases); native = "
        "stages 1-4 at the backbone's own strides 4-32")
    crop: int = _f(512, ge=32)
    batch_size: int = _f(32, ge=1)
    epochs: int = _f(4, ge=1)
    lr: float = _f(0.1, gt=0.0)
    pair_radius: int = _f(10, ge=1, help="pixel pairs for the affinity loss (stride-4 px)")


@dataclass
class WalkConfig:
    """`masks.walk`: stage `masks`, the random walk of the seeds over the boundary network's
    affinities (IRN)."""

    radius: int = _f(5, ge=1, help="random-walk neighbourhood (stride-4 px)")
    beta: float = _f(10.0, gt=0.0, help="affinity sharpness β")
    exp_times: int = _f(8, ge=0, help="random walk runs 2^exp_times steps")
    scale: float = _f(
        1.0, ge=1.0, le=8.0,
        help="the image is enlarged by this factor for the boundary network and the walk, whose "
        "grid is 1/4 of its input: on VOC-sized images 1 (a 125-cell grid); on small images a "
        "stride-4 grid is coarser than the seed itself (the demo's 128 px: 32 cells), so enlarge "
        "them, and train IRN at that scale (masks.irn.crop ~ scale x the image side)")
    source: str | None = _f(
        None, choices=("fuse", "tran"),
        help="class maps the walk propagates: fuse = the seed combined per seeds.fusion (the "
        "paper: M_fuse goes to IRN); tran = the ViT-side seed M_tran (the authors' code)")
    boundary_damp: bool = _f(True, help="multiply the maps by (1 − boundary) before the walk "
                             "(IRN, and so the authors' code)")


@dataclass
class MaskCRFConfig(CRFConfig):
    """`masks.rule.crf`: the second denseCRF on the final masks (the authors'); it runs
    masks.ir_labels.crf.iters iterations."""

    enabled: bool = _f(True, help="refine masks with a second denseCRF (authors)")


@dataclass
class MaskRuleConfig:
    """`masks.rule`: stage `masks`, how the walk's maps become masks, and their CRF."""

    name: str | None = _f(
        None, choices=("irn", "relative"),
        help="final masks from the walk: irn = background score sem_seg_bg on the globally "
        "normalised maps, then the soft mask CRF (IRN); relative = class c where its map ≥ "
        "relative_theta·max_c + min_c, then a hard-label mask CRF (the authors' code). Both are "
        "scored; this one is written and is mask_miou")
    sem_seg_bg: float = _f(0.25, ge=0.0, le=1.0, help="background score on random-walk maps")
    relative_theta: float = _f(0.31, ge=0.0, le=1.0, help="θ of the relative rule (authors)")
    crf: MaskCRFConfig = field(default_factory=lambda: MaskCRFConfig(
        gauss_sxy=2.0, bilateral_sxy=45.0, bilateral_compat=4.0))


@dataclass
class MasksConfig:
    """Stages `ir_labels`, `irn` and `masks` (SPEC "Masks"; IRN's and the authors' defaults).

    Each stage's settings are one sub-config, and each stage's fingerprint holds its whole
    sub-config: ir_labels ← `ir_labels`; irn ← `irn`; masks ← `walk` + `rule` (+ the IR-label
    CRF's iters, which the mask CRF shares). The two keys left here change no output: `workers`
    is how the work is spread, and `max_images` selects images, whose ids every stage's
    fingerprint holds already."""

    ir_labels: IRLabelsConfig = field(default_factory=IRLabelsConfig)
    irn: BoundaryNetConfig = field(default_factory=BoundaryNetConfig)
    walk: WalkConfig = field(default_factory=WalkConfig)
    rule: MaskRuleConfig = field(default_factory=MaskRuleConfig)
    workers: int = _f(0, ge=0, help="CPU processes for CRF and random-walk work; 0 = all cores")
    max_images: int | None = _f(None, ge=1, help="only the first N images (smoke tests)")


@dataclass
class SegmentConfig:
    """Stage `segment`: a segmentation network trained on the masks (SPEC "Segmentation")."""

    arch: str = _f("deeplabv3plus", choices=("deeplabv3plus", "segformer"))
    encoder: str = _f("resnet101", help="segmentation-models-pytorch encoder (mit_b2 for "
                      "SegFormer, tu-<timm name> for any timm model)")
    encoder_weights: str | None = _f("imagenet", help="builtin (a tu-<timm CNN> pretrained "
                                     "offline, as model.pretrained=builtin), imagenet (not COCO: "
                                     "a known confounder) or null for random init")
    output_stride: int = _f(
        16, choices=(8, 16),
        help="DeepLabV3+'s encoder stride: 16 (paper) or 8, a finer map for small crops (on the "
        "demo's 96 px crops it scored the same as 16)")
    atrous_rates: list[int] = _f([12, 24, 36], help="DeepLabV3+'s ASPP dilation rates")
    crop: int = _f(512, ge=32)
    resize_long: list[int] = _f([320, 640])
    batch_size: int = _f(16, ge=1)
    epochs: int = _f(30, ge=1)
    lr: float = _f(0.01, gt=0.0, help="encoder lr; the decoder and head get lr × head_lr_mult")
    head_lr_mult: float = _f(10.0, gt=0.0)
    momentum: float = _f(0.9, ge=0.0, le=1.0)
    poly_power: float = _f(0.9, ge=0.0)
    weight_decay: float = _f(1e-4, ge=0.0)
    optimizer: str = _f(
        "sgd", choices=("sgd", "adamw"),
        help="sgd: the paper's DeepLab recipe (momentum segment.momentum); adamw: for short "
        "budgets from small pretrained encoders (the demo), where SGD's 10x head step swings "
        "the result from seed to seed")
    warmup_epochs: float = _f(0.0, ge=0.0, help="linear lr warm-up before the poly decay")
    eval_split: str = _f("val")
    test_split: str | None = _f(None, help="also write VOC-server PNGs for this split")
    scales: list[float] = _f([0.5, 0.75, 1.0, 1.25, 1.5])
    flip: bool = _f(True)
    crf: bool = _f(True, help="denseCRF at test time (mask CRF parameters)")
    max_images: int | None = _f(None, ge=1, help="only the first N images per split (smoke tests)")


@dataclass
class PretrainConfig:
    """`model.pretrained: builtin`: backbones trained for classification on the procedural
    corpus (`cobra/data/corpus.py`, disjoint from the segmentation classes), the ImageNet
    stand-in offline. Every key that changes the weights keys the weight cache."""

    image_size: int = _f(96, ge=32, help="side of the corpus images")
    num_images: int = _f(8000, ge=1, help="corpus images drawn for training")
    num_val: int = _f(500, ge=1, help="held-out corpus images (top-1 in the JSON line)")
    epochs: int = _f(6, ge=1)
    batch_size: int = _f(64, ge=1)
    lr: float = _f(2e-3, gt=0.0, help="AdamW peak lr after a linear warm-up, cosine decay")
    weight_decay: float = _f(0.05, ge=0.0)
    warmup_epochs: float = _f(0.5, ge=0.0)
    seed: int = _f(0, ge=0, le=SEED_MAX, help="corpus and initialisation seed")
    parallel: bool = _f(True, help="on a CPU, train the backbones in parallel processes, "
                        "one share of the threads each")


@dataclass
class RunConfig:
    dir: str = _f("runs", help="parent directory of run directories")
    name: str | None = _f(None, help="run directory name (refused if it exists); None: a "
                          "timestamp and a random suffix")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: SeedsConfig = field(default_factory=SeedsConfig)
    masks: MasksConfig = field(default_factory=MasksConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ----------------------------------------------------------------------------------------------
# Paper or code. Where the paper and the authors' released code disagree, one key holds the choice.
# Left unset (None) it follows `loss.fidelity`, so `loss.fidelity=code` alone gives the authors'
# whole recipe; set, it decides alone. Values: (under fidelity=paper, under fidelity=code).

FIDELITY_SWITCHES: dict[str, tuple[str, str]] = {
    "loss.cam_form": ("paper", "code"),
    "train.param_groups": ("paper", "code"),
    "seeds.aobj_weighting": ("normalized", "raw"),
    "masks.ir_labels.threshold_source": ("fixed", "aobj"),
    "masks.walk.source": ("fuse", "tran"),
    "masks.rule.name": ("irn", "relative"),
}


def fidelity_choice(key: str, value: str | None, fidelity: str) -> str:
    """`value` when set, else what `fidelity` (paper|code) picks for switch `key`."""
    if value is not None:
        return value
    paper, code = FIDELITY_SWITCHES[key]
    return code if fidelity == "code" else paper


def switch(cfg: Config, key: str) -> str:
    """The behaviour a FIDELITY_SWITCHES key selects in `cfg` (e.g. `masks.rule.name`)."""
    return fidelity_choice(key, lookup(cfg, key), cfg.loss.fidelity)


def lookup(cfg: Any, key: str) -> Any:
    """The value (or sub-config) at a dotted key: `lookup(cfg, "masks.walk")`."""
    for name in key.split("."):
        cfg = getattr(cfg, name)
    return cfg


def resolved(cfg: Config, key: str) -> dict[str, Any]:
    """The sub-config at `key` as flat {dotted key: value}, each paper/code switch left unset
    given as the behaviour it selects: what a stage's fingerprint holds, so that setting a
    switch to the value fidelity already picks redoes nothing."""
    return {name: switch(cfg, name) if name in FIDELITY_SWITCHES else value
            for name, value in flatten(lookup(cfg, key), f"{key}.").items()}


# Keys renamed when `masks` became one sub-config per stage: an old key names its new one.
RENAMED_KEYS: dict[str, str] = {
    **{f"masks.{old}": f"masks.ir_labels.{old}" for old in (
        "threshold_source", "conf_fg", "conf_bg", "aobj_percentile", "aobj_round", "aobj_gap")},
    **{f"masks.crf_{old}": f"masks.ir_labels.crf.{old}" for old in (
        "iters", "gt_prob", "gauss_sxy", "gauss_compat", "bilateral_sxy", "bilateral_srgb",
        "bilateral_compat")},
    **{f"masks.irn_{old}": f"masks.irn.{old}" for old in (
        "backbone", "freeze_backbone", "layout", "crop", "batch_size", "epochs", "lr",
        "pair_radius")},
    **{f"masks.rw_{old}": f"masks.walk.{old}" for old in (
        "radius", "beta", "exp_times", "scale", "source", "boundary_damp")},
    "masks.bg_rule": "masks.rule.name",
    "masks.sem_seg_bg": "masks.rule.sem_seg_bg",
    "masks.relative_theta": "masks.rule.relative_theta",
    "masks.mask_crf": "masks.rule.crf.enabled",
    **{f"masks.mask_crf_{old}": f"masks.rule.crf.{old}" for old in (
        "gt_prob", "gauss_sxy", "gauss_compat", "bilateral_sxy", "bilateral_srgb",
        "bilateral_compat")},
}


# ----------------------------------------------------------------------------------------------
# Introspection


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _leaves(cls: type = Config, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """(dotted key, field) of every leaf of a config class (`loss.k_sap_pos`, ...)."""
    hints = typing.get_type_hints(cls)
    for name, f in _fields(cls).items():
        if dataclasses.is_dataclass(hints[name]):
            yield from _leaves(hints[name], f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", f


def dotted_keys(cls: type = Config, prefix: str = "") -> list[str]:
    return [key for key, _ in _leaves(cls, prefix)]


def suggest(key: str, candidates: Iterable[str]) -> str:
    """"; did you mean 'X'?" for the closest candidate, or "" when none is close."""
    match = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def upgrade_saved(data: Mapping[str, Any]) -> dict[str, Any]:
    """A config saved before `masks` was nested (a checkpoint's, a run directory's
    config.yaml) with each flat masks key moved to its new place, so that runs made before
    stay usable. Saved configs only: an old key a user writes is refused with its new name."""
    out = dict(data)
    masks = out.get("masks")
    if not isinstance(masks, Mapping):
        return out
    nested: dict[str, Any] = {k: v for k, v in masks.items() if f"masks.{k}" not in RENAMED_KEYS}
    for name, value in masks.items():
        if f"masks.{name}" in RENAMED_KEYS:
            node = nested
            *parents, leaf = RENAMED_KEYS[f"masks.{name}"].split(".")[1:]
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = value
    out["masks"] = nested
    return out


def unknown_key_error(key: str, where: str = "config",
                      candidates: Iterable[str] | None = None) -> ConfigError:
    """Unknown `key` of a `where` (a run config by default), with its new name or a close
    match among `candidates` (default: every run config key)."""
    if key in RENAMED_KEYS:
        return ConfigError(f"{where} key '{key}' is now '{RENAMED_KEYS[key]}'")
    known = dotted_keys() if candidates is None else candidates
    return ConfigError(f"unknown {where} key '{key}'{suggest(key, known)}")


# ----------------------------------------------------------------------------------------------
# Type coercion and validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _float_text(text: str) -> float | str:
    """`'1e-4'` → 1e-4; any other text is returned as it is (and refused by the caller)."""
    try:
        return float(text) if any(c.isdigit() for c in text) else text
    except ValueError:
        return text


def _coerce_union(key: str, value: Any, tp: Any) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    if len(args) == 2 and type(None) in args:  # `X | None`: what a value must be is an X
        return coerce(key, value, next(a for a in args if a is not type(None)))
    for arg in args:  # first type that accepts the value wins (bool before str in bool|str)
        if arg is type(None):
            continue
        try:
            return coerce(key, value, arg)
        except ConfigError:
            continue
    raise ConfigError(f"'{key}' must be {_type_name(tp)}, got {value!r}")


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `key`. `Any` is left to the
    caller to check."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(key, value, tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be a list, got {value!r}")
        return [coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > INT_MAX:
                raise ConfigError(f"'{key}' must fit in 64 bits (|value| <= 2**63 - 1), "
                                  f"got {value!r}")
            return value
        raise ConfigError(f"'{key}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads `1e-4` (no dot) as a string; it is plainly a number to a user.
            value = _float_text(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:  # an int too large for a float
                value = math.inf
            if not math.isfinite(value):
                raise ConfigError(f"'{key}' must be a finite number, got {value!r}")
            return value
        raise ConfigError(f"'{key}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"'{key}' must be a string, got {value!r}")
    raise ConfigError(f"'{key}' has an unsupported type {tp!r}")  # a bug in this file


def check_range(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    """Refuse a value outside a field's choices or bounds (its `knob` metadata)."""
    if value is None or isinstance(value, bool):
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"'{key}' must be one of {', '.join(map(str, choices))}; got {value!r}"
                          f"{suggest(str(value), map(str, choices))}")
    for bound, ok, text in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                            ("le", lambda v, b: v <= b, "<=")):
        b = meta.get(bound)
        if b is not None and isinstance(value, (int, float)) and not ok(value, b):
            raise ConfigError(f"'{key}' must be {text} {b}, got {value!r}")


def build(cls: type, data: Mapping[str, Any], prefix: str = "", where: str = "config",
          default: Any = None) -> Any:
    """Instantiate dataclass `cls` from a (possibly partial) mapping, validating each value;
    what it does not set stays as in `default` (a section's defaults: its parent field's), else
    the class's. An unknown key is refused as a `where` key (a run config's: with its new name
    or a close run config key; another's: a close key of `cls`)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"'{prefix.rstrip('.') or where}' must be a mapping, got {data!r}")
    fields, hints = _fields(cls), typing.get_type_hints(cls)
    for name in data:
        if name not in fields:
            own = None if where == "config" else [f"{prefix}{n}" for n in fields]
            raise unknown_key_error(f"{prefix}{name}", where, own)
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key, tp, value = f"{prefix}{name}", hints[name], data[name]
        if dataclasses.is_dataclass(tp):
            own = f.default_factory() if callable(f.default_factory) else None
            kwargs[name] = build(tp, value, f"{key}.", where, own)
        else:
            kwargs[name] = coerce(key, value, tp)
            check_range(key, kwargs[name], f.metadata)
    return cls(**kwargs) if default is None else dataclasses.replace(default, **kwargs)


def _validate_cross_field(cfg: Config) -> None:
    if not DEVICE_PATTERN.fullmatch(cfg.train.device):
        raise ConfigError(f"'train.device' must be auto, cpu, cuda or cuda:N, got "
                          f"{cfg.train.device!r}")
    lo, hi = (cfg.data.resize_long + [0, 0])[:2]
    if len(cfg.data.resize_long) != 2 or not 0 < lo <= hi:
        raise ConfigError(f"'data.resize_long' must be [lo, hi] with 0 < lo <= hi, "
                          f"got {cfg.data.resize_long}")
    if not cfg.seeds.scales or any(s <= 0 for s in cfg.seeds.scales):
        raise ConfigError(f"'seeds.scales' must be positive numbers, got {cfg.seeds.scales}")
    if any(not 0 <= t <= 1 for t in cfg.seeds.threshold_grid):
        raise ConfigError("'seeds.threshold_grid' values must lie in [0, 1]")
    if any(not 0 <= p <= 100 for p in cfg.seeds.percentile_grid):
        raise ConfigError("'seeds.percentile_grid' values must lie in [0, 100]")
    rates = cfg.segment.atrous_rates
    if len(rates) != 3 or any(r < 1 for r in rates):  # DeepLabV3+'s ASPP takes exactly three
        raise ConfigError(f"'segment.atrous_rates' must be three dilation rates >= 1 (e.g. "
                          f"[12, 24, 36]), got {rates}")
    if cfg.loss.proj_space == "seed" and (cfg.loss.sap_bg is None or cfg.model.proj_head != "cam"):
        raise ConfigError("'loss.proj_space: seed' scores background as loss.sap_bg and needs no "
                          "projection head: set loss.sap_bg (e.g. 0.35) and model.proj_head: cam")
    syn = cfg.data.synthetic
    if syn.num_train_aug and (syn.shape != "voc" or syn.num_train_aug < syn.num_train):
        raise ConfigError(f"'data.synthetic.num_train_aug' ({syn.num_train_aug}) needs "
                          f"data.synthetic.shape=voc and at least data.synthetic.num_train "
                          f"({syn.num_train}) images: train_aug holds train; set it to 0 or "
                          f"raise it")


# ----------------------------------------------------------------------------------------------
# Public API


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain-dict form (YAML/JSON friendly)."""
    return dataclasses.asdict(cfg)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """`{'loss.k_sap_pos': 20, ...}` for every leaf (each key after `prefix`)."""
    out: dict[str, Any] = {}

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, Mapping):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    walk(to_dict(cfg), prefix)
    return out


def unflatten(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten` for a partial set of dotted keys; unknown keys raise ConfigError."""
    known = set(dotted_keys())
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        if key not in known:
            raise unknown_key_error(key)
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`'loss.tau=0.05'` -> `('loss.tau', 0.05)`; the value is read as YAML (so `true`, `[1,2]`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' is not key=value; e.g. --set loss.tau=0.05")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key written twice in one mapping: YAML keeps the last one
    silently, so a second `loss:` section would quietly drop the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _DuplicateKey(key, seen[key], line)
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return super().construct_mapping(node, deep)


# A config names a few hundred values; a document whose aliases expand to more than this is a
# mistake or an attack ("billion laughs"), refused before anything walks it.
MAX_YAML_NODES = 100_000


def _too_large(data: Any, limit: int = MAX_YAML_NODES) -> bool:
    """Whether `data`, aliases expanded, holds more than `limit` values (stops counting there)."""
    stack, count = [data], 0
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (safe, no key twice); a missing, unreadable or malformed file is a
    ConfigError naming it."""
    from cobra.textfiles import read_text  # textfiles imports nothing of config

    p = Path(path)
    text = read_text(p, "config file", ConfigError)
    try:
        data = yaml.load(text, Loader=_StrictLoader) or {}  # noqa: S506 - a SafeLoader
    except _DuplicateKey as dup:
        raise ConfigError(f"config file '{p}' sets '{dup.key}' twice (lines {dup.first} and "
                          f"{dup.again}); keep one") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file '{p}' is not valid YAML{where}; fix its syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of sections, e.g. 'loss: {{}}'")
    if _too_large(data):
        raise ConfigError(f"config file '{p}' expands to more than {MAX_YAML_NODES} values "
                          f"(YAML aliases); write the values out")
    return data


def from_dict(data: Mapping[str, Any]) -> Config:
    """Build and validate a Config from a nested mapping (a YAML file, a checkpoint)."""
    cfg = build(Config, data)
    _validate_cross_field(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                base: Mapping[str, Any] | None = None, saved: bool = False) -> Config:
    """Defaults < `base` mapping < YAML file at `path` < `key=value` overrides, validated.
    `saved`: the file is a run directory's config.yaml, written by an older version maybe
    (`upgrade_saved`)."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        file = read_yaml(path)
        data = _deep_merge(data, upgrade_saved(file) if saved else file)
    dotted = dict(parse_override(o) for o in overrides)
    data = _deep_merge(data, unflatten(dotted))
    return from_dict(data)


def with_overrides(cfg: Config, dotted: Mapping[str, Any]) -> Config:
    """A new validated Config with dotted keys replaced (used by sweeps)."""
    return from_dict(_deep_merge(to_dict(cfg), unflatten(dotted)))


def save_config(cfg: Config, path: str | Path) -> None:
    from cobra.layout import atomic_write_text  # layout imports nothing of config: no cycle

    # atomic: a crash while writing never leaves a run with half a config.yaml
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe() -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every knob, for `launch.py config --list`."""
    rows = []
    defaults = flatten(Config())
    for key, f in _leaves():
        text = f.metadata.get("help", "")
        if key in FIDELITY_SWITCHES:
            paper, code = FIDELITY_SWITCHES[key]
            text += f" [None follows loss.fidelity: paper → {paper}, code → {code}]"
        rows.append((key, defaults[key], text))
    return rows
