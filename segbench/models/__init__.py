"""Segmentation models: the timm encoder adapter, the encoder → decoder → head base, and one
file per architecture family."""

from segbench.models.base import SegmentationModel
from segbench.models.encoders import TimmEncoder, VGGEncoder

__all__ = ["SegmentationModel", "TimmEncoder", "VGGEncoder"]
