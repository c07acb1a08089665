"""Segmentation losses. Every loss honours ``ignore_index``: ignored pixels add nothing to the
loss and nothing to its normaliser, and a batch with no valid pixel gives a zero loss that still
has a gradient graph (never NaN).

All take ``logits (B, K, H, W)`` and ``target (B, H, W)`` and return a scalar; all expose
``num_classes`` and ``ignore_index`` (checked against the dataset by ``run.py``). ``WeightedSum``
combines any of them from config (``loss=ce_dice``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "JaccardLoss",
    "LovaszSoftmaxLoss",
    "OHEMCrossEntropyLoss",
    "WeightedSum",
    "lovasz_grad",
]

CLASS_SELECTIONS = ("present", "all")


def _class_weights(class_weights: Sequence[float] | None, num_classes: int) -> Tensor | None:
    """``class_weights`` as a ``(K,)`` float tensor, checked: one non-negative weight per class."""
    if class_weights is None:
        return None
    if isinstance(class_weights, str):  # a weighting name that run.py did not resolve
        raise ValueError(
            f"loss.class_weights={class_weights!r} reached the loss unresolved: a weighting "
            "name is computed from the training split by run.py; expected a list of numbers"
        )
    weight = torch.as_tensor(list(class_weights), dtype=torch.float32)
    if weight.shape != (num_classes,):
        raise ValueError(
            f"loss.class_weights has {weight.numel()} entries, expected one per class "
            f"({num_classes})"
        )
    if (weight < 0).any():
        raise ValueError(f"loss.class_weights must be non-negative, got {weight.tolist()}")
    return weight


def _check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"loss.{key}={value!r} is not one of {', '.join(map(repr, choices))}")


def _check_range(key: str, value: float, low: float, high: float = math.inf) -> None:
    if not low <= value <= high:
        raise ValueError(f"loss.{key}={value} is outside [{low}, {high}]")


def _valid_pixels(logits: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """The ``(B, H, W)`` mask of non-ignored pixels, after checking shapes and labels."""
    if logits.dim() != 4 or logits.shape[1] != num_classes:
        raise ValueError(
            f"logits have shape {tuple(logits.shape)}, expected (B, {num_classes}, H, W) "
            f"(loss.num_classes={num_classes})"
        )
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"target has shape {tuple(target.shape)}, expected {expected}")
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes))
    if bad.any():
        labels = target[bad].unique()[:10].tolist()
        raise ValueError(
            f"target has labels {labels} outside 0..{num_classes - 1} that are not "
            f"loss.ignore_index={ignore_index}"
        )
    return valid


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den == 0`` only happens with ``num == 0`` (nothing counted): 0."""
    return num / den.clamp_min(1e-12)


def _pixel_nll(logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """``-log p(target)`` per pixel, ``(B, H, W)``; ignored pixels read class 0 (mask them)."""
    labels = torch.where(valid, target, 0).long()
    return -logits.float().log_softmax(1).gather(1, labels[:, None])[:, 0]


class _SegLoss(nn.Module):
    """Holds ``num_classes``, ``ignore_index`` and the optional ``weight`` buffer (K,)."""

    def __init__(
        self, num_classes: int, ignore_index: int, class_weights: Sequence[float] | None
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.register_buffer("weight", _class_weights(class_weights, num_classes))

    def _pixel_weights(self, target: Tensor, valid: Tensor) -> Tensor:
        """``w[y]`` per valid pixel (1 without class weights), 0 at ignored pixels."""
        if self.weight is None:
            return valid.float()
        return self.weight[torch.where(valid, target, 0).long()] * valid


class CrossEntropyLoss(_SegLoss):
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


class FocalLoss(_SegLoss):
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
        _check_range("gamma", gamma, 0.0)
        self.gamma = gamma

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid = _valid_pixels(logits, target, self.num_classes, self.ignore_index)  # (B, H, W)
        nll = _pixel_nll(logits, target, valid)  # (B, H, W)
        # 1 - p_t, kept off 0 so that gamma < 1 has a finite gradient at p_t = 1
        focus = (-torch.expm1(-nll)).clamp_min(1e-12) ** self.gamma  # (B, H, W)
        weights = self._pixel_weights(target, valid)  # (B, H, W), 0 where ignored
        return _safe_div((weights * focus * nll).sum(), weights.sum())


class OHEMCrossEntropyLoss(_SegLoss):
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
        _check_range("thresh", thresh, 0.0, 1.0)
        if not isinstance(min_kept, int) or min_kept < 0:
            raise ValueError(f"loss.min_kept={min_kept!r}, expected a non-negative integer")
        self.thresh = thresh
        self.min_kept = min_kept

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid = _valid_pixels(logits, target, self.num_classes, self.ignore_index)  # (B, H, W)
        nll = _pixel_nll(logits, target, valid)  # (B, H, W)
        with torch.no_grad():
            prob = torch.where(valid, torch.exp(-nll), 2.0).flatten()  # ignored: above any cut
            cut = torch.tensor(self.thresh, device=prob.device)
            images = int(valid.flatten(1).any(1).sum())  # those with a valid pixel
            k = min(self.min_kept * images, prob.numel())
            if k > 0:  # the k-th lowest probability (2 when fewer than k valid pixels)
                cut = torch.maximum(cut, prob.kthvalue(k).values)
            kept = (prob <= cut).view_as(valid) & valid  # (B, H, W)
        weights = self._pixel_weights(target, kept)  # (B, H, W)
        return _safe_div((weights * nll).sum(), weights.sum())


class _SoftOverlapLoss(_SegLoss):
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
        _check_range("smooth", smooth, 0.0)
        _check_choice("classes", classes, CLASS_SELECTIONS)
        self.smooth = smooth
        self.classes = classes

    def _score(self, intersection: Tensor, total: Tensor) -> Tensor:
        """Per-class score from ``sum(p * g)`` and ``sum(p) + sum(g)``, both ``(K,)``."""
        raise NotImplementedError

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid = _valid_pixels(logits, target, self.num_classes, self.ignore_index)  # (B, H, W)
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
        return _safe_div((counted * loss).sum(), counted.sum())


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


def lovasz_grad(truth_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss, for errors sorted in decreasing
    order: entry ``i`` is ``J(first i+1 pixels wrong) - J(first i wrong)``, where ``J`` is
    ``1 - |truth ∩ predicted| / |truth ∪ predicted|``. ``truth_sorted (..., N)`` is 0/1.

    Computed in float64: over millions of pixels the steps are ~1/N, below float32's resolution
    near 1.
    """
    truth = truth_sorted.long()
    total = truth.sum(-1, keepdim=True)
    intersection = total - truth.cumsum(-1)  # (..., N)
    union = total + (1 - truth).cumsum(-1)  # (..., N), >= 1
    jaccard = 1.0 - intersection.double() / union.double()
    return torch.diff(jaccard, dim=-1, prepend=torch.zeros_like(jaccard[..., :1]))


class LovaszSoftmaxLoss(_SegLoss):
    """Lovász-softmax loss (Berman, Rannen Triki & Blaschko, CVPR 2018): per class, the Lovász
    extension of the Jaccard loss evaluated on the errors ``|[y = c] - p_c|``, averaged over
    classes.

    With hard (0/1) predictions it equals ``1 - IoU`` per class. ``classes="present"`` (the
    paper's code default) averages only the classes in the labels; ``per_image`` computes the
    loss per image and averages over the images that have a valid pixel (the paper's batch-wide
    default is ``per_image=False``).

    Args:
        num_classes: number of classes.
        ignore_index: label excluded from the loss.
        classes: ``"present"`` or ``"all"``.
        per_image: one loss per image, averaged, instead of one over the batch.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        classes: str = "present",
        per_image: bool = False,
    ) -> None:
        super().__init__(num_classes, ignore_index, None)
        _check_choice("classes", classes, CLASS_SELECTIONS)
        self.classes = classes
        self.per_image = per_image

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid = _valid_pixels(logits, target, self.num_classes, self.ignore_index)  # (B, H, W)
        groups = logits.shape[0] if self.per_image else 1
        k = self.num_classes
        probs = logits.float().softmax(1).transpose(0, 1).reshape(k, groups, -1)  # (K, G, N)
        labels = torch.where(valid, target.long(), -1).reshape(groups, -1)  # (G, N)
        valid = valid.reshape(groups, -1)  # (G, N)
        group_index = torch.arange(groups, device=labels.device)[:, None]
        counts = torch.bincount(  # label counts per group; -1 (ignored) lands in column 0
            (labels + 1 + group_index * (k + 1)).flatten(), minlength=groups * (k + 1)
        ).view(groups, k + 1)[:, 1:]  # (G, K)
        if self.classes == "present":
            todo = (counts.sum(0) > 0).nonzero().flatten().tolist()
        else:
            todo = list(range(k)) if bool(valid.any()) else []
        if not todo:
            return logits.sum() * 0.0
        per_class = []
        for c in todo:
            truth = labels == c  # (G, N)
            errors = torch.where(valid, (truth.float() - probs[c]).abs(), -1.0)  # ignored last
            errors_sorted, order = errors.sort(-1, descending=True)  # (G, N)
            grad = lovasz_grad(truth.gather(-1, order)).to(errors.dtype)  # (G, N)
            per_class.append((errors_sorted.clamp_min(0.0) * grad).sum(-1))  # (G,)
        loss = torch.stack(per_class, 1)  # (G, C)
        if self.classes == "present":
            counted = (counts[:, todo] > 0).float()  # (G, C)
        else:
            counted = valid.any(-1, keepdim=True).float().expand_as(loss)  # (G, C)
        per_group = _safe_div((counted * loss).sum(1), counted.sum(1))  # (G,)
        has_pixels = valid.any(-1).float()  # (G,)
        return _safe_div((has_pixels * per_group).sum(), has_pixels.sum())


class WeightedSum(nn.Module):
    """A weighted sum of named losses, e.g. cross-entropy + Dice (``loss=ce_dice``).

    Every term must use the same ``num_classes`` and ``ignore_index`` (they become this loss's).
    A term of weight 0 is skipped. After each call, ``last_terms`` maps every computed term's
    name to its unweighted value (a detached tensor), for logging.

    Args:
        terms: ``{name: {"loss": <loss module>, "weight": float}}``; from config each ``loss``
            is a loss config (with ``_target_``), so ``loss.terms.dice.weight=0.5`` overrides a
            weight.
    """

    def __init__(self, terms: Mapping[str, Mapping[str, Any]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("loss.terms is empty; expected {name: {loss: ..., weight: ...}}")
        losses: dict[str, nn.Module] = {}
        self.weights: dict[str, float] = {}
        for name, term in terms.items():
            key = f"loss.terms.{name}"
            if "." in name or not name:
                raise ValueError(f"{key}: a term name must be non-empty and have no '.'")
            if not isinstance(term, Mapping) or set(term) != {"loss", "weight"}:
                found = sorted(term) if isinstance(term, Mapping) else type(term).__name__
                raise ValueError(f"{key} has {found}, expected exactly the keys loss and weight")
            loss, weight = term["loss"], term["weight"]
            if not isinstance(loss, nn.Module):
                raise ValueError(
                    f"{key}.loss is a {type(loss).__name__}, expected a loss module "
                    "(a config with _target_)"
                )
            for attr in ("num_classes", "ignore_index"):
                if not hasattr(loss, attr):
                    raise ValueError(f"{key}.loss ({type(loss).__name__}) has no {attr}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ValueError(f"{key}.weight={weight!r}, expected a number")
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"{key}.weight={weight}, expected a finite number >= 0")
            losses[name] = loss
            self.weights[name] = float(weight)
        if not any(self.weights.values()):
            raise ValueError(f"every loss.terms weight is 0: {self.weights}")
        first, reference = next(iter(losses.items()))
        for name, loss in losses.items():
            for attr in ("num_classes", "ignore_index"):
                if getattr(loss, attr) != getattr(reference, attr):
                    raise ValueError(
                        f"loss.terms.{name}.loss.{attr}={getattr(loss, attr)} but "
                        f"loss.terms.{first}.loss.{attr}={getattr(reference, attr)}; every term "
                        f"must use the same {attr}"
                    )
        self.terms = nn.ModuleDict(losses)
        self.num_classes: int = reference.num_classes
        self.ignore_index: int = reference.ignore_index
        self.last_terms: dict[str, Tensor] = {}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """``logits (B, K, H, W)``, ``target (B, H, W)`` → ``sum(weight * term)``."""
        values = {
            name: loss(logits, target)
            for name, loss in self.terms.items()
            if self.weights[name] > 0
        }
        self.last_terms = {name: value.detach() for name, value in values.items()}
        return sum(self.weights[name] * value for name, value in values.items())
