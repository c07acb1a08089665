"""Per-class IoU leaderboards from ``results.json`` files, laid out like the PASCAL VOC table.

``python -m segbench.leaderboard PATHS...`` (console script ``segbench-leaderboard``) reads every
``results.json`` beneath PATHS (run directories, multirun directories, files, or quoted globs,
``**`` allowed), prints the tables as Markdown and writes them as Markdown, CSV, LaTeX (booktabs)
and self-contained HTML (``segbench.leaderboard_formats``). The rules:

* Tables: one per (dataset, class list, split); a table never mixes datasets, label sets or
  splits (val and test figures are not comparable). Train and evaluate records are rows alike.
* Merging: records with the same model, backbone and ``eval_mode`` whose ``config`` is equal
  once run-identity keys are removed (:data:`RUN_IDENTITY_KEYS`, and any string holding the
  run's own directory or checkpoint path) are runs of one configuration that differ only by
  seed: one row, mean ± sample standard deviation (ddof=1) over its ``n`` runs.
* Method: ``model / backbone``; rows that would share it (and the eval mode) also get the
  config keys that tell them apart, e.g. ``fcn8s / resnet18 (optimizer.lr=0.05)``.
  An evaluation's identity is its checkpoint, not its seed: evaluations of the checkpoints of
  a seed sweep merge the same way. ``--no-merge``: one row per record.
* A class absent from a run (IoU ``null``) shows ``–`` and is left out of that class's mean;
  ``(k/n)`` after a figure: k of the row's n runs have it.
* Sorted by mIoU; the best value of each score column in bold. Broken or partial files are
  reported by path and skipped. Output files ``leaderboard_<dataset>_<split>.<ext>`` are
  derived artefacts and are overwritten.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segbench.leaderboard.records import check_record, collect
from segbench.leaderboard.table import Column, Leaderboard, Row, Stat
from segbench.results import RESULTS_FILE

__all__ = [
    "DEFAULT_METRICS",
    "FORMATS",
    "METRIC_CHOICES",
    "RUN_IDENTITY_KEYS",
    "Column",
    "Leaderboard",
    "LeaderboardWarning",
    "Row",
    "Stat",
    "build_tables",
    "check_record",
    "collect",
    "main",
    "write_leaderboards",
    "write_tables",
]

FORMATS = ("md", "csv", "tex", "html")
# column choices, in table order ("classes": one IoU column per class)
METRIC_CHOICES = (
    *("mIoU", "classes", "pixel_acc", "mean_acc", "fwIoU", "mDice"),
    *("params", "gflops", "throughput", "eval_mode", "date"),
)
DEFAULT_METRICS = tuple(m for m in METRIC_CHOICES if m not in ("fwIoU", "mDice"))
# (key, header, kind) of the columns other than the classes'
COLUMNS = {
    "mIoU": ("mIoU", "score"),
    "pixel_acc": ("pixel acc", "score"),
    "mean_acc": ("mean acc", "score"),
    "fwIoU": ("fwIoU", "score"),
    "mDice": ("mDice", "score"),
    "params": ("params (M)", "params"),
    "gflops": ("GFLOPs", "gflops"),
    "throughput": ("images/s", "throughput"),
    "eval_mode": ("eval mode", "text"),
    "date": ("date", "text"),
}
# config keys (dotted) that name or log a run rather than configure what it trains
RUN_IDENTITY_KEYS = (
    *("seed", "output_dir", "run_name", "resume", "ckpt", "split", "data_root", "hydra"),
    *("callbacks", "logger", "dataset.source.root", "dataset.num_workers"),
    *("trainer.enable_progress_bar", "trainer.log_every_n_steps"),
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
        config = _strip_identity(record.get("config") or {}, _identity_paths(record))
        key = (record["model"], record["backbone"], record.get("eval_mode"))
        key += (json.dumps(config, sort_keys=True, default=str) if merge else i,)
        groups.setdefault(key, []).append((record, config))
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


def _check_names(kind: str, names: Sequence[str], allowed: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in allowed]
    if unknown:
        listed = ", ".join(map(repr, unknown))
        raise ValueError(f"unknown {kind} {listed}; choose from {', '.join(allowed)}")
    return list(names)


def _columns(metrics: Sequence[str], shown: list[str], rows: list[Row], merged: bool) -> list:
    columns = [Column("method", "method", "text")]
    columns.append(Column("n", "n", "int") if merged else Column("seed", "seed", "int"))
    for key in (m for m in METRIC_CHOICES if m in metrics):
        if key == "classes":
            columns += [Column(f"iou/{c}", c, "score") for c in shown]
        elif key in ("params", "gflops", "throughput") and all(
            r.stats[key].mean is None for r in rows
        ):
            continue  # where measured: left out when no row has it
        elif key != "date" or any(r.date for r in rows):
            columns.append(Column(key, *COLUMNS[key]))
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
) -> list[Leaderboard]:
    """One leaderboard per (dataset, class list, split), rows merged over seeds.

    Args:
        records: parsed ``results.json`` records (from :func:`collect`); an invalid one is
            skipped with a :class:`LeaderboardWarning` naming it.
        metrics: columns besides method and n, from :data:`METRIC_CHOICES` (in that order;
            ``classes`` is the per-class block). Params, GFLOPs, images/s and date are left out
            when no row has them.
        classes: show only these classes' columns (mIoU stays over all classes).
        percent: scores in percent (else fractions of 1).
        merge_seeds: merge runs that differ only by seed (else one row per record).

    Raises:
        ValueError: an unknown metric, or a class that a table's dataset lacks (the message
            lists the dataset's classes).
    """
    metrics = _check_names("metric", metrics, METRIC_CHOICES)
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
                columns=_columns(metrics, shown, rows, merge_seeds),
                rows=rows,
                percent=percent,
                merged=merge_seeds,
                name=name,
                warnings=notes,
            )
        )
    return boards


# ---------------------------------------------------------------------------------- output


def write_tables(
    boards: Sequence[Leaderboard], out_dir: str | Path, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """Write each table to ``<out_dir>/<board.name>.<ext>``, overwriting (derived files).

    Args:
        boards: the tables.
        out_dir: output directory, created when missing.
        formats: any of ``md``, ``csv``, ``tex``, ``html``.
    """
    from segbench.leaderboard.render import RENDERERS

    formats = _check_names("format", formats, FORMATS)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    written = []
    for board in boards:
        for fmt in formats:
            path = Path(out_dir) / f"{board.name}.{fmt}"
            path.write_text(RENDERERS[fmt](board), encoding="utf-8")
            written.append(path)
    return written


def _build(records: list[dict], problems: list[str], **options: Any) -> list[Leaderboard]:
    """:func:`build_tables`, its skipped records and merge warnings appended to ``problems``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LeaderboardWarning)
        boards = build_tables(records, **options)
    problems += [str(w.message) for w in caught if issubclass(w.category, LeaderboardWarning)]
    problems += [note for board in boards for note in board.warnings]
    return boards


def write_leaderboards(
    paths: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    formats: Sequence[str] = FORMATS,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    classes: Sequence[str] | None = None,
    percent: bool = True,
    merge_seeds: bool = True,
    datasets: Sequence[str] | None = None,
) -> list[Path]:
    """Collect, build and write the leaderboards; problems are printed to stderr.

    Args:
        paths: run directories, multirun directories, ``results.json`` files or globs.
        out_dir: where ``leaderboard_<dataset>_<split>.<ext>`` go (overwritten).
        formats: any of ``md``, ``csv``, ``tex``, ``html``.
        metrics: as in :func:`build_tables`.
        classes: as in :func:`build_tables`.
        percent: as in :func:`build_tables`.
        merge_seeds: as in :func:`build_tables`.
        datasets: keep only these datasets' records.

    Returns:
        The written files; empty when no valid ``results.json`` was found.
    """
    _check_names("format", formats, FORMATS)
    records, problems = collect(paths)
    records = [r for r in records if datasets is None or r["dataset"] in datasets]
    options = dict(metrics=metrics, classes=classes, percent=percent, merge_seeds=merge_seeds)
    boards = _build(records, problems, **options)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return write_tables(boards, out_dir, formats)


# ---------------------------------------------------------------------------------- CLI


def _default_out(paths: Sequence[str]) -> Path:
    """The multirun directory when exactly one is given, else ``./leaderboards``."""
    if len(paths) == 1 and Path(paths[0]).is_dir():
        path = Path(paths[0])
        if (path / "multirun.yaml").exists() or any(path.glob(f"*/{RESULTS_FILE}")):
            return path
    return Path("leaderboards")


def _csv_list(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m segbench.leaderboard``; returns 0 when tables were written, 1 when no valid
    results were found, 2 on a usage error.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).
    """
    parser = argparse.ArgumentParser(
        prog="segbench-leaderboard",
        description="Per-class IoU leaderboards (Markdown, CSV, LaTeX, HTML) from results.json "
        "files: one table per dataset and split; runs differing only by seed merged.",
    )
    add = parser.add_argument
    add("paths", nargs="*", help="run or multirun directories, results.json files, globs")
    add("--out", help="output directory (default: the one multirun directory given, else "
        "./leaderboards); leaderboard files there are overwritten")  # fmt: skip
    add("--format", default=",".join(FORMATS), help="comma-separated: md,csv,tex,html")
    add("--metrics", default=",".join(DEFAULT_METRICS), help=f"of {','.join(METRIC_CHOICES)}")
    add("--classes", help="only these class columns (comma-separated)")
    add("--dataset", help="only these datasets (comma-separated)")
    add("--fraction", action="store_true", help="scores as fractions of 1, not percent")
    add("--no-merge", action="store_true", help="one row per run, not merged over seeds")
    add("--wandb", action="store_true", help="also log each table as a wandb.Table (project "
        "$WANDB_PROJECT or segbench; offline without a W&B key)")  # fmt: skip
    add("--wandb-project", metavar="ENTITY/PROJECT",
        help="build from a W&B project's finished runs instead of files (online)")  # fmt: skip
    args = parser.parse_args(argv)
    if bool(args.paths) == bool(args.wandb_project):
        parser.error("give either PATHS or --wandb-project")
    try:
        formats = _check_names("format", _csv_list(args.format), FORMATS)
        if args.wandb_project:
            from segbench.leaderboard.wandb_io import records_from_wandb

            records, problems = records_from_wandb(args.wandb_project)
        else:
            records, problems = collect(args.paths)
        wanted = _csv_list(args.dataset)
        records = [r for r in records if wanted is None or r["dataset"] in wanted]
        boards = _build(
            records,
            problems,
            metrics=_csv_list(args.metrics),
            classes=_csv_list(args.classes),
            percent=not args.fraction,
            merge_seeds=not args.no_merge,
        )
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if not boards:
        where = args.wandb_project or " ".join(args.paths)
        print(f"error: no valid {RESULTS_FILE} in {where}", file=sys.stderr)
        return 1
    from segbench.leaderboard.render import to_markdown
    from segbench.leaderboard.wandb_io import log_to_wandb

    out = Path(args.out) if args.out else _default_out(args.paths)
    written = write_tables(boards, out, formats)
    print("\n".join(to_markdown(b) for b in boards))
    print("written: " + ", ".join(str(p) for p in written))
    if args.wandb:
        project = os.environ.get("WANDB_PROJECT", "segbench")
        print(f"W&B run: {log_to_wandb(boards, project=project, out_dir=out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
