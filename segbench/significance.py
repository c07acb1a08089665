"""Confidence intervals and significance tests for segmentation figures, resampling images.

Every evaluation stores per-image counts, an integer array ``counts`` of shape ``(N, 3, K)``:
for each of ``N`` images and ``K`` classes, ``counts[:, 0]`` is the intersection (pixels of
class ``k`` predicted as ``k``), ``counts[:, 1]`` the ground-truth pixels of class ``k`` and
``counts[:, 2]`` the pixels predicted as ``k`` (ignore-index pixels excluded). Several runs
(seeds) of one configuration on the same images stack to ``(R, N, 3, K)``; a 3-D array is one
run. Summing counts over a set of images gives exactly that set's dataset-level figures, and
every figure here comes from :func:`segbench.metrics.metrics_from_counts` applied to summed
counts: a resample is scored like a dataset, never by averaging per-image scores.

Conventions
-----------
* **Statistic.** For a side with ``R`` runs, the statistic of a figure is the mean over the
  runs of each run's dataset-level figure (NaN-aware: a run whose figure is undefined, e.g. a
  per-class IoU with union 0, is left out of that mean; all runs undefined gives NaN).
* **Percentile bootstrap over images** (:func:`bootstrap`). Each of ``resamples`` resamples
  draws ``N`` image indices with replacement, one draw shared by all runs. Resample ``b``'s
  indices are ``rng.integers(0, N, size=N)``, drawn in order ``b = 0, 1, ...`` from
  ``rng = np.random.default_rng(seed)``. The interval is the ``(1 - level) / 2`` and
  ``(1 + level) / 2`` percentiles (numpy's default linear interpolation) of the resampled
  statistic; ``se`` is its standard deviation over resamples (``ddof=1``). Resamples in which a
  figure is undefined are left out of that figure's percentiles and ``se``.
* **Paired comparison** (:func:`paired_comparison`) of A and B on the same images.
  ``delta = statistic(A) - statistic(B)``. Its interval comes from a paired percentile bootstrap:
  the same image draws (the same draws as :func:`bootstrap` with that seed) for both sides and
  all runs. Its p-value comes from a two-sided paired sign-flip (approximate randomization)
  test over images: in each of ``permutations`` permutations every image independently swaps
  A's and B's counts with probability 1/2 (permutation ``p``'s flips are
  ``rng2.integers(0, 2, size=N)``, drawn in order from ``rng2 = np.random.default_rng([seed,
  1])``). Because A and B may have different numbers of runs, the test works on each side's
  counts *averaged over its runs* (float), and its statistic ``T`` is the dataset-level figure
  of A's averaged counts minus B's. With one run per side ``T`` is exactly ``delta``; with
  several runs it is the difference of the figures of the run-averaged counts, which is close to,
  but not the same as, ``delta`` (the mean of per-run figures). ``p = (1 + #{|T*| >= |T_obs| -
  1e-9}) / (1 + permutations)``; a permutation whose statistic is undefined counts as extreme
  (conservative). Per-class IoU p-values are Holm-Bonferroni adjusted (:func:`holm`) across
  the classes whose IoU is defined on both sides.
* **Output.** All public functions return JSON-ready plain Python: floats, ints, lists and
  dicts, with ``None`` for undefined (NaN) values.

Resamples and permutations are vectorised as a ``(chunk, N)`` matrix of image multiplicities
(or 0/1 flips) times the ``(N, runs * 3 * K)`` counts, 256 at a time to bound memory. Counts
are summed in float64, which is exact for integer counts below 2**53. The products run in
torch, not numpy: mixing numpy's OpenBLAS thread pool with torch's (which scores the sums) makes
the two pools contend for the cores and slows the loop several-fold on small machines.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from segbench.metrics import metrics_from_counts

__all__ = ["SCALAR_METRICS", "bootstrap", "holm", "paired_comparison", "spread"]

#: The dataset-level scalar figures reported by every function here.
SCALAR_METRICS: tuple[str, ...] = ("mIoU", "pixel_acc", "mean_acc")

_CHUNK = 256  # resamples / permutations per matrix product
_TOL = 1e-9  # |T*| >= |T_obs| - _TOL counts as "at least as extreme"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _as_runs(x: Any, what: str = "runs") -> np.ndarray:
    """Validate per-image counts and return them as a float64 ``(R, N, 3, K)`` array."""
    arr = np.asarray(x)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[2] != 3:
        raise ValueError(
            f"{what} must have shape (R, N, 3, K) or (N, 3, K), got {tuple(np.shape(x))}"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[3] < 1:
        raise ValueError(f"{what} must have at least one run, image and class, got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{what} must hold numeric pixel counts, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{what} must hold finite, non-negative pixel counts")
    tp, gt, pred = arr[:, :, 0], arr[:, :, 1], arr[:, :, 2]
    if (tp > gt).any() or (tp > pred).any():
        raise ValueError(
            f"{what}: the intersection counts[:, 0] exceeds the ground-truth counts[:, 1] or "
            "the predicted counts[:, 2] for some image and class"
        )
    return arr


def _check_options(
    resamples: int, level: float, permutations: int | None = None, seed: int = 0
) -> None:
    operator.index(seed)  # a TypeError for anything but an integer seed
    if int(resamples) != resamples or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if permutations is not None and (int(permutations) != permutations or permutations < 1):
        raise ValueError(f"permutations must be a positive integer, got {permutations!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")


def _figures(sums: np.ndarray) -> dict[str, np.ndarray]:
    """``metrics_from_counts`` of summed counts ``(..., 3, K)``; numpy float64 out."""
    t = torch.from_numpy(np.ascontiguousarray(sums))
    out = metrics_from_counts(t[..., 0, :], t[..., 1, :], t[..., 2, :])
    return {name: out[name].numpy() for name in (*SCALAR_METRICS, "iou")}


def _statistic(sums: np.ndarray) -> dict[str, np.ndarray]:
    """The statistic of summed counts ``(..., R, 3, K)``: the NaN-aware mean over the R runs of
    each run's figure, giving ``(...)`` scalars and ``(..., K)`` per-class ``iou``."""
    figs = _figures(sums)
    t = {k: torch.from_numpy(v) for k, v in figs.items()}
    out = {name: t[name].nanmean(-1) for name in SCALAR_METRICS}
    out["iou"] = t["iou"].nanmean(-2)
    return {k: v.numpy() for k, v in out.items()}


def _per_run(sums: np.ndarray) -> dict[str, np.ndarray]:
    """Each run's figures of summed counts ``(..., R, 3, K)``: ``(..., R)`` scalars."""
    figs = _figures(sums)
    return {name: figs[name] for name in SCALAR_METRICS}


def _multiplicities(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``(size, n)`` float64 image multiplicities of ``size`` bootstrap resamples."""
    idx = rng.integers(0, n, size=(size, n))
    flat = idx + (np.arange(size) * n)[:, None]
    return np.bincount(flat.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)


def _resampled(
    rng: np.random.Generator,
    flat: np.ndarray,
    resamples: int,
    reduce: Callable[[np.ndarray], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Apply ``reduce`` to the summed counts of every bootstrap resample and stack the results.

    ``flat`` is ``(N, ...)`` counts; ``reduce`` receives ``(chunk, ...)`` summed counts.
    """
    n = flat.shape[0]
    x = torch.from_numpy(np.ascontiguousarray(flat.reshape(n, -1)))
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        weights = torch.from_numpy(_multiplicities(rng, n, size))
        sums = (weights @ x).numpy().reshape(size, *flat.shape[1:])
        parts.append(reduce(sums))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _float(v: Any) -> float | None:
    v = float(v)
    return None if np.isnan(v) else v


def _summary(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NaN-aware percentile interval and standard deviation over axis 0.

    Columns with no defined sample give NaN bounds; fewer than two give NaN ``se``.
    """
    samples = np.asarray(samples, dtype=np.float64)
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    defined = (~np.isnan(samples)).sum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if np.all(defined == samples.shape[0]):
            low, high = np.percentile(samples, q, axis=0)
        else:
            low, high = np.nanpercentile(samples, q, axis=0)
        se = np.nanstd(samples, axis=0, ddof=1)
    se = np.where(defined >= 2, se, np.nan)
    return low, high, se


def _interval_dict(value: Any, low: Any, high: Any, se: Any) -> dict[str, float | None]:
    return {"value": _float(value), "low": _float(low), "high": _float(high), "se": _float(se)}


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def _settings(method: str, resamples: int, seed: int, level: float, n: int, runs: Any) -> dict:
    """How a result was made, as every result records it."""
    return {
        "method": method,
        "resamples": int(resamples),
        "seed": operator.index(seed),
        "level": float(level),
        "num_images": n,
        "runs": runs,
    }


def bootstrap(
    runs: Any, *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Percentile-bootstrap confidence intervals over images for a configuration's figures.

    Args:
        runs: per-image counts ``(R, N, 3, K)`` of R runs (seeds) on the same N images, or
            ``(N, 3, K)`` for one run (see the module docstring for the layout).
        resamples: number of bootstrap resamples.
        seed: seed of ``np.random.default_rng``; same inputs and seed give identical output.
        level: confidence level of the two-sided percentile interval.

    Returns:
        ``{"method", "resamples", "seed", "level", "num_images", "runs", "metrics":
        {"mIoU" | "pixel_acc" | "mean_acc": {"value", "low", "high", "se"}}, "per_class_iou":
        [{"value", "low", "high", "se"}, ...]}``: ``value`` is the statistic (mean over runs of
        the dataset-level figure) on all images, ``low``/``high`` the percentile interval and
        ``se`` the bootstrap standard deviation; ``None`` where undefined.
    """
    _check_options(resamples, level, seed=seed)
    arr = _as_runs(runs)
    r, n, _, k = arr.shape
    flat = arr.transpose(1, 0, 2, 3)  # (N, R, 3, K)
    value = _statistic(flat.sum(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        samples = _resampled(np.random.default_rng(seed), flat, int(resamples), _statistic)

    metrics = {}
    for name in SCALAR_METRICS:
        low, high, se = _summary(samples[name], level)
        metrics[name] = _interval_dict(value[name], low, high, se)
    low, high, se = _summary(samples["iou"], level)
    per_class = [_interval_dict(value["iou"][c], low[c], high[c], se[c]) for c in range(k)]
    return {
        **_settings("percentile bootstrap over images", resamples, seed, level, n, r),
        "metrics": metrics,
        "per_class_iou": per_class,
    }


def spread(runs: Any, **bootstrap_kwargs: Any) -> dict[str, Any]:
    """Both sources of spread of a configuration run with several seeds.

    ``between_seeds_std`` is the sample standard deviation (``ddof=1``) of the runs'
    dataset-level figures: how much retraining with another seed moves the result.
    ``within_run_se`` is the mean over runs of each run's own bootstrap standard error: how much
    evaluating on another sample of images of the same kind would move it. Each run's bootstrap
    uses the same image draws (those of :func:`bootstrap` with the same ``seed``), so it equals
    ``bootstrap(runs[i], **bootstrap_kwargs)``'s ``se``.

    Args:
        runs: per-image counts ``(R, N, 3, K)`` or ``(N, 3, K)``.
        **bootstrap_kwargs: ``resamples``, ``seed``, ``level`` as for :func:`bootstrap`.

    Returns:
        ``{"method", "resamples", "seed", "level", "num_images", "runs", "metrics":
        {"mIoU" | "pixel_acc" | "mean_acc": {"mean", "per_run", "between_seeds_std",
        "within_run_se", "se_of_mean"}}}``. ``mean`` is the mean over runs, ``per_run`` each
        run's figure, ``se_of_mean`` the bootstrap standard error (over images only) of that
        mean, as reported by :func:`bootstrap`; ``between_seeds_std`` is ``None`` for one run.
    """
    unknown = set(bootstrap_kwargs) - {"resamples", "seed", "level"}
    if unknown:
        raise TypeError(f"spread() got unexpected keyword arguments {sorted(unknown)}")
    resamples = bootstrap_kwargs.get("resamples", 1000)
    seed = bootstrap_kwargs.get("seed", 0)
    level = bootstrap_kwargs.get("level", 0.95)
    _check_options(resamples, level, seed=seed)
    arr = _as_runs(runs)
    r, n = arr.shape[:2]
    flat = arr.transpose(1, 0, 2, 3)
    per_run = _per_run(flat.sum(0))  # (R,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        samples = _resampled(np.random.default_rng(seed), flat, int(resamples), _per_run)

    metrics = {}
    for name in SCALAR_METRICS:
        values = per_run[name]
        s = samples[name]  # (B, R)
        _, _, se_runs = _summary(s, level)  # (R,)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean_samples = np.nanmean(s, axis=1)
            mean = np.nanmean(values)
        _, _, se_mean = _summary(mean_samples, level)
        defined = values[~np.isnan(values)]
        between = float(np.std(defined, ddof=1)) if defined.size >= 2 else None
        se_defined = se_runs[~np.isnan(se_runs)]
        metrics[name] = {
            "mean": _float(mean),
            "per_run": [_float(v) for v in values],
            "between_seeds_std": between,
            "within_run_se": float(se_defined.mean()) if se_defined.size else None,
            "se_of_mean": _float(se_mean),
        }
    return {
        **_settings(
            "percentile bootstrap over images; sample std over seeds", resamples, seed, level, n, r
        ),
        "metrics": metrics,
    }


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
