"""VGG encoders (Simonyan & Zisserman, 2015) that keep their max-pooling switches.

FCN, SegNet, DeconvNet and DeepLab v1 are defined on VGG16. Besides the encoder contract
(``channels``, ``strides``, ``forward`` → feature maps finest first) this encoder offers
``forward_with_indices``, which also returns the argmax positions of every max-pooling layer
and the sizes before pooling: SegNet and DeconvNet upsample with them.

The layers sit in ``self.features`` at the same indices as torchvision's and timm's VGG, so
a local ImageNet state dict (``features.N.weight`` ...) loads as it is.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from segbench.models.encoders.base import pick_levels
from segbench.models.pretrained import TORCHVISION, fetch_torchvision
from segbench.models.weights import read_state_dict, state_dict_mismatch

__all__ = ["VGG_STAGES", "VGGEncoder"]

# conv widths per stage (each stage ends with a 2×2 max-pool)
VGG_STAGES: dict[str, list[list[int]]] = {
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


class VGGEncoder(nn.Module):
    """A VGG-style encoder: stages of ``conv → [BN] → ReLU`` each closed by a 2×2 max-pool.

    The feature maps returned are the pooled outputs pool1 … poolN (strides 2, 4, …, 2^N),
    so FCN's score layers read pool3/pool4/pool5 exactly as in the paper.

    With ``output_stride`` below 2^N the last pools become 3×3 stride-1 pools (DeepLab v1's
    choice) and the convolutions after them are dilated to keep their field of view.

    With ``until_stride`` the encoder stops at the first stage reaching that stride: the later
    stages are made (so that a seeded encoder draws the same weights either way, as timm's
    ``FeatureListNet`` builds the whole network) but not kept.

    Args:
        name: ``vgg11``/``vgg13``/``vgg16``/``vgg19`` (``_bn`` suffix allowed), or any label
            when ``stages`` is given.
        stages: conv widths per stage, e.g. ``[[8], [16], [32]]``; defaults to ``name``'s.
        batch_norm: BatchNorm after every conv (``vgg16_bn``).
        kernel_size: conv kernel size (3 in VGG, 7 in SegNet-Basic).
        output_stride: stride of the last feature map; a power of two ≥ 4.
        in_chans: input channels.
        pretrained: load torchvision's ImageNet weights (``vgg16``, ``vgg16_bn``; the torch hub
            cache, downloaded when missing and online, :mod:`segbench.models.pretrained`).
        weights: path to a local state dict in torchvision/timm VGG format (wins over
            ``pretrained``).
        until_stride: return the stages up to the first one at this stride or coarser (ReSeg:
            4); ``None``: all of them.
        out_indices: which pooled levels ``forward`` returns (0 = pool1 at stride 2, as timm
            numbers its feature levels, so an experiment's ``backbone.out_indices`` means the
            same on either encoder); ``None``: all of them. ``forward_with_indices`` always
            returns every level (an unpooling decoder needs them all).
    """

    def __init__(
        self,
        name: str = "vgg16",
        stages: list[list[int]] | None = None,
        batch_norm: bool = False,
        kernel_size: int = 3,
        output_stride: int | None = None,
        in_chans: int = 3,
        pretrained: bool = False,
        weights: str | None = None,
        until_stride: int | None = None,
        out_indices: list[int] | tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if stages is None:
            if name.removesuffix("_bn") not in VGG_STAGES:
                raise ValueError(
                    f"VGG encoder {name!r} is unknown: give `stages` or one of {sorted(VGG_STAGES)}"
                )
            stages = VGG_STAGES[name.removesuffix("_bn")]
        natural = 2 ** len(stages)
        output_stride = natural if output_stride is None else int(output_stride)
        if output_stride < 4 or output_stride > natural or output_stride & (output_stride - 1):
            raise ValueError(
                f"backbone {name!r}: output_stride must be a power of two between 4 and "
                f"{natural}, got {output_stride}"
            )
        self.name = name
        self.natural_stride = natural
        self.kernel_size = kernel_size
        self.batch_norm = batch_norm

        layers: list[nn.Module] = []
        pool_at: list[int] = []  # index in layers of every stage's pool
        channels: list[int] = []
        strides: list[int] = []
        dilations: list[int] = []
        stride, dilation, c_in = 1, 1, in_chans
        for widths in stages:
            for c_out in widths:
                pad = dilation * (kernel_size // 2)
                layers.append(nn.Conv2d(c_in, c_out, kernel_size, padding=pad, dilation=dilation))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(c_out))
                layers.append(nn.ReLU(inplace=True))
                c_in = c_out
            if stride * 2 <= output_stride:
                pool = nn.MaxPool2d(2, 2, return_indices=True)
                stride *= 2
            else:  # keep the resolution, widen the following convs instead
                pool = nn.MaxPool2d(3, 1, padding=1, return_indices=True)
                dilation *= 2
            pool_at.append(len(layers))
            layers.append(pool)
            channels.append(c_in)
            strides.append(stride)
            dilations.append(dilation)
        self.features = nn.Sequential(*layers)
        if weights is not None:  # a whole VGG's state dict: loaded before the cut below
            self.load_weights(weights)
        elif pretrained and name in TORCHVISION:  # torchvision's weights, torch hub cache
            path = fetch_torchvision(name)
            self._load_state(read_state_dict(path, self._expected()), path)
        elif pretrained:
            raise ValueError(
                f"backbone {name!r}: no ImageNet weights exist for this encoder (segbench reads "
                "torchvision's for vgg16 and vgg16_bn); set backbone.pretrained=false, or use a "
                "pretrained backbone such as backbone=vgg16_bn or backbone=resnet18"
            )

        levels = pick_levels(name, strides, out_indices, until_stride, "pool1, stride 2")
        deepest = levels[-1]
        self.features = self.features[: pool_at[deepest] + 1]
        self.out_levels: list[int] = levels  # the pooled levels forward returns
        self.channels: list[int] = [channels[i] for i in levels]
        self.strides: list[int] = [strides[i] for i in levels]
        self.stage_convs: list[int] = [len(s) for s in stages[: deepest + 1]]
        self.output_stride = strides[deepest]
        self.dilation = dilations[deepest]  # dilation a layer after the encoder needs for its view

    def load_weights(self, path: str) -> None:
        """Load ``features.*`` tensors from a local torchvision/timm VGG state dict (read as
        :func:`~segbench.checkpoints.store.read_state_dict` reads one); a file that does not
        fit them key for key and shape for shape is refused, with what differs."""
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(
                f"backbone weights file {str(file)!r} does not exist; expected a local "
                f"torchvision/timm {self.name} state dict"
            )
        self._load_state(read_state_dict(file, self._expected()), file)

    def _expected(self) -> str:
        return (
            f"a torchvision/timm {self.name} state dict (batch_norm={self.batch_norm}) "
            "with features.* keys"
        )

    def _load_state(self, state: dict, file: Path) -> None:
        """Load the ``features.*`` tensors of a VGG state dict read from ``file``, refusing one
        that does not fit them key for key and shape for shape."""
        expected = self._expected()
        found = {k: v for k, v in state.items() if k.startswith("features.")}
        wanted = {f"features.{k}": v for k, v in self.features.state_dict().items()}
        problems = state_dict_mismatch(found, wanted)
        if not found:
            problems = f"it has no features.* keys (its keys: {', '.join(list(state)[:5])}, ...)"
        if problems:
            raise ValueError(
                f"backbone weights {str(file)!r} do not fit {self.name} "
                f"(batch_norm={self.batch_norm}): {problems}. Nothing was loaded; expected "
                f"{expected}"
            )
        self.features.load_state_dict(
            {k[len("features.") :]: v for k, v in found.items()}, strict=True
        )

    def forward_with_indices(
        self, x: Tensor
    ) -> tuple[list[Tensor], list[Tensor], list[torch.Size]]:
        """Pooled features, the max-pooling argmax indices, and each pool's input size."""
        features, indices, sizes = [], [], []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                sizes.append(x.shape[-2:])
                x, idx = layer(x)  # (B, C, H/2, W/2) and flat argmax positions in H×W
                features.append(x)
                indices.append(idx)
            else:
                x = layer(x)
        return features, indices, sizes

    def forward(self, x: Tensor) -> list[Tensor]:
        features = self.forward_with_indices(x)[0]
        return [features[i] for i in self.out_levels]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, strides={self.strides}"
