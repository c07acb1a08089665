"""The confusion matrix accumulated over batches (and summed over DDP processes) as a torchmetrics
``Metric``; its figures are :func:`segbench.metrics.confusion.metrics_from_confusion`'s."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from segbench.metrics.confusion import class_map, metrics_from_confusion

__all__ = ["ConfusionMatrix"]


class ConfusionMatrix(Metric):
    """Accumulates a confusion matrix over batches and reports the standard segmentation figures.

    Args:
        num_classes: number of real classes; labels must lie in ``[0, num_classes)``.
        ignore_index: label value excluded from every figure (VOC: 255, CamVid: 11).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_classes: int, ignore_index: int | None = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state(
            "confmat",
            default=torch.zeros(num_classes, num_classes, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            preds: class indices ``(B, H, W)`` or logits/probabilities ``(B, C, H, W)``.
            target: ground-truth labels ``(B, H, W)``.
        """
        if preds.dim() == target.dim() + 1:
            preds = class_map(preds)
        if preds.shape != target.shape:
            raise ValueError(
                f"prediction shape {tuple(preds.shape)} does not match target {tuple(target.shape)}"
            )
        # no boolean indexing (it copies, and cost more than the rest of the update): ignored
        # pixels are counted in one extra bin that is dropped
        n = self.num_classes
        target, preds = target.long().flatten(), preds.long().flatten()
        if self.ignore_index is not None:
            ignored = target == self.ignore_index
            checked = target.masked_fill(ignored, 0)
        else:
            ignored, checked = None, target
        low, high = torch.aminmax(checked) if checked.numel() else (0, 0)
        if low < 0 or high >= n:
            bad = checked[(checked < 0) | (checked >= n)].unique()[:10].tolist()
            raise ValueError(
                f"label values {bad} lie outside [0, {n}) and are not the "
                f"ignore index ({self.ignore_index})"
            )
        low, high = torch.aminmax(preds) if preds.numel() else (0, 0)
        if low < 0 or high >= n:
            bad = preds[(preds < 0) | (preds >= n)].unique()[:10].tolist()
            raise ValueError(f"predicted class indices {bad} lie outside [0, {n})")
        index = checked * n + preds
        if ignored is not None:
            index = index.masked_fill_(ignored, n * n)
        counts = torch.bincount(index, minlength=n * n + 1)[: n * n]
        self.confmat += counts.reshape(n, n)

    def compute(self) -> dict[str, Tensor]:
        """The figures of :func:`metrics_from_confusion` plus ``confmat``, the matrix summed
        over all processes (``self.confmat`` itself holds this process's counts only)."""
        return {**metrics_from_confusion(self.confmat), "confmat": self.confmat.clone()}
