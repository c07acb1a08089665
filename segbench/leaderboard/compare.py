"""``segbench compare A B``: is A better than B on the same images, or is the gap noise?

A and B are each a run directory, a ``results.json``, a directory of several runs (the seeds of
one configuration, e.g. a multirun of ``seed=0,1,2``) or a quoted glob. Both must have been
evaluated on the same images (same dataset, split, class list and image ids, checked from
their ``per_image.npz``). For mIoU, pixel accuracy, mean accuracy and every class's IoU it
reports Δ = A − B (each side's figure the mean over its runs), a 95 % interval of Δ from a
paired bootstrap over images, and a two-sided p-value from a paired sign-flip test over images;
the per-class p-values are also Holm-adjusted over the classes (:mod:`segbench.significance`).
It prints a table and writes the whole comparison as JSON, by default to
``outputs/compare/<A>_vs_<B>.json`` (each side named by its directory); an existing file is
replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from segbench.leaderboard.paired import ComparisonError, RunSet, check_comparable, load_runs
from segbench.leaderboard.records import collect
from segbench.significance import paired_comparison, spread

__all__ = ["compare", "default_out", "format_comparison", "main"]

# where the JSON goes without --out
OUT_DIR = Path("outputs") / "compare"
LABELS = {"mIoU": "mIoU", "pixel_acc": "pixel acc", "mean_acc": "mean acc"}


def _name(side: str) -> str:
    """A side as a file name: its run or multirun directory's name (a results.json: its run's;
    a glob: its directory's and the pattern, ``*`` read as ``all``: ``seeds-all``), only
    letters, digits and ``._-`` kept."""
    path = Path(side)
    if path.name == "results.json":
        path = path.parent
    parts = [p for p in path.parts if p not in ("", ".", "/")]
    wild = [i for i, p in enumerate(parts) if any(c in p for c in "*?[")]
    if wild:  # the directory holding the pattern, and the pattern
        parts = parts[max(0, wild[0] - 1) : wild[0] + 1]
    name = "-".join(parts[-2:] if wild else parts[-1:]).replace("*", "all") or "run"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def default_out(a: str, b: str) -> Path:
    """``outputs/compare/<A>_vs_<B>.json``."""
    return OUT_DIR / f"{_name(a)}_vs_{_name(b)}.json"


def _side(path: str) -> RunSet:
    records, problems = collect([path])
    if not records:
        raise ComparisonError("; ".join(problems) or f"{path}: no results.json found")
    if problems:  # a broken file among the runs would silently change the side's figure
        raise ComparisonError("; ".join(problems))
    return load_runs(records, path)


def compare(
    a: str,
    b: str,
    *,
    resamples: int = 1000,
    permutations: int = 10000,
    seed: int = 0,
    level: float = 0.95,
    alpha: float = 0.05,
) -> dict:
    """The comparison of the runs under ``a`` with those under ``b`` (JSON-ready).

    Raises:
        ComparisonError: a side cannot be read, or the sides were not evaluated on the same
            images with the same classes (the message names what differs).
    """
    side_a, side_b = _side(a), _side(b)
    check_comparable(side_a, side_b)
    result = paired_comparison(
        side_a.counts,
        side_b.counts,
        resamples=resamples,
        permutations=permutations,
        seed=seed,
        level=level,
        names=side_a.classes,
    )
    p = result["metrics"]["mIoU"]["p"]
    delta = result["metrics"]["mIoU"]["delta"]
    if p < alpha:
        verdict = f"{'A' if delta > 0 else 'B'} is better in mIoU (p = {p:.4g} < α = {alpha})"
    else:
        verdict = f"no significant difference in mIoU (p = {p:.4g} ≥ α = {alpha})"
    sides = {
        name: {
            "given": side.label,
            "method": side.method,
            "runs": side.sources,
            "seeds": side.seeds,
            # both sources of spread: between the side's seeds, and over images within a run
            "spread": spread(side.counts, resamples=resamples, seed=seed, level=level),
        }
        for name, side in (("a", side_a), ("b", side_b))
    }
    first = side_a.first
    return {
        **sides,
        "dataset": first["dataset"],
        "split": first["split"],
        "classes": side_a.classes,
        "alpha": alpha,
        "verdict": verdict,
        **result,
    }


def _pct(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:+.2f}" if sign else f"{100 * value:.2f}"


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def format_comparison(result: dict) -> str:
    """The comparison as a plain-text table (figures in percent)."""
    level = round(100 * result["level"])
    lines = [
        f"A: {result['a']['method']}  ({len(result['a']['runs'])} run(s), seeds "
        f"{result['a']['seeds']}: {result['a']['given']})",
        f"B: {result['b']['method']}  ({len(result['b']['runs'])} run(s), seeds "
        f"{result['b']['seeds']}: {result['b']['given']})",
        f"{result['dataset']}, {result['split']} split, {result['num_images']} images, "
        f"{len(result['classes'])} classes",
        "",
    ]
    for side in ("a", "b"):
        m = result[side]["spread"]["metrics"]["mIoU"]
        between = m["between_seeds_std"]
        lines.append(
            f"{side.upper()}: mIoU spread between seeds (std) "
            f"{'–' if between is None else f'{100 * between:.2f}'}, within a run over images "
            f"(bootstrap se, mean over runs) {100 * m['within_run_se']:.2f}"
        )
    lines.append("")
    names = [*LABELS.values(), *result["classes"]]
    width = max(12, *(len(n) for n in names))
    head = f"{'':<{width}}  {'A %':>7}  {'B %':>7}  {'Δ A−B':>7}  {f'{level} % CI of Δ':>17}  "
    lines += [head + f"{'p':>7}  {'p (Holm)':>8}", "-" * (len(head) + 17)]

    def row(name: str, r: dict, holm: bool) -> str:
        ci = f"[{_pct(r['low'], True)}, {_pct(r['high'], True)}]"
        text = (
            f"{name:<{width}}  {_pct(r['a']):>7}  {_pct(r['b']):>7}  {_pct(r['delta'], True):>7}"
            f"  {ci:>17}  {_p(r['p']):>7}"
        )
        return text + (f"  {_p(r.get('p_holm')):>8}" if holm else "")

    for key, label in LABELS.items():
        lines.append(row(label, result["metrics"][key], False))
    lines.append("-" * (len(head) + 17))
    for entry in result["per_class"]:
        lines.append(row(entry["name"], entry, True))
    lines += [
        "",
        f"Δ: A − B, each side the mean over its runs; CI: {result['bootstrap']}, "
        f"{result['resamples']} resamples; p: two-sided, {result['test']}, "
        f"{result['permutations']} permutations; per-class p adjusted by the "
        f"{result['correction']} method over the classes defined in both; seed {result['seed']}.",
        f"Verdict: {result['verdict']}.",
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segbench compare",
        description="Paired comparison of two configurations on the same images: Δ mIoU, "
        "pixel/mean accuracy and per-class IoU with bootstrap intervals and sign-flip p-values.",
    )
    add = parser.add_argument
    add("a", help="A: a run directory, results.json, directory of seeds, or quoted glob")
    add("b", help="B: the same for the other configuration")
    add("--out", help=f"JSON file written (default: {OUT_DIR}/<A>_vs_<B>.json)")
    add("--overwrite", action="store_true", help="replace the file if it exists (refused without)")
    add("--resamples", type=int, default=1000, help="bootstrap resamples (%(default)s)")
    add("--permutations", type=int, default=10000, help="sign-flip permutations (%(default)s)")
    add("--seed", type=int, default=0, help="seed of the resampling (%(default)s)")
    add("--level", type=float, default=0.95, help="interval level (%(default)s)")
    add("--alpha", type=float, default=0.05, help="significance level (%(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``segbench compare``: 0 when compared, 2 when the runs cannot be compared or the output
    file exists (without ``--overwrite``)."""
    args = _parser().parse_args(argv)
    out = Path(args.out) if args.out else default_out(args.a, args.b)
    if out.exists() and not args.overwrite:  # refused before the minutes of resampling
        print(
            f"error: {out} exists; pass --overwrite to replace it, or --out FILE to write "
            "elsewhere",
            file=sys.stderr,
        )
        return 2
    try:
        result = compare(
            args.a,
            args.b,
            resamples=args.resamples,
            permutations=args.permutations,
            seed=args.seed,
            level=args.level,
            alpha=args.alpha,
        )
    except ComparisonError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_comparison(result))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
