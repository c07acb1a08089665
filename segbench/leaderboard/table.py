"""The table model of a leaderboard: :class:`Leaderboard` (one table), its :class:`Column` s and
:class:`Row` s, and the :class:`Stat` (mean, std, count) of each figure of a row over its runs.
Building tables from records is :mod:`segbench.leaderboard.build`; showing them is
:mod:`segbench.leaderboard.render`."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

from segbench.leaderboard.records import SCORES, parse_date, throughput
from segbench.reference import published

__all__ = ["Column", "Leaderboard", "Row", "Stat"]


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof=1) of one figure over a row's runs.

    Args:
        mean: mean over the runs that have the figure (None when none has it).
        std: sample standard deviation (None when fewer than 2 runs have the figure).
        count: how many runs have the figure.
    """

    mean: float | None
    std: float | None
    count: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat:
        """The statistics of ``values``, leaving out None (absent) values."""
        present = [float(v) for v in values if v is not None]
        std = statistics.stdev(present) if len(present) > 1 else None
        return cls(statistics.fmean(present) if present else None, std, len(present))


@dataclass
class Row:
    """One row: the runs of one configuration (one run when not merging).

    Args:
        model: model name.
        backbone: backbone name.
        eval_mode: how predictions were made (``single-scale``, ``ms+flip``, ``+CRF`` ...).
        kind: ``train`` or ``evaluate`` (the first run's).
        config: the configuration without run-identity keys (what was merged on).
        records: the runs' records.
        variant: what tells the row from others with the same model and backbone.
    """

    model: str
    backbone: str
    eval_mode: str | None
    kind: str | None
    config: dict
    records: list[dict]
    variant: str = ""
    stats: dict[str, Stat] = field(default_factory=dict)  # raw fractions, counts, GFLOPs
    # bootstrap intervals over images of the score columns (``mIoU``, ``iou/<class>``, ...),
    # fractions, when the table shows intervals (:mod:`segbench.leaderboard.uncertainty`)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    # the paired test against the best row: its Holm-adjusted p-value, and whether the row's
    # mIoU is not significantly below the best's (None: not tested, or the best row itself)
    p_vs_best: float | None = None
    tied_with_best: bool | None = None

    def __post_init__(self) -> None:
        metrics = [r["metrics"] for r in self.records]
        self.stats.update({k: Stat.of(m.get(k) for m in metrics) for k in SCORES})
        for name in self.records[0]["classes"]:
            self.stats[f"iou/{name}"] = Stat.of(m["per_class_iou"][name] for m in metrics)
        for key in ("params", "gflops"):
            self.stats[key] = Stat.of(r.get(key) for r in self.records)
        self.stats["throughput"] = Stat.of(throughput(r) for r in self.records)
        values = {published(r) for r in self.records} - {None}  # one per configuration
        value = values.pop() if len(values) == 1 else None
        self.stats["published"] = Stat(None if value is None else value / 100.0, None, 1)
        for key in ("ece", "nll", "brier"):
            self.stats[key] = Stat.of((r.get("calibration") or {}).get(key) for r in self.records)

    @property
    def method(self) -> str:
        """``model / backbone (variant)``."""
        label = f"{self.model} / {self.backbone}"
        return f"{label} ({self.variant})" if self.variant else label

    @property
    def n(self) -> int:
        """Number of runs in the row."""
        return len(self.records)

    @property
    def seed(self) -> int | None:
        """The seed of the row's first run."""
        return self.records[0].get("seed")

    @property
    def date(self) -> str | None:
        """``YYYY-MM-DD`` of the latest run (as recorded, in its time zone)."""
        times = [parse_date(r["created"]) for r in self.records if r.get("created")]
        return max(times).date().isoformat() if times else None

    @property
    def sources(self) -> list[str]:
        """The runs' ``results.json`` paths (or W&B run paths)."""
        return [str(r.get("_source", "?")) for r in self.records]


@dataclass(frozen=True)
class Column:
    """One column.

    Args:
        key: ``method``, ``n``, ``seed``, a score (``mIoU`` ...), ``iou/<class>``, ``params``,
            ``gflops``, ``throughput``, ``eval_mode`` or ``date``.
        header: the heading in Markdown, LaTeX and HTML.
        kind: ``text``, ``int``, ``score`` (a fraction; best marked), ``lower_score`` (a
            fraction, lower is better: ECE), ``lower`` (lower is better: NLL, Brier),
            ``params``, ``gflops`` or ``throughput``.
    """

    key: str
    header: str
    kind: str

    @property
    def is_class(self) -> bool:
        """Whether the column is one class's IoU."""
        return self.key.startswith("iou/")

    @property
    def csv_name(self) -> str:
        """The column's name in CSV and W&B tables (before ``_mean`` / ``_std``)."""
        return f"iou_{self.key[4:]}" if self.is_class else self.key


@dataclass
class Leaderboard:
    """One table: the rows of one dataset, class list and split.

    Args:
        dataset: dataset name.
        split: evaluated split.
        classes: all the dataset's classes (mIoU is over all of them).
        shown_classes: the classes that have a column.
        columns: the columns in order.
        rows: the rows, best mIoU first.
        percent: scores shown in percent (else as fractions).
        merged: rows merged over seeds (else one row per run).
        name: file name stem, ``leaderboard_<dataset>_<split>``.
        warnings: runs counted twice in a merged row.
        spread: what follows a mean: ``std`` (± the sample std over the row's runs) or ``ci``
            (the bootstrap interval over images, ``[low, high]``).
        interval: how the intervals were computed (level, resamples, seed) when ``ci``.
        significance: how rows were tested against the best one (test, α, correction, rows
            not tested and why); None when they were not.
    """

    dataset: str
    split: str
    classes: list[str]
    shown_classes: list[str]
    columns: list[Column]
    rows: list[Row]
    percent: bool = True
    merged: bool = True
    name: str = ""
    warnings: list[str] = field(default_factory=list)
    spread: str = "std"
    interval: dict | None = None
    significance: dict | None = None

    @property
    def title(self) -> str:
        """``<dataset>, <split> split (<K> classes)``."""
        return f"{self.dataset}, {self.split} split ({len(self.classes)} classes)"
