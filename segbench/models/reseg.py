"""ReSeg: A Recurrent Neural Network-based Model for Semantic Segmentation (Visin et al., CVPR-W
2016).

Local features from the first layers of a CNN (the paper: VGG16's) are read by a stack of ReNet
layers (Visin et al., 2015). A ReNet layer splits the map into non-overlapping patches and
sweeps them with four RNNs: a bidirectional RNN down every column (vertical sweep), then a
bidirectional RNN along every row of the vertical sweep's output (horizontal sweep), so every
output position depends on the whole image. Transposed convolutions then recover the
resolution and a 1×1 convolution scores the classes.

Only one encoder level is read, and it must be the encoder's last: deeper layers would never
receive a gradient (DDP refuses parameters without one) and would only inflate the parameter
count. The encoder is built to stop there: ``conf/model/reseg.yaml`` sets ``feature_stride: 4``
and the backbone configs pass it on as the encoder's ``until_stride``.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.base import SegmentationModel
from segbench.models.encoders import encoder_name, levels_until

__all__ = ["ReNetLayer", "ReSeg", "ReSegDecoder"]

_RNNS = {"gru": nn.GRU, "lstm": nn.LSTM}


class ReNetLayer(nn.Module):
    """One ReNet layer: patches, a bidirectional vertical sweep, then a horizontal one.

    Maps ``(B, C, H, W)`` to ``(B, 2*hidden, ceil(H/ph), ceil(W/pw))``; the input is zero-padded
    at the bottom and right to a multiple of the patch size.

    Args:
        in_channels: input channels ``C``.
        hidden: hidden units of each directional RNN.
        patch_size: ``(ph, pw)`` of the non-overlapping patches.
        rnn: ``"gru"`` (the paper's choice) or ``"lstm"``.
    """

    def __init__(
        self, in_channels: int, hidden: int, patch_size: tuple[int, int] = (2, 2), rnn: str = "gru"
    ) -> None:
        super().__init__()
        if rnn not in _RNNS:
            raise ValueError(f"ReSeg: rnn must be one of {sorted(_RNNS)}, got {rnn!r}")
        ph, pw = (int(p) for p in patch_size)
        if ph < 1 or pw < 1:
            raise ValueError(f"ReSeg: patch sizes must be positive, got {patch_size}")
        self.patch_size = (ph, pw)
        self.out_channels = 2 * hidden
        cls = _RNNS[rnn]
        self.vertical = cls(in_channels * ph * pw, hidden, batch_first=True, bidirectional=True)
        self.horizontal = cls(2 * hidden, hidden, batch_first=True, bidirectional=True)

    def patches(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` → ``(B, C*ph*pw, H', W')``: every patch flattened into a vector."""
        ph, pw = self.patch_size
        b, c, h, w = x.shape
        x = F.pad(x, (0, -w % pw, 0, -h % ph))
        hp, wp = x.shape[-2] // ph, x.shape[-1] // pw
        x = x.reshape(b, c, hp, ph, wp, pw).permute(0, 1, 3, 5, 2, 4)  # (B, C, ph, pw, H', W')
        return x.reshape(b, c * ph * pw, hp, wp)

    def sweep_vertical(self, x: Tensor) -> Tensor:
        """Bidirectional RNN down every column: ``(B, D, H', W')`` → ``(B, 2*hidden, H', W')``."""
        b, d, h, w = x.shape
        seq = x.permute(0, 3, 2, 1).reshape(b * w, h, d)  # one sequence per column
        out = self.vertical(seq)[0]  # (B*W', H', 2*hidden)
        return out.reshape(b, w, h, -1).permute(0, 3, 2, 1)

    def sweep_horizontal(self, x: Tensor) -> Tensor:
        """Bidirectional RNN along every row: ``(B, D, H', W')`` → ``(B, 2*hidden, H', W')``."""
        b, d, h, w = x.shape
        seq = x.permute(0, 2, 3, 1).reshape(b * h, w, d)  # one sequence per row
        out = self.horizontal(seq)[0]  # (B*H', W', 2*hidden)
        return out.reshape(b, h, w, -1).permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patches(x)  # (B, C*ph*pw, H/ph, W/pw)
        x = self.sweep_vertical(x)  # (B, 2*hidden, H/ph, W/pw)
        return self.sweep_horizontal(x).contiguous()  # (B, 2*hidden, H/ph, W/pw)


class ReSegDecoder(nn.Module):
    """ReNet layers on one encoder level, then ×2 transposed convs back to the input stride.

    Args:
        in_channels: channels of the encoder level read.
        stride: stride of that level.
        renet_hidden: hidden units of each ReNet layer's RNNs.
        patch_sizes: ``(ph, pw)`` of each ReNet layer.
        rnn: ``"gru"`` or ``"lstm"``.
        upsample_channels: width of every transposed conv (an int), or one width per stage.
        feature_index: which of the encoder's feature maps ``forward`` reads.
    """

    def __init__(
        self,
        in_channels: int,
        stride: int,
        renet_hidden: list[int],
        patch_sizes: list[tuple[int, int]],
        rnn: str = "gru",
        upsample_channels: int | list[int] = 100,
        feature_index: int = -1,
    ) -> None:
        super().__init__()
        self.feature_index = feature_index
        if len(renet_hidden) != len(patch_sizes) or not renet_hidden:
            raise ValueError(
                f"ReSeg: renet_hidden ({len(renet_hidden)}) and patch_sizes "
                f"({len(patch_sizes)}) need one entry per ReNet layer, at least one"
            )
        self.renets = nn.ModuleList()
        c, total_h, total_w = in_channels, stride, stride
        for hidden, patch in zip(renet_hidden, patch_sizes):
            layer = ReNetLayer(c, int(hidden), tuple(patch), rnn)
            self.renets.append(layer)
            c = layer.out_channels
            total_h, total_w = total_h * layer.patch_size[0], total_w * layer.patch_size[1]
        self.patch_factor = (total_h // stride, total_w // stride)
        # ×2 stages until each dimension is back at the input's stride (×1 once it is there)
        steps_h, steps_w = math.ceil(math.log2(total_h)), math.ceil(math.log2(total_w))
        steps = max(steps_h, steps_w)
        if isinstance(upsample_channels, int):
            upsample_channels = [upsample_channels] * steps
        if len(upsample_channels) != steps:
            raise ValueError(
                f"ReSeg: upsample_channels needs {steps} widths (one per ×2 stage from total "
                f"stride {total_h}×{total_w}), got {len(upsample_channels)}"
            )
        self.upsample_factor = (2**steps_h, 2**steps_w)
        layers: list[nn.Module] = []
        for i, width in enumerate(upsample_channels):
            k = (2 if i < steps_h else 1, 2 if i < steps_w else 1)
            up = nn.ConvTranspose2d(c, int(width), k, stride=k)
            # He initialisation for the ReLU that follows: every output pixel of a stride-k
            # transposed conv with kernel k sums exactly c inputs, so fan-in is c. With
            # PyTorch's default init, SGD (lr 0.2) on 8 shapes images stayed at the class
            # prior for 200 steps (loss 1.27); with this one it reached 0.38
            nn.init.normal_(up.weight, 0.0, math.sqrt(2.0 / c))
            nn.init.zeros_(up.bias)
            layers += [up, nn.ReLU(inplace=True)]
            c = int(width)
        self.upsample = nn.Sequential(*layers)
        self.out_channels = c

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[self.feature_index]  # (B, C, H/s, W/s)
        h, w = x.shape[-2:]
        for renet in self.renets:
            x = renet(x)  # (B, 2*hidden, H/(s*P), W/(s*P)), P the patch sizes so far
        x = self.upsample(x)  # (B, C_up, ~H, ~W)
        # drop what the patch padding added at the bottom and right
        ph, pw = self.patch_factor
        uh, uw = self.upsample_factor
        return x[..., : math.ceil(h * uh / ph), : math.ceil(w * uw / pw)]


class ReSeg(SegmentationModel):
    """ReSeg (Visin et al., 2016): ReNet layers on early CNN features, learned upsampling.

    The paper reads VGG16's first layers; by default this reads the encoder level with stride
    ``feature_stride`` = 4 (VGG16's pool2, 128 channels), else the finest level with a larger
    stride, else the coarsest. The level read must be the encoder's last, so that every encoder
    parameter gets a gradient: build the encoder with ``until_stride=feature_stride`` (the
    backbone configs do so from ``model.feature_stride``).

    Args:
        encoder: a feature encoder exposing ``channels`` and ``strides``, ending at the level
            read.
        num_classes: number of classes.
        feature_index: encoder level read (negative counts from the coarsest); ``None``: the
            level at ``feature_stride``.
        renet_hidden: hidden units of each ReNet layer's directional RNNs.
        patch_sizes: ``(ph, pw)`` of each ReNet layer.
        rnn: ``"gru"`` (the paper) or ``"lstm"``.
        upsample_channels: width of every transposed conv (an int), or one width per stage.
        feature_stride: stride of the level read when ``feature_index`` is ``None`` (4).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        feature_index: int | None = None,
        renet_hidden: list[int] | tuple[int, ...] = (100, 100),
        patch_sizes: list[list[int]] | tuple[tuple[int, int], ...] = ((2, 2), (1, 1)),
        rnn: str = "gru",
        upsample_channels: int | list[int] = 100,
        feature_stride: int = 4,
    ) -> None:
        strides, name = list(encoder.strides), encoder_name(encoder)
        if feature_index is None:
            feature_index = levels_until(strides, feature_stride) - 1
        if not -len(strides) <= feature_index < len(strides):
            raise ValueError(
                f"ReSeg: feature_index {feature_index} is out of range for backbone {name!r}, "
                f"which returns {len(strides)} levels (strides {strides}); use an index in "
                f"[0, {len(strides) - 1}] or null for the stride-{feature_stride} level (a "
                "deeper level needs an encoder built to reach it: raise model.feature_stride)"
            )
        index = feature_index % len(strides)
        if index < len(strides) - 1:
            stop = strides[index]
            fix = (
                f"until_stride={stop} (model.feature_stride={stop} in a config)"
                if strides.index(stop) == index
                else f"{index + 1} levels"
            )
            raise ValueError(
                f"ReSeg reads level {index} (stride {stop}) of backbone {name!r}, which returns "
                f"{len(strides)} levels (strides {strides}): the {len(strides) - 1 - index} "
                f"deeper ones would never get a gradient (DDP refuses such parameters); build "
                f"the encoder to stop at the level read: {fix}"
            )
        decoder = ReSegDecoder(
            encoder.channels[index],
            strides[index],
            [int(h) for h in renet_hidden],
            [tuple(p) for p in patch_sizes],
            rnn,
            upsample_channels,
            index,
        )
        head = nn.Conv2d(decoder.out_channels, num_classes, 1)
        super().__init__(encoder, decoder, head, num_classes)
        self.feature_index = index
        self.feature_stride = feature_stride
