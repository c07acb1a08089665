"""Paired comparison of two configurations on the same images (bootstrap interval of the
difference, sign-flip test) and Holm's adjustment of per-class p-values
(:mod:`segbench.significance` states the conventions)."""

from __future__ import annotations

import operator
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from segbench.significance._resampling import (
    _CHUNK,
    _TOL,
    SCALAR_METRICS,
    _as_runs,
    _check_options,
    _figures,
    _float,
    _resampled,
    _statistic,
    _summary,
)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni step-down adjusted p-values.

    With the ``m`` defined p-values sorted ascending, ``p_(0) <= ... <= p_(m-1)``, the adjusted
    ``p_(i)`` is the running maximum of ``(m - j) * p_(j)`` over ``j <= i``, capped at 1;
    results are returned in the original order. ``None`` (or NaN) entries are not counted in
    ``m`` and come back as ``None``.
    """
    vals = [None if p is None or np.isnan(float(p)) else float(p) for p in pvalues]
    for p in vals:
        if p is not None and not 0.0 <= p <= 1.0:
            raise ValueError(f"p-values must lie in [0, 1], got {p}")
    idx = [i for i, p in enumerate(vals) if p is not None]
    m = len(idx)
    order = sorted(idx, key=lambda i: vals[i])  # stable: ties keep their original order
    out: list[float | None] = [None] * len(vals)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * vals[i]))
        out[i] = running
    return out


def paired_comparison(
    a: Any,
    b: Any,
    *,
    resamples: int = 1000,
    permutations: int = 10000,
    seed: int = 0,
    level: float = 0.95,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Compare configurations A and B evaluated on the same images.

    ``delta`` is ``statistic(A) - statistic(B)`` (mean over each side's runs of the
    dataset-level figure); its interval is a paired percentile bootstrap over images and its
    p-value a two-sided paired sign-flip test over images. The test's statistic is computed on
    each side's counts averaged over its runs: for one run per side it is exactly ``delta``, for
    several it is the difference of the run-averaged counts' figures (see the module docstring).
    Identical A and B give ``delta == 0`` exactly and ``p == 1``.

    Args:
        a: per-image counts of A, ``(Ra, N, 3, K)`` or ``(N, 3, K)``.
        b: per-image counts of B, ``(Rb, N, 3, K)`` or ``(N, 3, K)``; Ra and Rb may differ.
        resamples: bootstrap resamples for the intervals.
        permutations: sign-flip permutations for the p-values.
        seed: seeds both the bootstrap (``default_rng(seed)``) and the sign flips
            (``default_rng([seed, 1])``).
        level: confidence level of the intervals.
        names: K class names for ``per_class`` (default: class indices).

    Returns:
        ``{"test", "bootstrap", "permutations", "resamples", "seed", "level", "correction",
        "num_images", "runs": [Ra, Rb], "metrics": {"mIoU" | "pixel_acc" | "mean_acc": {"a",
        "b", "delta", "low", "high", "p"}}, "per_class": [{"name", "a", "b", "delta", "low",
        "high", "p", "p_holm"}, ...]}``, ``None`` where undefined. Per-class p-values are given,
        and Holm-adjusted, only for classes whose IoU is defined on both sides.

    Raises:
        ValueError: if A and B differ in the number of images or classes (naming both shapes),
            or on malformed counts or options.
    """
    _check_options(resamples, level, permutations, seed)
    shape_a, shape_b = tuple(np.shape(a)), tuple(np.shape(b))
    xa, xb = _as_runs(a, "a"), _as_runs(b, "b")
    ra, n, _, k = xa.shape
    rb, nb, _, kb = xb.shape
    if (n, k) != (nb, kb):
        raise ValueError(
            f"A and B must be evaluated on the same images and classes: a has shape {shape_a} "
            f"({n} images, {k} classes), b has shape {shape_b} ({nb} images, {kb} classes)"
        )
    if names is None:
        labels: list[Any] = list(range(k))
    else:
        labels = [str(name) for name in names]
        if len(labels) != k:
            raise ValueError(f"names has {len(labels)} entries for {k} classes")

    # ---- point estimates and paired bootstrap (same draws for both sides and all runs)
    fa, fb = xa.transpose(1, 0, 2, 3), xb.transpose(1, 0, 2, 3)  # (N, R, 3, K)
    both = np.concatenate([fa, fb], axis=1)  # (N, Ra + Rb, 3, K)

    def stats(sums: np.ndarray) -> dict[str, np.ndarray]:
        sa, sb = _statistic(sums[..., :ra, :, :]), _statistic(sums[..., ra:, :, :])
        out = {f"a_{key}": v for key, v in sa.items()}
        out.update({f"b_{key}": v for key, v in sb.items()})
        out.update({f"d_{key}": sa[key] - sb[key] for key in sa})
        return out

    obs = stats(both.sum(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        boot = _resampled(np.random.default_rng(seed), both, int(resamples), stats)

    # ---- paired sign-flip test on run-averaged counts
    mean_a, mean_b = xa.mean(0), xb.mean(0)  # (N, 3, K)
    diff = torch.from_numpy(np.ascontiguousarray((mean_b - mean_a).reshape(n, -1)))
    sum_a, sum_b = mean_a.sum(0), mean_b.sum(0)  # (3, K)

    def test_stat(sa: np.ndarray, sb: np.ndarray) -> dict[str, np.ndarray]:
        ga, gb = _figures(sa), _figures(sb)
        return {key: ga[key] - gb[key] for key in (*SCALAR_METRICS, "iou")}

    t_obs = test_stat(sum_a, sum_b)
    extreme = {key: np.zeros(np.shape(v), dtype=np.int64) for key, v in t_obs.items()}
    rng = np.random.default_rng([seed, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for start in range(0, int(permutations), _CHUNK):
            size = min(_CHUNK, int(permutations) - start)
            flips = torch.from_numpy(rng.integers(0, 2, size=(size, n)).astype(np.float64))
            moved = (flips @ diff).numpy().reshape(size, 3, k)
            t_star = test_stat(sum_a + moved, sum_b - moved)
            for key, t in t_star.items():
                hit = np.abs(t) >= np.abs(t_obs[key]) - _TOL
                extreme[key] += (hit | np.isnan(t)).sum(0)
    pvals = {key: (1.0 + c) / (1.0 + int(permutations)) for key, c in extreme.items()}

    # ---- assemble
    metrics = {}
    for name in SCALAR_METRICS:
        low, high, _ = _summary(boot[f"d_{name}"], level)
        defined = not (np.isnan(obs[f"a_{name}"]) or np.isnan(obs[f"b_{name}"]))
        metrics[name] = {
            "a": _float(obs[f"a_{name}"]),
            "b": _float(obs[f"b_{name}"]),
            "delta": _float(obs[f"d_{name}"]),
            "low": _float(low),
            "high": _float(high),
            "p": float(pvals[name]) if defined else None,
        }
    low, high, _ = _summary(boot["d_iou"], level)
    defined_c = ~(np.isnan(obs["a_iou"]) | np.isnan(obs["b_iou"]))
    p_class = [float(pvals["iou"][c]) if defined_c[c] else None for c in range(k)]
    p_holm = holm(p_class)
    per_class = [
        {
            "name": labels[c],
            "a": _float(obs["a_iou"][c]),
            "b": _float(obs["b_iou"][c]),
            "delta": _float(obs["d_iou"][c]),
            "low": _float(low[c]),
            "high": _float(high[c]),
            "p": p_class[c],
            "p_holm": p_holm[c],
        }
        for c in range(k)
    ]
    return {
        "test": "paired sign-flip (approximate randomization) over images",
        "bootstrap": "paired percentile bootstrap over images",
        "permutations": int(permutations),
        "resamples": int(resamples),
        "seed": operator.index(seed),
        "level": float(level),
        "correction": "Holm",
        "num_images": n,
        "runs": [ra, rb],
        "metrics": metrics,
        "per_class": per_class,
    }
