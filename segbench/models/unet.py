"""U-Net: Convolutional Networks for Biomedical Image Segmentation (Ronneberger et al., 2015).

Published at MICCAI 2015.

A contracting path of two 3×3 convolutions per level and 2×2 max-pooling between levels, and a
symmetric expanding path: at every level a 2×2 "up-convolution" halves the channels and doubles
the resolution, the encoder feature of the same level is concatenated (the skip connection) and
two 3×3 convolutions fuse them. A 1×1 convolution gives the class scores.

``UNetEncoder`` is the paper's contracting path; ``UNet``'s expanding path works on any encoder
(``model=unet backbone=resnet18``): it reads ``encoder.channels`` and ``encoder.strides`` and
upsamples by the stride ratio between consecutive levels.

Options for segmentation_models_pytorch's ``Unet`` (``smp:`` checkpoints,
:mod:`segbench.models.smp_convert`), defaults unchanged: ``upsample="nearest"`` (each stage
resizes the coarser map to the skip's size by interpolation and keeps its channels, instead of
the transposed conv), ``full_resolution=True`` (stages without skip after the finest level,
doubling up to the input size, as smp's decoder ends at stride 1), ``head_kernel=3``.

Differences from the paper, both needed by segbench's contract or training defaults:
- the convolutions are padded ("same"), so each level keeps its input size and the logits come
  out at the input size; the paper used unpadded convolutions, cropped the skip features and
  tiled large images with overlap ("overlap-tile");
- BatchNorm follows every convolution by default; the 2015 paper predates it, and
  ``batch_norm=False`` gives its exact layers (from scratch at segbench's default SGD lr 0.2 the
  BN-free network does not train).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.base import SegmentationModel
from segbench.models.blocks import conv_bn_relu
from segbench.models.encoders import encoder_name, pick_levels
from segbench.models.segformer import classifier

__all__ = ["UNet", "UNetDecoder", "UNetEncoder"]


def _double_conv(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    """Two ``3×3 conv → [BN] → ReLU`` layers, the unit of both paths."""
    return nn.Sequential(
        conv_bn_relu(in_channels, out_channels, 3, batch_norm=batch_norm),
        conv_bn_relu(out_channels, out_channels, 3, batch_norm=batch_norm),
    )


class UNetEncoder(nn.Module):
    """U-Net's contracting path, returning the feature of every level before its pooling.

    Level ``i`` has stride ``2**i`` (1, 2, 4, 8, 16 for the paper's five levels) and
    ``widths[i]`` channels.

    Args:
        name: label of the backbone (``unet``).
        widths: channels of every level, finest first (the paper: 64, 128, 256, 512, 1024).
        batch_norm: BatchNorm after every conv; ``False`` gives the paper's exact layers.
        in_chans: input channels.
        pretrained: must be ``False``: no pretrained weights exist for this encoder.
        weights: must be ``None``, for the same reason.
        output_stride: ``None`` or the natural stride ``2**(len(widths)-1)``; U-Net does not
            dilate, so a model asking for a smaller output stride is refused.
        until_stride: return the levels up to the first one at this stride or coarser (ReSeg:
            4); ``None``: all of them. The later levels are made (a seeded encoder draws the
            same weights either way) but not kept.
        out_indices: which levels ``forward`` returns (timm's numbering: 0 = stride 1 here);
            ``None``: all of them.
    """

    def __init__(
        self,
        name: str = "unet",
        widths: list[int] | tuple[int, ...] = (64, 128, 256, 512, 1024),
        batch_norm: bool = True,
        in_chans: int = 3,
        pretrained: bool = False,
        weights: str | None = None,
        output_stride: int | None = None,
        until_stride: int | None = None,
        out_indices: list[int] | tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths:
            raise ValueError(f"backbone {name!r}: `widths` needs at least one level")
        if pretrained or weights is not None:
            raise ValueError(
                f"backbone {name!r}: U-Net's encoder is trained from scratch and has no "
                "pretrained weights; set backbone.pretrained=false and backbone.weights=null, "
                "or use a pretrained backbone such as backbone=resnet18 or backbone=vgg16"
            )
        natural = 2 ** (len(widths) - 1)
        if output_stride is not None and int(output_stride) != natural:
            raise ValueError(
                f"backbone {name!r}: U-Net's encoder cannot dilate; output_stride must be null "
                f"or {natural}, got {output_stride}. For a dilated encoder use a timm or VGG "
                "backbone, e.g. backbone=resnet50"
            )
        self.name = name
        self.batch_norm = batch_norm
        strides = [2**i for i in range(len(widths))]
        self.out_levels = pick_levels(name, strides, out_indices, until_stride, "stride 1")
        n = self.out_levels[-1] + 1
        self.channels: list[int] = [widths[i] for i in self.out_levels]
        self.strides: list[int] = [strides[i] for i in self.out_levels]
        self.output_stride = self.strides[-1]
        self.pool = nn.MaxPool2d(2, 2)
        levels, c_in = [], in_chans
        for c_out in widths:
            levels.append(_double_conv(c_in, c_out, batch_norm))
            c_in = c_out
        self.levels = nn.ModuleList(levels[:n])

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for i, level in enumerate(self.levels):
            if i > 0:
                x = self.pool(x)  # (B, C, H/2^i, W/2^i), floor for odd sizes
            x = level(x)  # (B, widths[i], H/2^i, W/2^i)
            features.append(x)
        return [features[i] for i in self.out_levels]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, strides={self.strides}"


def _match(x: Tensor, size: torch.Size) -> Tensor:
    """Crop or zero-pad the bottom and right of ``x`` to the spatial ``size``.

    With padded convolutions every level is anchored at the top-left corner: cell ``i`` of a
    stride-``s`` map sits at pixel ``s * i`` whether the encoder rounds sizes up (timm's strided
    convolutions: the upsampled map has one cell too many) or down (max-pooling: one too few),
    so the surplus or the shortfall is at the bottom and right. (The paper's centre crop suits
    its unpadded convolutions, which lose as much on every side; here it would shift the map by
    one cell of the coarser level, 16 pixels at stride 16.)
    """
    dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    if dh == 0 and dw == 0:
        return x
    # negative padding crops, so one call handles both directions per dimension
    return F.pad(x, (0, dw, 0, dh))


UPSAMPLE_MODES = ("transposed", "nearest", "nearest-exact", "bilinear", "bicubic", "area")


class UNetDecoder(nn.Module):
    """U-Net's expanding path over any encoder's levels.

    Stage ``i`` (coarse to fine) upsamples with a ``r×r`` stride-``r`` transposed conv (``r``
    the stride ratio to the next finer level, 2 in the paper) that halves the channels,
    concatenates that level's encoder feature and applies two 3×3 convs. With an interpolation
    ``upsample`` mode the coarser map is resized to the skip's size instead, channels kept
    (segmentation_models_pytorch's decoder). ``full_resolution`` adds stages without skip after
    the finest level, one per halving of its stride, the last one at the input size
    (``forward``'s ``size``), the others at ``size // stride`` (smp's empty stride-2 level of
    encoders that start at stride 4).

    Args:
        in_channels: channels of every encoder level, finest first.
        strides: stride of every encoder level, finest first.
        decoder_channels: output width of every stage, finest first: (``full_resolution``) one
            per extra stage from stride 1, then one per skip level; default: the skip levels'
            own widths (the paper; not with ``full_resolution``).
        batch_norm: BatchNorm after every 3×3 conv.
        upsample: ``"transposed"`` (the paper) or an ``F.interpolate`` mode (``"nearest"``:
            smp's default, ``"bilinear"`` ...).
        full_resolution: decode up to stride 1 (the finest stride must be a power of 2).
    """

    def __init__(
        self,
        in_channels: list[int],
        strides: list[int],
        decoder_channels: list[int] | None = None,
        batch_norm: bool = True,
        upsample: str = "transposed",
        full_resolution: bool = False,
    ) -> None:
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"U-Net: upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        finest = int(strides[0])
        if full_resolution and (finest < 1 or finest & (finest - 1)):
            raise ValueError(
                f"U-Net: full_resolution halves the finest stride down to 1; it is {finest}"
            )
        self.upsample = upsample
        self.full_resolution = bool(full_resolution)
        # the strides of the stages without skip, coarse to fine (full_resolution)
        self.extra_strides = [finest >> k for k in range(1, finest.bit_length())]
        self.extra_strides = self.extra_strides if full_resolution else []
        skips = list(in_channels[:-1])
        n_extra = len(self.extra_strides)
        if decoder_channels is None and n_extra:
            raise ValueError("U-Net: full_resolution needs decoder_channels (finest first)")
        widths = list(skips if decoder_channels is None else decoder_channels)
        if len(widths) != len(skips) + n_extra:
            raise ValueError(
                f"U-Net: decoder_channels needs one width per skip level ({len(skips)}, finest "
                f"first)"
                + (f" after one per extra stage ({n_extra})" if n_extra else "")
                + f", got {len(widths)}"
            )
        extra_widths, widths = widths[:n_extra][::-1], widths[n_extra:]  # coarse to fine
        self.ups = nn.ModuleList()  # coarse to fine; empty with interpolation
        self.blocks = nn.ModuleList()
        c_in = in_channels[-1]
        stages = [
            (skips[lv], widths[lv], strides[lv + 1] // strides[lv]) for lv in range(len(skips))
        ]
        stages = stages[::-1] + [(0, w, 2) for w in extra_widths]
        for skip, width, ratio in stages:
            c_up = c_in
            if upsample == "transposed":
                c_up = max(c_in // 2, 1)
                # ratio 1 (a dilated encoder) makes this a 1×1 conv that only halves the channels
                self.ups.append(nn.ConvTranspose2d(c_in, c_up, ratio, stride=ratio))
            self.blocks.append(_double_conv(c_up + skip, width, batch_norm))
            c_in = width
        self.out_channels = c_in

    def _up(self, i: int, x: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
        if self.upsample == "transposed":
            return _match(self.ups[i](x), size)
        return F.interpolate(x, size=tuple(size), mode=self.upsample)

    def forward(self, features: list[Tensor], size: torch.Size | None = None) -> Tensor:
        """``features`` finest first → the finest level's (or, ``full_resolution``, the input
        ``size``'s) map, ``decoder_channels[0]`` wide."""
        x = features[-1]  # (B, C_N, H/s_N, W/s_N)
        n_skips = len(features) - 1
        for i in range(n_skips):
            skip = features[-2 - i]  # (B, C_l, H/s_l, W/s_l)
            x = self._up(i, x, skip.shape[-2:])  # (B, C, H/s_l, W/s_l)
            x = self.blocks[i](torch.cat([x, skip], dim=1))  # (B, width_l, H/s_l, W/s_l)
        if self.extra_strides and size is None:
            raise ValueError("U-Net: full_resolution decodes to the input size; pass `size`")
        for j, stride in enumerate(self.extra_strides):
            target = tuple(size) if stride == 1 else (size[0] // stride, size[1] // stride)
            x = self.blocks[n_skips + j](self._up(n_skips + j, x, target))
        return x


class UNet(SegmentationModel):
    """U-Net (Ronneberger et al., 2015): an expanding path with skip concatenation on any encoder.

    With ``backbone=unet`` this is the paper's network (31.0M parameters for 2 classes). An
    encoder whose finest level has stride > 1 (timm's start at 2) is upsampled to the input
    size bilinearly by the base class.

    Args:
        encoder: a feature encoder exposing ``channels`` and ``strides`` (at least two levels).
        num_classes: number of classes.
        decoder_channels: widths of the decoder stages, finest first; default the skip widths.
        batch_norm: BatchNorm after every decoder conv.
        upsample: ``"transposed"`` (the paper's up-convolution) or an interpolation mode
            (``"nearest"``: segmentation_models_pytorch's decoder).
        full_resolution: decode on to the input size through stages without skip (smp); the
            logits are then made at the input size.
        head_kernel: kernel of the classifier conv (1; smp's: 3, "same" padding).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        decoder_channels: list[int] | None = None,
        batch_norm: bool = True,
        upsample: str = "transposed",
        full_resolution: bool = False,
        head_kernel: int = 1,
    ) -> None:
        name = encoder_name(encoder)
        strides = list(encoder.strides)
        if len(strides) < 2:
            raise ValueError(
                f"U-Net needs an encoder with at least two feature levels to have skip "
                f"connections; backbone {name!r} returns {len(strides)}. Use backbone=unet or "
                "a multi-level backbone such as resnet18 or vgg16"
            )
        if any(b < a or b % a for a, b in zip(strides, strides[1:])):
            raise ValueError(
                f"U-Net needs encoder strides that grow by integer factors, finest first; "
                f"backbone {name!r} has {strides}. Use backbone=unet, resnet18 or vgg16"
            )
        decoder = UNetDecoder(
            encoder.channels, strides, decoder_channels, batch_norm, upsample, full_resolution
        )
        head = classifier(decoder.out_channels, num_classes, head_kernel)
        super().__init__(encoder, decoder, head, num_classes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if not self.decoder.full_resolution:
            return super().forward(x)
        features = self.encoder(x)  # list of (B, C_i, H/s_i, W/s_i), finest first
        return {"out": self.head(self.decoder(features, x.shape[-2:]))}  # (B, K, H, W)
