"""The segmentation network that stage `segment` trains on the pseudo masks (fully supervised).

`build_segmenter` makes an smp DeepLabV3+ / SegFormer that takes any input size, `MaskDataset`
serves augmented (image, mask) crops, `train_segmenter` fits it (SGD, poly lr, CE with 255
ignored), and `predict` / `predict_and_score` run multi-scale + flip inference and score mIoU.
"""

from cobra.segmenter.data import MaskDataset, read_mask
from cobra.segmenter.infer import predict, predict_and_score
from cobra.segmenter.model import PaddedSegmenter, build_segmenter
from cobra.segmenter.train import param_groups, train_segmenter

__all__ = [
    "MaskDataset",
    "PaddedSegmenter",
    "build_segmenter",
    "predict_and_score",
    "param_groups",
    "predict",
    "read_mask",
    "train_segmenter",
]
