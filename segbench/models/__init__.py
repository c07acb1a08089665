"""Segmentation models: the encoders (``encoders/``: their contract, timm's backbones, VGG), the
encoder → decoder → head base, and one file per architecture family."""

from segbench.models.base import SegmentationModel, count_parameters, segmenter_of
from segbench.models.encoders import TimmEncoder, VGGEncoder

__all__ = ["SegmentationModel", "TimmEncoder", "VGGEncoder", "count_parameters", "segmenter_of"]
