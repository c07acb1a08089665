"""From ``results.json`` files (or a W&B project) to leaderboard files, in one sequence:
collect the records, keep the wanted datasets, build the tables, report what was skipped on
stderr, write the files. :func:`publish` is that sequence, for the ``segbench leaderboard``
command (:mod:`segbench.leaderboard.cli`) and, through :func:`write_leaderboards`, for the sweep
callback (:mod:`segbench.leaderboard.sweep`)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segbench.leaderboard.build import (
    DEFAULT_METRICS,
    LeaderboardWarning,
    build_tables,
    check_names,
)
from segbench.leaderboard.records import collect
from segbench.leaderboard.render import FORMATS, RENDERERS
from segbench.leaderboard.table import Leaderboard
from segbench.leaderboard.uncertainty import annotate

__all__ = ["Outcome", "publish", "write_leaderboards", "write_tables"]


def write_tables(
    boards: Sequence[Leaderboard],
    out_dir: str | Path,
    formats: Sequence[str] = FORMATS,
    overwrite: bool = True,
) -> list[Path]:
    """Write each table to ``<out_dir>/<board.name>.<ext>``.

    Args:
        boards: the tables.
        out_dir: output directory, created when missing.
        formats: any of ``md``, ``csv``, ``tex``, ``html``.
        overwrite: replace existing files (the sweep's own tables, rewritten after each
            multirun); ``False``: raise :class:`FileExistsError` naming them, before writing any.
    """
    formats = check_names("format", formats, FORMATS)
    paths = [(Path(out_dir) / f"{b.name}.{fmt}", b, fmt) for b in boards for fmt in formats]
    existing = [str(path) for path, _, _ in paths if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{len(existing)} file(s) exist: {', '.join(existing)}; pass --overwrite to replace "
            "them, or --out DIR to write elsewhere"
        )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for path, board, fmt in paths:
        path.write_text(RENDERERS[fmt](board), encoding="utf-8")
    return [path for path, _, _ in paths]


@dataclass
class Outcome:
    """What :func:`publish` made.

    Args:
        boards: the tables (empty when no valid record was found).
        written: the files written.
        error: why the inputs were refused: an unknown format, metric or class, or W&B runs
            that cannot be read. Nothing was reported or written then.
    """

    boards: list[Leaderboard] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    error: ValueError | RuntimeError | None = None


def _tables(
    paths: Sequence[str | Path] | str | Path,
    wandb_project: str | None,
    datasets: Sequence[str] | None,
    spread: str = "std",
    alpha: float | None = 0.05,
    **options: Any,
) -> tuple[list[Leaderboard], list[str]]:
    """Collect, keep ``datasets``, build; the tables and every problem met on the way (files
    and records skipped, runs counted twice)."""
    if wandb_project:
        from segbench.leaderboard.wandb_io import records_from_wandb

        records, problems = records_from_wandb(wandb_project)
    else:
        records, problems = collect(paths)
    records = [r for r in records if datasets is None or r["dataset"] in datasets]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LeaderboardWarning)
        boards = build_tables(records, **options)
    for board in boards:
        annotate(board, spread=spread, alpha=alpha)
    problems += [str(w.message) for w in caught if issubclass(w.category, LeaderboardWarning)]
    problems += [note for board in boards for note in board.warnings]
    return boards, problems


def publish(
    paths: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    formats: Sequence[str] = FORMATS,
    *,
    wandb_project: str | None = None,
    datasets: Sequence[str] | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    classes: Sequence[str] | None = None,
    percent: bool = True,
    merge_seeds: bool = True,
    spread: str = "std",
    alpha: float | None = 0.05,
    write_empty: bool = True,
    preset: str | None = None,
    overwrite: bool = True,
) -> Outcome:
    """Collect, filter, build, warn, write: the leaderboards of ``paths`` (or of a W&B project)
    as files in ``out_dir``; each problem is printed to stderr as ``warning: ...``.

    Args:
        paths: run directories, multirun directories, ``results.json`` files or globs.
        out_dir: where ``leaderboard_<dataset>_<split>.<ext>`` go.
        formats: any of ``md``, ``csv``, ``tex``, ``html``.
        wandb_project: ``ENTITY/PROJECT``: read its finished W&B runs instead of ``paths``.
        datasets: keep only these datasets' records.
        metrics: as in :func:`~segbench.leaderboard.build.build_tables`.
        classes: as in :func:`~segbench.leaderboard.build.build_tables`.
        percent: as in :func:`~segbench.leaderboard.build.build_tables`.
        merge_seeds: as in :func:`~segbench.leaderboard.build.build_tables`.
        spread: ``std`` (mean ± std over seeds) or ``ci`` (bootstrap intervals over images),
            as in :func:`~segbench.leaderboard.uncertainty.annotate`.
        alpha: mark the rows not significantly below the best (paired test, this level);
            None: no test.
        write_empty: when there is no table, still call :func:`write_tables` (which creates
            ``out_dir``); else nothing is written then.
        preset: as in :func:`~segbench.leaderboard.build.build_tables`.
        overwrite: as in :func:`write_tables` (``False``: :class:`FileExistsError`).

    Returns:
        The tables and files; a refused input is returned as :attr:`Outcome.error`, not raised,
        so that a caller tells it apart from a failure to write.
    """
    try:
        formats = check_names("format", formats, FORMATS)
        options = dict(
            metrics=metrics,
            classes=classes,
            percent=percent,
            merge_seeds=merge_seeds,
            preset=preset,
        )
        boards, problems = _tables(
            paths, wandb_project, datasets, spread=spread, alpha=alpha, **options
        )
    except (ValueError, RuntimeError) as err:
        return Outcome(error=err)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if not boards and not write_empty:
        return Outcome(boards)
    return Outcome(boards, write_tables(boards, out_dir, formats, overwrite))


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
    spread: str = "std",
    alpha: float | None = 0.05,
) -> list[Path]:
    """Collect, build and write the leaderboards; problems are printed to stderr.

    Args:
        paths: run directories, multirun directories, ``results.json`` files or globs.
        out_dir: where ``leaderboard_<dataset>_<split>.<ext>`` go.
        formats: any of ``md``, ``csv``, ``tex``, ``html``.
        metrics: as in :func:`~segbench.leaderboard.build.build_tables`.
        classes: as in :func:`~segbench.leaderboard.build.build_tables`.
        percent: as in :func:`~segbench.leaderboard.build.build_tables`.
        merge_seeds: as in :func:`~segbench.leaderboard.build.build_tables`.
        datasets: keep only these datasets' records.
        spread: as in :func:`publish`.
        alpha: as in :func:`publish`.

    Returns:
        The written files; empty when no valid ``results.json`` was found.

    Raises:
        ValueError: an unknown format or metric, or a class a table's dataset lacks.
    """
    outcome = publish(
        paths,
        out_dir,
        formats,
        datasets=datasets,
        metrics=metrics,
        classes=classes,
        percent=percent,
        merge_seeds=merge_seeds,
        spread=spread,
        alpha=alpha,
    )
    if outcome.error is not None:
        raise outcome.error
    return outcome.written
