"""``results.json``: the one file per run that leaderboards are built from (schema in README)."""

from __future__ import annotations

import json
import math
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from segbench import __version__

__all__ = ["SCHEMA_VERSION", "RESULTS_FILE", "build_results", "format_table", "write_results"]

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


def build_results(
    *,
    kind: str,
    model: str,
    backbone: str,
    dataset: str,
    split: str,
    class_names: list[str],
    ignore_index: int,
    figures: dict,
    params: int,
    seed: int,
    gflops: float | None = None,
    flops_input_size: list[int] | None = None,
    config: dict,
    checkpoint: str | None,
    num_images: int,
    eval_mode: str = "single-scale",
    inference: dict | None = None,
    duration_s: float | None = None,
    best_val_miou: float | None = None,
    throughput: dict | None = None,
    per_image: dict | None = None,
    intervals: dict | None = None,
    calibration: dict | None = None,
    instance_note: str | None = None,
) -> dict:
    """Assemble the results record. ``figures`` is ``SegmentationTask.results[split]`` (its
    ``boundary`` entry, when the evaluation computed the boundary figures, gives ``bf``,
    ``boundary_iou`` and their per-class values)."""
    per_class = lambda key: {  # noqa: E731
        name: _nan_to_none(v) for name, v in zip(class_names, figures[key])
    }
    edges = figures.get("boundary")
    if edges is None:
        boundary = {"computed": False, "why": "boundary.enabled=false: not computed"}
        edges = {"bf_per_class": [None] * len(class_names)}
        edges["boundary_iou_per_class"] = edges["bf_per_class"]
    else:
        boundary = {
            "computed": True,
            "bf_tolerance": edges["bf_tolerance"],
            "iou_dilation": edges["iou_dilation"],
            "bf_images": edges["bf_images"],
        }
    git = git_state()
    record = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "model": model,
        "backbone": backbone,
        "dataset": dataset,
        "split": split,
        "eval_mode": eval_mode,
        "inference": inference,
        "classes": list(class_names),
        "num_classes": len(class_names),
        "ignore_index": ignore_index,
        "num_images": num_images,
        "metrics": {
            "mIoU": _nan_to_none(figures["mIoU"]),
            "pixel_acc": _nan_to_none(figures["pixel_acc"]),
            "mean_acc": _nan_to_none(figures["mean_acc"]),
            "fwIoU": _nan_to_none(figures["fwIoU"]),
            "mDice": _nan_to_none(figures["mDice"]),
            "per_class_iou": per_class("iou"),
            "per_class_dice": per_class("dice"),
            "per_class_acc": per_class("acc"),
            "bf": edges.get("bf"),
            "boundary_iou": edges.get("boundary_iou"),
            "per_class_bf": dict(zip(class_names, edges["bf_per_class"])),
            "per_class_boundary_iou": dict(zip(class_names, edges["boundary_iou_per_class"])),
        },
        "boundary": boundary,
        "per_image": per_image,
        "intervals": intervals,
        "calibration": calibration,
        "best_val_mIoU": _nan_to_none(best_val_miou),
        "confusion_matrix": figures["confusion_matrix"],
        "params": params,
        "gflops": None if gflops is None else round(gflops, 3),
        "flops_input_size": flops_input_size,
        "seed": seed,
        "created": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "duration_s": None if duration_s is None else round(duration_s, 2),
        "throughput": throughput,
        "checkpoint": checkpoint,
        "segbench_version": __version__,
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "config": config,
    }
    city = figures.get("cityscapes")
    if city is not None:
        record["cityscapes"] = _cityscapes_record(city, instance_note)
        metrics = record["metrics"]
        metrics["category_mIoU"] = city["category_iou"]["mean"]
        iiou = city.get("iiou") or {}
        metrics["iIoU"] = iiou.get("mean")
        metrics["category_iIoU"] = iiou.get("category_mean")
    return record


def _cityscapes_record(city: dict, instance_note: str | None) -> dict:
    """``results.json``'s ``cityscapes`` entry: category IoU, and iIoU or why it is absent."""
    out = {
        "category_iou": city["category_iou"]["categories"],
        "category_mIoU": city["category_iou"]["mean"],
    }
    if "iiou" in city:
        out["iiou"] = {"computed": True, **city["iiou"]}
    else:
        why = instance_note or "the evaluated samples carried no instance ids"
        out["iiou"] = {"computed": False, "why": f"iIoU not computed: {why}"}
    return out


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


def format_table(results: dict) -> str:
    """A plain-text table of per-class IoU and the summary figures, in percent."""
    m = results["metrics"]
    fmt = lambda v: "   -" if v is None else f"{100 * v:6.2f}"  # noqa: E731
    names = list(m["per_class_iou"])
    width = max(12, *(len(n) for n in names))
    title = (
        f"{results['model']} / {results['backbone']} on {results['dataset']} "
        f"({results['split']}, {results['num_images']} images, {results['eval_mode']})"
    )
    bf = (results.get("boundary") or {}).get("computed", False)
    header = f"{'class':<{width}}  {'IoU %':>6}  {'Dice %':>6}  {'Acc %':>6}"
    lines = [title, header + (f"  {'BF %':>6}  {'bIoU %':>6}" if bf else "")]
    lines.append("-" * len(lines[-1]))
    for name in names:
        line = (
            f"{name:<{width}}  {fmt(m['per_class_iou'][name])}  "
            f"{fmt(m['per_class_dice'][name])}  {fmt(m['per_class_acc'][name])}"
        )
        if bf:
            line += f"  {fmt(m['per_class_bf'][name])}  {fmt(m['per_class_boundary_iou'][name])}"
        lines.append(line)
    lines.append("-" * len(lines[1]))
    summary = [
        ("mIoU", "mIoU"),
        ("mDice", "mDice"),
        ("mean_acc", "mean acc"),
        ("pixel_acc", "pixel acc"),
        ("fwIoU", "fwIoU"),
    ]
    if bf:
        summary += [("bf", "BF"), ("boundary_iou", "boundary IoU")]
    for key, label in summary:
        lines.append(f"{label:<{width}}  {fmt(m.get(key))}")
    if not bf and "boundary" in results:
        lines.append(f"BF, boundary IoU: {results['boundary'].get('why', 'not computed')}")
    city = results.get("cityscapes")
    if city is not None:
        lines.append(f"{'category mIoU':<{width}}  {fmt(city['category_mIoU'])}")
        iiou = city["iiou"]
        if iiou["computed"]:
            lines.append(f"{'iIoU':<{width}}  {fmt(iiou['mean'])}")
            lines.append(f"{'category iIoU':<{width}}  {fmt(iiou['category_mean'])}")
        else:
            lines.append(iiou["why"])
    return "\n".join(lines)
