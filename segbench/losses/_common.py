"""What every loss shares: the checks of labels, shapes and options, the ignored-pixel mask, the
class-weight buffer (:class:`SegLoss`) and the safe normalisation of a sum that may count
nothing."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "CLASS_SELECTIONS",
    "SegLoss",
    "check_choice",
    "check_range",
    "pixel_nll",
    "safe_div",
    "valid_pixels",
    "weight_tensor",
]

CLASS_SELECTIONS = ("present", "all")


def weight_tensor(class_weights: Sequence[float] | None, num_classes: int) -> Tensor | None:
    """``class_weights`` as a ``(K,)`` float tensor, checked: one non-negative weight per class."""
    if class_weights is None:
        return None
    if isinstance(class_weights, str):  # a weighting name the engine did not resolve
        raise ValueError(
            f"loss.class_weights={class_weights!r} reached the loss unresolved: a weighting "
            "name is computed from the training split before training (train.py does it); "
            "expected a list of numbers"
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


def check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"loss.{key}={value!r} is not one of {', '.join(map(repr, choices))}")


def check_range(key: str, value: float, low: float, high: float = math.inf) -> None:
    if not low <= value <= high:
        raise ValueError(f"loss.{key}={value} is outside [{low}, {high}]")


def valid_pixels(logits: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
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


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den == 0`` only happens with ``num == 0`` (nothing counted): 0."""
    return num / den.clamp_min(1e-12)


def pixel_nll(logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """``-log p(target)`` per pixel, ``(B, H, W)``; ignored pixels read class 0 (mask them)."""
    labels = torch.where(valid, target, 0).long()
    return -logits.float().log_softmax(1).gather(1, labels[:, None])[:, 0]


class SegLoss(nn.Module):
    """Holds ``num_classes``, ``ignore_index`` and the optional ``weight`` buffer (K,)."""

    def __init__(
        self, num_classes: int, ignore_index: int, class_weights: Sequence[float] | None
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight_tensor(class_weights, num_classes))

    def _pixel_weights(self, target: Tensor, valid: Tensor) -> Tensor:
        """``w[y]`` per valid pixel (1 without class weights), 0 at ignored pixels."""
        if self.weight is None:
            return valid.float()
        return self.weight[torch.where(valid, target, 0).long()] * valid
