"""Pick a dataset reader from the config, and wrap it as torch Datasets for training / evaluation.

Items are `{"image": (3, S, S) float32 normalized, "label": (C,) float32 multi-hot, "id": str}`."""

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from cobra.config import Config
from cobra.data.decoded_cache import DecodedImages, decoded_images
from cobra.data.source import Source
from cobra.data.transforms import eval_transform, train_transform
from cobra.errors import DataError


def data_root(cfg: Config) -> Path:
    """The dataset directory: data.root, or for synthetic with no root the cached generated set."""
    if cfg.data.root is not None:
        return Path(cfg.data.root).expanduser()
    if cfg.data.dataset == "synthetic":
        from cobra.data.synthetic import ensure_synthetic

        return ensure_synthetic(cfg.data.synthetic)
    layout = "a COCO 2014 directory" if cfg.data.dataset == "coco" else "a VOC-layout directory"
    raise DataError(f"data.root is not set for data.dataset={cfg.data.dataset}; set data.root to "
                    f"{layout} (or use data.dataset=synthetic)")


def build_source(cfg: Config, split: str) -> Source:
    """The reader of `split` for cfg.data.dataset (synthetic and voc share the VOC layout)."""
    root = data_root(cfg)
    skip = cfg.data.on_bad_file == "skip"
    if cfg.data.dataset == "coco":
        from cobra.data.coco import COCOSource

        source: Source = COCOSource(root, split, skip_missing=skip)
    else:
        from cobra.data.voc import VOCSource

        source = VOCSource(root, split, skip_missing=skip)
    if skip:
        # `fail` defers decoding errors to load time (cheap start); `skip` pays one verify pass.
        source.drop_unreadable()
        if not source.ids:
            raise DataError(f"every image of split '{split}' in '{root}' is unreadable; "
                            f"check the dataset files")
    return source


def resolve_train_split(cfg: Config) -> str:
    """data.train_split if set, else "train_aug" when the dataset has it, else "train"."""
    if cfg.data.train_split:
        return cfg.data.train_split
    if cfg.data.dataset == "coco":
        return "train"
    from cobra.data.voc import has_train_aug

    return "train_aug" if has_train_aug(data_root(cfg)) else "train"


class _SourceDataset(Dataset):
    """Common part: a Source, its ids and the item dict. Images come from `images` when given
    (the decoded cache: the same pixels, without decoding the file), else from the source."""

    def __init__(self, source: Source, image_size: int,
                 images: DecodedImages | None = None) -> None:
        self.source = source
        self.images: Source | DecodedImages = images if images is not None else source
        self.image_size = image_size
        self.ids = list(source.ids)
        self.num_classes = source.num_classes
        self.class_names = list(source.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def _transform(self, image: Any) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        image = self._transform(self.images.load_image(image_id))
        label = torch.from_numpy(self.source.labels(image_id))
        return {"image": image, "label": label, "id": image_id}


class TrainDataset(_SourceDataset):
    """Random resize of the long side, flip, normalize, random S x S crop (IRN / CoBra)."""

    def __init__(self, source: Source, image_size: int, resize_long: tuple[int, int],
                 images: DecodedImages | None = None) -> None:
        super().__init__(source, image_size, images)
        self.resize_long = (int(resize_long[0]), int(resize_long[1]))

    def _transform(self, image: Any) -> torch.Tensor:
        return train_transform(image, self.image_size, self.resize_long)


class EvalDataset(_SourceDataset):
    """Deterministic: the whole image resized to S x S, normalized."""

    def _transform(self, image: Any) -> torch.Tensor:
        return eval_transform(image, self.image_size)


def build_train_dataset(cfg: Config, split: str) -> TrainDataset:
    """The augmented classification dataset of `split` (items: image, label, id)."""
    lo, hi = cfg.data.resize_long
    source = build_source(cfg, split)
    return TrainDataset(source, cfg.data.image_size, (lo, hi), _cached_images(cfg, source))


def build_eval_dataset(cfg: Config, split: str) -> EvalDataset:
    """The deterministic classification dataset of `split` (items: image, label, id)."""
    source = build_source(cfg, split)
    return EvalDataset(source, cfg.data.image_size, _cached_images(cfg, source))


def _cached_images(cfg: Config, source: Source) -> DecodedImages | None:
    """The split's decoded cache when data.decoded_cache is on (None: read the files)."""
    return decoded_images(source) if cfg.data.decoded_cache else None
