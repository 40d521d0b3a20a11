"""Backbones and their weights, checked before any work: each timm name must build the branch it
is given to, and a local weights file (`model.pretrained: DIR`, `builtin`) must fit its network,
key for key. timm loads a file that does not fit with a warning about unexpected keys and trains
from random initialisation, a silently wrong run; here it is a ConfigError naming the file.

Every check builds the network on the meta device: shapes and names, no memory, no time."""

from pathlib import Path

import timm
import torch
from torch import nn

from cobra.config import Config
from cobra.errors import ConfigError
from cobra.models import backbones
from cobra.pretrain import backbones_of

# Keys timm adapts itself when it loads a file (resized to the input size), so their shapes may
# differ from the network's.
RESIZED_KEYS = ("pos_embed",)
# The wrappers some training scripts save a state dict under, as timm unwraps them.
STATE_DICT_KEYS = ("state_dict", "model", "state_dict_ema")


def meta_model(name: str) -> nn.Module:
    """The timm network `name` with its default head, on the meta device."""
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False)


def is_plain_vit(model: nn.Module) -> bool:
    return hasattr(model, "blocks") and hasattr(model, "patch_embed")


def check_role(role: str, name: str, model: nn.Module, downsample: str = "stride") -> None:
    """The CNN branch needs a convolutional network with feature maps at strides 16 and 32
    (`model.cnn_downsample=stride`); the ViT branch a plain ViT."""
    if role == "vit" and not is_plain_vit(model):
        raise ConfigError(f"model.vit '{name}' is not a plain timm ViT (no patch embedding and "
                          f"blocks); give a ViT such as deit_small_patch16_224, or put a CNN in "
                          f"model.cnn")
    if role != "cnn":
        return
    if is_plain_vit(model) or not hasattr(model, "feature_info"):
        raise ConfigError(f"model.cnn '{name}' is not a CNN with feature maps (it is a "
                          f"transformer); give a timm CNN such as resnet50, or put a ViT in "
                          f"model.vit")
    reductions = [info["reduction"] for info in model.feature_info]
    if downsample == "stride" and reductions[-2:] != [16, 32]:
        raise ConfigError(f"model.cnn '{name}' does not end in a stride-32 stage after a "
                          f"stride-16 one (its strides: {reductions}); set "
                          f"model.cnn_downsample=dilate or choose another CNN")


def read_keys(path: Path) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the tensors in a weights file (a safetensors header, or a torch file
    loaded without running code), unwrapped as timm unwraps it."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as handle:
                return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse means "not a weights file"
        raise ConfigError(f"weights file '{path}' cannot be read ({type(exc).__name__}); "
                          f"replace it with a safetensors or torch state dict") from None
    for key in STATE_DICT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ConfigError(f"weights file '{path}' holds no state dict; save "
                          f"model.state_dict() there")
    return {k.removeprefix("module."): tuple(v.shape) for k, v in state.items()
            if isinstance(v, torch.Tensor)}


def _head_keys(model: nn.Module) -> tuple[str, ...]:
    head = model.pretrained_cfg.get("classifier") or ()
    return (head,) if isinstance(head, str) else tuple(head)


def check_fits(path: Path, name: str, model: nn.Module) -> None:
    """Refuse a weights file whose tensors are not the network's: a key missing, a key too
    many or a shape that differs (the classifier head and position embeddings aside: timm
    drops and resizes those)."""
    heads = _head_keys(model)

    def body(keys):
        return {k: v for k, v in keys.items() if not k.startswith(tuple(f"{h}." for h in heads))}

    want = body({k: tuple(v.shape) for k, v in model.state_dict().items()})
    have = body(read_keys(path))
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have)
                   if want[k] != have[k] and not k.startswith(RESIZED_KEYS))
    if not (missing or extra or wrong):
        return
    what = (f"{len(missing)} of its tensors missing (first '{missing[0]}')" if missing else
            f"{len(extra)} tensors it does not have (first '{extra[0]}')" if extra else
            f"'{wrong[0]}' shaped {have[wrong[0]]}, not {want[wrong[0]]}")
    raise ConfigError(f"weights file '{path}' does not fit '{name}': {what}; it holds another "
                      f"network's weights; give '{name}' weights (or fix model.pretrained)")


def check_backbones(cfg: Config, pretrained: bool | str | None = None) -> None:
    """Each backbone builds its branch, and its local weights file (if any) fits it.
    `pretrained`: the resolved weight source (builtin → its cache directory), if not cfg's."""
    source = cfg.model.pretrained if pretrained is None else pretrained
    roles = backbones_of(cfg)
    for role, name in roles:
        if not timm.is_model(name):
            raise ConfigError(f"model.{role} '{name}' is not a timm model name; see "
                              f"`timm.list_models()` for the names")
        model = meta_model(name)
        check_role(role, name, model, cfg.model.cnn_downsample)
        if source == "builtin":
            continue  # checked once the builtin weights are made
        local = backbones.weights_file(source, name, single_branch=len(roles) == 1)
        if local is not None:
            check_fits(local, name, model)
