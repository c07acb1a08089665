"""The per-image counts behind leaderboard rows and comparisons: finding each run's
``per_image.npz``, checking it against its ``results.json``, and checking that two sides were
evaluated on the same images with the same classes before they are compared
(:mod:`segbench.significance` does the statistics)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbench.leaderboard.build import configuration_key

__all__ = ["ComparisonError", "RunSet", "check_comparable", "load_runs", "per_image_path"]


class ComparisonError(ValueError):
    """Runs that cannot be compared (or lack per-image counts); the message names them."""


def per_image_path(record: dict) -> Path | None:
    """Where a record's per-image file is: named in ``results.json`` (``per_image.file``),
    relative to it. None for a record without one (evaluated before segbench kept them) or
    without a file of its own (read from W&B)."""
    entry = record.get("per_image")
    source = record.get("_source")
    if not isinstance(entry, dict) or not entry.get("file") or not source:
        return None
    path = Path(str(source))
    if not path.is_file():  # a W&B run path
        return None
    return path.parent / str(entry["file"])


@dataclass
class RunSet:
    """The runs of one side of a comparison (the seeds of one configuration).

    Args:
        label: what the side was given as (a path), for messages and tables.
        records: the runs' ``results.json`` records.
        ids: the evaluated images, in dataset order (the same for every run).
        counts: ``(R, N, 3, K)`` per-image counts of the R runs.
    """

    label: str
    records: list[dict]
    ids: list[str]
    counts: np.ndarray

    @property
    def first(self) -> dict:
        return self.records[0]

    @property
    def classes(self) -> list[str]:
        return list(self.first["classes"])

    @property
    def method(self) -> str:
        """``model / backbone (eval mode)``."""
        r = self.first
        mode = r.get("eval_mode")
        return f"{r['model']} / {r['backbone']}" + (f" ({mode})" if mode else "")

    @property
    def seeds(self) -> list:
        return [r.get("seed") for r in self.records]

    @property
    def sources(self) -> list[str]:
        return [str(r.get("_source")) for r in self.records]


def _first_difference(a: Sequence[str], b: Sequence[str], name_a: str, name_b: str) -> str:
    """The first image where two id lists differ, naming the sides."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"image {i} is {x!r} in {name_a} but {y!r} in {name_b}"
    (longer, name), shorter = ((a, name_a), b) if len(a) > len(b) else ((b, name_b), a)
    return (
        f"{name_a} has {len(a)} images, {name_b} {len(b)}; the first not in both: "
        f"{longer[len(shorter)]!r} (in {name})"
    )


def _rerun_hint(record: dict) -> str:
    checkpoint = record.get("checkpoint")
    if checkpoint:
        return f"evaluate its checkpoint again: python evaluate.py ckpt={checkpoint}"
    return "evaluate its checkpoint again with evaluate.py"


def load_runs(records: Sequence[dict], label: str, *, same_configuration: bool = True) -> RunSet:
    """The per-image counts of ``records`` (runs of one configuration), checked.

    Args:
        records: parsed ``results.json`` records, each with ``_source``.
        label: what the user named them by (for messages).
        same_configuration: refuse records of different configurations (what a leaderboard
            would not merge into one row).

    Raises:
        ComparisonError: no records; a record without a per-image file (or a file that does
            not exist, is not one, or does not reproduce the record's mIoU); runs of different
            configurations, datasets, splits or classes; runs evaluated on different images.
    """
    from segbench.metrics.per_image import counts_digest, read_per_image

    if not records:
        raise ComparisonError(f"{label}: no results.json found")
    first = records[0]
    if same_configuration:
        keys = {configuration_key(r) for r in records}
        if len(keys) > 1:
            listed = "; ".join(str(r.get("_source")) for r in records)
            raise ComparisonError(
                f"{label}: holds runs of {len(keys)} configurations ({listed}); give the runs "
                "of one configuration (its seeds) per side"
            )
    ids: list[str] | None = None
    blocks = []
    for record in records:
        source = record.get("_source")
        for key in ("dataset", "split", "classes"):
            if record[key] != first[key]:
                raise ComparisonError(
                    f"{label}: {source} has {key} {record[key]!r} but {first.get('_source')} "
                    f"has {first[key]!r}"
                )
        path = per_image_path(record)
        if path is None and isinstance(record.get("per_image"), dict):
            raise ComparisonError(
                f"{source}: its per-image counts are not in a file here (a record read from "
                "W&B); give the run's directory instead"
            )
        if path is None:
            raise ComparisonError(
                f"{source}: no per-image counts (results.json names no per_image file: it was "
                f"written before segbench kept them); {_rerun_hint(record)}"
            )
        try:
            data = read_per_image(path)
        except (FileNotFoundError, ValueError) as err:
            raise ComparisonError(f"{source}: {err}") from err
        if data.classes != list(record["classes"]):
            raise ComparisonError(
                f"{path}: classes {data.classes} differ from its results.json's {record['classes']}"
            )
        digest = (record.get("per_image") or {}).get("digest")
        if digest is not None and counts_digest(data.ids, data.counts) != digest:
            raise ComparisonError(
                f"{path}: its ids and counts do not match the digest its results.json records "
                "(rows reordered or moved between images after the run wrote them); the file "
                f"no longer says which image each row is. {_rerun_hint(record)}"
            )
        miou = float(data.figures()["mIoU"])
        recorded = record["metrics"]["mIoU"]
        if recorded is None or math.isnan(miou) or abs(miou - recorded) > 1e-9:
            raise ComparisonError(
                f"{path}: its counts give mIoU {miou!r}, its results.json says {recorded!r}; "
                "the file does not belong to that run"
            )
        if ids is None:
            ids = data.ids
        elif data.ids != ids:
            where = _first_difference(ids, data.ids, str(first.get("_source")), str(source))
            raise ComparisonError(f"{label}: its runs were evaluated on different images: {where}")
        if blocks:
            _same_ground_truth(blocks[0], data.counts, ids, str(first.get("_source")), str(source))
        blocks.append(data.counts)
    return RunSet(label, list(records), list(ids or []), np.stack(blocks))


def _same_ground_truth(a: np.ndarray, b: np.ndarray, ids: list[str], name_a: str, name_b: str):
    """Refuse two runs' counts whose ground-truth pixels per class differ for an image: they
    belong to the image, whatever the model, so rows moved between images (or other labels)
    show there."""
    differs = np.flatnonzero((a[:, 1, :] != b[:, 1, :]).any(axis=1))
    if differs.size:
        i = int(differs[0])
        raise ComparisonError(
            f"{name_a} and {name_b} disagree on the ground truth of image {ids[i]!r} (pixels per "
            f"class {a[i, 1].tolist()} against {b[i, 1].tolist()}; {differs.size} images "
            "differ): their rows are not the same images' (a per-image file reordered after "
            "its run), or they were evaluated on different labels or at another resolution"
        )


def check_comparable(a: RunSet, b: RunSet) -> None:
    """Refuse two sides that were not evaluated on the same images with the same classes.

    Raises:
        ComparisonError: naming the dataset, split or class lists that differ, or the first
            differing image.
    """
    fa, fb = a.first, b.first
    for key in ("dataset", "split"):
        if fa[key] != fb[key]:
            raise ComparisonError(
                f"{a.label} is on {key} {fa[key]!r} but {b.label} on {fb[key]!r}; "
                "only runs evaluated on the same images compare"
            )
    if a.classes != b.classes:
        only_a = [c for c in a.classes if c not in b.classes]
        only_b = [c for c in b.classes if c not in a.classes]
        detail = (
            f"only in {a.label}: {only_a}; only in {b.label}: {only_b}"
            if only_a or only_b
            else "the same names in another order"
        )
        raise ComparisonError(f"{a.label} and {b.label} have different class lists ({detail})")
    if a.ids != b.ids:
        raise ComparisonError(
            f"{a.label} and {b.label} were not evaluated on the same images: "
            f"{_first_difference(a.ids, b.ids, a.label, b.label)}"
        )
    _same_ground_truth(a.counts[0], b.counts[0], a.ids, a.label, b.label)
