"""Tests for segbench.significance against an independent, loop-based numpy implementation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from segbench.significance import bootstrap, holm, paired_comparison, spread

SCALARS = ("mIoU", "pixel_acc", "mean_acc")


# --------------------------------------------------------------------------------------------
# Independent reference: per-class loops on summed integer counts, resamples drawn one at a time
# --------------------------------------------------------------------------------------------
def ref_figures(tp, gt, pred):
    """Dataset figures of one set of per-class counts ``(K,)``, written out class by class."""
    k = len(tp)
    iou, acc = [], []
    for c in range(k):
        union = gt[c] + pred[c] - tp[c]
        iou.append(tp[c] / union if union > 0 else math.nan)
        acc.append(tp[c] / gt[c] if gt[c] > 0 else math.nan)

    def mean_defined(values):
        kept = [v for v in values if not math.isnan(v)]
        return sum(kept) / len(kept) if kept else math.nan

    total = sum(gt)
    return {
        "mIoU": mean_defined(iou),
        "pixel_acc": sum(tp) / total if total > 0 else math.nan,
        "mean_acc": mean_defined(acc),
        "iou": iou,
    }


def ref_statistic(sums):
    """Mean over runs (skipping undefined runs) of each run's figures; ``sums`` is (R, 3, K)."""
    figs = [ref_figures(*s) for s in sums]

    def mean_defined(values):
        kept = [v for v in values if not math.isnan(v)]
        return sum(kept) / len(kept) if kept else math.nan

    out = {name: mean_defined([f[name] for f in figs]) for name in SCALARS}
    k = sums.shape[-1]
    out["iou"] = [mean_defined([f["iou"][c] for f in figs]) for c in range(k)]
    return out


def ref_interval(samples, level):
    kept = np.array([s for s in samples if not math.isnan(s)])
    if kept.size == 0:
        return None, None, None
    low = np.percentile(kept, 100 * (1 - level) / 2)
    high = np.percentile(kept, 100 * (1 + level) / 2)
    se = float(np.std(kept, ddof=1)) if kept.size >= 2 else None
    return float(low), float(high), se


def ref_bootstrap(runs, resamples, seed, level=0.95):
    runs = np.asarray(runs)
    if runs.ndim == 3:
        runs = runs[None]
    n, k = runs.shape[1], runs.shape[3]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        idx = rng.integers(0, n, size=n)
        draws.append(ref_statistic(runs[:, idx].sum(axis=1)))
    value = ref_statistic(runs.sum(axis=1))
    out = {}
    for name in SCALARS:
        out[name] = (value[name], *ref_interval([d[name] for d in draws], level))
    out["iou"] = [
        (value["iou"][c], *ref_interval([d["iou"][c] for d in draws], level)) for c in range(k)
    ]
    return out


def ref_paired(a, b, resamples, permutations, seed, level=0.95):
    a, b = np.asarray(a), np.asarray(b)
    n, k = a.shape[1], a.shape[3]
    sa, sb = ref_statistic(a.sum(axis=1)), ref_statistic(b.sum(axis=1))
    names = (*SCALARS, "iou")

    def deltas(x, y):
        d = {name: x[name] - y[name] for name in SCALARS}
        d["iou"] = [x["iou"][c] - y["iou"][c] for c in range(k)]
        return d

    delta = deltas(sa, sb)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(resamples):
        idx = rng.integers(0, n, size=n)
        boot.append(
            deltas(ref_statistic(a[:, idx].sum(axis=1)), ref_statistic(b[:, idx].sum(axis=1)))
        )
    # sign flips on run-averaged counts, each image swapping sides with probability 1/2
    abar, bbar = a.mean(axis=0), b.mean(axis=0)

    def t_stat(x, y):
        fx, fy = ref_figures(*x), ref_figures(*y)
        t = {name: fx[name] - fy[name] for name in SCALARS}
        t["iou"] = [fx["iou"][c] - fy["iou"][c] for c in range(k)]
        return t

    t_obs = t_stat(abar.sum(0), bbar.sum(0))
    hits = {name: 0 for name in SCALARS}
    hits["iou"] = [0] * k
    rng2 = np.random.default_rng([seed, 1])

    def extreme(t, t0):
        return math.isnan(t) or abs(t) >= abs(t0) - 1e-9

    for _ in range(permutations):
        flip = rng2.integers(0, 2, size=n).astype(bool)[:, None, None]
        t = t_stat(np.where(flip, bbar, abar).sum(0), np.where(flip, abar, bbar).sum(0))
        for name in SCALARS:
            hits[name] += extreme(t[name], t_obs[name])
        for c in range(k):
            hits["iou"][c] += extreme(t["iou"][c], t_obs["iou"][c])
    p = {name: (1 + hits[name]) / (1 + permutations) for name in SCALARS}
    p["iou"] = [(1 + h) / (1 + permutations) for h in hits["iou"]]
    out = {}
    for name in names[:-1]:
        low, high, _ = ref_interval([d[name] for d in boot], level)
        out[name] = {"a": sa[name], "b": sb[name], "delta": delta[name], "low": low}
        out[name].update({"high": high, "p": p[name]})
    out["iou"] = []
    for c in range(k):
        low, high, _ = ref_interval([d["iou"][c] for d in boot], level)
        defined = not (math.isnan(sa["iou"][c]) or math.isnan(sb["iou"][c]))
        out["iou"].append(
            {
                "a": sa["iou"][c],
                "b": sb["iou"][c],
                "delta": delta["iou"][c],
                "low": low,
                "high": high,
                "p": p["iou"][c] if defined else None,
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# Synthetic per-image counts with consistent confusions (every pixel has one label, one guess)
# --------------------------------------------------------------------------------------------
def make_gt(rng, n, k, rare=None, absent=None, present=0.6):
    """``(N, K)`` ground-truth pixels: heavy-tailed class sizes, some classes absent per image."""
    prob = np.full(k, present)
    if rare is not None:
        prob[rare] = 0.03
    if absent is not None:
        prob[absent] = 0.0
    mask = rng.random((n, k)) < prob
    mask[~mask.any(1), 0] = True
    sizes = np.rint(rng.lognormal(5.5, 1.0, size=(n, k))).astype(np.int64) + 1
    return sizes * mask


def make_run(rng, gt, quality=(6.0, 2.0), absent=None):
    """``(N, 3, K)`` counts of a run predicting ``gt`` with per-image/class Beta quality; the
    misclassified pixels of each (image, class) all go to one random other class."""
    n, k = gt.shape
    q = rng.beta(*quality, size=(n, k))
    tp = rng.binomial(gt, q)
    err = gt - tp
    targets = [c for c in range(k) if c != absent]
    pred = tp.copy()
    for c in range(k):
        choices = [t for t in targets if t != c]
        dest = rng.choice(choices, size=n)
        np.add.at(pred, (np.arange(n), dest), err[:, c])
    return np.stack([tp, gt, pred], axis=1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1234)
    n, k = 120, 6
    gt = make_gt(rng, n, k, rare=4, absent=5)
    a = np.stack([make_run(rng, gt, (7.0, 2.0), absent=5) for _ in range(2)])
    b = np.stack([make_run(rng, gt, (6.0, 2.0), absent=5) for _ in range(3)])
    return a, b


def close(x, y, tol=1e-12):
    if x is None or y is None:
        return x is None and y is None
    return math.isclose(x, y, rel_tol=tol, abs_tol=tol)


def nan_none(x):
    return None if x is None or math.isnan(x) else x


# --------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------
def test_bootstrap_matches_reference(data):
    a, _ = data
    res = bootstrap(a, resamples=300, seed=7)  # > one chunk of 256 resamples
    ref = ref_bootstrap(a, resamples=300, seed=7)
    assert res["method"] == "percentile bootstrap over images"
    assert (res["resamples"], res["seed"], res["level"]) == (300, 7, 0.95)
    assert (res["num_images"], res["runs"]) == (a.shape[1], a.shape[0])
    assert set(res["metrics"]) == set(SCALARS)
    for name in SCALARS:
        got = res["metrics"][name]
        value, low, high, se = ref[name]
        assert close(got["value"], value)
        assert close(got["low"], low) and close(got["high"], high) and close(got["se"], se)
        assert got["low"] <= got["value"] <= got["high"]
    assert len(res["per_class_iou"]) == a.shape[3]
    for got, (value, low, high, se) in zip(res["per_class_iou"], ref["iou"], strict=True):
        assert close(got["value"], nan_none(value))
        assert close(got["low"], low) and close(got["high"], high) and close(got["se"], se)
    # the rare class is missing from some resamples, the absent class from all of them
    assert res["per_class_iou"][4]["low"] is not None
    assert res["per_class_iou"][5] == {"value": None, "low": None, "high": None, "se": None}
    json.dumps(res, allow_nan=False)


def test_bootstrap_sums_counts_rather_than_averaging_image_scores():
    # image 0: 1 of 1 pixel right; image 1: 0 of 9 right -> dataset accuracy 0.1, not 0.5
    counts = np.array([[[1, 0], [1, 0], [1, 0]], [[0, 0], [9, 0], [0, 9]]])
    res = bootstrap(counts, resamples=50)
    assert res["metrics"]["pixel_acc"]["value"] == pytest.approx(0.1)
    assert res["metrics"]["mIoU"]["value"] == pytest.approx((0.1 + 0.0) / 2)


def test_bootstrap_three_d_input_is_one_run(data):
    a, _ = data
    assert bootstrap(a[0], resamples=64, seed=3) == bootstrap(a[:1], resamples=64, seed=3)


def test_bootstrap_deterministic_and_seed_dependent(data):
    a, _ = data
    first = bootstrap(a, resamples=200, seed=11)
    assert bootstrap(a, resamples=200, seed=11) == first
    other = bootstrap(a, resamples=200, seed=12)
    assert other["metrics"]["mIoU"]["value"] == first["metrics"]["mIoU"]["value"]
    assert other["metrics"]["mIoU"]["low"] != first["metrics"]["mIoU"]["low"]
    assert other["metrics"]["mIoU"]["high"] != first["metrics"]["mIoU"]["high"]


@pytest.mark.parametrize(
    "kwargs", [{"resamples": 0}, {"level": 1.0}, {"level": 0.0}, {"resamples": 2.5}]
)
def test_bootstrap_rejects_bad_options(data, kwargs):
    with pytest.raises(ValueError):
        bootstrap(data[0], **kwargs)


def test_bootstrap_rejects_bad_counts():
    with pytest.raises(ValueError, match=r"\(4, 2\)"):
        bootstrap(np.zeros((4, 2)))
    bad = np.zeros((3, 3, 2), dtype=np.int64)
    bad[0, 0, 0] = 5  # intersection larger than the ground truth
    with pytest.raises(ValueError, match="intersection"):
        bootstrap(bad)
    with pytest.raises(ValueError, match="non-negative"):
        bootstrap(-np.ones((3, 3, 2)))


# --------------------------------------------------------------------------------------------
# coverage of the 95 % interval on a population whose dataset-level figures are known
# --------------------------------------------------------------------------------------------
def coverage(trials, n, resamples, seed=0):
    rng = np.random.default_rng(seed)
    population_gt = make_gt(rng, 20_000, 4)
    population = make_run(rng, population_gt, quality=(4.0, 2.0))
    truth = ref_figures(*population.sum(axis=0))
    covered = {name: 0 for name in SCALARS}
    for t in range(trials):
        sample = population[rng.choice(len(population), size=n, replace=False)]
        res = bootstrap(sample, resamples=resamples, seed=t)
        for name in SCALARS:
            m = res["metrics"][name]
            covered[name] += m["low"] <= truth[name] <= m["high"]
    return {name: c / trials for name, c in covered.items()}


def test_interval_coverage():
    """Fraction of 95 % percentile intervals (N = 200 images from a 20,000-image population,
    K = 4, 500 resamples) covering the population's mIoU / pixel_acc / mean_acc.

    Measured with this code (seeds as below): 300 trials (this test, seed 0) -> mIoU 0.947,
    pixel_acc 0.940, mean_acc 0.950; 2,000 trials of N = 200 with 1,000 resamples
    (``test_interval_coverage_many_trials``, seed 1) -> mIoU 0.946, pixel_acc 0.945, mean_acc
    0.940; 1,000 trials of N = 50 (seed 2, not a test) -> mIoU 0.939, pixel_acc 0.940, mean_acc
    0.937. The binomial SE of a coverage of 0.95 is about 0.013 at 300 trials, 0.005 at 2,000.
    """
    cov = coverage(trials=300, n=200, resamples=500)
    for name in SCALARS:
        assert 0.90 <= cov[name] <= 0.99, (name, cov)


@pytest.mark.slow
def test_interval_coverage_many_trials():
    """2,000 trials of N = 200 (binomial SE ~0.005); see ``test_interval_coverage``."""
    cov = coverage(trials=2000, n=200, resamples=1000, seed=1)
    for name in SCALARS:
        assert 0.92 <= cov[name] <= 0.97, (name, cov)


# --------------------------------------------------------------------------------------------
# spread
# --------------------------------------------------------------------------------------------
def test_spread_matches_reference(data):
    _, b = data
    res = spread(b, resamples=120, seed=5)
    assert res["runs"] == 3 and res["num_images"] == b.shape[1]
    for name in SCALARS:
        per_run = [ref_figures(*b[r].sum(axis=0))[name] for r in range(3)]
        ses = [ref_bootstrap(b[r], resamples=120, seed=5)[name][3] for r in range(3)]
        got = res["metrics"][name]
        assert all(close(x, y) for x, y in zip(got["per_run"], per_run, strict=True))
        assert close(got["mean"], float(np.mean(per_run)))
        assert close(got["between_seeds_std"], float(np.std(per_run, ddof=1)))
        assert close(got["within_run_se"], float(np.mean(ses)))
        boot = bootstrap(b, resamples=120, seed=5)["metrics"][name]
        assert close(got["se_of_mean"], boot["se"])
    json.dumps(res, allow_nan=False)


def test_spread_single_run_has_no_between_seeds_std(data):
    res = spread(data[0][0], resamples=50)
    for name in SCALARS:
        assert res["metrics"][name]["between_seeds_std"] is None
        assert res["metrics"][name]["within_run_se"] > 0


def test_spread_rejects_unknown_options(data):
    with pytest.raises(TypeError):
        spread(data[0], permutations=10)


# --------------------------------------------------------------------------------------------
# paired comparison
# --------------------------------------------------------------------------------------------
def test_paired_matches_reference(data):
    a, b = data  # 2 runs against 3 runs
    res = paired_comparison(a, b, resamples=300, permutations=600, seed=3)
    ref = ref_paired(a, b, resamples=300, permutations=600, seed=3)
    assert res["test"] == "paired sign-flip (approximate randomization) over images"
    assert res["bootstrap"] == "paired percentile bootstrap over images"
    assert res["correction"] == "Holm"
    assert res["runs"] == [2, 3] and res["num_images"] == a.shape[1]
    assert (res["permutations"], res["resamples"], res["seed"]) == (600, 300, 3)
    for name in SCALARS:
        got, want = res["metrics"][name], ref[name]
        assert set(got) == {"a", "b", "delta", "low", "high", "p"}
        for key in ("a", "b", "delta", "low", "high"):
            assert close(got[key], want[key]), (name, key)
        assert got["p"] == want["p"]
    for c, (got, want) in enumerate(zip(res["per_class"], ref["iou"], strict=True)):
        assert got["name"] == c
        for key in ("a", "b", "delta", "low", "high"):
            assert close(got[key], nan_none(want[key])), (c, key)
        assert got["p"] == want["p"]
    assert res["per_class"][5]["p"] is None and res["per_class"][5]["p_holm"] is None
    assert [c["p_holm"] for c in res["per_class"]] == holm([c["p"] for c in res["per_class"]])
    json.dumps(res, allow_nan=False)


def test_paired_identical_gives_zero_and_p_one(data):
    a, _ = data
    for left, right in [(a, a.copy()), (a[0], a[0]), (np.stack([a[0], a[0]]), a[0])]:
        res = paired_comparison(left, right, resamples=100, permutations=200)
        for name in SCALARS:
            m = res["metrics"][name]
            assert m["delta"] == 0.0 and m["low"] == 0.0 and m["high"] == 0.0
            assert m["p"] == 1.0
        for c in res["per_class"][:5]:
            assert c["delta"] == 0.0 and c["p"] == 1.0 and c["p_holm"] == 1.0
        assert res["per_class"][5]["delta"] is None and res["per_class"][5]["p"] is None


def test_paired_better_on_every_image():
    rng = np.random.default_rng(99)
    gt = make_gt(rng, 80, 4)
    perfect = np.stack([gt, gt, gt], axis=1)
    worse = make_run(rng, gt, quality=(8.0, 2.0))
    assert (worse[:, 0] <= gt).all() and (worse[:, 0].sum(1) < gt.sum(1)).all()
    perms = 999
    res = paired_comparison(perfect, worse, permutations=perms, resamples=300, names="abcd")
    for name in SCALARS:
        m = res["metrics"][name]
        assert m["delta"] > 0 and m["low"] > 0
        assert m["p"] <= 3 / (perms + 1)
    for c in res["per_class"]:
        assert c["delta"] > 0 and c["low"] > 0 and c["p"] <= 3 / (perms + 1)
        assert c["p_holm"] <= 4 * 3 / (perms + 1)
    assert [c["name"] for c in res["per_class"]] == list("abcd")
    flipped = paired_comparison(worse, perfect, permutations=perms, resamples=300)
    assert flipped["metrics"]["mIoU"]["delta"] == pytest.approx(-res["metrics"]["mIoU"]["delta"])
    assert flipped["metrics"]["mIoU"]["high"] < 0


def test_paired_deterministic_and_seed_dependent(data):
    a, b = data
    kw = {"resamples": 200, "permutations": 300}
    first = paired_comparison(a, b, seed=1, **kw)
    assert paired_comparison(a, b, seed=1, **kw) == first
    other = paired_comparison(a, b, seed=2, **kw)
    assert other["metrics"]["mIoU"]["delta"] == first["metrics"]["mIoU"]["delta"]
    assert other["metrics"]["mIoU"]["low"] != first["metrics"]["mIoU"]["low"]


def test_paired_bootstrap_uses_the_bootstrap_draws(data):
    # B gets no pixel right, so its mIoU is 0 in every resample and delta mIoU's resamples are
    # A's: the paired interval must be bootstrap()'s interval for A with the same seed
    a, _ = data
    b = a[0].copy()
    b[:, 0] = 0
    res = paired_comparison(a[0], b, resamples=300, permutations=10, seed=4)["metrics"]["mIoU"]
    boot = bootstrap(a[0], resamples=300, seed=4)["metrics"]["mIoU"]
    assert res["b"] == 0.0 and res["delta"] == boot["value"]
    assert (res["low"], res["high"]) == (boot["low"], boot["high"])


def test_per_class_statistic_skips_runs_where_the_class_is_undefined():
    # class 2 is in no ground truth; run 0 predicts it falsely once (IoU 0), run 1 never (NaN):
    # the mean over runs skips run 1, so the statistic is 0, not NaN
    rng = np.random.default_rng(5)
    gt = make_gt(rng, 40, 3, absent=2)
    runs = np.stack([make_run(rng, gt, absent=2) for _ in range(2)])
    moved = min(3, int(runs[0, 0, 0, 0]))
    runs[0, 0, 0, 0] -= moved  # image 0: `moved` class-0 pixels predicted as class 2
    runs[0, 0, 2, 0] -= moved
    runs[0, 0, 2, 2] += moved
    assert moved > 0
    res = bootstrap(runs, resamples=200, seed=2)
    ref = ref_bootstrap(runs, resamples=200, seed=2)
    assert res["per_class_iou"][2]["value"] == 0.0 == ref["iou"][2][0]
    assert close(res["per_class_iou"][2]["low"], ref["iou"][2][1])


def test_permutation_with_undefined_statistic_counts_as_extreme():
    # class 2 is in no ground truth; A predicts it falsely on image 0 only, B on image 1 only:
    # both IoUs are 0, and a flip of image 0 alone leaves A's IoU undefined (counted extreme)
    rng = np.random.default_rng(6)
    gt = make_gt(rng, 30, 3, absent=2)
    a, b = make_run(rng, gt, absent=2), make_run(rng, gt, absent=2)
    for side, image in ((a, 0), (b, 1)):
        side[image, 0, 0] -= 1
        side[image, 2, 0] -= 1
        side[image, 2, 2] += 1
    res = paired_comparison(a, b, resamples=50, permutations=300, seed=8)
    ref = ref_paired(a[None], b[None], resamples=50, permutations=300, seed=8)
    cls = res["per_class"][2]
    assert cls["a"] == cls["b"] == cls["delta"] == 0.0
    assert cls["p"] == ref["iou"][2]["p"] == 1.0
    assert [c["p"] for c in res["per_class"]] == [c["p"] for c in ref["iou"]]


def test_paired_shape_mismatch_names_shapes(data):
    a, b = data
    with pytest.raises(ValueError, match=r"\(2, 120, 3, 6\).*\(120, 3, 5\)"):
        paired_comparison(a, b[0][..., :5])
    with pytest.raises(ValueError, match=r"\(2, 120, 3, 6\).*\(3, 100, 3, 6\)"):
        paired_comparison(a, b[:, :100])
    with pytest.raises(ValueError, match="names"):
        paired_comparison(a, b, names=["x"], permutations=10, resamples=10)


# --------------------------------------------------------------------------------------------
# Holm
# --------------------------------------------------------------------------------------------
def test_holm_hand_computed():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    got = holm([0.01, None, 0.04, 0.03, 0.005])
    assert got[1] is None
    assert got[0] == pytest.approx(0.03)
    assert got[2] == pytest.approx(0.06)
    assert got[3] == pytest.approx(0.06)
    assert got[4] == pytest.approx(0.02)
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # 2 * 0.5 capped, then the running max
    assert holm([0.2, 0.2, 0.2]) == pytest.approx([0.6, 0.6, 0.6])
    assert holm([float("nan"), 0.3]) == [None, 0.3]
    assert holm([]) == [] and holm([None]) == [None]
    with pytest.raises(ValueError):
        holm([1.5])
