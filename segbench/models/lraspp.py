"""LR-ASPP, the Lite Reduced Atrous Spatial Pyramid Pooling head of Howard et al., "Searching for
MobileNetV3" (ICCV 2019, Section 6.4, Figure 10), as torchvision's ``LRASPPHead`` computes it.

On the deepest encoder feature (stride 16, MobileNetV3's dilated last stage) a 1×1 conv → BN →
ReLU branch is gated channel-wise by a squeeze-and-excitation-like branch (global average →
1×1 conv → sigmoid); the product is upsampled bilinearly to the stride-8 feature and classified
by a 1×1 conv, and a second 1×1 classifier on the stride-8 feature itself is added to it.

The paper's pooling branch is a 49×49 average pool of stride (16, 20) (at 1024×2048 Cityscapes
crops); torchvision pools globally, which segbench follows (any input size, the same gate at
every position).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.base import SegmentationModel
from segbench.models.blocks import conv_bn_relu
from segbench.models.encoders import encoder_name, require_dilated

__all__ = ["LRASPP", "LRASPPDecoder"]


class LRASPPDecoder(nn.Module):
    """The LR-ASPP head: gated 1×1 features of the deepest level, upsampled and classified,
    plus a 1×1 classifier on a finer level. Returns class scores at the finer level's size.

    Args:
        low_channels: channels of the finer ("low") encoder level.
        high_channels: channels of the deepest ("high") encoder level.
        low_index: which encoder level is the low one.
        num_classes: number of classes.
        channels: width of the gated branch (128).
    """

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        low_index: int,
        num_classes: int,
        channels: int = 128,
    ) -> None:
        super().__init__()
        self.low_index = low_index
        self.cbr = conv_bn_relu(high_channels, channels, 1)
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(high_channels, channels, 1, bias=False), nn.Sigmoid()
        )
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        low, high = features[self.low_index], features[-1]  # (B, C_l, H/8, W/8), (B, C_h, ...)
        x = self.cbr(high) * self.scale(high)  # (B, channels, H/16, W/16)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)  # (B, K, H/8, W/8)


def _low_index(encoder: nn.Module, low_stride: int) -> int:
    """The first encoder level at stride ``low_stride``, which must not be the deepest one."""
    strides = list(encoder.strides)
    at = [i for i, s in enumerate(strides) if s == low_stride]
    if not at or at[0] == len(strides) - 1:
        raise ValueError(
            f"LRASPP: encoder {encoder_name(encoder)!r} (strides {strides}) has no level at "
            f"stride {low_stride} finer than its deepest one, which the low branch reads; "
            "set model.low_stride to one of its strides, or use a backbone with a stride-8 "
            "level such as mobilenetv3_large or resnet50"
        )
    return at[0]


class LRASPP(SegmentationModel):
    """LR-ASPP (Howard et al., 2019) on an encoder ending at ``output_stride``.

    Args:
        encoder: an encoder ending at ``output_stride`` with a finer level at ``low_stride``
            (MobileNetV3-Large dilated to 16 in the paper).
        num_classes: number of classes.
        output_stride: stride of the deepest level (16 in the paper; 8 or 32 also allowed).
        low_stride: stride of the level the low branch reads (8).
        channels: width of the gated branch (128).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        output_stride: int = 16,
        low_stride: int = 8,
        channels: int = 128,
    ) -> None:
        require_dilated(encoder, output_stride, "LRASPP", allowed=(8, 16, 32))
        low = _low_index(encoder, low_stride)
        decoder = LRASPPDecoder(
            encoder.channels[low], encoder.channels[-1], low, num_classes, channels
        )
        # the decoder already sums the two classifiers' scores: no head left to apply
        super().__init__(encoder, decoder, nn.Identity(), num_classes)
        self.output_stride = output_stride
