"""DeepLab v3+ (Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic
Image Segmentation", ECCV 2018) as segmentation_models_pytorch (smp) builds it, so that smp's
``DeepLabV3Plus`` checkpoints (:mod:`segbench.models.smp_convert`) compute here what they
compute there. segbench's own v3+ is :class:`segbench.models.deeplab.DeepLabV3Plus`; this
variant reuses its ASPP (:class:`segbench.models.deeplab.ASPP`) and differs where smp does:

- smp's separable convolution is a depthwise conv and a pointwise conv with nothing between
  them, then BatchNorm and ReLU (segbench's, as the paper's reference code, has BN and ReLU
  after the depthwise conv too): :func:`smp_separable_conv`;
- the ASPP output goes through one more separable 3×3 conv → BN → ReLU;
- it is upsampled to the stride-4 level bilinearly with ``align_corners=True`` (smp: by the
  fixed factor output stride / 4, the same size where smp takes the input), concatenated
  with the 48-channel projection of that level and fused by ONE separable 3×3 conv → BN →
  ReLU (segbench's v3+: two);
- the head upsamples the logits 4x with ``align_corners=True``
  (:class:`~segbench.models.segformer.UpsamplingHead`) before the resize to the input size;
- smp's defaults: ASPP rates (12, 24, 36) at either output stride, ASPP dropout 0.5, no
  auxiliary head. smp dilates its ResNets' stages whole (the encoder option
  ``dilate_first_block``).

smp takes only inputs whose sides divide by the output stride (its x4 upsampled ASPP map must
meet the stride-4 level); this model takes any size, and computes smp's output on those.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.base import SegmentationModel
from segbench.models.blocks import conv_bn_relu, depthwise_conv
from segbench.models.deeplab import ASPP
from segbench.models.encoders import encoder_name, require_dilated
from segbench.models.segformer import classifier

__all__ = ["DeepLabV3PlusSMP", "SMPDeepLabV3PlusDecoder", "smp_separable_conv"]


def smp_separable_conv(
    in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1
) -> nn.Sequential:
    """``(depthwise k×k conv (dilated) → pointwise 1×1 conv) → BN → ReLU``, no bias, "same"
    padding: smp's ``SeparableConv2d`` followed by BatchNorm and ReLU."""
    depthwise = depthwise_conv(in_channels, kernel_size, dilation)
    pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
    return nn.Sequential(
        nn.Sequential(depthwise, pointwise), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
    )


class SMPDeepLabV3PlusDecoder(nn.Module):
    """ASPP → separable conv, upsampled to the low level's size (``align_corners=True``),
    concatenated with the low-level projection, fused by one separable conv.

    Args:
        in_channels: channels of the deepest encoder level.
        low_channels: channels of the stride-4 level.
        low_index: which encoder level that is.
        atrous_rates: the ASPP's rates.
        channels: ASPP and decoder width (256).
        low_proj: width of the low-level projection (48).
        dropout: dropout after the ASPP projection (smp: 0.5).
        separable: smp's separable convs in the ASPP's 3×3 branches (smp's default); the
            convs after the ASPP and the fusion are separable either way, as in smp.
    """

    def __init__(
        self,
        in_channels: int,
        low_channels: int,
        low_index: int,
        atrous_rates: list[int],
        channels: int = 256,
        low_proj: int = 48,
        dropout: float = 0.5,
        separable: bool = True,
    ) -> None:
        super().__init__()
        self.low_index = low_index
        self.aspp = ASPP(in_channels, atrous_rates, channels, dropout, separable=False)
        if separable:  # smp's separable 3x3 branches in place of the full ones
            for i, rate in enumerate(self.aspp.atrous_rates, start=1):
                self.aspp.branches[i] = smp_separable_conv(in_channels, channels, 3, rate)
        self.aspp_conv = smp_separable_conv(channels, channels, 3)
        self.low_proj = conv_bn_relu(low_channels, low_proj, 1)
        self.fuse = smp_separable_conv(channels + low_proj, channels, 3)

    def forward(self, features: list[Tensor]) -> Tensor:
        high = self.aspp_conv(self.aspp(features[-1]))  # (B, 256, H/s, W/s)
        low = self.low_proj(features[self.low_index])  # (B, 48, H/4, W/4)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=True)
        return self.fuse(torch.cat([high, low], dim=1))  # (B, 256, H/4, W/4)


class DeepLabV3PlusSMP(SegmentationModel):
    """DeepLab v3+ in smp's form (module docstring) on a dilated encoder with a stride-4 level.

    Training needs a batch of at least 2 (BatchNorm in the ASPP's image-pooling branch).

    Args:
        encoder: a dilated encoder ending at ``output_stride`` with a level at stride 4.
        num_classes: number of classes.
        output_stride: 16 (smp's default) or 8.
        atrous_rates: ASPP rates (smp: 12, 24, 36 at either output stride).
        channels: ASPP and decoder width (256).
        low_level_channels: width of the low-level projection (48).
        dropout: dropout after the ASPP projection (0.5).
        separable: smp's separable 3×3 ASPP branches (its ``decoder_aspp_separable``).
        head_upsample: the head's upsampling of the logits (``align_corners=True``; smp: 4).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        output_stride: int = 16,
        atrous_rates: list[int] | tuple[int, ...] = (12, 24, 36),
        channels: int = 256,
        low_level_channels: int = 48,
        dropout: float = 0.5,
        separable: bool = True,
        head_upsample: int = 4,
    ) -> None:
        require_dilated(encoder, output_stride, "DeepLabV3PlusSMP")
        strides = list(encoder.strides)
        if 4 not in strides[:-1]:
            raise ValueError(
                f"DeepLabV3PlusSMP: encoder {encoder_name(encoder)!r} (strides {strides}) has "
                "no level at stride 4 to fuse; use a backbone such as resnet34 or resnet50"
            )
        low = strides.index(4)
        decoder = SMPDeepLabV3PlusDecoder(
            encoder.channels[-1],
            encoder.channels[low],
            low,
            [int(r) for r in atrous_rates],
            channels,
            low_level_channels,
            dropout,
            separable,
        )
        head = classifier(channels, num_classes, 1, head_upsample)
        super().__init__(encoder, decoder, head, num_classes)
        self.output_stride = output_stride
