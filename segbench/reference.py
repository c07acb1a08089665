"""The published figures a configuration reproduces, and how far a run is from them.

An experiment that reproduces a paper or a model-zoo entry carries a ``reference:`` block
(``conf/experiment/*.yaml``)::

    reference:
      experiment: fcn8s_vgg16_1xb20-20k_voc_aug-500x500  # the file's name
      source: Long, Shelhamer & Darrell, Fully Convolutional Networks ..., CVPR 2015
      checked: how the figures were verified (read in the paper's table, a model zoo page ...)
      tolerance: 2.0       # points: |measured - published| <= tolerance counts as reproduced
      results:             # one entry per split the source reports
        - split: val
          metrics: {mIoU: 62.7, pixel_acc: 90.3, mean_acc: 75.9}   # in %, as printed
          table: Table 2 ...
          protocol: single scale, whole image, ...
          dataset: voc     # optional: the dataset it was measured on, when not the run's
      comparable: true     # false: the source's figures are not ones segbench computes

The block travels with the run config into ``results.json`` (training and evaluation runs),
changes nothing that is trained, and is read by ``segbench leaderboard --metrics published``
and ``segbench repro-check``. :func:`check_reference` refuses a malformed block before training,
naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = [
    "METRICS",
    "ReferenceBlockError",
    "check_reference",
    "compare",
    "published",
]

# results.json metric keys a reference may state (in %), with the names papers print
METRICS = {
    "mIoU": "mIoU",
    "pixel_acc": "G (global accuracy)",
    "mean_acc": "C (class average accuracy)",
    "bf": "BF",
    "fwIoU": "fwIoU",
    "mDice": "mDice",
    "iIoU": "iIoU",
    "category_mIoU": "category mIoU",
    "category_iIoU": "category iIoU",
    "boundary_iou": "boundary IoU",
}
_KEYS = {"experiment", "source", "checked", "tolerance", "results", "comparable", "notes", "needs"}
_RESULT_KEYS = {"split", "metrics", "table", "protocol"}
_OPTIONAL_RESULT_KEYS = {"dataset"}  # where the figure was measured, when it may not be the run's


class ReferenceBlockError(ValueError):
    """A ``reference:`` block that does not say what it must."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_reference(node: Mapping | None, where: str = "reference") -> dict | None:
    """``node`` (a ``reference:`` block, or ``None``) checked, as a plain dict.

    Raises:
        ReferenceBlockError: a key is unknown or missing, or a value is not what it must be; the
            message names the dotted key and says what was expected.
    """
    if node is None:
        return None
    if isinstance(node, DictConfig):  # as train.py gets it: plain containers from here on
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, Mapping):
        raise ReferenceBlockError(f"{where}: expected a mapping or null, got {node!r}")
    node = dict(node)
    unknown = sorted(set(node) - _KEYS)
    if unknown:
        raise ReferenceBlockError(
            f"{where}.{unknown[0]}: unknown key; a reference has {', '.join(sorted(_KEYS))}"
        )
    for key in ("experiment", "source", "checked"):  # checked: how the figures were verified
        if not isinstance(node.get(key), str) or not node[key].strip():
            raise ReferenceBlockError(f"{where}.{key}: expected a non-empty string")
    tolerance = node.get("tolerance")
    if not _number(tolerance) or tolerance < 0:
        raise ReferenceBlockError(
            f"{where}.tolerance: expected the points of difference (>= 0) that still count "
            f"as reproduced, got {tolerance!r}"
        )
    for key in ("notes", "needs"):
        if key in node and not isinstance(node[key], str):
            raise ReferenceBlockError(f"{where}.{key}: expected a string")
    if not isinstance(node.get("comparable", True), bool):
        raise ReferenceBlockError(f"{where}.comparable: expected true or false")
    results = node.get("results")
    if not isinstance(results, (list, tuple)) or not results:
        raise ReferenceBlockError(
            f"{where}.results: expected a non-empty list of published results"
        )
    checked = []
    for i, entry in enumerate(results):
        at = f"{where}.results[{i}]"
        if not isinstance(entry, Mapping):
            raise ReferenceBlockError(
                f"{at}: expected a mapping with {', '.join(sorted(_RESULT_KEYS))}"
            )
        entry = dict(entry)
        missing = sorted(_RESULT_KEYS - set(entry))
        extra = sorted(set(entry) - _RESULT_KEYS - _OPTIONAL_RESULT_KEYS)
        if missing or extra:
            key = (missing or extra)[0]
            what = "missing" if missing else "unknown key"
            raise ReferenceBlockError(
                f"{at}.{key}: {what}; a result has {', '.join(sorted(_RESULT_KEYS))} "
                f"(and optionally {', '.join(sorted(_OPTIONAL_RESULT_KEYS))})"
            )
        for key in ("split", "table", "protocol", *(k for k in ("dataset",) if k in entry)):
            if not isinstance(entry[key], str) or not entry[key].strip():
                raise ReferenceBlockError(f"{at}.{key}: expected a non-empty string")
        metrics = entry["metrics"]
        if not isinstance(metrics, Mapping) or not metrics:
            raise ReferenceBlockError(f"{at}.metrics: expected a mapping of metric: value in %")
        for name, value in metrics.items():
            if name not in METRICS:
                raise ReferenceBlockError(
                    f"{at}.metrics.{name}: unknown metric; expected one of {', '.join(METRICS)}"
                )
            if not _number(value) or not 0 <= value <= 100:
                raise ReferenceBlockError(
                    f"{at}.metrics.{name}: expected a percentage in [0, 100], got {value!r}"
                )
        checked.append({**entry, "metrics": dict(metrics)})
    return {**node, "results": checked}


def _reference(record: Mapping) -> dict | None:
    config = record.get("config") or {}
    return check_reference(config.get("reference"), "results.json config.reference")


def published(record: Mapping, metric: str = "mIoU") -> float | None:
    """The published ``metric`` (in %) for the split ``record`` was evaluated on, or ``None``
    (no reference, not comparable, or none on that split)."""
    ref = _reference(record)
    if ref is None or not ref.get("comparable", True):
        return None
    for entry in ref["results"]:
        if _same_data(entry, record) and metric in entry["metrics"]:
            return float(entry["metrics"][metric])
    return None


def _same_data(entry: Mapping, record: Mapping) -> bool:
    """Whether published result ``entry`` was measured on ``record``'s split (and dataset, when
    the entry names one: a published checkpoint's figure may be on data the run is not)."""
    if entry["split"] != record.get("split"):
        return False
    return "dataset" not in entry or entry["dataset"] == record.get("dataset")


def compare(record: Mapping, tolerance: float | None = None) -> list[dict]:
    """One row per published metric of ``record``'s reference: measured (%), published (%),
    their difference, the tolerance and a verdict.

    Verdicts: ``reproduced`` (|Δ| <= tolerance), ``below`` / ``above`` (outside it),
    ``other split`` (published on another split than the run's: not compared),
    ``other dataset`` (published on another dataset than the run's, such as torchvision's
    COCO-with-VOC-labels figures beside a VOC evaluation: not compared),
    ``not computed`` (the run has no such figure), ``not comparable`` (the source's measure is
    not one segbench computes), ``no reference``.
    """
    ref = _reference(record)
    if ref is None:
        return [{"metric": None, "verdict": "no reference"}]
    tol = float(ref["tolerance"] if tolerance is None else tolerance)
    split = record.get("split")
    measured_all = record.get("metrics") or {}
    rows = []
    for entry in ref["results"]:
        for metric, value in entry["metrics"].items():
            row = {
                "metric": metric,
                "split": entry["split"],
                "published": float(value),
                "table": entry["table"],
                "protocol": entry["protocol"],
                "tolerance": tol,
                "measured": None,
                "delta": None,
            }
            measured = measured_all.get(metric)
            if not ref.get("comparable", True):
                row["verdict"] = "not comparable"
            elif entry["split"] != split:
                row["verdict"] = "other split"
            elif not _same_data(entry, record):
                row["verdict"] = "other dataset"
                row["dataset"] = entry["dataset"]
            elif measured is None or not _number(measured):
                row["verdict"] = "not computed"
            else:
                row["measured"] = 100.0 * float(measured)
                row["delta"] = row["measured"] - row["published"]
                if abs(row["delta"]) <= tol + 1e-9:
                    row["verdict"] = "reproduced"
                else:
                    row["verdict"] = "below" if row["delta"] < 0 else "above"
            rows.append(row)
    return rows
