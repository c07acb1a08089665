"""``results.json``: the one file per run that leaderboards are built from (its schema:
docs/reference/results-json.md)."""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from segbench import __version__

if TYPE_CHECKING:  # torch stays unimported for the readers of results.json (leaderboards)
    from segbench.metrics.evaluator import EvaluationRecord

__all__ = [
    "RESULTS_FILE",
    "SCHEMA_VERSION",
    "RunFacts",
    "build_results",
    "format_table",
    "write_results",
]

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"


def _nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def git_state() -> dict:
    """Commit and dirty flag of the source tree segbench runs from (None outside git)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


@dataclass(frozen=True)
class RunFacts:
    """What ``results.json`` says about a run besides its figures.

    Args:
        kind: ``train`` or ``evaluate``.
        model, backbone, dataset: their names.
        split: the evaluated split.
        ignore_index: the label left out of every figure.
        num_images: images evaluated.
        params: the network's parameters.
        seed: the run's seed.
        config: the resolved run config.
        checkpoint: the weights evaluated.
        eval_mode: how predictions were made (``single-scale``, ``ms+flip``, ``+CRF`` ...).
        inference: the inference settings.
        gflops, flops_input_size: the network's GFLOPs at that input size ``[H, W]``.
        duration_s: the run's wall time.
        best_val_miou: the best validation mIoU of a training run.
        throughput: the evaluation's images per second, with how it was measured.
    """

    kind: str
    model: str
    backbone: str
    dataset: str
    split: str
    ignore_index: int | None
    num_images: int
    params: int
    seed: int
    config: dict
    checkpoint: str | None = None
    eval_mode: str = "single-scale"
    inference: dict | None = None
    gflops: float | None = None
    flops_input_size: list[int] | None = None
    duration_s: float | None = None
    best_val_miou: float | None = None
    throughput: dict | None = None


def build_results(
    evaluation: EvaluationRecord,
    run: RunFacts,
    per_image: dict | None = None,
    intervals: dict | None = None,
) -> dict:
    """The results record of ``evaluation`` (the evaluator's record) for ``run``: the
    confusion figures, then each figure's own entries (its ``metrics`` and top-level ones,
    :class:`~segbench.metrics.FigureResult`). ``per_image``: the summary of the per-image
    file; ``intervals``: the bootstrap intervals."""
    names = evaluation.class_names
    per_class = lambda key: {  # noqa: E731
        name: _nan_to_none(v) for name, v in zip(names, evaluation.per_class[key])
    }
    from segbench.metrics.evaluator import SUMMARY_KEYS

    metrics = {key: _nan_to_none(evaluation.summary[key]) for key in SUMMARY_KEYS}
    metrics.update(
        per_class_iou=per_class("iou"),
        per_class_dice=per_class("dice"),
        per_class_acc=per_class("acc"),
    )
    entries = {}
    for result in evaluation.figures.values():
        metrics.update(result.metrics)
        entries.update(result.entries)
    git = git_state()
    record = {
        "schema_version": SCHEMA_VERSION,
        "kind": run.kind,
        "model": run.model,
        "backbone": run.backbone,
        "dataset": run.dataset,
        "split": run.split,
        "eval_mode": run.eval_mode,
        "inference": run.inference,
        "classes": list(names),
        "num_classes": len(names),
        "ignore_index": run.ignore_index,
        "num_images": run.num_images,
        "metrics": metrics,
        # the figures' own entries where results.json has always had them (boundary after
        # metrics, calibration after the intervals); any other figure's at the end
        **{k: entries.pop(k) for k in ("boundary",) if k in entries},
        "per_image": per_image,
        "intervals": intervals,
        **{k: entries.pop(k) for k in ("calibration",) if k in entries},
        "best_val_mIoU": _nan_to_none(run.best_val_miou),
        "confusion_matrix": evaluation.confusion_matrix,
        "params": run.params,
        "gflops": None if run.gflops is None else round(run.gflops, 3),
        "flops_input_size": run.flops_input_size,
        "seed": run.seed,
        "created": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "duration_s": None if run.duration_s is None else round(run.duration_s, 2),
        "throughput": run.throughput,
        "checkpoint": run.checkpoint,
        "segbench_version": __version__,
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "config": run.config,
    }
    record.update(entries)  # the other figures' entries (cityscapes ...), after the rest
    return record


def write_results(directory: str | Path, results: dict) -> Path:
    """Write ``results.json`` in ``directory``; never overwrites an existing file."""
    path = Path(directory) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x", encoding="utf-8") as f:
            json.dump(results, f, indent=2, allow_nan=False)
            f.write("\n")
    except FileExistsError as err:
        raise FileExistsError(
            f"{path} already exists (an earlier run's results); segbench never overwrites it. "
            "Use a new output directory (hydra.run.dir=...)."
        ) from err
    return path


def format_table(results: dict, evaluation: EvaluationRecord | None = None) -> str:
    """A plain-text table of per-class IoU and the summary figures, in percent; with
    ``evaluation``, also its figures' per-class columns, summary rows and notes (BF, boundary
    IoU, Cityscapes' category mIoU and iIoU ...)."""
    m = results["metrics"]
    fmt = lambda v: "   -" if v is None else f"{100 * v:6.2f}"  # noqa: E731
    names = list(m["per_class_iou"])
    width = max(12, *(len(n) for n in names))
    title = (
        f"{results['model']} / {results['backbone']} on {results['dataset']} "
        f"({results['split']}, {results['num_images']} images, {results['eval_mode']})"
    )
    figures = list(evaluation.figures.values()) if evaluation is not None else []
    columns = {label: values for f in figures for label, values in f.columns.items()}
    header = f"{'class':<{width}}  {'IoU %':>6}  {'Dice %':>6}  {'Acc %':>6}"
    header += "".join(f"  {label:>6}" for label in columns)
    lines = [title, header]
    lines.append("-" * len(lines[-1]))
    for i, name in enumerate(names):
        line = (
            f"{name:<{width}}  {fmt(m['per_class_iou'][name])}  "
            f"{fmt(m['per_class_dice'][name])}  {fmt(m['per_class_acc'][name])}"
        )
        line += "".join(f"  {fmt(values[i])}" for values in columns.values())
        lines.append(line)
    lines.append("-" * len(lines[1]))
    summary = [
        ("mIoU", m.get("mIoU")),
        ("mDice", m.get("mDice")),
        ("mean acc", m.get("mean_acc")),
        ("pixel acc", m.get("pixel_acc")),
        ("fwIoU", m.get("fwIoU")),
    ]
    for label, value in summary:
        lines.append(f"{label:<{width}}  {fmt(value)}")
    for figure in figures:  # each figure's rows, then its notes
        lines += [f"{label:<{width}}  {fmt(value)}" for label, value in figure.rows]
        lines += figure.notes
    return "\n".join(lines)
