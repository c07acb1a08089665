"""Segmentation losses. Every loss honours ``ignore_index``: ignored pixels add nothing to the
loss and nothing to its normaliser, and a batch with no valid pixel gives a zero loss that still
has a gradient graph (never NaN).

All take ``logits (B, K, H, W)`` and ``target (B, H, W)`` and return a scalar; all expose
``num_classes`` and ``ignore_index`` (checked against the dataset by
:func:`segbench.engine.build.build_task`). ``WeightedSum`` combines any of them from config
(``loss=ce_dice``).

Modules: :mod:`~segbench.losses.cross_entropy` (cross-entropy, focal, OHEM),
:mod:`~segbench.losses.overlap` (soft Dice, Jaccard), :mod:`~segbench.losses.lovasz`
(Lovász-softmax) and :mod:`~segbench.losses.combined` (the weighted sum); every name is
importable from ``segbench.losses`` itself (``_target_: segbench.losses.DiceLoss``).
"""

from __future__ import annotations

from segbench.losses.combined import WeightedSum
from segbench.losses.cross_entropy import CrossEntropyLoss, FocalLoss, OHEMCrossEntropyLoss
from segbench.losses.lovasz import LovaszSoftmaxLoss, lovasz_grad
from segbench.losses.overlap import DiceLoss, JaccardLoss

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
