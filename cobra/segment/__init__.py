"""Stage `segment`: a fully supervised segmentation network trained on the pseudo masks.

`build_segmenter` makes an smp DeepLabV3+ / SegFormer that takes any input size, `MaskDataset`
serves augmented (image, mask) crops, `train_segmenter` fits it (SGD, poly lr, CE with 255
ignored), and `predict` / `evaluate` run multi-scale + flip inference and score mIoU.
"""

from cobra.segment.data import MaskDataset, read_mask
from cobra.segment.infer import evaluate, predict
from cobra.segment.model import PaddedSegmenter, build_segmenter
from cobra.segment.train import param_groups, train_segmenter

__all__ = [
    "MaskDataset",
    "PaddedSegmenter",
    "build_segmenter",
    "evaluate",
    "param_groups",
    "predict",
    "read_mask",
    "train_segmenter",
]
