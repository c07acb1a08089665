"""Dilated FCN: the fully convolutional baseline of the model zoos (torchvision's
``fcn_resnet50``, mmsegmentation's ``fcn_r50-d8``), after Long et al., "Fully Convolutional
Networks for Semantic Segmentation" (CVPR 2015) as the dilated-network papers re-ran it
(Yu & Koltun 2016; Zhao et al., PSPNet, CVPR 2017, Table 1's baseline).

Unlike :class:`~segbench.models.fcn.FCN` (the paper's VGG16 net with fc6/fc7 and skip fusion),
the encoder is dilated to output stride 8 and a small convolutional head classifies its deepest
feature: ``num_convs`` 3×3 conv → BN → ReLU, optionally the input concatenated back and fused by
one more 3×3 conv (``concat_input``, mmsegmentation's ``FCNHead``), dropout, a 1×1 classifier,
and bilinear upsampling to the input. An auxiliary FCN classifier on the stage before last
(:func:`~segbench.models.blocks.fcn_aux_head`) is deep supervision in training.

torchvision's head is ``num_convs=1, concat_input=false, channels=512``; mmsegmentation's
``num_convs=2, concat_input=true, channels=512`` (the config's default).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segbench.models.base import SegmentationModel
from segbench.models.blocks import conv_bn_relu, fcn_aux_head
from segbench.models.encoders import encoder_name, require_dilated

__all__ = ["DilatedFCN", "FCNHeadDecoder"]


class FCNHeadDecoder(nn.Module):
    """``num_convs`` 3×3 conv → BN → ReLU on the deepest feature, the input optionally
    concatenated back and fused (``conv_cat``), then dropout.

    Args:
        in_channels: channels of the deepest encoder feature.
        channels: width of the convolutions (512).
        num_convs: how many conv → BN → ReLU (≥ 1).
        concat_input: concatenate the input with the convolutions' output and fuse them by one
            more conv → BN → ReLU.
        kernel_size: kernel of every convolution (3).
        dropout: dropout before the classifier (0.1).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int = 512,
        num_convs: int = 2,
        concat_input: bool = True,
        kernel_size: int = 3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"DilatedFCN: num_convs must be at least 1, got {num_convs}")
        widths = [in_channels] + [channels] * num_convs
        self.convs = nn.Sequential(
            *[conv_bn_relu(a, b, kernel_size) for a, b in zip(widths, widths[1:])]
        )
        self.conv_cat = (
            conv_bn_relu(in_channels + channels, channels, kernel_size) if concat_input else None
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[-1]  # (B, C, H/8, W/8)
        y = self.convs(x)  # (B, channels, H/8, W/8)
        if self.conv_cat is not None:
            y = self.conv_cat(torch.cat([x, y], dim=1))
        return self.dropout(y)


class DilatedFCN(SegmentationModel):
    """FCN head on a dilated encoder, with the auxiliary classifier.

    Args:
        encoder: a dilated encoder ending at ``output_stride`` (ResNet in the zoos).
        num_classes: number of classes.
        output_stride: 8 (the zoos') or 16.
        channels: width of the head (512).
        num_convs: 3×3 convolutions of the head (mmseg 2, torchvision 1).
        concat_input: fuse the input back into the head's output (mmseg true, torchvision false).
        kernel_size: the head's kernel (3).
        dropout: dropout before both classifiers (0.1).
        aux: build the auxiliary classifier on the stage before last.
        aux_channels: width of its 3×3 conv (256).
        aux_weight: its loss weight (0.4 in mmseg's configs; 0.5 in torchvision's recipe).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        output_stride: int = 8,
        channels: int = 512,
        num_convs: int = 2,
        concat_input: bool = True,
        kernel_size: int = 3,
        dropout: float = 0.1,
        aux: bool = True,
        aux_channels: int = 256,
        aux_weight: float = 0.4,
    ) -> None:
        require_dilated(encoder, output_stride, "DilatedFCN")
        if aux and len(encoder.channels) < 2:
            raise ValueError(
                f"DilatedFCN: encoder {encoder_name(encoder)!r} returns one feature level, the "
                "auxiliary head needs the stage before last; use a backbone such as resnet50 "
                "or set model.aux=false"
            )
        decoder = FCNHeadDecoder(
            encoder.channels[-1], channels, num_convs, concat_input, kernel_size, dropout
        )
        aux_head = (
            fcn_aux_head(encoder.channels[-2], aux_channels, num_classes, dropout) if aux else None
        )
        super().__init__(
            encoder,
            decoder,
            nn.Conv2d(channels, num_classes, 1),
            num_classes,
            aux_head=aux_head,
            aux_index=-2,
            aux_weight=aux_weight,
        )
        self.output_stride = output_stride
