"""Pixel-wise cross-entropy and its two reweightings: focal (down-weights easy pixels) and OHEM
(keeps only the hard ones)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from segbench.losses._common import SegLoss, check_range, pixel_nll, safe_div, valid_pixels

__all__ = ["CrossEntropyLoss", "FocalLoss", "OHEMCrossEntropyLoss"]


class CrossEntropyLoss(SegLoss):
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
        super().__init__(num_classes, ignore_index, class_weights)
        self.label_smoothing = label_smoothing

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


class FocalLoss(SegLoss):
    """Focal loss ``-(1 - p_t)^gamma log p_t`` (Lin et al., "Focal Loss for Dense Object
    Detection", ICCV 2017), averaged over non-ignored pixels.

    The paper's ``alpha_t`` is ``class_weights[y]`` here (one weight per class, the multi-class
    form of its foreground/background alpha). As in :class:`CrossEntropyLoss`, the weighted
    average divides by the sum of ``w[y]``, so ``gamma=0`` is exactly the (weighted)
    cross-entropy.

    Args:
        num_classes: number of classes.
        ignore_index: label excluded from the loss.
        gamma: focusing parameter (the paper's 2); 0 gives the cross-entropy.
        class_weights: optional per-class weights (the paper's alpha).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        gamma: float = 2.0,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, ignore_index, class_weights)
        check_range("gamma", gamma, 0.0)
        self.gamma = gamma

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid = valid_pixels(logits, target, self.num_classes, self.ignore_index)  # (B, H, W)
        nll = pixel_nll(logits, target, valid)  # (B, H, W)
        # 1 - p_t, kept off 0 so that gamma < 1 has a finite gradient at p_t = 1
        focus = (-torch.expm1(-nll)).clamp_min(1e-12) ** self.gamma  # (B, H, W)
        weights = self._pixel_weights(target, valid)  # (B, H, W), 0 where ignored
        return safe_div((weights * focus * nll).sum(), weights.sum())


class OHEMCrossEntropyLoss(SegLoss):
    """Cross-entropy over the hard pixels only: online hard example mining (Shrivastava et al.,
    CVPR 2016) in its thresholded pixel form (Wu, Shen & van den Hengel, 2016, "online
    bootstrapping"; mmsegmentation's ``OHEMPixelSampler``).

    A valid pixel is kept when the softmax probability of its true class is at most ``thresh``;
    when fewer than ``min_kept * B`` pixels are (``B``: images with a valid pixel), the
    ``min_kept * B`` hardest (lowest probability) valid pixels are kept instead (all of them
    when the batch has fewer; ties at the cut are all kept). The loss is the (class-weighted)
    mean cross-entropy over the kept pixels. The selection carries no gradient. ``thresh=1``
    keeps every pixel: plain CE.

    Args:
        num_classes: number of classes.
        ignore_index: label excluded from the loss.
        thresh: probability of the true class under which a pixel is hard (0.7 in mmseg).
        min_kept: least number of pixels kept per image of the batch.
        class_weights: optional per-class weights, as in :class:`CrossEntropyLoss`.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        thresh: float = 0.7,
        min_kept: int = 100_000,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(num_classes, ignore_index, class_weights)
        check_range("thresh", thresh, 0.0, 1.0)
        if not isinstance(min_kept, int) or min_kept < 0:
            raise ValueError(f"loss.min_kept={min_kept!r}, expected a non-negative integer")
        self.thresh = thresh
        self.min_kept = min_kept

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid = valid_pixels(logits, target, self.num_classes, self.ignore_index)  # (B, H, W)
        nll = pixel_nll(logits, target, valid)  # (B, H, W)
        with torch.no_grad():
            prob = torch.where(valid, torch.exp(-nll), 2.0).flatten()  # ignored: above any cut
            cut = torch.tensor(self.thresh, device=prob.device)
            images = int(valid.flatten(1).any(1).sum())  # those with a valid pixel
            k = min(self.min_kept * images, prob.numel())
            if k > 0:  # the k-th lowest probability (2 when fewer than k valid pixels)
                cut = torch.maximum(cut, prob.kthvalue(k).values)
            kept = (prob <= cut).view_as(valid) & valid  # (B, H, W)
        weights = self._pixel_weights(target, kept)  # (B, H, W)
        return safe_div((weights * nll).sum(), weights.sum())
