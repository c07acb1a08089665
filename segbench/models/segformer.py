"""SegFormer (Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers", NeurIPS 2021).

A hierarchical transformer encoder (MiT, :mod:`segbench.models.encoders.mit`: features at
strides 4, 8, 16, 32, no positional encoding) and a lightweight all-MLP decoder: each of the
four levels is mapped by a linear layer to a common width ``C`` (256 for MiT-B0/B1, 768 for
B2-B5), upsampled to stride 4, concatenated (coarsest first), fused by a 1×1 conv with BatchNorm
and ReLU, and classified by a 1×1 conv after dropout (0.1). The logits at stride 4 are
upsampled bilinearly to the input size. There is no auxiliary head.

The decoder runs on any encoder: it fuses the last four levels the encoder returns (all of
them when it returns fewer) at the resolution of the finest of them. Hugging Face's
``SegformerForSemanticSegmentation`` checkpoints convert to this model with
:func:`segbench.models.segformer_hf.convert_segformer`; segmentation_models_pytorch's
``Segformer`` (``smp-hub/segformer-*``) with :func:`segbench.models.smp_convert.convert_segformer`,
on a MiT built with ``block_norm_eps=1e-6`` and ``head_upsample=4``: smp's head upsamples the
stride-4 logits 4x bilinearly with ``align_corners=True`` (:class:`UpsamplingHead`, also used by
the other models' smp options) before the usual resize to the input size, which is then the
identity for inputs whose sides divide by 4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.base import SegmentationModel
from segbench.models.blocks import conv_bn_relu
from segbench.models.encoders import encoder_name

__all__ = ["AllMLPDecoder", "SegFormer", "UpsamplingHead", "classifier"]


class UpsamplingHead(nn.Conv2d):
    """A classifier conv ("same" padding, with bias) whose logits are upsampled ``upsampling``
    times bilinearly with ``align_corners=True``, as segmentation_models_pytorch's
    ``SegmentationHead`` (conv, then ``nn.Upsample``). Its parameters are the conv's own
    (``weight``, ``bias``), so it loads the weights of a plain ``nn.Conv2d`` classifier.

    Args:
        in_channels: channels of the decoder output.
        num_classes: number of classes.
        kernel_size: the conv's kernel (odd).
        upsampling: the integer upsampling factor (1: none).
    """

    def __init__(
        self, in_channels: int, num_classes: int, kernel_size: int = 1, upsampling: int = 1
    ) -> None:
        if int(kernel_size) % 2 != 1 or int(upsampling) < 1:
            raise ValueError(
                f"classifier: kernel_size must be odd and upsampling at least 1, got "
                f"kernel_size={kernel_size}, upsampling={upsampling}"
            )
        super().__init__(in_channels, num_classes, int(kernel_size), padding=int(kernel_size) // 2)
        self.upsampling = int(upsampling)

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)  # (B, K, h, w)
        if self.upsampling == 1:
            return y
        size = (y.shape[-2] * self.upsampling, y.shape[-1] * self.upsampling)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=True)  # (B, K, uh, uw)


def classifier(
    in_channels: int, num_classes: int, kernel_size: int = 1, upsampling: int = 1
) -> nn.Conv2d:
    """The classifier of a model: a plain 1×1 ``nn.Conv2d`` by default (the keys and behaviour
    of every segbench checkpoint), else an :class:`UpsamplingHead`."""
    if int(kernel_size) == 1 and int(upsampling) == 1:
        return nn.Conv2d(in_channels, num_classes, 1)
    return UpsamplingHead(in_channels, num_classes, kernel_size, upsampling)


class AllMLPDecoder(nn.Module):
    """SegFormer's decoder: per level a linear layer to ``dim``, upsample to the finest level,
    concatenate (coarsest first, as the reference does), 1×1 conv → BN → ReLU, dropout.

    Args:
        in_channels: channels of the encoder levels, finest first.
        dim: the common width ``C`` (256 for MiT-B0/B1, 768 for B2-B5).
        dropout: dropout before the classifier (0.1).
        levels: how many of the last encoder levels are fused (4).
        proj: ``linear`` (the paper's MLP layer, Hugging Face's) or ``conv``: a 1×1 conv → BN →
            ReLU per level (mmsegmentation's ``SegformerHead``).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        dim: int = 256,
        dropout: float = 0.1,
        levels: int = 4,
        proj: str = "linear",
    ) -> None:
        super().__init__()
        if proj not in ("linear", "conv"):
            raise ValueError(f"SegFormer: model.proj must be linear or conv, got {proj!r}")
        self.levels = min(int(levels), len(in_channels))
        self.dim = int(dim)
        self.conv_proj = proj == "conv"
        self.proj = nn.ModuleList(
            conv_bn_relu(c, self.dim, 1) if self.conv_proj else nn.Linear(c, self.dim)
            for c in in_channels[-self.levels :]
        )
        self.fuse = conv_bn_relu(self.dim * self.levels, self.dim, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, features: list[Tensor]) -> Tensor:
        features = features[-self.levels :]  # finest first
        size = features[0].shape[-2:]
        maps = []
        for feature, proj in zip(features, self.proj):
            if self.conv_proj:
                x = proj(feature)  # (B, C, h_i, w_i)
            else:
                x = proj(feature.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, C, h_i, w_i)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            maps.append(x)  # (B, C, h_0, w_0)
        x = self.fuse(torch.cat(maps[::-1], dim=1))  # (B, levels * C, h_0, w_0) → (B, C, ...)
        return self.drop(x)


class SegFormer(SegmentationModel):
    """SegFormer: an encoder (MiT in the paper) and the all-MLP decoder.

    Args:
        encoder: any encoder (MiT-B0 … B5 in the paper); its last four levels are fused.
        num_classes: number of classes.
        decoder_dim: the decoder width ``C`` (256 for MiT-B0/B1, 768 for B2-B5; the model
            config reads it from the backbone config).
        dropout: dropout before the classifier (0.1).
        levels: how many of the last encoder levels the decoder fuses (4).
        head_upsample: upsample the stride-4 logits this many times bilinearly with
            ``align_corners=True`` in the head (segmentation_models_pytorch's Segformer: 4),
            before the resize to the input size; 1 (default): no such step, the logits are
            resized once with ``align_corners=False`` (the paper's code, Hugging Face).
        proj: each level's projection: ``linear`` (the paper's) or ``conv`` (1×1 conv → BN →
            ReLU, mmsegmentation's ``SegformerHead``, whose checkpoints need it).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        decoder_dim: int = 256,
        dropout: float = 0.1,
        levels: int = 4,
        head_upsample: int = 1,
        proj: str = "linear",
    ) -> None:
        channels = list(getattr(encoder, "channels", None) or [])
        if not channels:
            raise ValueError(
                f"SegFormer: encoder {encoder_name(encoder)!r} must expose `channels` (one per "
                "feature map); use a segbench backbone such as mit_b0 or resnet50"
            )
        if int(levels) < 1:
            raise ValueError(f"SegFormer: levels must be at least 1, got {levels}")
        decoder = AllMLPDecoder(channels, decoder_dim, dropout, levels, proj)
        head = classifier(decoder.dim, num_classes, 1, head_upsample)
        super().__init__(encoder, decoder, head, num_classes)
