"""Confusion-matrix segmentation metrics, following the PASCAL VOC / Cityscapes conventions.

All figures come from one ``num_classes x num_classes`` matrix of pixel counts
(rows: ground truth, columns: prediction). Pixels labelled ``ignore_index`` are
left out. The matrix is summed across processes, so one process and N DDP
ranks give identical numbers on the same images.

A class that appears neither in the ground truth nor in the prediction has an
undefined IoU/Dice (NaN) and is excluded from the means.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["ConfusionMatrix", "metrics_from_confusion", "metrics_from_counts"]


def metrics_from_counts(tp: Tensor, gt: Tensor, pred: Tensor) -> dict[str, Tensor]:
    """All summary figures from per-class pixel counts, batched over any leading dimensions.

    Args:
        tp: ``(..., K)`` pixels of each class predicted correctly (the confusion diagonal).
        gt: ``(..., K)`` pixels of each class in the ground truth (the matrix's row sums).
        pred: ``(..., K)`` pixels predicted as each class (its column sums).

    Returns:
        float64 tensors: ``(...)`` scalars ``pixel_acc``, ``mean_acc``, ``mIoU``, ``fwIoU``,
        ``mDice`` and ``(..., K)`` per-class ``iou``, ``dice``, ``acc`` (NaN where undefined).
        These three counts are all a figure needs, so the sum of per-image counts over a set of
        images gives exactly that set's figures (what the per-image statistics rely on).
    """
    tp, gt, pred = (t.to(torch.float64) for t in (tp, gt, pred))
    union = gt + pred - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=tp.device)

    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    dice = torch.where(gt + pred > 0, 2 * tp / (gt + pred).clamp(min=1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)  # recall; undefined without ground truth

    total = gt.sum(-1)
    freq = gt / total.clamp(min=1)[..., None]
    return {
        "pixel_acc": torch.where(total > 0, tp.sum(-1) / total.clamp(min=1), nan),
        "mean_acc": acc.nanmean(-1),
        "mIoU": iou.nanmean(-1),
        "fwIoU": torch.where(total > 0, (freq * iou.nan_to_num(0.0)).sum(-1), nan),
        "mDice": dice.nanmean(-1),
        "iou": iou,
        "dice": dice,
        "acc": acc,
    }


def metrics_from_confusion(confmat: Tensor) -> dict[str, Tensor]:
    """All summary figures from a confusion matrix (rows = ground truth, cols = prediction):
    :func:`metrics_from_counts` of its diagonal, row sums and column sums."""
    return metrics_from_counts(confmat.diag(), confmat.sum(dim=1), confmat.sum(dim=0))


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
            preds = preds.argmax(dim=1)
        if preds.shape != target.shape:
            raise ValueError(
                f"prediction shape {tuple(preds.shape)} does not match target {tuple(target.shape)}"
            )
        target = target.long()
        keep = target != self.ignore_index if self.ignore_index is not None else None
        if keep is not None:
            target, preds = target[keep], preds[keep]
        else:
            target, preds = target.flatten(), preds.flatten()
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            bad = target[(target < 0) | (target >= self.num_classes)].unique()[:10].tolist()
            raise ValueError(
                f"label values {bad} lie outside [0, {self.num_classes}) and are not the "
                f"ignore index ({self.ignore_index})"
            )
        preds = preds.long()
        if preds.numel() and (preds.min() < 0 or preds.max() >= self.num_classes):
            bad = preds[(preds < 0) | (preds >= self.num_classes)].unique()[:10].tolist()
            raise ValueError(f"predicted class indices {bad} lie outside [0, {self.num_classes})")
        n = self.num_classes
        counts = torch.bincount(target * n + preds, minlength=n * n)
        self.confmat += counts.reshape(n, n)

    def compute(self) -> dict[str, Tensor]:
        """The figures of :func:`metrics_from_confusion` plus ``confmat``, the matrix summed
        over all processes (``self.confmat`` itself holds this process's counts only)."""
        return {**metrics_from_confusion(self.confmat), "confmat": self.confmat.clone()}
