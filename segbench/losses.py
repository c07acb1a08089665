"""Segmentation losses. Every loss honours ``ignore_index``: ignored pixels add nothing to the
loss and nothing to its normaliser."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CrossEntropyLoss"]


class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy averaged over non-ignored pixels.

    With class weights, the average is weighted (as ``torch.nn.CrossEntropyLoss`` does): the
    sum of ``w[y] * nll`` divided by the sum of ``w[y]`` over non-ignored pixels. A batch with
    no valid pixel gives a zero loss (with a gradient graph) instead of NaN.

    Args:
        num_classes: number of classes, to check ``class_weights``.
        ignore_index: label excluded from the loss.
        class_weights: optional per-class weights (e.g. median-frequency balancing).
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        weight = None
        if class_weights is not None:
            weight = torch.as_tensor(list(class_weights), dtype=torch.float32)
            if weight.shape != (num_classes,):
                raise ValueError(
                    f"loss.class_weights has {weight.numel()} entries, expected one per class "
                    f"({num_classes})"
                )
            if (weight < 0).any():
                raise ValueError(f"loss.class_weights must be non-negative, got {weight.tolist()}")
        self.register_buffer("weight", weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """``logits (B, K, H, W)``, ``target (B, H, W)`` → scalar loss."""
        if not (target != self.ignore_index).any():
            return logits.sum() * 0.0
        return F.cross_entropy(
            logits,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )
