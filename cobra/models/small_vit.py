"""Small ViTs for CPU budgets, registered with timm so every config names them like any model.

`cobra_vit_c8_*` is a plain timm `VisionTransformer` (class token, blocks, attention maps: all
CoBra needs for A_obj and the patch affinity) whose patch embedding is a stack of stride-2 3x3
convolutions instead of one 8x8 projection: the convolutional stem of Xiao et al., "Early
Convolutions Help Transformers See Better" (2021). It trains far faster and more stably than a
patchify stem, which is what lets a ViT learn in the minutes two CPU cores give it. Patch 8 gives
a 12x12 grid at 96 px, fine enough for seeds on small images."""

from typing import Any

from timm.layers import PatchEmbed
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, _create_vision_transformer
from torch import nn


class ConvStemPatchEmbed(PatchEmbed):
    """PatchEmbed whose projection is log2(patch) stride-2 3x3 conv + BN + ReLU stages, widening
    to `embed_dim`, then a 1x1 convolution; padding, flattening and dynamic sizes are timm's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        patch = self.patch_size[0]
        stages = patch.bit_length() - 1
        if patch != 2**stages or self.patch_size[0] != self.patch_size[1]:
            raise ValueError(f"a convolutional stem needs a square power-of-two patch, got "
                             f"{self.patch_size}")
        embed_dim, in_chans = self.proj.out_channels, self.proj.in_channels
        layers: list[nn.Module] = []
        width = max(embed_dim // 2 ** (stages - 1), 16)
        for _ in range(stages):
            layers += [nn.Conv2d(in_chans, width, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            in_chans, width = width, min(width * 2, embed_dim)
        layers.append(nn.Conv2d(in_chans, embed_dim, 1))
        self.proj = nn.Sequential(*layers)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # No hub weights: `model.pretrained` true has nothing to fetch, builtin or a path loads them.
    return {"url": "", "num_classes": 1000, "input_size": (3, 96, 96), "pool_size": None,
            "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "first_conv": "patch_embed.proj.0", "classifier": "head", **kwargs}


# timm's registry reads this module attribute
default_cfgs = generate_default_cfgs({"cobra_vit_c8_tiny": _cfg(), "cobra_vit_c8_micro": _cfg()})


def _conv_stem_vit(variant: str, pretrained: bool, **kwargs: Any) -> VisionTransformer:
    return _create_vision_transformer(variant, pretrained=pretrained,
                                      embed_layer=ConvStemPatchEmbed, **kwargs)


@register_model
def cobra_vit_c8_tiny(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Patch 8, width 96, 6 blocks, 3 heads (~0.8 M parameters)."""
    args = dict(patch_size=8, embed_dim=96, depth=6, num_heads=3, mlp_ratio=3.0, img_size=96)
    return _conv_stem_vit("cobra_vit_c8_tiny", pretrained, **dict(args, **kwargs))


@register_model
def cobra_vit_c8_micro(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Patch 8, width 64, 4 blocks, 2 heads (~0.3 M parameters)."""
    args = dict(patch_size=8, embed_dim=64, depth=4, num_heads=2, mlp_ratio=3.0, img_size=96)
    return _conv_stem_vit("cobra_vit_c8_micro", pretrained, **dict(args, **kwargs))
