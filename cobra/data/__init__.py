"""Datasets (synthetic, PASCAL VOC, COCO), their readers and the training transforms."""

from cobra.data.datasets import (
    EvalDataset,
    TrainDataset,
    build_eval_dataset,
    build_source,
    build_train_dataset,
    data_root,
    resolve_train_split,
)
from cobra.data.source import Source
from cobra.data.transforms import normalize_image

__all__ = ["EvalDataset", "Source", "TrainDataset", "build_eval_dataset", "build_source",
           "build_train_dataset", "data_root", "normalize_image", "resolve_train_split"]
