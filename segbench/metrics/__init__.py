"""Every figure segbench computes on predictions, and the :class:`Evaluator` that holds them.

- :mod:`~segbench.metrics.confusion`: the confusion matrix and its figures (mIoU, pixel and
  mean accuracy, fwIoU, mDice, per-class IoU/Dice/accuracy), the VOC/Cityscapes conventions;
- :mod:`~segbench.metrics.per_image`: the per-image counts every statistic is built from
  (``per_image.npz``);
- :mod:`~segbench.metrics.boundary`: BF score and boundary IoU;
- :mod:`~segbench.metrics.calibration`: ECE, NLL, Brier score, reliability bins;
- :mod:`~segbench.metrics.cityscapes`: Cityscapes' category IoU and iIoU;
- :mod:`~segbench.metrics.evaluator`: one evaluation as one object, its figures chosen by
  configuration (``conf/evaluation/``).
"""

from segbench.metrics.confusion import (
    ConfusionMatrix,
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
