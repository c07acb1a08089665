"""Soft overlap losses on softmax probabilities: Dice and Jaccard (IoU), per class over the
batch, then averaged over classes."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
from torch import Tensor

from segbench.losses._common import (
    CLASS_SELECTIONS,
    SegLoss,
    check_choice,
    check_range,
    safe_div,
    valid_pixels,
)

__all__ = ["DiceLoss", "JaccardLoss"]


class _SoftOverlapLoss(SegLoss, abc.ABC):
    """``1 - score`` per class from soft counts over the batch, averaged over classes."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        smooth: float = 1.0,
        classes: str = "present",
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, ignore_index, class_weights)
        check_range("smooth", smooth, 0.0)
        check_choice("classes", classes, CLASS_SELECTIONS)
        self.smooth = smooth
        self.classes = classes

    @abc.abstractmethod
    def _score(self, intersection: Tensor, total: Tensor) -> Tensor:
        """Per-class score from ``sum(p * g)`` and ``sum(p) + sum(g)``, both ``(K,)``."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid = valid_pixels(logits, target, self.num_classes, self.ignore_index)  # (B, H, W)
        probs = logits.float().softmax(1) * valid[:, None]  # (B, K, H, W), 0 where ignored
        classes = torch.arange(self.num_classes, device=target.device)
        truth = (target[:, None] == classes[None, :, None, None]) & valid[:, None]  # (B, K, H, W)
        intersection = (probs * truth).sum((0, 2, 3))  # (K,)
        label_count = truth.sum((0, 2, 3))  # (K,)
        total = probs.sum((0, 2, 3)) + label_count  # (K,)
        loss = 1.0 - self._score(intersection, total)  # (K,)
        if self.classes == "present":
            counted = (label_count > 0).float()  # (K,)
        else:
            counted = valid.any().float().expand(self.num_classes)  # (K,)
        if self.weight is not None:
            counted = counted * self.weight
        return safe_div((counted * loss).sum(), counted.sum())


class DiceLoss(_SoftOverlapLoss):
    """Soft Dice loss ``1 - (2 sum(p g) + s) / (sum(p) + sum(g) + s)`` on softmax probabilities
    (Milletari et al., "V-Net", 3DV 2016), per class over the whole batch, then averaged over
    classes (weighted by ``class_weights`` when given).

    V-Net is binary (one foreground) and squares ``p`` and ``g`` in the denominator; this is the
    common multi-class form with plain sums. Which classes are averaged: ``"present"`` (default)
    takes those with at least one valid pixel in the batch's labels, so a class that is absent
    adds neither a constant 1 nor a near-zero-gradient term and the value is comparable across
    batches; predicting an absent class is still penalised through the softmax, which takes that
    mass away from the true classes. ``"all"`` averages every class (as mmsegmentation and MONAI
    do); an absent class then scores ``1 - s / (sum(p) + s)``. segmentation_models_pytorch zeroes
    absent classes but still divides by ``K``; here ``"present"`` is a true mean.

    Args:
        num_classes: number of classes.
        ignore_index: label excluded from the loss.
        smooth: ``s``, added to numerator and denominator.
        classes: ``"present"`` or ``"all"``, see above.
        class_weights: optional per-class weights of the class average.
    """

    def _score(self, intersection: Tensor, total: Tensor) -> Tensor:
        return (2.0 * intersection + self.smooth) / (total + self.smooth).clamp_min(1e-12)


class JaccardLoss(_SoftOverlapLoss):
    """Soft Jaccard (IoU) loss ``1 - (sum(p g) + s) / (sum(p) + sum(g) - sum(p g) + s)`` on
    softmax probabilities (Rahman & Wang, "Optimizing Intersection-Over-Union in Deep Neural
    Networks for Image Segmentation", ISVC 2016), per class over the batch, averaged over
    classes exactly as :class:`DiceLoss` (``classes="present"`` by default).

    Args:
        num_classes: number of classes.
        ignore_index: label excluded from the loss.
        smooth: ``s``, added to numerator and denominator.
        classes: ``"present"`` or ``"all"``, see :class:`DiceLoss`.
        class_weights: optional per-class weights of the class average.
    """

    def _score(self, intersection: Tensor, total: Tensor) -> Tensor:
        union = total - intersection
        return (intersection + self.smooth) / (union + self.smooth).clamp_min(1e-12)
