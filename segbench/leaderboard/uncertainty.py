"""What a leaderboard says about noise: bootstrap intervals over images instead of ± std, and a
paired test of every row against the best one (a ``†`` on the rows whose mIoU is not
significantly below the best's), both from the runs' per-image counts
(:mod:`segbench.leaderboard.paired`, :mod:`segbench.significance`).

Rows whose runs have no per-image counts (results written before segbench kept them, or read
from W&B), or that were evaluated on other images than the best row, are not tested; the
table's notes name them and say why.
"""

from __future__ import annotations

from segbench.leaderboard.paired import ComparisonError, RunSet, check_comparable, load_runs
from segbench.leaderboard.table import Leaderboard
from segbench.significance import bootstrap, holm, paired_comparison

__all__ = ["SPREADS", "annotate"]

SPREADS = ("std", "ci")


def _intervals(runs: RunSet, **options) -> dict[str, tuple[float, float]]:
    result = bootstrap(runs.counts, **options)
    out = {}
    for key, entry in result["metrics"].items():
        if entry["low"] is not None:
            out[key] = (entry["low"], entry["high"])
    for name, entry in zip(runs.classes, result["per_class_iou"]):
        if entry["low"] is not None:
            out[f"iou/{name}"] = (entry["low"], entry["high"])
    return out


def annotate(
    board: Leaderboard,
    *,
    spread: str = "std",
    alpha: float | None = 0.05,
    resamples: int = 1000,
    permutations: int = 10000,
    seed: int = 0,
    level: float = 0.95,
) -> None:
    """Add intervals (``spread="ci"``) and the test against the best row (``alpha`` not None)
    to ``board``'s rows, in place.

    Args:
        board: a table from :func:`~segbench.leaderboard.build.build_tables`, rows best first.
        spread: ``std`` (nothing to compute) or ``ci``: each row's figures get a percentile
            bootstrap interval over images (of the mean over the row's runs).
        alpha: significance level of the paired sign-flip test of each row against the best
            row, Holm-corrected over the rows tested; None: no test.
        resamples, permutations, seed, level: of the bootstrap and the test.

    Raises:
        ValueError: an unknown ``spread`` or an ``alpha`` outside (0, 1).
    """
    if spread not in SPREADS:
        raise ValueError(f"unknown spread {spread!r}; choose from {', '.join(SPREADS)}")
    if alpha is not None and not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    board.spread = spread
    if spread == "std" and (alpha is None or len(board.rows) < 2):
        return
    runs: dict[int, RunSet] = {}
    untested: dict[str, str] = {}
    for i, row in enumerate(board.rows):
        try:
            runs[i] = load_runs(row.records, row.method, same_configuration=False)
        except ComparisonError as err:
            untested[row.method] = str(err)
    if spread == "ci":
        options = dict(resamples=resamples, seed=seed, level=level)
        board.interval = {"method": "percentile bootstrap over images", **options}
        for i, row_runs in runs.items():
            board.rows[i].intervals = _intervals(row_runs, **options)
    if alpha is None or len(board.rows) < 2:
        return
    best = board.rows[0]
    tested: list[int] = []
    pvalues: list[float] = []
    if 0 in runs:
        for i in range(1, len(board.rows)):
            if i not in runs:
                continue
            try:
                check_comparable(runs[0], runs[i])
            except ComparisonError as err:
                untested[board.rows[i].method] = str(err)
                continue
            result = paired_comparison(
                runs[0].counts,
                runs[i].counts,
                resamples=1,  # only the p-value is used
                permutations=permutations,
                seed=seed,
                level=level,
            )
            tested.append(i)
            pvalues.append(result["metrics"]["mIoU"]["p"])
    else:
        reason = f"the best row ({best.method}) has no per-image counts"
        untested = {row.method: untested.get(row.method, reason) for row in board.rows[1:]}
    for i, p in zip(tested, holm(pvalues)):
        board.rows[i].p_vs_best = p
        board.rows[i].tied_with_best = p >= alpha
    board.significance = {
        "test": "two-sided paired sign-flip (approximate randomization) test over the images",
        "alpha": alpha,
        "permutations": permutations,
        "seed": seed,
        "correction": f"Holm over the {len(tested)} row{'' if len(tested) == 1 else 's'} tested",
        "best": best.method + (f", {best.eval_mode}" if best.eval_mode else ""),
        "tested": len(tested),
        "untested": untested,
    }
