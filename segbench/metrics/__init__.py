"""Every figure segbench computes on predictions, and the :class:`Evaluator` that holds them.

- :mod:`~segbench.metrics.confusion`: the confusion matrix and its figures (mIoU, pixel and
  mean accuracy, fwIoU, mDice, per-class IoU/Dice/accuracy), the VOC/Cityscapes conventions;
- :mod:`~segbench.metrics.matrix`: ``ConfusionMatrix``, the matrix accumulated over batches;
- :mod:`~segbench.metrics.per_image`: the per-image counts every statistic is built from
  (``per_image.npz``);
- :mod:`~segbench.metrics.boundary`: BF score and boundary IoU;
- :mod:`~segbench.metrics.calibration`: ECE, NLL, Brier score, reliability bins;
- :mod:`~segbench.metrics.cityscapes`: Cityscapes' category IoU and iIoU;
- :mod:`~segbench.metrics.evaluator`: one evaluation as one object, its figures chosen by
  configuration (``conf/evaluation/``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from segbench.metrics.confusion import (
        class_map,
        metrics_from_confusion,
        metrics_from_counts,
    )
    from segbench.metrics.evaluator import (
        SUMMARY_KEYS,
        EvalBatch,
        EvaluationRecord,
        Evaluator,
        Figure,
        FigureResult,
        Totals,
    )
    from segbench.metrics.matrix import ConfusionMatrix

# the names below, imported when first used: ``import segbench.metrics.<module>`` does not
# import torch and torchmetrics for the modules that need neither (results.json readers)
_WHERE = {
    "ConfusionMatrix": "matrix",
    "class_map": "confusion",
    "metrics_from_confusion": "confusion",
    "metrics_from_counts": "confusion",
    "SUMMARY_KEYS": "evaluator",
    "EvalBatch": "evaluator",
    "EvaluationRecord": "evaluator",
    "Evaluator": "evaluator",
    "Figure": "evaluator",
    "FigureResult": "evaluator",
    "Totals": "evaluator",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"segbench.metrics.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'segbench.metrics' has no attribute {name!r}")


__all__ = [
    "ConfusionMatrix",
    "EvalBatch",
    "EvaluationRecord",
    "Evaluator",
    "Figure",
    "FigureResult",
    "SUMMARY_KEYS",
    "Totals",
    "class_map",
    "metrics_from_confusion",
    "metrics_from_counts",
]
