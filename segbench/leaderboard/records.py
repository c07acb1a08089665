"""Reading ``results.json`` files for leaderboards: where they are (run and multirun
directories, files, globs) and whether each is a usable row; a broken or partial file is
reported by path and skipped, never fatal."""

from __future__ import annotations

import glob
import json
import math
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from segbench.results import RESULTS_FILE

__all__ = [
    "REQUIRED",
    "SCORES",
    "accept",
    "check_record",
    "collect",
    "is_number",
    "parse_date",
    "throughput",
]

# fractions in [0, 1]; the last three on Cityscapes only
SCORES = (
    *("mIoU", "pixel_acc", "mean_acc", "fwIoU", "mDice", "bf", "boundary_iou"),
    *("iIoU", "category_mIoU", "category_iIoU"),
)
REQUIRED = ("model", "backbone", "dataset", "split", "classes", "metrics")


def is_number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (a bool is not a number here).

    Args:
        value: a parsed JSON value.
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fraction_problem(name: str, value: Any, optional: bool) -> list[str]:
    if (value is None and optional) or (is_number(value) and 0.0 <= value <= 1.0):
        return []
    return [f"{name} must be a number in [0, 1]{' or null' if optional else ''}, got {value!r}"]


def parse_date(text: str) -> datetime:
    """An ISO 8601 time (``Z`` allowed) as an aware datetime; UTC when it names no zone.

    Args:
        text: the record's ``created``.

    Raises:
        ValueError: ``text`` is not an ISO 8601 time.
    """
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def throughput(record: dict) -> Any:
    """Images/s: ``throughput`` as a number or ``{"images_per_s": number}``.

    Args:
        record: a parsed ``results.json``.
    """
    value = record.get("throughput")
    return value.get("images_per_s") if isinstance(value, dict) else value


_OPTIONAL = (  # key, test, what is expected (null is always accepted)
    ("eval_mode", lambda v: isinstance(v, str), "a string"),
    ("kind", lambda v: isinstance(v, str), "a string"),
    ("seed", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    ("params", lambda v: is_number(v) and v >= 0, "a number >= 0"),
    ("gflops", lambda v: is_number(v) and v >= 0, "a number >= 0"),
    ("config", lambda v: isinstance(v, dict), "an object"),
    ("per_image", lambda v: isinstance(v, dict), "an object"),
    ("intervals", lambda v: isinstance(v, dict), "an object"),
    ("calibration", lambda v: isinstance(v, dict), "an object"),
    ("created", lambda v: isinstance(v, str), "an ISO 8601 time"),
)


def check_record(record: Any) -> list[str]:
    """What makes ``record`` unusable as a leaderboard row; an empty list when it is valid.

    Args:
        record: a parsed ``results.json``.
    """
    if not isinstance(record, dict):
        return [f"expected a JSON object, got {type(record).__name__}"]
    metrics = record.get("metrics")
    missing = [k for k in REQUIRED if k not in record]
    if isinstance(metrics, dict):
        missing += [f"metrics.{k}" for k in ("mIoU", "per_class_iou") if k not in metrics]
    if missing:
        return [f"missing keys: {', '.join(missing)}"]
    problems = [
        f"{k} must be a non-empty string, got {record[k]!r}"
        for k in ("model", "backbone", "dataset", "split")
        if not isinstance(record[k], str) or not record[k]
    ]
    classes = record["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        problems.append(f"classes must be a non-empty list of names, got {classes!r}")
        classes = None
    elif len(set(classes)) != len(classes):
        problems.append(f"classes has duplicate names: {classes}")
    elif record.get("num_classes", len(classes)) != len(classes):
        problems.append(f"num_classes is {record['num_classes']!r} but classes has {len(classes)}")
    if not isinstance(metrics, dict):
        return [*problems, f"metrics must be an object, got {type(metrics).__name__}"]
    for key in SCORES:
        if key in metrics:
            problems += _fraction_problem(f"metrics.{key}", metrics[key], key != "mIoU")
    per_class = metrics["per_class_iou"]
    if not isinstance(per_class, dict):
        problems.append(f"metrics.per_class_iou must be an object, got {per_class!r}")
    elif classes:
        lacking = [c for c in classes if c not in per_class]
        extra = [c for c in per_class if c not in classes]
        if lacking or extra:
            problems.append(
                "metrics.per_class_iou keys do not match classes"
                + (f"; missing {lacking}" if lacking else "")
                + (f"; not in classes {extra}" if extra else "")
            )
        for name, value in per_class.items():
            problems += _fraction_problem(f"metrics.per_class_iou[{name!r}]", value, True)
    for key, ok, expected in _OPTIONAL:
        if record.get(key) is not None and not ok(record[key]):
            problems.append(f"{key} must be {expected} or null, got {record[key]!r}")
    value = throughput(record)
    if value is not None and not (is_number(value) and value >= 0):
        problems.append(f"throughput must be images/s (a number >= 0) or null, got {value!r}")
    if isinstance(record.get("created"), str):
        try:
            parse_date(record["created"])
        except ValueError:
            problems.append(f"created must be an ISO 8601 time, got {record['created']!r}")
    return problems


def _files_under(path: Path, from_glob: bool) -> list[Path]:
    if path.is_dir():
        return sorted(path.rglob(RESULTS_FILE))
    if path.is_file() and (not from_glob or path.name == RESULTS_FILE):
        return [path]
    return []


def collect(paths: Sequence[str | Path] | str | Path) -> tuple[list[dict], list[str]]:
    """Every ``results.json`` under run dirs, multirun dirs, files or globs, parsed and checked.

    Args:
        paths: directories (searched recursively), files (any name when named explicitly) and
            glob patterns (``**`` allowed; files they match must be named ``results.json``).

    Returns:
        ``(records, problems)``: the valid records in path order, each with its file under
        ``"_source"``; one message per broken, partial or unreadable file (named by path and
        skipped) and per path that holds no results.
    """
    problems: list[str] = []
    files: dict[Path, Path] = {}  # resolved -> as found, in order
    for given in [paths] if isinstance(paths, (str, Path)) else paths:
        text = str(given)
        if re.search(r"[*?[]", text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            found = [f for m in matches for f in _files_under(m, from_glob=True)]
        elif not Path(text).exists():
            problems.append(f"{text}: no such file or directory")
            continue
        else:
            found = _files_under(Path(text), from_glob=False)
        if not found:
            problems.append(f"{text}: no {RESULTS_FILE} found")
        for path in found:
            files.setdefault(path.resolve(), path)
    records = []
    for path in files.values():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            problems.append(f"{path}: skipped: not valid JSON ({err})")
            continue
        except (OSError, UnicodeDecodeError) as err:
            problems.append(f"{path}: skipped: cannot be read ({err})")
            continue
        accept(record, str(path), records, problems)
    return records, problems


def accept(record: Any, source: str, records: list[dict], problems: list[str]) -> None:
    """Append ``record`` (tagged with its ``source``) to ``records`` if :func:`check_record`
    finds nothing, else a message naming ``source`` to ``problems``."""
    found = check_record(record)
    if found:
        problems.append(f"{source}: skipped: {'; '.join(found)}")
    else:
        records.append({**record, "_source": source})
