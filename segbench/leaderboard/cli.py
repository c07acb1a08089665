"""``segbench leaderboard PATHS...``: the leaderboards of ``results.json`` files (or of a W&B
project's runs), printed as Markdown and written as Markdown, CSV, LaTeX and HTML, by default
to ``outputs/leaderboards/leaderboard_<dataset>_<split>.<ext>``; an existing file is replaced
only with ``--overwrite``.

The ``segbench`` console command hands its ``leaderboard`` verb's arguments to :func:`main`;
``python -m segbench.leaderboard.cli`` runs it too.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from segbench.leaderboard.build import DEFAULT_METRICS, METRIC_CHOICES, PRESETS
from segbench.leaderboard.pipeline import publish
from segbench.leaderboard.render import FORMATS, to_markdown
from segbench.leaderboard.uncertainty import SPREADS
from segbench.results import RESULTS_FILE

__all__ = ["DEFAULT_OUT", "main"]

# where the tables go without --out (a sweep writes its own into its multirun directory)
DEFAULT_OUT = Path("outputs") / "leaderboards"


def _csv_list(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segbench leaderboard",
        description="Per-class IoU leaderboards (Markdown, CSV, LaTeX, HTML) from results.json "
        "files: one table per dataset and split; runs differing only by seed merged.",
    )
    add = parser.add_argument
    add("paths", nargs="*", help="run or multirun directories, results.json files, globs")
    add("--out", default=str(DEFAULT_OUT), help="output directory of the "
        "leaderboard_<dataset>_<split>.<ext> files (default: %(default)s)")  # fmt: skip
    add("--overwrite", action="store_true", help="replace files that exist (refused without)")
    add("--format", default=",".join(FORMATS), help="comma-separated: md,csv,tex,html")
    add("--metrics", default=",".join(DEFAULT_METRICS), help=f"of {','.join(METRIC_CHOICES)}")
    add("--classes", help="only these class columns (comma-separated; with --preset: add "
        "them)")  # fmt: skip
    add("--preset", choices=sorted(PRESETS), help="a paper's layout: segnet = G (global "
        "accuracy), C (class average accuracy), mIoU, BF, as SegNet reports CamVid; cityscapes "
        "= IoU and iIoU of classes and categories, as the benchmark reports them")  # fmt: skip
    add("--dataset", help="only these datasets (comma-separated)")
    add("--fraction", action="store_true", help="scores as fractions of 1, not percent")
    add("--no-merge", action="store_true", help="one row per run, not merged over seeds")
    add(
        "--spread",
        choices=SPREADS,
        default="std",
        help="after each mean: std (± sample std "
        "over seeds) or ci (95 %% bootstrap interval over images, from per-image counts)",
    )
    add(
        "--alpha",
        type=float,
        default=0.05,
        help="mark with † the rows whose mIoU is not "
        "significantly below the best row's (paired sign-flip test, Holm; default %(default)s)",
    )
    add("--no-significance", action="store_true", help="do not test rows against the best")
    add("--wandb", action="store_true", help="also log each table as a wandb.Table (project "
        "$WANDB_PROJECT or segbench; offline without a W&B key)")  # fmt: skip
    add("--wandb-project", metavar="ENTITY/PROJECT",
        help="build from a W&B project's finished runs instead of files (online)")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    """``segbench leaderboard``: print and write the tables.

    Args:
        argv: the arguments after ``segbench leaderboard`` (``sys.argv[1:]`` when None).

    Returns:
        0 when tables were written, 1 when no valid results were found, 2 when an option or
        the input was refused (unknown format, metric or class; W&B runs that cannot be read;
        files that exist, without ``--overwrite``).

    Raises:
        SystemExit: from argparse: 0 after ``--help``, 2 on a usage error.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.paths) == bool(args.wandb_project):
        parser.error("give either PATHS or --wandb-project")
    out = Path(args.out)
    metrics = _csv_list(args.metrics)
    if args.preset:  # the preset's columns; --classes adds the class columns
        metrics = ["classes"] if args.classes else []
    try:
        outcome = publish(
            args.paths,
            out,
            _csv_list(args.format),
            wandb_project=args.wandb_project,
            datasets=_csv_list(args.dataset),
            metrics=metrics,
            classes=_csv_list(args.classes),
            percent=not args.fraction,
            merge_seeds=not args.no_merge,
            spread=args.spread,
            alpha=None if args.no_significance else args.alpha,
            write_empty=False,
            preset=args.preset,
            overwrite=args.overwrite,
        )
    except FileExistsError as err:  # nothing written
        print(f"error: {err}", file=sys.stderr)
        return 2
    if outcome.error is not None:
        print(f"error: {outcome.error}", file=sys.stderr)
        return 2
    if not outcome.boards:
        where = args.wandb_project or " ".join(args.paths)
        print(f"error: no valid {RESULTS_FILE} in {where}", file=sys.stderr)
        return 1
    print("\n".join(to_markdown(b) for b in outcome.boards))
    print("written: " + ", ".join(str(p) for p in outcome.written))
    if args.wandb:
        from segbench.leaderboard.wandb_io import log_to_wandb

        project = os.environ.get("WANDB_PROJECT", "segbench")
        print(f"W&B run: {log_to_wandb(outcome.boards, project=project, out_dir=out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
