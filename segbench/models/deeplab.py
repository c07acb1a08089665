"""DeepLab v1, v3 and v3+: atrous convolution on a dilated encoder.

- v1 LargeFOV: Chen et al., "Semantic Image Segmentation with Deep Convolutional Nets and
  Fully Connected CRFs", ICLR 2015. VGG16 at output stride 8, an atrous 3×3 fc6 (rate 12),
  1×1 fc7/fc8, bilinear upsampling and optional dense-CRF post-processing.
- v3: Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017.
  Atrous Spatial Pyramid Pooling (ASPP) with an image-pooling branch on a dilated ResNet.
- v3+: Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image
  Segmentation", ECCV 2018. v3's ASPP plus a light decoder fusing a stride-4 encoder feature,
  with the paper's atrous depthwise-separable convolutions in the ASPP's 3×3 branches and the
  decoder's two 3×3 convolutions (``separable=True``, the config's default; ``False``: full
  convolutions there, the form segbench built before, which older checkpoints hold).

Two options give mmsegmentation's ``ASPPHead`` / ``DepthwiseSeparableASPPHead`` (its DeepLab v3
and v3+ zoo, :mod:`segbench.models.mmseg_convert`): ``project_kernel=3`` fuses the ASPP branches
with a 3×3 conv (its ``bottleneck``; depthwise-separable with ``separable``) instead of the
paper's 1×1 projection, and ``head_conv=False`` (v3) drops the 3×3 conv between the ASPP and
the classifier. mmseg concatenates the image-pooling branch first, segbench last: the converter
permutes the fusing conv's input channels rather than the model its branches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.base import SegmentationModel
from segbench.models.blocks import conv_bn_relu, fcn_aux_head, separable_conv_bn_relu
from segbench.models.encoders import encoder_name, require_dilated

__all__ = ["ASPP", "DeepLabV1", "DeepLabV3", "DeepLabV3Plus"]


class ASPPPooling(nn.Module):
    """Image-level branch of ASPP: global average pool → 1×1 conv → BN → ReLU → upsample.

    As in the paper it has BatchNorm on a 1×1 map, so training needs batches of two or more
    (BatchNorm cannot normalise a single value per channel); eval mode has no such limit.

    Args:
        in_channels: input channels.
        out_channels: output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = conv_bn_relu(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1:
            raise ValueError(
                "ASPP image pooling: BatchNorm on the pooled 1x1 map needs a training batch of "
                "at least 2 (got 1); raise dataset.batch_size"
            )
        y = self.conv(self.pool(x))  # (B, C_out, 1, 1)
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (DeepLab v3): 1×1 conv, atrous 3×3 convs, image pooling.

    Every branch is conv → BN → ReLU with ``channels`` outputs; the concatenation (branches in
    the order 1×1, atrous by rate, image pooling) is projected by a conv → BN → ReLU → dropout.

    Args:
        in_channels: channels of the deepest encoder feature.
        atrous_rates: dilation of each 3×3 branch (6, 12, 18 at output stride 16).
        channels: width of every branch and of the projection (256 in the paper).
        dropout: dropout after the projection (0.1).
        separable: atrous depthwise-separable 3×3 branches (DeepLab v3+) instead of full ones.
        project_kernel: kernel of the projection: 1 (the paper's 1×1) or 3 (mmsegmentation's
            3×3 ``bottleneck``; depthwise-separable with ``separable``, as its v3+ head's).
    """

    def __init__(
        self,
        in_channels: int,
        atrous_rates: tuple[int, ...] | list[int] = (6, 12, 18),
        channels: int = 256,
        dropout: float = 0.1,
        separable: bool = False,
        project_kernel: int = 1,
    ) -> None:
        super().__init__()
        self.atrous_rates = [int(r) for r in atrous_rates]
        conv3 = separable_conv_bn_relu if separable else conv_bn_relu
        branches: list[nn.Module] = [conv_bn_relu(in_channels, channels, 1)]
        branches += [conv3(in_channels, channels, 3, dilation=r) for r in self.atrous_rates]
        branches.append(ASPPPooling(in_channels, channels))
        self.branches = nn.ModuleList(branches)
        if project_kernel not in (1, 3):
            raise ValueError(f"ASPP: project_kernel must be 1 or 3, got {project_kernel}")
        project = conv_bn_relu if project_kernel == 1 else conv3
        self.project = nn.Sequential(
            project(channels * len(branches), channels, project_kernel), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([branch(x) for branch in self.branches], dim=1)  # (B, n*C, H/s, W/s)
        return self.project(y)  # (B, C, H/s, W/s)


def _default_rates(atrous_rates: list[int] | None, output_stride: int) -> list[int]:
    """The paper's rates (6, 12, 18) at output stride 16, doubled at output stride 8."""
    if atrous_rates is not None:
        return [int(r) for r in atrous_rates]
    return [r * 16 // output_stride for r in (6, 12, 18)]


class LargeFOVHead(nn.Module):
    """DeepLab v1 LargeFOV's fc6 (3×3, dilation ``dilation``) and fc7 (1×1), ReLU and dropout.

    Args:
        in_channels: channels of the deepest encoder feature.
        channels: width of fc6/fc7 (1024).
        dilation: fc6 dilation at the encoder's output stride.
        dropout: dropout after fc6 and fc7 (0.5).
    """

    def __init__(self, in_channels: int, channels: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation)
        self.fc7 = nn.Conv2d(channels, channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = self.drop(self.relu(self.fc6(features[-1])))  # (B, 1024, H/8, W/8)
        return self.drop(self.relu(self.fc7(x)))  # (B, 1024, H/8, W/8)


class DeepLabV1(SegmentationModel):
    """DeepLab v1 LargeFOV (Chen et al., 2015): dilated encoder, atrous fc6, optional CRF.

    ``fc_dilation`` is given relative to output stride 8 (the paper's 12); at output stride 16
    the encoder map is half as fine, so fc6 uses ``fc_dilation * 8 / 16`` (6) to keep the
    same field of view. The optional ``crf`` runs only in eval mode, on the logits upsampled
    to the input size, as the paper's dense-CRF post-processing.

    Args:
        encoder: a dilated encoder ending at ``output_stride`` (VGG16 in the paper).
        num_classes: number of classes.
        output_stride: 8 (the paper) or 16.
        fc_channels: width of fc6/fc7 (1024).
        fc_dilation: fc6 dilation at output stride 8 (12: LargeFOV).
        dropout: dropout after fc6 and fc7 (0.5).
        crf: optional module ``crf(logits (B, K, H, W), image (B, 3, H, W)) -> logits``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        output_stride: int = 8,
        fc_channels: int = 1024,
        fc_dilation: int = 12,
        dropout: float = 0.5,
        crf: nn.Module | None = None,
    ) -> None:
        require_dilated(encoder, output_stride, "DeepLabV1")
        dilation = max(1, fc_dilation * 8 // output_stride)
        decoder = LargeFOVHead(encoder.channels[-1], fc_channels, dilation, dropout)
        super().__init__(encoder, decoder, nn.Conv2d(fc_channels, num_classes, 1), num_classes)
        self.output_stride = output_stride
        self.crf = crf

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = super().forward(x)  # {"out": (B, K, H, W)}
        if self.crf is not None and not self.training:
            out["out"] = self.crf(out["out"], x)  # (B, K, H, W), refined
        return out


def _aux_head(
    encoder: nn.Module, aux: bool, channels: int, weight: float, num_classes: int, model: str
) -> dict:
    """The auxiliary FCN classifier's arguments of :class:`SegmentationModel` (none without
    ``aux``): on the encoder level before last, dropout 0.1 as PSPNet's."""
    if not aux:
        return {}
    if len(encoder.channels) < 2:
        raise ValueError(
            f"{model}: encoder {encoder_name(encoder)!r} returns one feature level, the "
            "auxiliary head needs the stage before last; use a backbone such as resnet50 or "
            "set model.aux=false"
        )
    head = fcn_aux_head(encoder.channels[-2], channels, num_classes, 0.1)
    return {"aux_head": head, "aux_index": -2, "aux_weight": weight}


class DeepLabV3Decoder(nn.Module):
    """ASPP on the deepest feature, then (``head_conv``) a 3×3 conv → BN → ReLU (the
    classifier is the head).

    Args:
        in_channels: channels of the deepest encoder feature.
        atrous_rates: ASPP dilation rates.
        channels: ASPP and conv width (256).
        dropout: dropout after the ASPP projection.
        project_kernel: kernel of the ASPP projection (1, or 3 as mmsegmentation's).
        head_conv: the 3×3 conv after the ASPP (false: none, as mmsegmentation's head).
    """

    def __init__(
        self,
        in_channels: int,
        atrous_rates: list[int],
        channels: int,
        dropout: float,
        project_kernel: int = 1,
        head_conv: bool = True,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, atrous_rates, channels, dropout, False, project_kernel)
        self.conv = conv_bn_relu(channels, channels, 3) if head_conv else nn.Identity()

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.conv(self.aspp(features[-1]))  # (B, 256, H/16, W/16)


class DeepLabV3(SegmentationModel):
    """DeepLab v3 (Chen et al., 2017): ASPP with image pooling on a dilated encoder.

    Training needs a batch of at least 2 (BatchNorm in ASPP's image-pooling branch).

    Args:
        encoder: a dilated encoder ending at ``output_stride`` (ResNet in the paper).
        num_classes: number of classes.
        output_stride: 16 (the paper's training setting) or 8.
        atrous_rates: ASPP rates; ``None``: (6, 12, 18) at stride 16, (12, 24, 36) at stride 8.
        channels: ASPP width (256).
        dropout: dropout after the ASPP projection (0.1).
        aux: an auxiliary FCN classifier on the stage before last (deep supervision, as the
            model zoos train DeepLab v3: torchvision's ``aux_loss``, mmseg's ``auxiliary_head``).
        aux_channels: width of its 3×3 conv (256).
        aux_weight: its loss weight (0.4; unused without it).
        project_kernel: kernel of the ASPP projection: 1 (the paper's) or 3 (mmsegmentation's
            ``bottleneck``).
        head_conv: the 3×3 conv → BN → ReLU between the ASPP and the classifier (torchvision's
            head); false: the ASPP projection feeds the classifier (mmsegmentation's).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        output_stride: int = 16,
        atrous_rates: list[int] | None = None,
        channels: int = 256,
        dropout: float = 0.1,
        aux: bool = False,
        aux_channels: int = 256,
        aux_weight: float = 0.4,
        project_kernel: int = 1,
        head_conv: bool = True,
    ) -> None:
        require_dilated(encoder, output_stride, "DeepLabV3")
        rates = _default_rates(atrous_rates, output_stride)
        decoder = DeepLabV3Decoder(
            encoder.channels[-1], rates, channels, dropout, project_kernel, head_conv
        )
        super().__init__(
            encoder,
            decoder,
            nn.Conv2d(channels, num_classes, 1),
            num_classes,
            **_aux_head(encoder, aux, aux_channels, aux_weight, num_classes, "DeepLabV3"),
        )
        self.output_stride = output_stride


def _low_level_index(encoder: nn.Module) -> int:
    """The encoder level at stride 4, else the finest one at stride ≥ 4 below the output stride."""
    strides = list(encoder.strides)
    candidates = [i for i, s in enumerate(strides) if 4 <= s < strides[-1]]
    if not candidates:
        name = encoder_name(encoder)
        raise ValueError(
            f"DeepLabV3Plus: encoder {name!r} (strides {strides}) has no low-level feature "
            f"at stride 4 or coarser but finer than its output stride {strides[-1]}; use a "
            "backbone returning a stride-4 level such as resnet50, resnet18 or vgg16"
        )
    at_four = [i for i in candidates if strides[i] == 4]
    return at_four[0] if at_four else min(candidates, key=lambda i: strides[i])


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP output upsampled and fused with a 48-channel projection of a stride-4 feature.

    Args:
        in_channels: channels of the deepest encoder feature.
        low_channels: channels of the low-level encoder feature.
        low_index: which encoder level is the low-level feature.
        atrous_rates: ASPP dilation rates.
        channels: ASPP and decoder width (256).
        low_proj: width of the low-level projection (48).
        dropout: dropout after the ASPP projection.
        separable: depthwise-separable 3×3 convolutions in the ASPP and the fusion.
        project_kernel: kernel of the ASPP projection (1, or 3 as mmsegmentation's).
    """

    def __init__(
        self,
        in_channels: int,
        low_channels: int,
        low_index: int,
        atrous_rates: list[int],
        channels: int = 256,
        low_proj: int = 48,
        dropout: float = 0.1,
        separable: bool = False,
        project_kernel: int = 1,
    ) -> None:
        super().__init__()
        self.low_index = low_index
        self.aspp = ASPP(in_channels, atrous_rates, channels, dropout, separable, project_kernel)
        self.low_proj = conv_bn_relu(low_channels, low_proj, 1)
        conv3 = separable_conv_bn_relu if separable else conv_bn_relu
        self.fuse = nn.Sequential(
            conv3(channels + low_proj, channels, 3), conv3(channels, channels, 3)
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        low = self.low_proj(features[self.low_index])  # (B, 48, H/4, W/4)
        high = self.aspp(features[-1])  # (B, 256, H/16, W/16)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([high, low], dim=1))  # (B, 256, H/4, W/4)


class DeepLabV3Plus(SegmentationModel):
    """DeepLab v3+ (Chen et al., 2018): ASPP encoder and a decoder with a stride-4 skip.

    The low-level feature is the encoder level at stride 4 (else the finest level at stride
    ≥ 4 that is finer than the output stride). Training needs a batch of at least 2.

    Args:
        encoder: a dilated encoder ending at ``output_stride`` with a finer level.
        num_classes: number of classes.
        output_stride: 16 (the paper's training setting) or 8.
        atrous_rates: ASPP rates; ``None``: (6, 12, 18) at stride 16, (12, 24, 36) at stride 8.
        channels: ASPP and decoder width (256).
        low_level_channels: width of the low-level projection (48).
        dropout: dropout after the ASPP projection (0.1).
        separable: the paper's atrous depthwise-separable 3×3 convolutions in the ASPP and the
            decoder (``conf/model/deeplabv3plus.yaml``: true); ``False`` (the constructor's
            default, so that checkpoints written before the option rebuild as they were):
            full 3×3 convolutions there.
        aux: an auxiliary FCN classifier on the stage before last (as DeepLab v3's).
        aux_channels: width of its 3×3 conv (256).
        aux_weight: its loss weight (0.4; unused without it).
        project_kernel: kernel of the ASPP projection: 1 (the paper's) or 3 (mmsegmentation's
            ``bottleneck``, depthwise-separable with ``separable``).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        output_stride: int = 16,
        atrous_rates: list[int] | None = None,
        channels: int = 256,
        low_level_channels: int = 48,
        dropout: float = 0.1,
        separable: bool = False,
        aux: bool = False,
        aux_channels: int = 256,
        aux_weight: float = 0.4,
        project_kernel: int = 1,
    ) -> None:
        require_dilated(encoder, output_stride, "DeepLabV3Plus")
        low = _low_level_index(encoder)
        rates = _default_rates(atrous_rates, output_stride)
        decoder = DeepLabV3PlusDecoder(
            encoder.channels[-1],
            encoder.channels[low],
            low,
            rates,
            channels,
            low_level_channels,
            dropout,
            separable,
            project_kernel,
        )
        super().__init__(
            encoder,
            decoder,
            nn.Conv2d(channels, num_classes, 1),
            num_classes,
            **_aux_head(encoder, aux, aux_channels, aux_weight, num_classes, "DeepLabV3Plus"),
        )
        self.output_stride = output_stride
