"""Percentile-bootstrap intervals over images of one configuration's figures, and their
spread over seeds (:mod:`segbench.significance` states the conventions)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from segbench.significance._resampling import (
    SCALAR_METRICS,
    _as_runs,
    _check_options,
    _float,
    _interval_dict,
    _per_run,
    _resampled,
    _settings,
    _statistic,
    _summary,
)

BOOTSTRAP_KEYS = ("resamples", "level", "seed")


def check_bootstrap_options(options: Any, where: str = "bootstrap") -> dict[str, Any]:
    """The ``bootstrap.*`` keys of a run config as :func:`bootstrap`'s keywords, checked (a run
    checks them before it trains, so a bad value cannot cost a training's results).

    Raises:
        ValueError: an unknown key, or a value of the wrong kind, named as ``bootstrap.<key>``
            with what it must be.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(BOOTSTRAP_KEYS))
    if unknown:
        raise ValueError(
            f"{where}.{unknown[0]}: unknown key; the keys are "
            + ", ".join(f"{where}.{k}" for k in BOOTSTRAP_KEYS)
        )

    def whole(key: str, low: int) -> None:
        value = options.get(key)
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(
                f"{where}.{key}={value!r}: expected a whole number >= {low}"
                + (" (1000 is the usual count of resamples)" if key == "resamples" else "")
            )

    whole("resamples", 1)
    whole("seed", 0)
    level = options.get("level")
    if level is not None and (
        isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0
    ):
        raise ValueError(
            f"{where}.level={level!r}: expected a confidence level strictly between 0 and 1, "
            "e.g. 0.95"
        )
    return options


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
