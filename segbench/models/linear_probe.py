"""Linear probing of frozen features for segmentation, as DINOv2 evaluates them (Oquab et al.,
"DINOv2: Learning Robust Visual Features without Supervision", 2023: the semantic segmentation
results with frozen features, "lin." and "+ms").

A frozen encoder, and on top of it only a BatchNorm and a 1×1 convolution (a linear classifier
per token): what the segmentation score measures is the features themselves. The two setups of
the paper, as its released mmsegmentation configs build them (``BNHead``, ``resize_concat``):

- ``lin``: the patch tokens of the last block (after the final LayerNorm), at stride 14
  (the released ViT-B/14 ADE20K config: blocks 8-11 taken, ``in_index=[3]``, 768 channels);
- ``ms``: the patch tokens of the last four blocks concatenated (4×C channels: the released
  ViT-S/14 "ms" head is BN(1536) + conv 1536→K). The paper trains it at 640 px and evaluates
  it at several scales with flips (``inference=ms_flip``); the head itself is the same.

The logits, at stride 14, are upsampled bilinearly to the input size. DINOv2's segmentation
configs read patch tokens only (``in_channels`` = C per block, no class token); its depth
probes also concatenate the class token, broadcast over the map: ``cls_token=true`` does that.

On a CNN encoder (``backbone=tiny``, ``resnet50``) the same head reads the deepest level
(``lin``), or the four deepest levels (``ms``) bilinearly resized to the finest of them (the
first of the four, as mmseg's ``resize_concat`` does) and concatenated; there is no class token.

Freezing is the backbone config's ``freeze`` key, which ``model=linear_probe`` sets true (the
engine freezes the encoder after building the model: :mod:`segbench.models.freeze`); a
``LinearProbe`` built in Python freezes nothing itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segbench.models.base import SegmentationModel
from segbench.models.encoders import encoder_name

__all__ = ["HEAD_LEVELS", "LinearProbe", "ProbeFeatures"]

# how many of the encoder's deepest levels each head reads
HEAD_LEVELS = {"lin": 1, "ms": 4}


class ProbeFeatures(nn.Module):
    """The probe's input: the last ``levels`` feature maps, resized to the first of them and
    concatenated, optionally with each level's class token broadcast over the map.

    Args:
        levels: how many of the deepest encoder levels are read.
        class_tokens: concatenate each level's class token (a ``(B, C)`` vector) after its map.
    """

    def __init__(self, levels: int, class_tokens: bool = False) -> None:
        super().__init__()
        self.levels = int(levels)
        self.class_tokens = bool(class_tokens)

    def forward(self, features: list[Tensor], tokens: list[Tensor] | None = None) -> Tensor:
        maps = features[-self.levels :]  # finest first: maps[0] sets the size
        size = maps[0].shape[-2:]
        parts = []
        for i, x in enumerate(maps):
            if x.shape[-2:] != size:  # a CNN's coarser level; a ViT's are all the same size
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            parts.append(x)  # (B, C_i, h, w)
            if self.class_tokens:
                token = tokens[len(tokens) - self.levels + i]  # (B, C_i)
                parts.append(token[:, :, None, None].expand(-1, -1, *size))
        return torch.cat(parts, dim=1)  # (B, sum C_i [x2], h, w)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, class_tokens={self.class_tokens}"


class LinearProbe(SegmentationModel):
    """BatchNorm + 1×1 linear classifier on an encoder's features (DINOv2's ``lin``/``ms``).

    Args:
        encoder: the encoder probed (a DINOv2 ViT in the paper), frozen by the engine when its
            backbone config has ``freeze: true``.
        num_classes: number of classes.
        head: ``"lin"`` (the last level) or ``"ms"`` (the last four levels concatenated).
        cls_token: also concatenate the class token of every level read (an encoder with
            ``forward_with_class_token``, i.e. a ViT; DINOv2's segmentation probes do not).

    Returns (from ``forward``):
        ``{"out": (B, num_classes, H, W)}``: logits at stride 14 (on a ViT) upsampled
        bilinearly to the input size.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        head: str = "lin",
        cls_token: bool = False,
    ) -> None:
        name = encoder_name(encoder)
        if head not in HEAD_LEVELS:
            raise ValueError(
                f"LinearProbe: head must be one of {sorted(HEAD_LEVELS)}, got {head!r}"
            )
        levels = HEAD_LEVELS[head]
        channels = list(getattr(encoder, "channels", None) or [])
        if len(channels) < levels:
            raise ValueError(
                f"LinearProbe head={head!r} reads the last {levels} feature levels, but encoder "
                f"{name!r} returns {len(channels)} (channels {channels}); set "
                "backbone.out_indices=null (a ViT: its last four blocks) or use head=lin"
            )
        if cls_token and not callable(getattr(encoder, "forward_with_class_token", None)):
            raise ValueError(
                f"LinearProbe cls_token=true concatenates the class token, but encoder {name!r} "
                "has none (no `forward_with_class_token`); use a ViT backbone such as "
                "vit_small_patch14_dinov2, or cls_token=false"
            )
        width = sum(channels[-levels:]) * (2 if cls_token else 1)
        classifier = nn.Conv2d(width, num_classes, 1)
        # mmseg's init of DINOv2's BNHead classifier: normal(0, 0.01), zero bias
        nn.init.normal_(classifier.weight, std=0.01)
        nn.init.zeros_(classifier.bias)
        super().__init__(
            encoder,
            ProbeFeatures(levels, cls_token),
            nn.Sequential(nn.BatchNorm2d(width), classifier),
            num_classes,
        )
        self.head_type = head
        self.cls_token = bool(cls_token)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        if self.cls_token:
            features, tokens = self.encoder.forward_with_class_token(x)
        else:
            features, tokens = self.encoder(x), None  # list of (B, C, H/14, W/14) on a ViT
        logits = self.head(self.decoder(features, tokens))  # (B, K, H/14, W/14)
        return {"out": F.interpolate(logits, size=size, mode="bilinear", align_corners=False)}
