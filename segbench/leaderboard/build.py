"""Leaderboard tables from records: one per (dataset, class list, split), the runs of one
configuration merged over seeds, rows labelled and sorted by mIoU, columns chosen (the rules:
:mod:`segbench.leaderboard`)."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segbench.leaderboard.records import check_record
from segbench.leaderboard.table import Column, Leaderboard, Row

__all__ = [
    "DEFAULT_METRICS",
    "METRIC_CHOICES",
    "RUN_IDENTITY_KEYS",
    "LeaderboardWarning",
    "PRESETS",
    "build_tables",
    "check_names",
    "configuration",
    "configuration_key",
]

# column choices, in table order ("classes": one IoU column per class)
METRIC_CHOICES = (
    *("mIoU", "published", "classes", "pixel_acc", "mean_acc", "fwIoU", "mDice"),
    *("bf", "boundary_iou"),
    *("iIoU", "category_mIoU", "category_iIoU"),
    *("ece", "nll", "brier", "params", "gflops", "throughput", "eval_mode", "date"),
)
DEFAULT_METRICS = tuple(
    m
    for m in METRIC_CHOICES
    if m
    not in ("published", "fwIoU", "mDice", "bf", "boundary_iou")
    + ("iIoU", "category_mIoU", "category_iIoU")
)
# tables laid out as a paper prints them: the columns in this order, under these headers
# (``classes`` first when class columns are asked for)
PRESETS = {
    # SegNet (Badrinarayanan et al., TPAMI 2017), CamVid: global accuracy, class average
    # accuracy, mIoU, BF
    "segnet": (("pixel_acc", "G"), ("mean_acc", "C"), ("mIoU", "mIoU"), ("bf", "BF")),
    # the Cityscapes benchmark: IoU and iIoU of classes and of categories
    "cityscapes": (
        ("mIoU", "IoU class"),
        ("iIoU", "iIoU class"),
        ("category_mIoU", "IoU category"),
        ("category_iIoU", "iIoU category"),
    ),
}
# (key, header, kind) of the columns other than the classes'
COLUMNS = {
    "mIoU": ("mIoU", "score"),
    # the mIoU its source published on the run's split (config.reference, segbench/reference.py)
    "published": ("published mIoU", "published"),
    "pixel_acc": ("pixel acc", "score"),
    "mean_acc": ("mean acc", "score"),
    "fwIoU": ("fwIoU", "score"),
    "mDice": ("mDice", "score"),
    "bf": ("BF", "score"),
    "boundary_iou": ("boundary IoU", "score"),
    "iIoU": ("iIoU", "score"),
    "category_mIoU": ("category mIoU", "score"),
    "category_iIoU": ("category iIoU", "score"),
    "ece": ("ECE", "lower_score"),  # calibration: lower is better
    "nll": ("NLL", "lower"),
    "brier": ("Brier", "lower"),
    "params": ("params (M)", "params"),
    "gflops": ("GFLOPs", "gflops"),
    "throughput": ("images/s", "throughput"),
    "eval_mode": ("eval mode", "text"),
    "date": ("date", "text"),
}
# config keys (dotted) that name or log a run rather than configure what it trains
RUN_IDENTITY_KEYS = (
    *("seed", "output_dir", "run_name", "resume", "ckpt", "split", "data_root", "hydra"),
    *("callbacks", "logger", "bootstrap", "dataset.source.root", "dataset.num_workers"),
    *("trainer.enable_progress_bar", "trainer.log_every_n_steps", "dataset.cache", "fast"),
    "reference",  # the published figures of the configuration: the same for all its runs
)


class LeaderboardWarning(UserWarning):
    """A record that :func:`build_tables` skipped."""


# ---------------------------------------------------------------------------------- merging

_DROP = object()  # a config value that names the run itself
_UNSET = object()  # a config key that another row's config lacks


def _strip_identity(config: Any, own_paths: list[str], prefix: str = "") -> Any:
    """``config`` without :data:`RUN_IDENTITY_KEYS` and strings that hold the run's paths."""
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if f"{prefix}{key}" not in RUN_IDENTITY_KEYS:
                value = _strip_identity(value, own_paths, f"{prefix}{key}.")
                if value is not _DROP:
                    out[key] = value
        return out
    if isinstance(config, list):
        return [
            v for v in (_strip_identity(v, own_paths, prefix) for v in config) if v is not _DROP
        ]
    if isinstance(config, str) and any(
        config == p or config.startswith(p + "/") for p in own_paths
    ):
        return _DROP
    return config


def _identity_paths(record: dict) -> list[str]:
    config = record.get("config") or {}
    paths = [config.get("output_dir"), config.get("ckpt"), record.get("checkpoint")]
    if record.get("_source"):
        paths.append(str(Path(record["_source"]).parent))
    return [p.rstrip("/") for p in paths if isinstance(p, str) and p.strip("./")]


def configuration(record: dict) -> dict:
    """The record's ``config`` without what names the run (:data:`RUN_IDENTITY_KEYS`, its own
    paths): equal for runs of one configuration that differ only by seed."""
    return _strip_identity(record.get("config") or {}, _identity_paths(record))


def configuration_key(record: dict) -> tuple:
    """What a merged row has in common: model, backbone, eval mode and :func:`configuration`."""
    config = json.dumps(configuration(record), sort_keys=True, default=str)
    return (record["model"], record["backbone"], record.get("eval_mode"), config)


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _show(value: Any) -> str:
    if value is _UNSET:
        return "unset"
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 40 else text[:39] + "…"


def _set_variants(rows: list[Row], merged: bool) -> None:
    """Label rows that share model, backbone and eval mode with the fewest config keys (chosen
    greedily, ``kind`` first) that tell them apart; number them where nothing does."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault((row.model, row.backbone, row.eval_mode), []).append(row)
    for group in (g for g in groups.values() if len(g) > 1):
        flats = [{"kind": r.kind, **_flatten(r.config)} for r in group]
        if not merged:
            flats = [{**f, "seed": r.seed} for f, r in zip(flats, group)]
        keys = sorted(set().union(*flats))
        shown = [{k: _show(f.get(k, _UNSET)) for k in keys} for f in flats]
        differing = [k for k in keys if len({s[k] for s in shown}) > 1]

        def distinct(chosen: list[str], shown: list[dict] = shown) -> int:
            return len({tuple(s[k] for k in chosen) for s in shown})

        chosen: list[str] = []
        while differing and distinct(chosen) < len(group):
            pick = min(
                differing,
                key=lambda k: (-distinct([*chosen, k]), k != "kind", k.count("."), len(k), k),
            )
            chosen.append(pick)
            differing.remove(pick)
        unique = distinct(chosen) == len(group)
        for i, (row, s) in enumerate(zip(group, shown), 1):
            parts = [f"{k}={s[k]}" for k in chosen] + ([] if unique else [f"#{i}"])
            row.variant = ", ".join(parts)


def _rows(records: list[dict], merge: bool) -> tuple[list[Row], list[str]]:
    """One table's rows, sorted by mIoU, and warnings about runs merged twice."""
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for i, record in enumerate(records):
        key = configuration_key(record) if merge else (i,)
        groups.setdefault(key, []).append((record, configuration(record)))
    rows, notes = [], []
    for members in groups.values():
        records_, first = [r for r, _ in members], members[0][0]
        seen: dict[Any, str] = {}
        for r in records_:  # an evaluation's seed is not its weights': the checkpoint names them
            what = "checkpoint" if r.get("kind") == "evaluate" else "seed"
            ident = r.get(what)
            if ident is not None and ident in seen:
                notes.append(
                    f"{r.get('_source')} repeats {seen[ident]} (same configuration and {what} "
                    f"{ident}); both are counted in the row's n"
                )
            seen.setdefault(ident, str(r.get("_source")))
        rows.append(
            Row(
                model=first["model"],
                backbone=first["backbone"],
                eval_mode=first.get("eval_mode"),
                kind=first.get("kind"),
                config=members[0][1],
                records=records_,
            )
        )
    _set_variants(rows, merge)
    rows.sort(key=lambda r: (r.stats["mIoU"].mean is None, -(r.stats["mIoU"].mean or 0), r.method))
    return rows, notes


# ---------------------------------------------------------------------------------- tables


def check_names(kind: str, names: Sequence[str], allowed: Sequence[str]) -> list[str]:
    """``names`` as a list, when each is one of ``allowed``.

    Args:
        kind: what the names are (``metric``, ``format``), for the message.
        names: the names asked for.
        allowed: the names there are.

    Raises:
        ValueError: a name is not allowed (the message lists those that are).
    """
    unknown = [n for n in names if n not in allowed]
    if unknown:
        listed = ", ".join(map(repr, unknown))
        raise ValueError(f"unknown {kind} {listed}; choose from {', '.join(allowed)}")
    return list(names)


def _columns(
    metrics: Sequence[str],
    shown: list[str],
    rows: list[Row],
    merged: bool,
    preset: str | None = None,
) -> list:
    columns = [Column("method", "method", "text")]
    columns.append(Column("n", "n", "int") if merged else Column("seed", "seed", "int"))
    headers = dict(PRESETS[preset]) if preset else {}
    order = list(headers) if preset else [m for m in METRIC_CHOICES if m in metrics]
    if preset and "classes" in metrics:
        order.insert(0, "classes")
    for key in order:
        if key == "classes":
            columns += [Column(f"iou/{c}", c, "score") for c in shown]
        elif key in ("published", "ece", "nll", "brier", "params", "gflops", "throughput") and all(
            r.stats[key].mean is None for r in rows
        ):
            continue  # where measured: left out when no row has it
        elif key != "date" or any(r.date for r in rows):
            header, kind = COLUMNS[key]
            columns.append(Column(key, headers.get(key, header), kind))
    return columns


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-") or "unnamed"


def build_tables(
    records: list[dict],
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    classes: Sequence[str] | None = None,
    percent: bool = True,
    merge_seeds: bool = True,
    preset: str | None = None,
) -> list[Leaderboard]:
    """One leaderboard per (dataset, class list, split), rows merged over seeds.

    Args:
        records: parsed ``results.json`` records (from
            :func:`~segbench.leaderboard.records.collect`); an invalid one is skipped with a
            :class:`LeaderboardWarning` naming it.
        metrics: columns besides method and n, from :data:`METRIC_CHOICES` (in that order;
            ``classes`` is the per-class block). Params, GFLOPs, images/s and date are left out
            when no row has them.
        classes: show only these classes' columns (mIoU stays over all classes).
        percent: scores in percent (else fractions of 1).
        merge_seeds: merge runs that differ only by seed (else one row per record).
        preset: a paper's layout from :data:`PRESETS` (``segnet``: G, C, mIoU, BF): its
            columns, order and headers instead of ``metrics``' (``classes`` in ``metrics``
            still adds the class columns, first).

    Raises:
        ValueError: an unknown metric or preset, or a class that a table's dataset lacks (the
            message lists the dataset's classes).
    """
    metrics = check_names("metric", metrics, METRIC_CHOICES)
    if preset is not None:
        check_names("preset", [preset], list(PRESETS))
    tables: dict[tuple, list[dict]] = {}
    for i, record in enumerate(records):
        problems = check_record(record)
        if problems:
            source = record.get("_source", f"record {i}") if isinstance(record, dict) else i
            warnings.warn(f"{source}: skipped: {'; '.join(problems)}", LeaderboardWarning, 2)
            continue
        key = (record["dataset"], tuple(record["classes"]), record["split"])
        tables.setdefault(key, []).append(record)
    boards = []
    for (dataset, names, split), members in sorted(tables.items()):
        for name in classes or ():
            if name not in names:
                raise ValueError(
                    f"class {name!r} is not a class of dataset {dataset!r} ({split} split); "
                    f"its classes: {', '.join(names)}"
                )
        shown = [n for n in names if classes is None or n in classes]
        rows, notes = _rows(members, merge_seeds)
        name = base = f"leaderboard_{_slug(dataset)}_{_slug(split)}"
        while any(b.name == name for b in boards):  # the same dataset, another class list
            name = f"{base}_{sum(b.name.startswith(base) for b in boards) + 1}"
        boards.append(
            Leaderboard(
                dataset=dataset,
                split=split,
                classes=list(names),
                shown_classes=shown,
                columns=_columns(metrics, shown, rows, merge_seeds, preset),
                rows=rows,
                percent=percent,
                merged=merge_seeds,
                name=name,
                warnings=notes,
            )
        )
    return boards
