"""The generic segmentation model: encoder → decoder → head, logits at input resolution."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SegmentationModel", "count_parameters", "segmenter_of"]


class SegmentationModel(nn.Module):
    """Runs ``encoder → decoder → head`` and resizes the logits to the input size.

    Every architecture is a subclass that only wires its parts; the forward pass and the
    output contract live here.

    Args:
        encoder: module mapping ``(B, 3, H, W)`` to a list of feature maps, finest first,
            exposing ``channels`` and ``strides``.
        decoder: module mapping that list to one feature (or score) map.
        head: module mapping the decoder output to ``(B, num_classes, h, w)`` logits.
        num_classes: number of output classes.
        aux_head: optional auxiliary classifier on an encoder level, used in training only.
        aux_index: which encoder level ``aux_head`` reads.
        aux_weight: loss weight of ``aux_head``'s output; the training task reads
            ``model.aux_weight`` (0 without an auxiliary head).

    Returns (from ``forward``):
        ``{"out": (B, num_classes, H, W)}`` plus ``"aux"`` in training mode when an auxiliary
        head is present.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        head: nn.Module,
        num_classes: int,
        aux_head: nn.Module | None = None,
        aux_index: int = -2,
        aux_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = head
        self.aux_head = aux_head
        self.aux_index = aux_index
        self.aux_weight = float(aux_weight)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        features = self.encoder(x)  # list of (B, C_i, H/s_i, W/s_i), finest first
        logits = self.head(self.decoder(features))  # (B, K, H/s, W/s)
        out = {"out": F.interpolate(logits, size=size, mode="bilinear", align_corners=False)}
        if self.aux_head is not None and self.training:
            aux = self.aux_head(features[self.aux_index])
            out["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
        return out


def count_parameters(module: nn.Module) -> int:
    """Number of parameters, trainable or not."""
    return sum(p.numel() for p in module.parameters())


def segmenter_of(model: nn.Module) -> nn.Module:
    """The network that makes the predictions: a wrapper model's ``segmenter``, otherwise the
    model itself (the network whose parameters and FLOPs are reported)."""
    return getattr(model, "segmenter", model)
