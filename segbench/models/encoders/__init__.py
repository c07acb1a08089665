"""Encoders: the contract every encoder meets (``base``), timm's backbones (``timm``) and the VGG
encoders that keep their pooling switches (``vgg``). U-Net's contracting path lives with U-Net
(:class:`segbench.models.unet.UNetEncoder`)."""

from segbench.models.encoders.base import (
    encoder_name,
    levels_until,
    pick_levels,
    require_dilated,
    require_pooling,
)
from segbench.models.encoders.mit import MiTEncoder as MiTEncoder
from segbench.models.encoders.mobilenetv3 import MobileNetV3Encoder as MobileNetV3Encoder
from segbench.models.encoders.timm import TimmEncoder
from segbench.models.encoders.vgg import VGGEncoder

__all__ = [
    "TimmEncoder",
    "VGGEncoder",
    "encoder_name",
    "levels_until",
    "pick_levels",
    "require_dilated",
    "require_pooling",
]
