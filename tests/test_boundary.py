"""Boundary accuracy (segbench/metrics/boundary.py) against an independent scipy computation written
here from the papers' definitions: BF score (Csurka et al. 2013) and boundary IoU (Cheng et al.
2021), including the empty-class, all-ignored and one-pixel-object cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from segbench.metrics.boundary import BoundaryOptions, boundary_figures, boundary_stats

IGNORE = 255
CROSS = ndimage.generate_binary_structure(2, 1)


def oracle_image(pred, target, k, ignore=IGNORE, tol=0.0075, dil=0.02):
    """One image's (bf (K,), counts (2, K)) with scipy's erosion and exact distance transform."""
    h, w = target.shape
    diag = math.hypot(h, w)
    valid = target != ignore
    bf = np.full(k, np.nan)
    counts = np.zeros((2, k), dtype=np.int64)
    d = max(1, round(dil * diag))
    for c in range(k):
        t, p = target == c, pred == c
        # boundary IoU: inner band of width d, the outside of the image outside the mask
        tb = t & ~ndimage.binary_erosion(t, np.ones((3, 3)), iterations=d, border_value=0)
        pb = p & ~ndimage.binary_erosion(p, np.ones((3, 3)), iterations=d, border_value=0)
        tb, pb = tb & valid, pb & valid
        counts[0, c] = (tb & pb).sum()
        counts[1, c] = (tb | pb).sum()
        if not (t & valid).any():
            continue
        # BF: contour pixels (a 4-neighbour of another label inside the image)
        te = t & ~ndimage.binary_erosion(t, CROSS, border_value=1) & valid
        pe = p & ~ndimage.binary_erosion(p, CROSS, border_value=1) & valid
        if not te.any() and not pe.any():
            bf[c] = 1.0
            continue
        if not te.any() or not pe.any():
            bf[c] = 0.0
            continue
        theta = tol * diag
        dist_to_t = ndimage.distance_transform_edt(~te)
        dist_to_p = ndimage.distance_transform_edt(~pe)
        precision = (dist_to_t[pe] <= theta).mean()
        recall = (dist_to_p[te] <= theta).mean()
        bf[c] = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return bf, counts


def scene(seed, h=48, w=64, k=5, ignore_share=0.05):
    gen = np.random.default_rng(seed)
    low = gen.standard_normal((k, h // 8, w // 8))
    up = np.stack([np.kron(c, np.ones((8, 8))) for c in low])
    up = ndimage.gaussian_filter(up, (0, 3, 3))
    target = up.argmax(0)
    pred = target.copy()
    # move some boundaries and add noise blobs
    pred = np.roll(pred, gen.integers(-3, 4), axis=1)
    blobs = gen.random((h, w)) < 0.02
    pred[ndimage.binary_dilation(blobs, iterations=1)] = gen.integers(0, k)
    target = target.astype(np.int64)
    target[gen.random((h, w)) < ignore_share] = IGNORE
    target[:3, :] = IGNORE  # a strip of void
    return pred.astype(np.int64), target


def run(pred, target, k, **options):
    options.setdefault("bf_convention", "segbench")  # the rules oracle_image is written from
    bf, counts = boundary_stats(
        torch.from_numpy(pred)[None],
        torch.from_numpy(target)[None],
        k,
        IGNORE,
        BoundaryOptions(**options),
    )
    return bf[0].numpy(), counts[0].numpy()


@pytest.mark.parametrize("seed", range(6))
def test_random_scenes_match_the_oracle(seed):
    pred, target = scene(seed)
    bf, counts = run(pred, target, 5)
    want_bf, want_counts = oracle_image(pred, target, 5)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_allclose(bf, want_bf, rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("size", [(360, 480), (37, 23)])
def test_the_published_widths_and_other_sizes(size):
    """0.75 % and 2 % of the diagonal at 360x480 are 4.5 px and 12 px."""
    h, w = size
    pred, target = scene(7, h=h - h % 8 or 8, w=w - w % 8 or 8)
    bf, counts = run(pred, target, 5, bf_tolerance=0.0075, iou_dilation=0.02)
    want_bf, want_counts = oracle_image(pred, target, 5)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_allclose(bf, want_bf, rtol=1e-12, equal_nan=True)


def test_wider_tolerances_match_too():
    pred, target = scene(8)
    bf, counts = run(pred, target, 5, bf_tolerance=0.05, iou_dilation=0.1)
    want_bf, want_counts = oracle_image(pred, target, 5, tol=0.05, dil=0.1)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_allclose(bf, want_bf, rtol=1e-12, equal_nan=True)


def test_perfect_prediction_scores_one_and_absent_classes_are_nan():
    _, target = scene(1, ignore_share=0.0)
    target[target == 4] = 3  # class 4 absent from both
    bf, counts = run(target.copy(), target, 5)
    present = np.unique(target[target != IGNORE])
    assert np.isnan(bf[4]) and counts[1, 4] == 0
    np.testing.assert_array_equal(bf[present], 1.0)
    np.testing.assert_array_equal(counts[0], counts[1])
    figures = boundary_figures(bf[None], counts[None])
    assert figures["bf"] == 1.0 and figures["boundary_iou"] == 1.0
    assert figures["bf_per_class"][4] is None and figures["boundary_iou_per_class"][4] is None


def test_all_ignored_image_has_no_figures():
    target = np.full((16, 16), IGNORE)
    pred = np.zeros((16, 16), dtype=np.int64)
    bf, counts = run(pred, target, 3)
    assert np.isnan(bf).all() and not counts.any()
    figures = boundary_figures(bf[None], counts[None])
    assert figures["bf"] is None and figures["bf_images"] == 0
    assert figures["boundary_iou"] is None


def test_one_pixel_object():
    """A one-pixel object is its own boundary: found within the tolerance it scores 1 (here
    4.5 px at 360x480), missed it scores 0; a one-pixel false positive costs precision."""
    target = np.zeros((360, 480), dtype=np.int64)
    target[100, 200] = 1
    near = np.zeros_like(target)
    near[103, 202] = 1  # 3.6 px away
    bf, _ = run(near, target, 2)
    want, _ = oracle_image(near, target, 2)
    assert bf[1] == 1.0 and want[1] == 1.0
    far = np.zeros_like(target)
    far[110, 200] = 1  # 10 px away
    bf, counts = run(far, target, 2)
    want_bf, want_counts = oracle_image(far, target, 2)
    assert bf[1] == 0.0 == want_bf[1]
    np.testing.assert_array_equal(counts, want_counts)
    assert counts[0, 1] == 0 and counts[1, 1] == 2
    missed = np.zeros_like(target)
    bf, _ = run(missed, target, 2)
    assert bf[1] == 0.0


def test_dataset_figures_average_images_then_classes():
    """The dataset's BF is the mean of the images' BF (each the mean of its classes); a class's
    BF the mean over the images that contain it; boundary IoU sums counts over images."""
    bf = np.array([[1.0, 0.5, np.nan], [0.0, np.nan, np.nan], [np.nan] * 3])
    counts = np.array([[[2, 1, 0], [4, 2, 0]], [[0, 0, 0], [4, 0, 0]], [[0, 0, 0], [0, 0, 0]]])
    figures = boundary_figures(bf, counts)
    assert figures["bf"] == pytest.approx((0.75 + 0.0) / 2)
    assert figures["bf_per_class"] == [pytest.approx(0.5), pytest.approx(0.5), None]
    assert figures["bf_images"] == 2
    assert figures["boundary_iou_per_class"] == [pytest.approx(2 / 8), pytest.approx(0.5), None]
    assert figures["boundary_iou"] == pytest.approx((0.25 + 0.5) / 2)


@pytest.mark.parametrize("convention", ["segnet", "segbench", "matlab"])
def test_a_batch_is_its_images(convention):
    a, ta = scene(2)
    b, tb = scene(3)
    bf, counts = boundary_stats(
        torch.from_numpy(np.stack([a, b])), torch.from_numpy(np.stack([ta, tb])), 5, IGNORE,
        BoundaryOptions(bf_convention=convention),
    )  # fmt: skip
    for i, (p, t) in enumerate(((a, ta), (b, tb))):
        one_bf, one_counts = run(p, t, 5, bf_convention=convention)
        np.testing.assert_array_equal(bf[i].numpy(), one_bf)
        np.testing.assert_array_equal(counts[i].numpy(), one_counts)


def test_options_are_checked():
    with pytest.raises(ValueError, match=r"boundary.bf_tolerance .* got 0"):
        BoundaryOptions(bf_tolerance=0)
    with pytest.raises(ValueError, match="boundary.dilation: unknown key"):
        BoundaryOptions.from_config({"dilation": 0.02})
    assert BoundaryOptions.from_config(None) == BoundaryOptions()
    with pytest.raises(ValueError, match="boundary.enabled must be true or false, got 'no'"):
        BoundaryOptions(enabled="no")


def test_a_class_only_predicted_costs_boundary_iou_not_bf():
    """A class the ground truth lacks has no BF (NaN) but its predicted band is in the union."""
    target = np.zeros((40, 40), dtype=np.int64)
    target[:, 20:] = 1
    pred = target.copy()
    pred[5:10, 5:10] = 2
    bf, counts = run(pred, target, 3)
    want_bf, want_counts = oracle_image(pred, target, 3)
    # d = round(0.02 x 56.6) = 1: the 5x5 square less its 3x3 core
    assert np.isnan(bf[2]) and counts[0, 2] == 0 and counts[1, 2] == 16
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_allclose(bf, want_bf, rtol=1e-12, equal_nan=True)


def test_a_run_keeps_them_per_image_and_its_figures_follow(trained_run):
    """A train.py run's results.json carries the boundary figures, and its per_image.npz rows
    give them again (so 1 and N processes, and any subset of images, agree)."""
    import json

    from segbench.metrics.per_image import read_per_image

    res = json.loads((trained_run / "results.json").read_text())
    assert res["boundary"]["computed"] and res["boundary"]["bf_tolerance"] == 0.0075
    data = read_per_image(trained_run / "per_image.npz")
    assert data.extra["bf"].shape == data.counts[:, 0].shape
    assert data.extra["boundary_counts"].shape == data.counts[:, :2].shape
    figures = boundary_figures(data.extra["bf"], data.extra["boundary_counts"])
    m = res["metrics"]
    assert figures["bf"] == pytest.approx(m["bf"]) and 0 <= m["bf"] <= 1
    assert figures["boundary_iou"] == pytest.approx(m["boundary_iou"])
    assert figures["bf_per_class"] == [
        pytest.approx(v) if v is not None else None for v in m["per_class_bf"].values()
    ]
    # logged as the other test figures are (CSV here; W&B gets the same log calls)
    (metrics_csv,) = trained_run.glob("csv/**/metrics.csv")
    header = metrics_csv.read_text().splitlines()[0].split(",")
    assert {"test/bf", "test/boundary_iou"} <= set(header)


def test_switched_off_they_are_said_to_be_absent(tmp_path):
    from segbench.engine.run import train
    from tests.conftest import compose_config

    overrides = [
        "debug=fast", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "logger=none", "dataset.subset.train=4", "dataset.subset.val=2", "dataset.subset.test=2",
        "callbacks.run_plots=null", "callbacks.eval_outputs=null", "boundary.enabled=false",
    ]  # fmt: skip
    res = train(compose_config("train", overrides, tmp_path / "run"))
    assert res["boundary"] == {"computed": False, "why": "boundary.enabled=false: not computed"}
    assert res["metrics"]["bf"] is None and res["metrics"]["boundary_iou"] is None
    from segbench.metrics.per_image import read_per_image

    assert read_per_image(tmp_path / "run" / "per_image.npz").extra == {}


def test_the_segnet_preset_prints_g_c_miou_bf(trained_run, tmp_path):
    from segbench.leaderboard.cli import main

    out = tmp_path / "boards"
    assert main([str(trained_run), "--preset", "segnet", "--out", str(out), "--format", "md"]) == 0
    text = next(out.glob("*.md")).read_text()
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    assert header == "| method | n | G | C | mIoU | BF |"
    assert "G: global accuracy" in text and "BF: boundary F1" in text
    with pytest.raises(SystemExit) as refused:  # argparse names the presets there are
        main([str(trained_run), "--preset", "nope", "--out", str(out)])
    assert refused.value.code == 2
