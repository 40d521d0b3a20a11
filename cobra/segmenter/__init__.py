"""The segmentation network that stage `segment` trains on the pseudo masks (fully supervised):
`model` builds it, `data` serves its crops, `train` fits it, `infer` predicts and scores."""

from cobra.segmenter.data import MaskDataset, read_mask
from cobra.segmenter.infer import predict, predict_and_score
from cobra.segmenter.model import PaddedSegmenter, build_segmenter
from cobra.segmenter.train import param_groups, train_segmenter

__all__ = ["MaskDataset", "PaddedSegmenter", "build_segmenter", "predict_and_score", "param_groups",
           "predict", "read_mask", "train_segmenter"]
