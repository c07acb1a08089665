"""MobileNetV3-Large encoder (Howard et al., "Searching for MobileNetV3", ICCV 2019, Table 1),
computing what torchvision's ``mobilenet_v3_large(dilated=...).features`` computes.

The network is a 3×3 stride-2 stem (hard-swish), fifteen inverted-residual blocks (1×1 expansion
→ depthwise k×k → optional squeeze-and-excitation → 1×1 linear projection, a residual connection
where the shape allows) and a final 1×1 conv to 960 channels (hard-swish). BatchNorm has eps
0.001 and momentum 0.01, as torchvision's (the TensorFlow reference's values).

The layers sit in ``self.features`` at torchvision's indices and under its names
(``features.<i>.block.<j>...``, SE ``fc1``/``fc2``): torchvision's ImageNet state dict of
``mobilenet_v3_large`` loads as it is (``backbone.weights``), and its segmentation models'
``backbone.<i>.*`` tensors map one to one.

Dilation (``output_stride=16``, the segmentation form, torchvision's ``dilated=True``): the last
stage (the 160-channel blocks) keeps stride 1 and dilates every depthwise conv by 2, its first
block included (ResNet-style dilation, timm's ``output_stride``, gives the first block of a
dilated stage the previous dilation; torchvision's MobileNetV3 does not).

Which tensor each level is (``taps``): ``"last"``, the last block at each stride (the usual
pyramid, the stage ends timm's ``features_only`` returns: 16, 24, 40, 112, 960 channels);
``"first"``, the first block at each stride (the strided block's output: torchvision's
``stage_indices``, which its segmentation models read: the "low"/"aux" feature is
``features[4]``, the first 40-channel block, not the end of that stage; 16, 24, 40, 80, 960
channels). The deepest level is the 960-channel conv either way.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from segbench.models.encoders.base import pick_levels
from segbench.models.weights import read_state_dict, state_dict_mismatch

__all__ = ["MOBILENETV3_LARGE", "MobileNetV3Encoder"]

# the inverted-residual blocks of MobileNetV3-Large (the paper's Table 1):
# (kernel, expanded channels, out channels, squeeze-excite, activation, stride)
MOBILENETV3_LARGE: list[tuple[int, int, int, bool, str, int]] = [
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hswish", 2),
    (3, 200, 80, False, "hswish", 1),
    (3, 184, 80, False, "hswish", 1),
    (3, 184, 80, False, "hswish", 1),
    (3, 480, 112, True, "hswish", 1),
    (3, 672, 112, True, "hswish", 1),
    (5, 672, 160, True, "hswish", 2),
    (5, 960, 160, True, "hswish", 1),
    (5, 960, 160, True, "hswish", 1),
]
_STEM = 16  # stem width
_LAST = 960  # the final 1×1 conv's width (6 × 160)
_BN = {"eps": 0.001, "momentum": 0.01}


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), one
    ``divisor`` more where rounding lost over 10% (the TensorFlow reference's channel rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _activation(name: str) -> nn.Module:
    return nn.Hardswish(inplace=True) if name == "hswish" else nn.ReLU(inplace=True)


def conv_bn_act(
    c_in: int,
    c_out: int,
    kernel_size: int,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    act: str | None = "relu",
) -> nn.Sequential:
    """``Conv2d`` (no bias, "same" padding) → ``BatchNorm2d`` (eps 0.001) → activation
    (``"relu"``, ``"hswish"`` or ``None``); keys ``0`` conv, ``1`` BN."""
    layers: list[nn.Module] = [
        nn.Conv2d(
            c_in,
            c_out,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2 * dilation,
            dilation=dilation,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(c_out, **_BN),
    ]
    if act is not None:
        layers.append(_activation(act))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with a hard-sigmoid gate: global average → 1×1 conv → ReLU →
    1×1 conv → hard sigmoid, scaling the channels.

    Args:
        channels: the channels gated.
        squeeze: the bottleneck width.
    """

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))  # (B, C, 1, 1)
        return x * scale


class InvertedResidual(nn.Module):
    """One MobileNetV3 block: [1×1 expand] → depthwise k×k (stride, dilation) → [SE] → 1×1
    project (linear), plus the input where stride is 1 and the widths agree.

    Args:
        c_in: input channels.
        kernel_size: depthwise kernel (3 or 5).
        expanded: expansion width (no expansion conv when it equals ``c_in``).
        c_out: output channels.
        se: squeeze-and-excitation (width ``make_divisible(expanded // 4)``).
        act: ``"relu"`` or ``"hswish"``.
        stride: the depthwise conv's stride (1 or 2).
        dilation: the depthwise conv's dilation.
    """

    def __init__(
        self,
        c_in: int,
        kernel_size: int,
        expanded: int,
        c_out: int,
        se: bool,
        act: str,
        stride: int,
        dilation: int,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(conv_bn_act(c_in, expanded, 1, act=act))
        layers.append(conv_bn_act(expanded, expanded, kernel_size, stride, dilation, expanded, act))
        if se:
            layers.append(SqueezeExcite(expanded, make_divisible(expanded // 4)))
        layers.append(conv_bn_act(expanded, c_out, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out
        self.out_channels = c_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)  # (B, c_out, H/stride, W/stride)
        return x + y if self.residual else y


class MobileNetV3Encoder(nn.Module):
    """MobileNetV3-Large returning a list of feature maps, finest first (five levels, strides
    2, 4, 8, 16, 32; 2, 4, 8, 16, 16 at ``output_stride=16``).

    Args:
        name: ``mobilenetv3_large`` (the only variant).
        taps: which block's output each level is: ``"last"`` (the last block at each stride:
            16, 24, 40, 112, 960 channels) or ``"first"`` (the first block at each stride,
            torchvision's segmentation taps: 16, 24, 40, 80, 960 channels). The deepest level
            is the final 960-channel conv either way.
        output_stride: 32 (plain; also ``None``) or 16 (the last stage dilated by 2, all of
            its blocks, as torchvision's ``dilated=True``); 8 is refused (no such form exists).
        in_chans: input channels.
        pretrained: refused (segbench fetches no ImageNet weights for this encoder): give a
            local file as ``weights``.
        weights: path to a local state dict of torchvision's ``mobilenet_v3_large``
            (``features.*`` keys, as ``torchvision.models.mobilenet_v3_large().state_dict()``
            saves them; ``classifier.*`` is ignored). It must fit key for key and shape for
            shape, else nothing is loaded.
        out_indices: which levels to return (0 = stride 2); ``None``: all five.
        until_stride: return the levels up to the first one at this stride or coarser and keep
            no layer after it; ``None``: all of them.
    """

    def __init__(
        self,
        name: str = "mobilenetv3_large",
        taps: str = "last",
        output_stride: int | None = None,
        in_chans: int = 3,
        pretrained: bool = False,
        weights: str | None = None,
        out_indices: list[int] | tuple[int, ...] | None = None,
        until_stride: int | None = None,
    ) -> None:
        super().__init__()
        if name != "mobilenetv3_large":
            raise ValueError(f"MobileNetV3 encoder {name!r} is unknown: only mobilenetv3_large")
        if taps not in ("last", "first"):
            raise ValueError(
                f"backbone {name!r}: taps must be 'last' (each stride's last block, the usual "
                f"pyramid) or 'first' (its first block, torchvision's taps), got {taps!r}"
            )
        output_stride = 32 if output_stride is None else int(output_stride)
        if output_stride not in (16, 32):
            raise ValueError(
                f"backbone {name!r}: output_stride must be 32 (null, plain) or 16 (the last "
                f"stage dilated, torchvision's segmentation form), got {output_stride}; "
                "MobileNetV3 has no stride-8 form"
            )
        if pretrained and weights is None:
            raise ValueError(
                f"backbone {name!r}: segbench fetches no ImageNet weights for this encoder; "
                "give torchvision's mobilenet_v3_large ImageNet state dict as a local file, "
                "backbone.weights=/path/to/mobilenet_v3_large-8738ca79.pth, or set "
                "backbone.pretrained=false"
            )
        self.name = name
        self.taps = taps
        self.natural_stride = 32

        layers: list[nn.Module] = [conv_bn_act(in_chans, _STEM, 3, stride=2, act="hswish")]
        block_strides = [2]  # the stride of every layer's output
        stride, dilation, c_in = 2, 1, _STEM
        for kernel, expanded, c_out, se, act, step in MOBILENETV3_LARGE:
            if step > 1 and stride * step > output_stride:
                dilation *= step  # the whole stage dilated, its first block included
                step = 1
            stride *= step
            layers.append(InvertedResidual(c_in, kernel, expanded, c_out, se, act, step, dilation))
            block_strides.append(stride)
            c_in = c_out
        layers.append(conv_bn_act(c_in, _LAST, 1, act="hswish"))
        block_strides.append(stride)
        self.features = nn.Sequential(*layers)
        if weights is not None:  # a whole network's state dict: loaded before the cut below
            self.load_weights(weights)

        # level k: the first or last layer at the k-th stride (2, 4, 8, 16, 32 before dilation)
        natural = [2]
        for *_, step in MOBILENETV3_LARGE:
            natural.append(natural[-1] * step)
        natural.append(natural[-1])
        taps_at = []
        for level in (2, 4, 8, 16, 32):
            at = [i for i, s in enumerate(natural) if s == level]
            taps_at.append(at[-1] if taps == "last" or level == 32 else at[0])
        all_strides = [block_strides[i] for i in taps_at]
        levels = pick_levels(name, all_strides, out_indices, until_stride, "stride 2")
        self.taps_at: list[int] = [taps_at[i] for i in levels]  # feature index of each level
        self.features = self.features[: self.taps_at[-1] + 1]
        self.out_levels: list[int] = levels
        self.channels: list[int] = [_channels(self.features[i]) for i in self.taps_at]
        self.strides: list[int] = [all_strides[i] for i in levels]
        self.output_stride = self.strides[-1]

    def load_weights(self, path: str) -> None:
        """Load the ``features.*`` tensors of a local torchvision ``mobilenet_v3_large`` state
        dict; a file that does not fit them key for key and shape for shape is refused."""
        file = Path(path).expanduser()
        expected = (
            "a state dict of torchvision's mobilenet_v3_large (features.* keys, "
            "torchvision.models.mobilenet_v3_large().state_dict())"
        )
        if not file.is_file():
            raise FileNotFoundError(
                f"backbone weights file {str(file)!r} does not exist; expected {expected}"
            )
        state = read_state_dict(file, expected)
        found = {k: v for k, v in state.items() if k.startswith("features.")}
        wanted = {f"features.{k}": v for k, v in self.features.state_dict().items()}
        problems = (
            state_dict_mismatch(found, wanted)
            if found
            else (f"it has no features.* keys (its keys: {', '.join(list(state)[:5])}, ...)")
        )
        if problems:
            raise ValueError(
                f"backbone weights {str(file)!r} do not fit {self.name}: {problems}. Nothing "
                f"was loaded; expected {expected}"
            )
        self.features.load_state_dict({k[len("features.") :]: v for k, v in found.items()})

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps_at:
                features.append(x)  # (B, C_i, H/s_i, W/s_i)
        return features

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, taps={self.taps!r}, channels={self.channels}, "
            f"strides={self.strides}"
        )


def _channels(layer: nn.Module) -> int:
    """Output channels of a layer of ``features`` (a block or a conv → BN → act)."""
    if isinstance(layer, InvertedResidual):
        return layer.out_channels
    return layer[1].num_features
