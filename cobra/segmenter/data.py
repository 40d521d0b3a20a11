"""Training pairs for stage `segment`: dataset images with the pseudo masks of stage `masks`."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from cobra.data.source import LabelFileError, Source, read_label_png
from cobra.data.transforms import joint_train_transform
from cobra.errors import StageInputError

IGNORE = 255


def read_mask(path: Path) -> np.ndarray:
    """(H, W) uint8 class indices of a pseudo mask the masks stage wrote; 255 = ignore."""
    try:
        return read_label_png(path)
    except LabelFileError as exc:
        raise StageInputError(f"mask {exc}; run stage 'masks' "
                              f"{'again' if path.exists() else 'first'}") from None


class MaskDataset(Dataset):
    """Augmented (image, pseudo mask) crops: {"image": (3, S, S) float, "mask": (S, S) int64, "id"}.

    Augmentation: long side resized uniformly in `resize_long`, horizontal flip, random crop of
    side `crop` (image padded with 0 after normalization, mask with 255). Every draw uses torch's
    global RNG, so a seeded DataLoader reproduces the same crops."""

    def __init__(self, source: Source, mask_dir: Path | Callable[[str], Path], ids: list[str],
                 crop: int, resize_long: tuple[int, int] | list[int]) -> None:
        lo, hi = (int(v) for v in resize_long)
        if not 1 <= lo <= hi:
            raise ValueError(f"resize_long must be [lo, hi] with 1 <= lo <= hi, got {resize_long}")
        self.source, self.mask_dir, self.ids, self.crop = source, mask_dir, list(ids), int(crop)
        self.resize_long = (lo, hi)

    def mask_path(self, image_id: str) -> Path:
        """Where the mask of `image_id` lives: `mask_dir/<id>.png` or mask_dir(id)."""
        if callable(self.mask_dir):
            return Path(self.mask_dir(image_id))
        return Path(self.mask_dir) / f"{image_id}.png"

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        path = self.mask_path(image_id)
        mask = read_mask(path)
        image = self.source.load_image(image_id)
        if mask.shape != image.shape[:2]:
            raise StageInputError(f"mask '{path}' is {mask.shape[1]}x{mask.shape[0]} but its "
                                  f"image is {image.shape[1]}x{image.shape[0]}; run stage "
                                  f"'masks' again for this dataset")
        labels = mask[mask != IGNORE]
        if labels.size and int(labels.max()) > self.source.num_classes:
            # Caught here, a mask of another dataset is one clear line, not a CUDA assert later.
            raise StageInputError(f"mask '{path}' holds class {int(labels.max())} but the dataset "
                                  f"has classes 0..{self.source.num_classes}; run stage 'masks' "
                                  f"again for this dataset")
        x, y = joint_train_transform(image, mask, self.crop, self.resize_long, IGNORE)
        return {"image": x, "mask": y, "id": image_id}
