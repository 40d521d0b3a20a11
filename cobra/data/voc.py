"""PASCAL VOC 2012 layout reader (also reads the synthetic dataset, which is written this way).

    ROOT/
      JPEGImages/<id>.jpg          (.png accepted: the synthetic set is lossless)
      SegmentationClass/<id>.png   palette PNG, pixel value = class index, 255 = ignore
      SegmentationClassAug/<id>.png  optional (SBD-augmented masks for train_aug)
      ImageSets/Segmentation/<split>.txt
      classes.txt                  optional: one name a line, background first"""

import sys
from pathlib import Path

import numpy as np

from cobra.data.source import (
    LabelFileError,
    Source,
    check_ids_nonempty,
    multi_hot,
    read_label_png,
    read_size,
)
from cobra.errors import DataError
from cobra.textfiles import read_text

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

IMAGE_EXTS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


def voc_palette() -> np.ndarray:
    """The standard VOC colour map (bit-interleaved), (256, 3) uint8; index 255 (ignore) is
    cream. Flatten it (`.reshape(-1).tolist()`) for `Image.putpalette`."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[index] = (r, g, b)
    return palette


def read_class_names(root: Path) -> list[str]:
    """classes.txt at the root if present (background first), else the 21 VOC names."""
    path = root / "classes.txt"
    if not path.is_file():
        return list(VOC_CLASSES)
    text = read_text(path, "classes file", DataError)
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) < 2 or names[0] != "background":
        raise DataError(f"'{path}' must list 'background' first and at least one class, "
                        f"one name a line; fix it or delete it to use the VOC names")
    twice = next((name for i, name in enumerate(names) if name in names[:i]), None)
    if twice is not None:  # per-class results are keyed by name: a duplicate hides a class
        raise DataError(f"'{path}' lists class '{twice}' twice; class names must be unique")
    return names


def has_train_aug(root: Path) -> bool:
    """True when the root offers the SBD-augmented train_aug split."""
    return (root / "ImageSets/Segmentation/train_aug.txt").is_file() or (
        root / "SegmentationClassAug").is_dir()


def _read_split(root: Path, split: str) -> list[str]:
    """Ids of a split list; lines may also be `/JPEGImages/<id>.jpg /SegmentationClassAug/...`."""
    path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        aug = root / "SegmentationClassAug"
        if split == "train_aug" and aug.is_dir():
            # train_aug = every SBD-augmented mask that is not a val image (the IRN convention).
            val_path = root / "ImageSets/Segmentation/val.txt"
            val = set(_read_split(root, "val")) if val_path.is_file() else set()
            return sorted(p.stem for p in aug.glob("*.png") if p.stem not in val)
        lists = sorted(p.stem for p in (root / "ImageSets" / "Segmentation").glob("*.txt"))
        have = f" (found: {', '.join(lists)})" if lists else ""
        raise DataError(f"split list '{path}' does not exist{have}; add it or set "
                        f"data.train_split / data.val_split / data.seed_split to a listed split")
    ids: dict[str, int] = {}  # id → its line
    for number, line in enumerate(read_text(path, "split list", DataError).splitlines(), 1):
        token = line.split()[0] if line.split() else ""
        if not token:
            continue
        image_id = Path(token).stem if "/" in token or "." in token else token
        if image_id in ids:  # scored twice, it would count twice and narrow every interval
            raise DataError(f"split list '{path}' lists image '{image_id}' twice (lines "
                            f"{ids[image_id]} and {number}); remove the repeat")
        ids[image_id] = number
    return list(ids)


class VOCSource(Source):
    """A split of a VOC-layout directory; labels are derived from the masks and cached."""

    def __init__(self, root: str | Path, split: str, *, skip_missing: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        if not self.root.is_dir():
            raise DataError(f"data.root '{self.root}' does not exist; set data.root to a "
                            f"VOC-layout directory (or use data.dataset=synthetic)")
        image_dir = self.root / "JPEGImages"
        if not image_dir.is_dir():
            raise DataError(f"'{image_dir}' does not exist; data.root must be a VOC-layout "
                            f"directory with JPEGImages/, SegmentationClass/ and ImageSets/")
        self.class_names = read_class_names(self.root)
        ids = _read_split(self.root, split)
        check_ids_nonempty(ids, str(self.root), split)

        # One directory listing resolves every id's extension and finds missing files cheaply.
        by_stem: dict[str, Path] = {}
        for p in image_dir.iterdir():
            if p.suffix in IMAGE_EXTS and p.stem not in by_stem:
                by_stem[p.stem] = p
        missing = [i for i in ids if i not in by_stem]
        if missing and not skip_missing:
            raise DataError(f"image '{image_dir / missing[0]}.jpg' listed in split '{split}' does "
                            f"not exist ({len(missing)} missing in all); restore the images or "
                            f"set data.on_bad_file=skip")
        self._paths = {i: by_stem[i] for i in ids if i in by_stem}
        self.ids = [i for i in ids if i in self._paths]
        if missing:
            print(f"warning: skipped {len(missing)} missing image(s) of split '{split}' in "
                  f"'{self.root}' (first: '{missing[0]}')", file=sys.stderr)
        check_ids_nonempty(self.ids, str(self.root), split)

        # train_aug ids mostly have only SBD masks; other splits use the original VOC masks.
        aug, plain = self.root / "SegmentationClassAug", self.root / "SegmentationClass"
        order = [aug, plain] if split == "train_aug" else [plain, aug]
        self._mask_dirs = [d for d in order if d.is_dir()]
        self.has_masks = bool(self._mask_dirs)
        self._labels: dict[str, np.ndarray] = {}

    def image_path(self, image_id: str) -> Path:
        try:
            return self._paths[image_id]
        except KeyError:
            raise DataError(f"image id '{image_id}' is not in split '{self.split}' of "
                            f"'{self.root}'; check the id") from None

    def mask_path(self, image_id: str) -> Path:
        """The mask file of an id: the preferred mask directory that holds it."""
        if not self.has_masks:
            raise DataError(f"'{self.root}' has no SegmentationClass/ directory; masks (and the "
                            f"image-level labels derived from them) need it")
        for d in self._mask_dirs:
            path = d / f"{image_id}.png"
            if path.is_file():
                return path
        raise DataError(f"mask '{self._mask_dirs[0] / image_id}.png' does not exist; restore it "
                        f"or remove '{image_id}' from split '{self.split}'")

    def load_mask(self, image_id: str) -> np.ndarray:
        """(H, W) uint8 class indices 0..C, 255 = ignore (palette indices, never RGB colours)."""
        path = self.mask_path(image_id)
        try:
            mask = read_label_png(path)
        except LabelFileError as exc:
            raise DataError(f"mask {exc}; replace it (indices as pixels) or remove "
                            f"'{image_id}' from split '{self.split}'") from None
        self._check_mask_size(image_id, path, mask.shape)
        bad = (mask > self.num_classes) & (mask != 255)
        if bad.any():
            raise DataError(f"mask '{path}' holds class index {int(mask[bad].max())} but "
                            f"'{self.root}' has {self.num_classes} classes; fix the mask or "
                            f"classes.txt")
        return mask

    def check_mask_size(self, image_id: str) -> None:
        """A mask must cover its image pixel for pixel (headers only: cheap enough to check a
        whole split before training)."""
        path = self.mask_path(image_id)
        self._check_mask_size(image_id, path, read_size(path))

    def _check_mask_size(self, image_id: str, path: Path, shape: tuple[int, ...]) -> None:
        size = self.image_size(image_id)
        if tuple(shape[:2]) != size:
            raise DataError(f"mask '{path}' is {shape[1]}x{shape[0]} but its image "
                            f"'{self.image_path(image_id)}' is {size[1]}x{size[0]}; make the mask "
                            f"the image's size or remove '{image_id}' from split '{self.split}'")

    def labels(self, image_id: str) -> np.ndarray:
        """(C,) float32 multi-hot of the classes in the mask other than 0 and 255 (cached)."""
        cached = self._labels.get(image_id)
        if cached is None:
            cached = multi_hot(np.unique(self.load_mask(image_id)), self.num_classes)
            self._labels[image_id] = cached
        return cached.copy()
