"""What the bootstrap and the paired test share: per-image counts validated, summed figures
scored, resamples drawn and summed as matrix products, intervals summarised
(:mod:`segbench.significance` states the conventions)."""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from segbench.metrics import metrics_from_counts

#: The dataset-level scalar figures reported by every function here.
SCALAR_METRICS: tuple[str, ...] = ("mIoU", "pixel_acc", "mean_acc")

_CHUNK = 256  # resamples / permutations per matrix product
_TOL = 1e-9  # |T*| >= |T_obs| - _TOL counts as "at least as extreme"


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
