"""``segbench repro-check RUN ...``: each run against the figures its configuration's source
published (``config.reference``, :mod:`segbench.reference`), within the stated tolerance.

Exit status: 0 when every compared figure is within its tolerance, 1 when one is not or when
no figure could be compared (no reference, or published on another split or dataset only), 2 when no
``results.json`` was found.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from segbench.leaderboard.records import collect
from segbench.reference import ReferenceBlockError, compare

__all__ = ["check_runs", "main"]

COMPARED = ("reproduced", "below", "above")


def check_runs(paths: list[str], tolerance: float | None = None) -> tuple[list[dict], list[str]]:
    """One entry per run found under ``paths``: its source, experiment, split and rows
    (:func:`segbench.reference.compare`); and the problems met reading them."""
    records, problems = collect(paths)
    runs = []
    for record in records:
        reference = (record.get("config") or {}).get("reference") or {}
        try:
            rows = compare(record, tolerance)
        except ReferenceBlockError as err:
            problems.append(f"{record['_source']}: {err}")
            continue
        runs.append(
            {
                "run": record["_source"],
                "experiment": reference.get("experiment"),
                "source": reference.get("source"),
                "model": record.get("model"),
                "backbone": record.get("backbone"),
                "dataset": record.get("dataset"),
                "split": record.get("split"),
                "eval_mode": record.get("eval_mode"),
                "rows": rows,
            }
        )
    return runs, problems


def _fmt(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


def _verdict(row: dict) -> str:
    if row["verdict"] == "other dataset":
        return f"other dataset ({row['dataset']})"
    return row["verdict"]


def format_runs(runs: list[dict]) -> str:
    """The runs' comparisons as Markdown tables, one per run."""
    out = []
    for run in runs:
        title = run["experiment"] or f"{run['model']} / {run['backbone']} on {run['dataset']}"
        out.append(f"## {title}")
        out.append(f"run: {run['run']} (split {run['split']}, {run['eval_mode']})")
        if run["source"]:
            out.append(f"source: {run['source']}")
        rows = run["rows"]
        if rows and rows[0]["verdict"] == "no reference":
            out += ["no reference: the run's configuration names no published figure", ""]
            continue
        out.append("")
        out.append("| metric | split | published | measured | Δ | tolerance | verdict | where |")
        out.append("|---|---|---:|---:|---:|---:|---|---|")
        for r in rows:
            out.append(
                f"| {r['metric']} | {r['split']} | {_fmt(r['published'])} | "
                f"{_fmt(r['measured'])} | {_fmt(r['delta'], sign=True)} | ±{r['tolerance']:g} | "
                f"{_verdict(r)} | {r['table']}; {r['protocol']} |"
            )
        out.append("")
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segbench repro-check",
        description="Compare runs with the figures their configuration's source published "
        "(the experiment's reference: block): measured vs published, within tolerance.",
    )
    parser.add_argument("paths", nargs="+", help="run directories, results.json files or globs")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="points of difference that count as reproduced (default: each reference's own)",
    )
    parser.add_argument("--out", default=None, help="also write the comparison as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.tolerance is not None and args.tolerance < 0:
        print(f"error: --tolerance must be >= 0, got {args.tolerance}", file=sys.stderr)
        return 2
    runs, problems = check_runs(args.paths, args.tolerance)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if not runs:
        print("error: no results.json to check under the given paths", file=sys.stderr)
        return 2
    print(format_runs(runs))
    rows = [r for run in runs for r in run["rows"]]
    compared = [r for r in rows if r["verdict"] in COMPARED]
    outside = [r for r in compared if r["verdict"] != "reproduced"]
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"runs": runs}, indent=2) + "\n", encoding="utf-8")
        print(f"written: {path}")
    if not compared:
        print("nothing compared: no published figure on the runs' splits and datasets")
        return 1
    print(
        f"{len(compared) - len(outside)} of {len(compared)} published figures reproduced "
        "within tolerance"
        + (f"; outside: {', '.join(r['metric'] for r in outside)}" if outside else "")
    )
    return 1 if outside else 0


if __name__ == "__main__":
    raise SystemExit(main())
