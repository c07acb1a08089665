"""PSPNet: Pyramid Scene Parsing Network (Zhao et al., CVPR 2017).

A dilated ResNet (output stride 8) feeds a pyramid pooling module: the feature map is
average-pooled to 1×1, 2×2, 3×3 and 6×6 bins, each reduced by a 1×1 conv to 1/N of the
channels, upsampled back and concatenated with the feature map itself; a 3×3 conv and a
1×1 classifier follow. A deeply supervised auxiliary classifier on the stage before last
(res4b22 in the paper) adds a loss weighted 0.4 during training.

Options for segmentation_models_pytorch's ``PSPNet`` (``smp:`` checkpoints,
:mod:`segbench.models.smp_convert`), defaults unchanged: smp reads a shallow, undilated encoder
(``encoder_depth=3``: the stride-8 level, ResNet's layer2), its 1×1 bin has a conv with bias and
no BatchNorm (``ppm_global_bn=False``), the bins are upsampled with ``align_corners=True``
(``ppm_align_corners``) and concatenated before the input (``ppm_input_last``), a 1×1 conv
follows (``conv_kernel=1``), and its head is a 3×3 conv whose logits are upsampled 8x with
``align_corners=True`` (``head_kernel=3``, ``head_upsample=8``); no auxiliary head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.base import SegmentationModel
from segbench.models.blocks import conv_bn_relu, fcn_aux_head
from segbench.models.encoders import encoder_name, require_dilated
from segbench.models.segformer import classifier

__all__ = ["PSPNet", "PyramidPooling"]


class PyramidPooling(nn.Module):
    """Pyramid pooling module: per bin, adaptive avg-pool → 1×1 conv → BN → ReLU → upsample.

    The pooled maps are concatenated with the input, giving ``in_channels * 2`` channels when
    ``in_channels`` divides by ``len(bins)``. As in the paper the 1×1 bin has BatchNorm on a
    single value per channel, so training needs batches of two or more.

    Args:
        in_channels: channels of the input feature map.
        bins: output sizes of the adaptive pools (1, 2, 3, 6).
        global_bn: BatchNorm in the 1×1 bin's conv; ``False``: a conv with bias instead (smp).
        align_corners: upsample the bins with ``align_corners=True`` (smp; default ``False``).
        input_last: concatenate the input after the bins (smp) rather than before them.
    """

    def __init__(
        self,
        in_channels: int,
        bins: tuple[int, ...] | list[int] = (1, 2, 3, 6),
        global_bn: bool = True,
        align_corners: bool = False,
        input_last: bool = False,
    ) -> None:
        super().__init__()
        self.bins = [int(b) for b in bins]
        reduced = max(1, in_channels // len(self.bins))
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                conv_bn_relu(in_channels, reduced, 1, batch_norm=global_bn or b != 1),
            )
            for b in self.bins
        )
        self.out_channels = in_channels + reduced * len(self.bins)
        self.global_bn = bool(global_bn)
        self.align_corners = bool(align_corners)
        self.input_last = bool(input_last)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1 and 1 in self.bins and self.global_bn:
            raise ValueError(
                "PSPNet pyramid pooling: BatchNorm on the pooled 1x1 bin needs a training batch "
                "of at least 2 (got 1); raise dataset.batch_size"
            )
        size = x.shape[-2:]
        pooled = [
            F.interpolate(stage(x), size=size, mode="bilinear", align_corners=self.align_corners)
            for stage in self.stages  # each (B, C/N, b, b) → (B, C/N, H/8, W/8)
        ]
        if self.input_last:
            return torch.cat([*pooled, x], dim=1)  # (B, 2C, H/8, W/8)
        return torch.cat([x, *pooled], dim=1)  # (B, 2C, H/8, W/8)


class PSPDecoder(nn.Module):
    """Pyramid pooling on the deepest feature, then 3×3 conv → BN → ReLU → dropout.

    Args:
        in_channels: channels of the deepest encoder feature.
        bins: pyramid bin sizes.
        channels: width of the 3×3 conv (512).
        dropout: dropout before the classifier (0.1).
        conv_kernel: kernel of the conv after the pooling (3; smp: 1).
        ppm: further :class:`PyramidPooling` options (``global_bn``, ``align_corners``,
            ``input_last``).
    """

    def __init__(
        self,
        in_channels: int,
        bins: list[int],
        channels: int,
        dropout: float,
        conv_kernel: int = 3,
        **ppm: bool,
    ) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_channels, bins, **ppm)
        self.conv = conv_bn_relu(self.ppm.out_channels, channels, int(conv_kernel))
        self.drop = nn.Dropout(dropout)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = self.ppm(features[-1])  # (B, 2C, H/8, W/8)
        return self.drop(self.conv(x))  # (B, 512, H/8, W/8)


class PSPNet(SegmentationModel):
    """PSPNet (Zhao et al., 2017) on a dilated encoder, with the auxiliary classifier.

    The auxiliary head (3×3 conv → BN → ReLU → dropout → 1×1 classifier) reads encoder level
    ``-2`` (ResNet's layer3) and its output ``"aux"`` is returned in training only; its loss
    weight is ``aux_weight`` (0.4), which the training task reads from the model. Training needs
    a batch of at least 2.

    Args:
        encoder: a dilated encoder ending at ``output_stride`` (ResNet in the paper).
        num_classes: number of classes.
        output_stride: 8 (the paper) or 16.
        bins: pyramid pooling bin sizes (1, 2, 3, 6).
        channels: width of the 3×3 conv after pyramid pooling (512).
        aux: build the auxiliary classifier.
        aux_channels: width of the auxiliary 3×3 conv (256).
        dropout: dropout before both classifiers (0.1).
        aux_weight: loss weight of the auxiliary output (0.4 in the paper; unused without it).
        ppm_global_bn: BatchNorm in the 1×1 bin (the paper); ``False``: a conv with bias (smp).
        ppm_align_corners: upsample the bins with ``align_corners=True`` (smp).
        ppm_input_last: concatenate the input after the bins (smp), not before.
        conv_kernel: kernel of the conv after the pooling (3; smp: 1).
        head_kernel: kernel of the classifier conv (1; smp: 3, "same" padding).
        head_upsample: upsample the logits this many times bilinearly with
            ``align_corners=True`` in the head (smp: 8) before the resize to the input size.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        output_stride: int = 8,
        bins: list[int] | tuple[int, ...] = (1, 2, 3, 6),
        channels: int = 512,
        aux: bool = True,
        aux_channels: int = 256,
        dropout: float = 0.1,
        aux_weight: float = 0.4,
        ppm_global_bn: bool = True,
        ppm_align_corners: bool = False,
        ppm_input_last: bool = False,
        conv_kernel: int = 3,
        head_kernel: int = 1,
        head_upsample: int = 1,
    ) -> None:
        require_dilated(encoder, output_stride, "PSPNet")
        if aux and len(encoder.channels) < 2:
            name = encoder_name(encoder)
            raise ValueError(
                f"PSPNet: encoder {name!r} returns one feature level, the auxiliary head "
                "needs the stage before last; use a backbone such as resnet50 or set aux=false"
            )
        decoder = PSPDecoder(
            encoder.channels[-1],
            list(bins),
            channels,
            dropout,
            conv_kernel,
            global_bn=ppm_global_bn,
            align_corners=ppm_align_corners,
            input_last=ppm_input_last,
        )
        head = classifier(channels, num_classes, head_kernel, head_upsample)
        aux_head = None
        if aux:
            aux_head = fcn_aux_head(encoder.channels[-2], aux_channels, num_classes, dropout)
        super().__init__(
            encoder,
            decoder,
            head,
            num_classes,
            aux_head=aux_head,
            aux_index=-2,
            aux_weight=aux_weight,
        )
        self.output_stride = output_stride
