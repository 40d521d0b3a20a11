"""Image transforms on torch tensors (IRN / CoBra augmentation).

Every random draw uses torch's global RNG (`torch.randint`, `torch.rand`), so a DataLoader with a
seeded generator reproduces the same batches; Python's `random` and numpy's global state are never
touched."""

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN, dtype=torch.float32).view(3, 1, 1) * 255.0
_STD = torch.tensor(IMAGENET_DEFAULT_STD, dtype=torch.float32).view(3, 1, 1) * 255.0


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 in [0, 255]."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()


def normalize(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) float32 in [0, 255] -> ImageNet-normalized (3, H, W) float32."""
    return (image - _MEAN.to(image.device)) / _STD.to(image.device)


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 normalized with ImageNet mean/std."""
    return normalize(to_tensor(image))


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(3, H, W) float -> (3, height, width), bilinear with antialiasing when shrinking."""
    if image.shape[-2:] == (height, width):
        return image
    return F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False,
                         antialias=True)[0]


def random_resize_long(image: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """(3, H, W) -> (3, H', W') with the long side drawn uniformly from [lo, hi], aspect kept."""
    h, w = image.shape[-2:]
    target = int(torch.randint(lo, hi + 1, ()).item())
    scale = target / max(h, w)
    return resize(image, max(1, round(h * scale)), max(1, round(w * scale)))


def random_hflip(image: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """(3, H, W) -> the same, mirrored left-right with probability p."""
    return image.flip(-1) if torch.rand(()).item() < p else image


def _crop_window(h: int, w: int, size: int) -> tuple[slice, slice, slice, slice]:
    """(source rows, source cols, canvas rows, canvas cols) of one random size x size window.

    Per axis: a crop offset into the image when it is larger, a paste offset into the canvas if
    not (IRN's random_crop)."""
    ch, cw = min(h, size), min(w, size)
    sy = int(torch.randint(0, h - size + 1, ()).item()) if h > size else 0
    sx = int(torch.randint(0, w - size + 1, ()).item()) if w > size else 0
    dy = int(torch.randint(0, size - h + 1, ()).item()) if h < size else 0
    dx = int(torch.randint(0, size - w + 1, ()).item()) if w < size else 0
    return (slice(sy, sy + ch), slice(sx, sx + cw), slice(dy, dy + ch), slice(dx, dx + cw))


def random_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) -> (3, size, size): a random window; a smaller side is placed at a random offset
    in a zero canvas (zero = the mean colour once normalized)."""
    c, h, w = image.shape
    out = image.new_zeros((c, size, size))
    sy, sx, dy, dx = _crop_window(h, w, size)
    out[:, dy, dx] = image[:, sy, sx]
    return out


def random_crop_pair(image: torch.Tensor, label: torch.Tensor, size: int, ignore: int = 255
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """One random window for both: (3, H, W), (H, W) -> (3, S, S) 0-padded, (S, S) ignore-padded."""
    h, w = label.shape
    out_x = image.new_zeros((image.shape[0], size, size))
    out_y = label.new_full((size, size), ignore)
    sy, sx, dy, dx = _crop_window(h, w, size)
    out_x[:, dy, dx] = image[:, sy, sx]
    out_y[dy, dx] = label[sy, sx]
    return out_x, out_y


def joint_train_transform(image: np.ndarray, label: np.ndarray, size: int,
                          resize_long: tuple[int, int], ignore: int = 255
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) uint8 + (H, W) class ids -> (3, S, S) normalized + (S, S) int64: the same random
    resize, flip and crop for both (label pixels outside the image are `ignore`)."""
    x = to_tensor(image)
    y = torch.from_numpy(np.ascontiguousarray(label)).long()
    h, w = y.shape
    target = int(torch.randint(resize_long[0], resize_long[1] + 1, ()).item())
    scale = target / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    x = resize(x, nh, nw)
    if (nh, nw) != (h, w):
        # nearest-exact samples pixel centres, so labels stay aligned with the bilinear image
        y = F.interpolate(y[None, None].float(), size=(nh, nw), mode="nearest-exact")[0, 0].long()
    if torch.rand(()).item() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    return random_crop_pair(normalize(x), y, size, ignore)


def train_transform(image: np.ndarray, size: int, resize_long: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) float32: random resize, flip, normalize, random crop."""
    x = to_tensor(image)
    x = random_resize_long(x, resize_long[0], resize_long[1])
    x = random_hflip(x)
    x = normalize(x)
    return random_crop(x, size)


def eval_transform(image: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) float32: resized to exactly size x size, normalized."""
    return normalize(resize(to_tensor(image), size, size))
