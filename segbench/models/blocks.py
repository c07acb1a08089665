"""Small building blocks shared by the decoders."""

from __future__ import annotations

from torch import nn

__all__ = ["conv_bn_relu", "depthwise_conv", "fcn_aux_head", "separable_conv_bn_relu"]


def conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    dilation: int = 1,
    batch_norm: bool = True,
    relu: bool = True,
    padding: int | None = None,
    transposed: bool = False,
) -> nn.Sequential:
    """``Conv2d → [BatchNorm2d] → [ReLU]``; the conv has no bias under BN.

    ``padding`` defaults to "same" (``dilation * (kernel_size // 2)``); ``transposed`` uses a
    stride-1 ``ConvTranspose2d`` instead (DeconvNet's deconvolution layers).
    """
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = [
        conv(
            in_channels,
            out_channels,
            kernel_size,
            padding=dilation * (kernel_size // 2) if padding is None else padding,
            dilation=dilation,
            bias=not batch_norm,
        )
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def separable_conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1
) -> nn.Sequential:
    """Atrous depthwise-separable convolution as DeepLab v3+ builds it (its reference
    implementation's ``split_separable_conv2d``): a depthwise ``kernel_size`` conv (one filter
    per channel, ``dilation``) → BN → ReLU, then a pointwise 1×1 conv → BN → ReLU. Against a
    full conv it has ``k² + C_out`` instead of ``k² · C_out`` weights per input channel."""
    return nn.Sequential(
        *conv_bn_relu_depthwise(in_channels, kernel_size, dilation),
        *conv_bn_relu(in_channels, out_channels, 1),
    )


def depthwise_conv(channels: int, kernel_size: int, dilation: int = 1) -> nn.Conv2d:
    """A depthwise ``kernel_size`` conv (one filter per channel, ``dilation``), "same" padding,
    no bias."""
    return nn.Conv2d(
        channels,
        channels,
        kernel_size,
        padding=dilation * (kernel_size // 2),
        dilation=dilation,
        groups=channels,
        bias=False,
    )


def conv_bn_relu_depthwise(channels: int, kernel_size: int, dilation: int) -> list[nn.Module]:
    """``depthwise Conv2d → BatchNorm2d → ReLU`` ("same" padding), as a list of layers."""
    return [
        depthwise_conv(channels, kernel_size, dilation),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    ]


def fcn_aux_head(
    in_channels: int, channels: int, num_classes: int, dropout: float
) -> nn.Sequential:
    """The auxiliary FCN classifier of PSPNet and UPerNet (deep supervision on an encoder
    level): 3×3 conv → BN → ReLU → dropout → 1×1 classifier."""
    return nn.Sequential(
        conv_bn_relu(in_channels, channels, 3),
        nn.Dropout(dropout),
        nn.Conv2d(channels, num_classes, 1),
    )
