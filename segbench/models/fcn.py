"""FCN: Fully Convolutional Networks for Semantic Segmentation (Long et al., CVPR 2015).

The classifier's fully connected layers become convolutions ("fc6", "fc7"), a 1×1 "score"
layer predicts class scores on the coarsest map, and skip connections fuse scores predicted
from finer encoder stages (pool4 for FCN-16s, pool4 and pool3 for FCN-8s) after learned 2×
upsampling initialised to bilinear interpolation. Any backbone works: pool3/pool4/pool5 are
the last three levels the encoder returns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.base import SegmentationModel

__all__ = ["FCN", "FCNDecoder", "bilinear_kernel"]

# how many encoder levels each variant fuses: 32s uses pool5 only, 16s adds pool4, 8s adds pool3
_LEVELS = {"32s": 1, "16s": 2, "8s": 3}


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """Weights ``(channels, channels, k, k)`` that make a transposed conv bilinear upsampling."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor
    kernel = filt[:, None] * filt[None, :]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = kernel
    return weight


def _match(x: Tensor, size: torch.Size) -> Tensor:
    """Crop (as the paper does) or, if smaller, resize ``x`` to the spatial ``size``."""
    h, w = size
    if x.shape[-2] >= h and x.shape[-1] >= w:
        return x[..., :h, :w]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FCNDecoder(nn.Module):
    """fc6/fc7 as convolutions, score layers and skip fusion in score space.

    Args:
        in_channels: channels of every encoder level, finest first.
        strides: stride of every encoder level, finest first.
        num_classes: number of classes scored.
        variant: ``"32s"``, ``"16s"`` or ``"8s"``.
        fc_channels: width of fc6/fc7 (4096 in the VGG16 paper model).
        fc_kernel: kernel size of fc6 (7 for VGG16's fc6).
        dropout: dropout after fc6 and fc7 (0.5 in the paper).
    """

    def __init__(
        self,
        in_channels: list[int],
        strides: list[int],
        num_classes: int,
        variant: str = "8s",
        fc_channels: int = 4096,
        fc_kernel: int = 7,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if variant not in _LEVELS:
            raise ValueError(f"FCN variant must be one of {sorted(_LEVELS)}, got {variant!r}")
        levels = _LEVELS[variant]
        if len(in_channels) < levels:
            raise ValueError(
                f"FCN-{variant} needs {levels} encoder levels, "
                f"the encoder returns {len(in_channels)}"
            )
        self.variant = variant
        self.levels = levels
        self.strides = list(strides[-levels:])
        self.fc = nn.Sequential(
            nn.Conv2d(in_channels[-1], fc_channels, fc_kernel, padding=fc_kernel // 2),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(fc_channels, fc_channels, 1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )
        self.score_fr = nn.Conv2d(fc_channels, num_classes, 1)
        # skip scores for pool4, pool3 (coarse to fine); zero-initialised as in the paper so
        # that training starts from the coarser net's prediction
        self.score_skips = nn.ModuleList()
        self.upscores = nn.ModuleList()
        for i in range(1, levels):
            score = nn.Conv2d(in_channels[-1 - i], num_classes, 1)
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
            self.score_skips.append(score)
            ratio = strides[-i] // strides[-1 - i]
            self.upscores.append(_learned_upsample(num_classes, ratio))

    def forward(self, features: list[Tensor]) -> Tensor:
        score = self.score_fr(self.fc(features[-1]))  # (B, K, H/32, W/32) for a plain encoder
        for i, (skip_score, up) in enumerate(zip(self.score_skips, self.upscores), start=1):
            skip = skip_score(features[-1 - i])  # pool4: (B, K, H/16, W/16); pool3: H/8
            score = _match(up(score), skip.shape[-2:]) + skip
        return score


def _learned_upsample(channels: int, ratio: int) -> nn.Module:
    """Transposed conv initialised to bilinear ×``ratio`` upsampling (identity for ratio 1)."""
    if ratio == 1:  # dilated encoders keep the resolution between levels
        return nn.Identity()
    up = nn.ConvTranspose2d(
        channels, channels, 2 * ratio, stride=ratio, padding=ratio // 2, bias=False
    )
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * ratio))
    return up


class FCN(SegmentationModel):
    """FCN-32s / 16s / 8s on any encoder (Long et al., 2015).

    The final ×8/×16/×32 upsampling to the input size is fixed bilinear interpolation, as
    in the paper (its last deconvolution is frozen to bilinear weights).

    Args:
        encoder: a feature encoder exposing ``channels`` and ``strides``.
        num_classes: number of classes.
        variant: ``"32s"``, ``"16s"`` or ``"8s"``.
        fc_channels: width of the convolutionalised fc6/fc7.
        fc_kernel: fc6 kernel size.
        dropout: dropout rate after fc6 and fc7.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        variant: str = "8s",
        fc_channels: int = 4096,
        fc_kernel: int = 7,
        dropout: float = 0.5,
    ) -> None:
        decoder = FCNDecoder(
            encoder.channels, encoder.strides, num_classes, variant, fc_channels, fc_kernel, dropout
        )
        # the decoder already fuses class scores, so the head has nothing left to do
        super().__init__(encoder, decoder, nn.Identity(), num_classes)
