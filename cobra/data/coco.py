"""COCO 2014 reader via pycocotools: instance annotations rasterized to semantic masks.

    ROOT/train2014/*.jpg  ROOT/val2014/*.jpg
    ROOT/annotations/instances_train2014.json  ROOT/annotations/instances_val2014.json

Category ids (1..90 with gaps) map to contiguous class indices 1..80 in id order. Image ids are the
file stems (`COCO_train2014_000000000009`). Only images with at least one non-crowd annotation are
listed, as in the usual WSSS COCO lists (an image with no label cannot train a classifier)."""

import contextlib
import io
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cobra.data.source import Source, check_ids_nonempty, multi_hot
from cobra.errors import DataError

_SPLITS = {"train": "train2014", "val": "val2014", "train2014": "train2014", "val2014": "val2014"}


def _read_annotations(ann_file: Path) -> Any:
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise DataError("data.dataset=coco needs pycocotools; install it with "
                        "`pip install pycocotools`") from None
    try:  # COCO() prints progress lines; keep stdout for the caller's own output.
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(ann_file))
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"annotation file '{ann_file}' cannot be read ({exc}); "
                        f"re-download it") from None


class COCOSource(Source):
    """A COCO 2014 split ("train" or "val"); labels come from the non-crowd annotations."""

    def __init__(self, root: str | Path, split: str, *, skip_missing: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        if not self.root.is_dir():
            raise DataError(f"data.root '{self.root}' does not exist; set data.root to a COCO 2014 "
                            f"directory with train2014/, val2014/ and annotations/")
        if split not in _SPLITS:
            raise DataError(f"COCO split '{split}' is unknown; use 'train' or 'val' "
                            f"(data.train_split / data.val_split / data.seed_split)")
        name = _SPLITS[split]
        ann_file = self.root / "annotations" / f"instances_{name}.json"
        if not ann_file.is_file():
            raise DataError(f"annotation file '{ann_file}' does not exist; put the COCO 2014 "
                            f"instances_{name}.json under '{self.root / 'annotations'}'")
        self.image_dir = self.root / name
        self.coco: Any = _read_annotations(ann_file)
        cat_ids = sorted(self.coco.getCatIds())
        self.cat_to_class = {cat: i + 1 for i, cat in enumerate(cat_ids)}
        cats = self.coco.loadCats(cat_ids)
        self.class_names = ["background", *(c["name"] for c in cats)]
        self.has_masks = True
        self._index_labelled_images()
        ids = list(self._image_ids)
        check_ids_nonempty(ids, str(ann_file), split)
        self.ids = self._present(ids, ann_file, skip_missing)
        check_ids_nonempty(self.ids, str(self.root), split)

    def _index_labelled_images(self) -> None:
        """File names and multi-hot labels of the images with a non-crowd annotation."""
        self._image_ids: dict[str, int] = {}
        self._files: dict[str, str] = {}
        self._labels: dict[str, np.ndarray] = {}
        for img_id in sorted(self.coco.getImgIds()):
            anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id, iscrowd=False))
            classes = {self.cat_to_class[a["category_id"]] for a in anns}
            if not classes:
                continue
            info = self.coco.imgs[img_id]
            key = Path(info["file_name"]).stem
            self._image_ids[key] = img_id
            self._files[key] = info["file_name"]
            self._labels[key] = multi_hot(classes, self.num_classes)

    def _present(self, ids: list[str], ann_file: Path, skip_missing: bool) -> list[str]:
        """`ids` whose image file exists; a missing one is an error unless `skip_missing`."""
        if not self.image_dir.is_dir():
            raise DataError(f"image directory '{self.image_dir}' does not exist; put the COCO "
                            f"{self.image_dir.name} images there")
        present = {p.name for p in self.image_dir.iterdir()}
        missing = [i for i in ids if Path(self._files[i]).name not in present]
        if missing and not skip_missing:
            raise DataError(f"image '{self.image_path(missing[0])}' listed in '{ann_file.name}' "
                            f"does not exist ({len(missing)} missing in all); restore the images "
                            f"or set data.on_bad_file=skip")
        if missing:
            print(f"warning: skipped {len(missing)} missing image(s) of split '{self.split}' in "
                  f"'{self.root}' (first: '{missing[0]}')", file=sys.stderr)
        dropped = set(missing)
        return [i for i in ids if i not in dropped]

    def image_path(self, image_id: str) -> Path:
        try:
            return self.image_dir / Path(self._files[image_id]).name
        except KeyError:
            raise DataError(f"image id '{image_id}' is not in COCO split '{self.split}'; "
                            f"check the id") from None

    def load_mask(self, image_id: str) -> np.ndarray:
        """(H, W) uint8 class indices 0..80; crowd regions 255; smaller objects painted last."""
        img_id = self._image_ids[image_id]
        info = self.coco.imgs[img_id]
        mask = np.zeros((info["height"], info["width"]), dtype=np.uint8)
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id))
        # Large first so small objects lying on large ones stay visible.
        for ann in sorted(anns, key=lambda a: -float(a.get("area", 0.0))):
            with warnings.catch_warnings():  # pycocotools' own numpy-2 copy= deprecation
                warnings.simplefilter("ignore", DeprecationWarning)
                region = self.coco.annToMask(ann).astype(bool)
            mask[region] = 255 if ann.get("iscrowd", 0) else self.cat_to_class[ann["category_id"]]
        return mask

    def labels(self, image_id: str) -> np.ndarray:
        """(C,) float32 multi-hot of the categories of the image's non-crowd annotations."""
        try:
            return self._labels[image_id].copy()
        except KeyError:
            raise DataError(f"image id '{image_id}' is not in COCO split '{self.split}'; "
                            f"check the id") from None
