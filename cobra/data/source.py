"""The `Source` interface every dataset reader implements, and the checks readers share."""

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cobra.errors import DataError

# What PIL raises on truncated, garbage or unsupported files (SyntaxError: broken PNG chunks).
_PIL_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError,
               Image.DecompressionBombError)


class Source:
    """A dataset split: image ids, class names, and per-id image, mask and image-level labels.

    `class_names` has C+1 entries with "background" first; `num_classes` is C (foreground only).
    Masks hold class indices 0..C with 255 = ignore; `labels(id)[j]` is 1 when class j+1 is present.
    """

    ids: list[str]
    class_names: list[str]
    has_masks: bool
    root: Path
    split: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names) - 1

    def image_path(self, image_id: str) -> Path:
        raise NotImplementedError

    def load_image(self, image_id: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB; an unreadable file is a DataError naming it."""
        return read_rgb(self.image_path(image_id))

    def load_mask(self, image_id: str) -> np.ndarray:
        """(H, W) uint8 class indices 0..C, 255 = ignore."""
        raise NotImplementedError

    def image_size(self, image_id: str) -> tuple[int, int]:
        """(H, W) of an image from its header alone (no decode)."""
        return read_size(self.image_path(image_id))

    def labels(self, image_id: str) -> np.ndarray:
        """(C,) float32 multi-hot of the foreground classes present (index j <-> class j+1)."""
        raise NotImplementedError

    def drop_unreadable(self) -> int:
        """Open + verify every image, drop the ids that fail; returns how many were dropped."""
        bad = [i for i in self.ids if not image_is_readable(self.image_path(i))]
        if bad:
            dropped = set(bad)
            self.ids = [i for i in self.ids if i not in dropped]
            print(f"warning: skipped {len(bad)} unreadable image(s) of split '{self.split}' in "
                  f"'{self.root}' (first: '{self.image_path(bad[0])}')", file=sys.stderr)
        return len(bad)


@contextmanager
def _open_image(path: Path, missing_fix: str) -> Iterator[Image.Image]:
    """The opened image file; a missing or unreadable one raises a one-line DataError naming it
    and its fix (decoding errors inside the block count as unreadable too)."""
    try:
        with Image.open(path) as img:
            yield img
    except FileNotFoundError:
        raise DataError(f"image '{path}' does not exist; {missing_fix}") from None
    except _PIL_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"image '{path}' cannot be read ({reason}); replace or remove it, "
                        f"or set data.on_bad_file=skip") from None


# Pillow modes of more than 8 bits a channel (16-bit and 32-bit greyscale, float): their
# convert("RGB") clips every value above 255, so a 16-bit photo comes out one flat colour.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _wide_to_rgb(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 from a wide greyscale image, scaled from its type's range (16 bits for
    integers, [0, 1] for floats; a larger maximum, when present, is the range instead)."""
    values = np.asarray(img, dtype=np.float64)
    top = 1.0 if img.mode == "F" else 65535.0
    top = max(top, float(np.nanmax(values)) if values.size else top)
    grey = np.clip(np.round(np.nan_to_num(values) / top * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an image file, or a one-line DataError naming it."""
    fix = "restore it or remove its id from the split list, or set data.on_bad_file=skip"
    with _open_image(path, fix) as img:
        if img.mode in WIDE_MODES:
            return _wide_to_rgb(img)
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header, or a one-line DataError naming it."""
    with _open_image(path, "restore it or remove its id from the split list") as img:
        return img.height, img.width


class LabelFileError(Exception):
    """A label PNG that is missing, unreadable or not class indices: the problem; the caller
    raises its own error with the fix that fits (restore the dataset, rerun a stage)."""


def read_label_png(path: Path) -> np.ndarray:
    """(H, W) uint8 class indices from a palette or greyscale PNG; 255 = ignore. Never converted
    to RGB: its pixel values *are* the class indices."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise LabelFileError(f"'{path}' is a {img.mode} image, not a palette or greyscale "
                                     f"PNG of class indices")
            return np.asarray(img, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise LabelFileError(f"'{path}' does not exist") from None
    except _PIL_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LabelFileError(f"'{path}' cannot be read ({reason})") from None


def image_is_readable(path: Path) -> bool:
    """True if PIL can open and verify the file (cheap: no full decode for most formats)."""
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except _PIL_ERRORS:
        return False


def multi_hot(classes: Iterable[int], num_classes: int) -> np.ndarray:
    """(C,) float32 with 1 at j for every class index j+1 in `classes` (0 and 255 are ignored)."""
    out = np.zeros(num_classes, dtype=np.float32)
    for c in classes:
        if 0 < int(c) <= num_classes:
            out[int(c) - 1] = 1.0
    return out


def check_ids_nonempty(ids: list[str], where: str, split: str) -> None:
    """An empty split list is a DataError: nothing could be trained or scored."""
    if not ids:
        raise DataError(f"split '{split}' of '{where}' lists no images; add ids to it or "
                        f"choose another split")
