"""The evaluation as one object: an :class:`Evaluator` holds every figure of an evaluation, takes
one :meth:`~Evaluator.update` per batch and returns one typed :class:`EvaluationRecord` from
:meth:`~Evaluator.compute`.

What every evaluation computes: the confusion matrix and its figures (mIoU, pixel and mean
accuracy, fwIoU, mDice, per-class IoU/Dice/accuracy; :mod:`segbench.metrics.confusion`) and the
per-image counts behind the intervals and paired comparisons (:mod:`segbench.metrics.per_image`).
Everything else is a :class:`Figure`, chosen by configuration: ``evaluation.figures`` of
``conf/evaluation/default.yaml`` (boundary, calibration) and a dataset's own ``figures``
(``conf/dataset/cityscapes.yaml``: category IoU and iIoU). Each entry is a ``_partial_``
factory the evaluator calls with the dataset's ``num_classes``, ``ignore_index`` and
``class_names``. A new figure is one :class:`Figure` subclass and one line of config.

The split mirrors mmsegmentation's metrics: ``update`` reduces a batch to sufficient statistics
(dataset-level sums in torchmetrics states, or per-image rows), ``compute`` turns the totals into
figures. Under DDP each rank updates with its own images; ``compute`` is a collective (every rank
calls it): the sums are added over ranks and the per-image rows gathered in dataset order, so one
process and N give the same record.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from segbench.metrics.confusion import class_map
from segbench.metrics.matrix import ConfusionMatrix
from segbench.metrics.per_image import PerImageRecorder, image_counts

__all__ = [
    "SUMMARY_KEYS",
    "EvalBatch",
    "EvaluationRecord",
    "Evaluator",
    "Figure",
    "FigureResult",
    "Totals",
]

# the scalar figures of the confusion matrix, in the order results.json and the logs give them
SUMMARY_KEYS = ("mIoU", "pixel_acc", "mean_acc", "fwIoU", "mDice")
# its per-class figures: IoU, Dice and accuracy (recall) of each class
PER_CLASS_KEYS = ("iou", "dice", "acc")


@dataclass(frozen=True)
class EvalBatch:
    """What a figure sees of one evaluated batch.

    Args:
        scores: the model's scores ``(B, K, H, W)`` (logits or log-probabilities).
        pred: their class map ``(B, H, W)`` (made once, by the evaluator).
        target: the labels ``(B, H, W)``, checked to lie in ``[0, K)`` or be ``ignore_index``.
        batch: the loader's batch as it came (``index``, ``name``, and whatever a dataset adds,
            e.g. Cityscapes' ``instance`` ids).
    """

    scores: Tensor
    pred: Tensor
    target: Tensor
    batch: Mapping


@dataclass(frozen=True)
class Totals:
    """What a figure's :meth:`Figure.compute` reads besides its own state: the evaluation's
    totals over every rank.

    Args:
        confusion: ``(K, K)`` int64 confusion matrix (rows: ground truth).
        names: every image's name, in dataset order.
        counts: ``(N, 3, K)`` per-image counts (:mod:`segbench.metrics.per_image`).
        arrays: every per-image array the figures returned from :meth:`Figure.update`, rows in
            the same order.
        notes: what the data said about the evaluated split (``instances``: why its samples
            carry no instance ids, ``None`` when they do).
    """

    confusion: np.ndarray
    names: list[str]
    counts: np.ndarray
    arrays: dict[str, np.ndarray]
    notes: Mapping[str, str | None]


@dataclass
class FigureResult:
    """What one figure gives the rest of segbench, decided in one place, the figure's class.

    Args:
        record: the figure's own JSON-ready record (``None`` when it computed nothing).
        metrics: entries added to ``results.json``'s ``metrics`` (leaderboard columns).
        entries: top-level entries of ``results.json``.
        logged: scalars logged as ``<split>/<key>`` (``None`` values are not logged).
        columns: per-class columns of the printed table (label -> one value per class).
        rows: summary rows of the printed table (label, value).
        notes: lines printed under the table.
    """

    record: dict | None = None
    metrics: dict = field(default_factory=dict)
    entries: dict = field(default_factory=dict)
    logged: dict[str, float | None] = field(default_factory=dict)
    columns: dict[str, list] = field(default_factory=dict)
    rows: list[tuple[str, float | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Figure(nn.Module, ABC):
    """One family of figures of an evaluation (subclass it; one line of config switches it on).

    A figure keeps dataset-level sums as torchmetrics states (summed over ranks when computed)
    or returns per-image rows from :meth:`update` (gathered from every rank and written to
    ``per_image.npz`` under their keys). :meth:`compute` turns them into a
    :class:`FigureResult`.

    Args:
        num_classes, ignore_index, class_names: the evaluated dataset's (the evaluator passes
            them to every figure's factory).
    """

    name: str = "figure"

    def __init__(self, num_classes: int, ignore_index: int | None, class_names: Sequence[str]):
        super().__init__()
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.class_names = [str(n) for n in class_names]

    def update(self, batch: EvalBatch) -> dict[str, Tensor]:
        """Take a batch; return per-image arrays ``(B, ...)`` to keep image by image."""
        return {}

    def reset(self) -> None:
        """Forget everything added (the evaluator resets before each evaluation)."""

    @abstractmethod
    def compute(self, totals: Totals) -> FigureResult:
        """The figures over everything added on every rank (a collective under DDP)."""


@dataclass
class EvaluationRecord:
    """The figures of one evaluation (or of a training/validation epoch, without per-image rows
    or further figures).

    Args:
        class_names: one name per class.
        summary: the scalar confusion figures (``SUMMARY_KEYS``), NaN where undefined.
        per_class: ``iou``, ``dice``, ``acc``: one value per class (NaN where undefined).
        confusion_matrix: ``(K, K)`` pixel counts as nested lists.
        names: every evaluated image's name, in dataset order (empty for an epoch's figures).
        counts: ``(N, 3, K)`` per-image counts.
        arrays: further per-image arrays (``bf``, ``boundary_counts``, ...), same row order.
        figures: each configured figure's result, by the figure's name, in config order.
    """

    class_names: list[str]
    summary: dict[str, float]
    per_class: dict[str, list[float]]
    confusion_matrix: list[list[int]]
    names: list[str] = field(default_factory=list)
    counts: np.ndarray = field(default_factory=lambda: np.zeros((0, 3, 0), dtype=np.int64))
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    figures: dict[str, FigureResult] = field(default_factory=dict)

    @classmethod
    def from_confusion(cls, values: Mapping[str, Tensor], class_names: Sequence[str]):
        """The record of :meth:`ConfusionMatrix.compute`'s output."""
        return cls(
            class_names=[str(n) for n in class_names],
            summary={k: float(values[k]) for k in SUMMARY_KEYS},
            per_class={k: values[k].tolist() for k in PER_CLASS_KEYS},
            confusion_matrix=values["confmat"].tolist(),
        )

    def logged(self) -> dict[str, float]:
        """Every scalar to log, without the split prefix: the summary figures, each class's IoU
        (``iou/<class>``, where defined) and the figures' own scalars."""
        out = dict(self.summary)
        out.update(
            {
                f"iou/{name}": v
                for name, v in zip(self.class_names, self.per_class["iou"])
                if not np.isnan(v)
            }
        )
        for result in self.figures.values():
            out.update({k: v for k, v in result.logged.items() if v is not None})
        return out

    def figure_record(self, name: str) -> dict | None:
        """The record of figure ``name`` (``None`` when it is not configured or computed
        nothing)."""
        result = self.figures.get(name)
        return None if result is None else result.record


FigureFactory = Callable[..., Figure]


class Evaluator(nn.Module):
    """Every figure of an evaluation, updated batch by batch and computed at the end.

    Args:
        num_classes: number of classes ``K``.
        ignore_index: label excluded from every figure.
        class_names: one name per class.
        figures: the figures besides the confusion and per-image ones: factories
            ``(num_classes=, ignore_index=, class_names=) -> Figure`` (the ``_partial_``
            entries of ``evaluation.figures`` and ``dataset.figures``) or built figures, by
            name, in the order their results are reported.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None,
        class_names: Sequence[str],
        figures: Mapping[str, FigureFactory | Figure] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.class_names = [str(n) for n in class_names]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        self.confusion = ConfusionMatrix(num_classes, ignore_index)
        self.per_image = PerImageRecorder()
        built = {}
        for name, factory in (figures or {}).items():
            figure = factory
            if not isinstance(factory, Figure):
                figure = factory(
                    num_classes=self.num_classes,
                    ignore_index=ignore_index,
                    class_names=self.class_names,
                )
            if not isinstance(figure, Figure):
                raise TypeError(
                    f"evaluation figure {name!r}: {factory!r} made {type(figure).__name__}, "
                    "not a segbench.metrics.Figure"
                )
            built[str(name)] = figure
        self.figures = nn.ModuleDict(built)
        # what the data says about the evaluated split (Totals.notes), set by the runner
        self.notes: dict[str, str | None] = {}

    def reset(self) -> None:
        """Forget every batch (before an evaluation)."""
        self.confusion.reset()
        self.per_image.reset()
        for figure in self.figures.values():
            figure.reset()

    @torch.no_grad()
    def update(self, scores: Tensor, target: Tensor, batch: Mapping) -> Tensor:
        """Add a batch: ``scores (B, K, H, W)``, ``target (B, H, W)`` and the loader's batch
        (its ``index`` and ``name`` identify the images). Returns the class map ``(B, H, W)``."""
        pred = class_map(scores)  # once: the confusion matrix and every figure share it
        self.confusion.update(pred, target)  # checks the labels
        counts = image_counts(pred, target, self.num_classes, self.ignore_index)
        seen = EvalBatch(scores=scores, pred=pred, target=target, batch=batch)
        arrays: dict[str, Tensor] = {}
        for name, figure in self.figures.items():
            for key, value in figure.update(seen).items():
                if key in arrays:
                    raise ValueError(f"figure {name!r}: per-image array {key!r} given twice")
                arrays[key] = value
        self.per_image.add(batch["index"], batch["name"], counts, arrays)
        return pred

    def compute(self, world_size: int = 1) -> EvaluationRecord:
        """The record of everything added on every rank (a collective when ``world_size > 1``:
        every rank must call it, and every rank gets the same record)."""
        record = EvaluationRecord.from_confusion(self.confusion.compute(), self.class_names)
        names, counts, arrays = self.per_image.gather_all(world_size)
        totals = Totals(
            confusion=np.asarray(record.confusion_matrix, dtype=np.int64),
            names=names,
            counts=counts,
            arrays=arrays,
            notes=dict(self.notes),
        )
        record.names, record.counts, record.arrays = names, counts, arrays
        record.figures = {name: figure.compute(totals) for name, figure in self.figures.items()}
        return record
