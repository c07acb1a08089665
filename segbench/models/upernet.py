"""UPerNet: Unified Perceptual Parsing (Xiao et al., ECCV 2018), as the ConvNeXt (Liu et al.,
CVPR 2022) and Swin (Liu et al., ICCV 2021) papers train it for semantic segmentation
(mmsegmentation's ``UPerHead`` with an auxiliary ``FCNHead``).

A feature pyramid over the backbone's levels at strides 4, 8, 16 and 32: the coarsest level
goes through a pyramid pooling module (PPM, bins 1, 2, 3, 6, as in PSPNet) and a 3×3 conv; the
finer levels get 1×1 lateral convs, to which the coarser result is added top-down (bilinear
upsampling); a 3×3 conv smooths each of them; all levels are upsampled to stride 4,
concatenated and fused by a 3×3 conv, and a 1×1 conv classifies (dropout 0.1 before it). Every
conv but the classifiers is conv → BN → ReLU with 512 channels. An FCN head on the stage before
last (stage 3: 3×3 conv to 256 channels → BN → ReLU → dropout 0.1 → 1×1 classifier) adds a
loss weighted 0.4 in training.

Matches transformers' ``UperNetForSemanticSegmentation`` on the same weights
(:mod:`segbench.models.upernet_hf`; transformers has no dropout, which is the identity in eval
mode anyway), and segmentation_models_pytorch's ``UPerNet`` (``smp-hub/upernet-*``,
:mod:`segbench.models.smp_convert`) with ``level_norms=True`` (a LayerNorm, eps 1e-6, on every
level the decoder reads, whatever the encoder), ``head_upsample=4`` (its head upsamples the
stride-4 logits 4x with ``align_corners=True``), ``aux=False`` and its width (256 by default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from segbench.models.base import SegmentationModel
from segbench.models.blocks import conv_bn_relu, fcn_aux_head
from segbench.models.encoders import encoder_name
from segbench.models.segformer import classifier

__all__ = ["UPerHead", "UPerNet", "UPerPyramidPooling"]


def _resize(x: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class UPerPyramidPooling(nn.Module):
    """PPM of UPerNet: per bin, adaptive avg-pool → 1×1 conv → BN → ReLU (``channels`` each, not
    PSPNet's ``in_channels / len(bins)``) → upsample; concatenated with the input.

    As in PSPNet the 1×1 bin has BatchNorm on a single value per channel, so training needs
    batches of two or more.

    Args:
        in_channels: channels of the coarsest feature map.
        channels: output channels of every bin's conv (512).
        bins: output sizes of the adaptive pools (1, 2, 3, 6).
    """

    def __init__(self, in_channels: int, channels: int, bins: list[int]) -> None:
        super().__init__()
        self.bins = [int(b) for b in bins]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), conv_bn_relu(in_channels, channels, 1))
            for b in self.bins
        )
        self.out_channels = in_channels + channels * len(self.bins)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1 and 1 in self.bins:
            raise ValueError(
                "UPerNet pyramid pooling: BatchNorm on the pooled 1x1 bin needs a training batch "
                "of at least 2 (got 1); raise dataset.batch_size"
            )
        pooled = [_resize(stage(x), x.shape[-2:]) for stage in self.stages]  # (B, 512, h, w)
        return torch.cat([x, *pooled], dim=1)  # (B, C + 4·512, H/32, W/32)


class UPerHead(nn.Module):
    """The UPerNet decoder: PPM on the coarsest level, FPN over all of them, fused at the
    finest.

    Args:
        in_channels: channels of the levels read, finest first (e.g. ConvNeXt-T: 96, 192, 384,
            768).
        channels: width of every conv (512).
        bins: PPM bin sizes (1, 2, 3, 6).
        dropout: dropout before the classifier (0.1).
        level_norms: a LayerNorm over the channels (eps 1e-6) of every level read, before
            anything else (``norms.<i>``, finest first): segmentation_models_pytorch's
            ``feature_norms``.
    """

    def __init__(
        self,
        in_channels: list[int],
        channels: int,
        bins: list[int],
        dropout: float,
        level_norms: bool = False,
    ) -> None:
        super().__init__()
        self.norms = None
        if level_norms:
            self.norms = nn.ModuleList(LayerNorm2d(c, eps=1e-6) for c in in_channels)
        self.ppm = UPerPyramidPooling(in_channels[-1], channels, bins)
        self.bottleneck = conv_bn_relu(self.ppm.out_channels, channels, 3)
        self.lateral_convs = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(
            conv_bn_relu(channels, channels, 3) for _ in in_channels[:-1]
        )
        self.fpn_bottleneck = conv_bn_relu(len(in_channels) * channels, channels, 3)
        self.drop = nn.Dropout(dropout)
        self.num_levels = len(in_channels)

    def forward(self, features: list[Tensor]) -> Tensor:
        levels = features[-self.num_levels :]  # strides 4, 8, 16, 32
        if self.norms is not None:
            levels = [norm(x) for norm, x in zip(self.norms, levels, strict=True)]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, levels, strict=False)]
        laterals.append(self.bottleneck(self.ppm(levels[-1])))  # (B, 512, H/32, W/32)
        for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse added to the next finer
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=False)]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        fused = torch.cat([outs[0], *(_resize(x, size) for x in outs[1:])], dim=1)
        return self.drop(self.fpn_bottleneck(fused))  # (B, 512, H/4, W/4)


class UPerNet(SegmentationModel):
    """UPerNet (Xiao et al., 2018) with the auxiliary FCN head of mmsegmentation's recipe.

    The decoder reads the encoder levels at stride ``min_stride`` (4) and coarser (ConvNeXt and
    Swin return exactly those four; a ResNet's or ``tiny``'s stride-2 level is left out). The
    auxiliary head reads encoder level ``-2``, the stage before last (stage 3, stride 16:
    mmseg's ``in_index=2`` on a four-level backbone); its output ``"aux"`` is returned in
    training only, weighted ``aux_weight`` (0.4) by the training task. Training needs a batch
    of at least 2 (BatchNorm on the 1×1 pooling bin).

    Args:
        encoder: an encoder with ``channels`` and ``strides`` (ConvNeXt-T or Swin-T in the
            papers, with ``out_norms``).
        num_classes: number of classes.
        channels: width of the decoder (512).
        bins: PPM bin sizes (1, 2, 3, 6).
        min_stride: the finest encoder stride the decoder reads (4).
        dropout: dropout before both classifiers (0.1).
        aux: build the auxiliary FCN head.
        aux_channels: width of its 3×3 conv (256).
        aux_weight: loss weight of the auxiliary output (0.4; unused without it).
        level_norms: a LayerNorm (eps 1e-6) on every level the decoder reads (smp's UPerNet);
            ``False``: none (mmseg's and transformers' norms live in the encoder instead,
            ``out_norms``).
        head_upsample: upsample the stride-4 logits this many times bilinearly with
            ``align_corners=True`` in the head (smp: 4) before the resize to the input size;
            1: the single resize of mmseg and transformers.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        channels: int = 512,
        bins: list[int] | tuple[int, ...] = (1, 2, 3, 6),
        min_stride: int = 4,
        dropout: float = 0.1,
        aux: bool = True,
        aux_channels: int = 256,
        aux_weight: float = 0.4,
        level_norms: bool = False,
        head_upsample: int = 1,
    ) -> None:
        name = encoder_name(encoder)
        strides = list(getattr(encoder, "strides", None) or [])
        if not strides or not getattr(encoder, "channels", None):
            raise ValueError(
                f"UPerNet: encoder {name!r} must expose `channels` and `strides` (one per "
                "feature map); use a segbench backbone such as convnext_tiny or resnet50"
            )
        read = [i for i, s in enumerate(strides) if s >= min_stride]
        if len(read) < 2:
            raise ValueError(
                f"UPerNet builds a feature pyramid over the encoder levels at stride "
                f"{min_stride} and coarser, but encoder {name!r} (strides {strides}) has "
                f"{len(read)} of them; use a multi-level backbone such as convnext_tiny, "
                "swin_tiny or resnet50 (backbone.out_indices=null, backbone.until_stride=null)"
            )
        in_channels = [encoder.channels[i] for i in read]
        decoder = UPerHead(in_channels, channels, list(bins), dropout, level_norms)
        head = classifier(channels, num_classes, 1, head_upsample)
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
        self.min_stride = min_stride
