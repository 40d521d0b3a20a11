"""The segmentation network of stage `segment`: an smp DeepLabV3+ or SegFormer for any input size."""

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from cobra.config import SegmentConfig
from cobra.errors import ConfigError

# Five encoder stages halve the resolution five times, so every smp encoder accepts multiples of
# 32 (DeepLabV3+'s dilated encoders only need 16, and 32 is a multiple of that).
_MIN_MULTIPLE = 32


class PaddedSegmenter(nn.Module):
    """Wraps an smp model: pads (B, 3, H, W) to the encoder's multiple, crops logits back."""

    def __init__(self, net: nn.Module, multiple: int = _MIN_MULTIPLE) -> None:
        super().__init__()
        self.net, self.multiple = net, multiple

    @property
    def encoder(self) -> nn.Module:
        """The pretrained part (it gets the base lr; everything else is the head)."""
        return self.net.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalized images -> (B, C+1, H, W) logits."""
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            # Zero is the mean colour after normalization: the same fill the training crops use.
            x = F.pad(x, (0, pw, 0, ph), value=0.0)
        logits = self.net(x)
        if logits.shape[-2:] != x.shape[-2:]:  # a decoder that stops short of full resolution
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w]


BUILTIN = "builtin"


def builtin_encoder_name(cfg: SegmentConfig) -> str:
    """The timm name of a `tu-` encoder whose weights come from builtin pretraining."""
    if not cfg.encoder.startswith("tu-"):
        raise ConfigError(f"segment.encoder_weights=builtin needs a timm encoder "
                          f"(tu-<timm name>, e.g. tu-test_resnet), not {cfg.encoder!r}")
    return cfg.encoder[3:]


def load_builtin_encoder(model: PaddedSegmenter, weights_file: Path) -> None:
    """Copy builtin-pretrained backbone weights into a `tu-` encoder (its timm feature net has
    the backbone's own parameter names; the classifier is not part of it)."""
    state = load_file(str(weights_file))
    encoder = model.encoder.model
    own = encoder.state_dict()
    shared = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(shared) < 0.9 * len(own):
        raise ConfigError(f"'{weights_file}' does not fit encoder {type(encoder).__name__}; "
                          f"its weights belong to another timm model")
    encoder.load_state_dict(shared, strict=False)


def _check_encoder(name: str) -> None:
    """ConfigError unless `name` is an smp encoder or `tu-<timm model>`."""
    import segmentation_models_pytorch as smp
    import timm

    if name.startswith("tu-"):
        if timm.is_model(name[3:]):
            return
        raise ConfigError(f"segment.encoder={name!r}: timm has no model {name[3:]!r}; use a "
                          f"timm model name after 'tu-' (e.g. tu-resnet50, tu-convnext_tiny)")
    if name not in smp.encoders.get_encoder_names():
        raise ConfigError(f"segment.encoder={name!r} is not a segmentation-models-pytorch "
                          f"encoder; use e.g. resnet101 or mit_b2, or tu-<timm name> "
                          f"(e.g. tu-resnet18) for any timm model")


def _arch_options(cfg: SegmentConfig) -> dict:
    """The keywords only DeepLabV3+ takes: its encoder stride and ASPP rates."""
    if cfg.arch != "deeplabv3plus":
        return {}
    return {"encoder_output_stride": cfg.output_stride,
            "decoder_atrous_rates": tuple(cfg.atrous_rates)}


def build_segmenter(cfg: SegmentConfig, num_classes: int) -> nn.Module:
    """smp DeepLabV3+ / SegFormer with C+1 outputs: (B, 3, H, W) -> (B, C+1, H, W) logits."""
    import segmentation_models_pytorch as smp

    _check_encoder(cfg.encoder)
    arch = {"deeplabv3plus": smp.DeepLabV3Plus, "segformer": smp.Segformer}.get(cfg.arch)
    if arch is None:
        raise ConfigError(f"segment.arch={cfg.arch!r} is unknown; use deeplabv3plus or segformer")
    weights: str | bool | None = cfg.encoder_weights
    if weights == BUILTIN:  # loaded afterwards by load_builtin_encoder
        weights = None
    if weights is not None and cfg.encoder.startswith("tu-"):
        # timm encoders take a bool (the pretrained tag lives in the name); smp warns otherwise.
        weights = True
    try:
        net = arch(encoder_name=cfg.encoder, encoder_weights=weights, classes=num_classes + 1,
                   **_arch_options(cfg))
    except KeyError as exc:  # smp: no such weights for this encoder
        raise ConfigError(f"segment.encoder_weights={cfg.encoder_weights!r} is not available "
                          f"for segment.encoder={cfg.encoder!r} ({str(exc).strip(chr(39))}); "
                          f"use imagenet or null") from None
    except Exception as exc:
        if weights is None:
            raise
        # Offline hubs raise a zoo of types (OSError, HF hub and requests errors): reduce to one line.
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"could not load {cfg.encoder_weights!r} weights for segment.encoder="
                          f"{cfg.encoder!r} ({type(exc).__name__}: {reason}); go online or set "
                          f"segment.encoder_weights=null for random init") from None
    stride = int(getattr(net.encoder, "output_stride", _MIN_MULTIPLE))
    return PaddedSegmenter(net, multiple=max(_MIN_MULTIPLE, stride))
