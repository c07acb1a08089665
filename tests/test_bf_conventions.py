"""BF score conventions (``boundary.bf_convention``): ``matlab`` against an independent
implementation written here from the documented rules of MATLAB's bfscore as used by
evaluateSemanticSegmentation (the image border is a boundary; predicted boundary pixels on void
are kept; a ground-truth class that the prediction misses entirely is left out of the image's
mean; a boundary pixel matches when the other boundary lies at a distance strictly below the
tolerance), not from segbench's code; and ``segbench`` (the default) unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from segbench.metrics.boundary import BoundaryOptions, boundary_figures, boundary_stats
from tests.test_boundary import IGNORE, oracle_image, scene

CROSS = ndimage.generate_binary_structure(2, 1)


def matlab_oracle(pred, target, k, ignore=IGNORE, tol=0.0075):
    """One image's per-class BF in MATLAB's convention (NaN: left out of the mean)."""
    h, w = target.shape
    theta = tol * math.hypot(h, w)
    valid = target != ignore
    bf = np.full(k, np.nan)
    for c in range(k):
        t = (target == c) & valid
        if not t.any():
            continue  # not in the ground truth
        p = pred == c  # the whole prediction, void included
        if not p.any():
            continue  # missed entirely: left out
        # a pixel of the mask with a 4-neighbour outside it, the outside of the image included
        te = t & ~ndimage.binary_erosion(t, CROSS, border_value=0)
        pe = p & ~ndimage.binary_erosion(p, CROSS, border_value=0)
        precision = (ndimage.distance_transform_edt(~te)[pe] < theta).mean()
        recall = (ndimage.distance_transform_edt(~pe)[te] < theta).mean()
        total = precision + recall
        bf[c] = 0.0 if total == 0 else 2 * precision * recall / total
    return bf


def run(pred, target, k, **options):
    options.setdefault("bf_convention", "segbench")
    bf, _ = boundary_stats(
        torch.from_numpy(pred)[None], torch.from_numpy(target)[None], k, IGNORE,
        BoundaryOptions(**options),
    )  # fmt: skip
    return bf[0].numpy()


@pytest.mark.parametrize("seed", range(6))
def test_matlab_convention_matches_the_rules_written_independently(seed):
    pred, target = scene(seed)
    got = run(pred, target, 5, bf_convention="matlab")
    np.testing.assert_allclose(got, matlab_oracle(pred, target, 5), rtol=1e-12, equal_nan=True)
    # and segbench's own convention is unchanged
    np.testing.assert_allclose(
        run(pred, target, 5), oracle_image(pred, target, 5)[0], rtol=1e-12, equal_nan=True
    )


def test_the_tolerance_edge_is_strict_in_matlab_and_inclusive_in_segbench():
    """A prediction shifted by exactly the tolerance: its boundary matches in segbench (<=)
    and not in MATLAB (<). At 30x40 the diagonal is 50, so a tolerance of 0.04 is 2 pixels."""
    target = np.zeros((30, 40), np.int64)
    target[:, 20:] = 1
    pred = np.zeros_like(target)
    pred[:, 22:] = 1  # the boundary 2 pixels to the right
    segbench = run(pred, target, 2, bf_tolerance=0.04)
    matlab = run(pred, target, 2, bf_tolerance=0.04, bf_convention="matlab")
    assert segbench[1] == pytest.approx(1.0)
    np.testing.assert_allclose(matlab, matlab_oracle(pred, target, 2, tol=0.04), rtol=1e-12)
    assert matlab[1] < 1.0


def test_one_class_with_a_stray_blob_scores_as_each_convention_says():
    """An all-road image predicted as road with one stray blob: segbench scores road 0 (its
    ground truth has no boundary inside the image, the prediction has the blob's); MATLAB
    counts the image border as boundary and scores it near 1."""
    target = np.zeros((60, 80), np.int64)
    pred = target.copy()
    pred[20:26, 30:38] = 1
    segbench = boundary_figures(*[a.numpy() for a in _stats(pred, target, "segbench")])
    matlab = boundary_figures(*[a.numpy() for a in _stats(pred, target, "matlab")])
    assert segbench["bf"] == 0.0
    want = np.nanmean(matlab_oracle(pred, target, 2))
    assert matlab["bf"] == pytest.approx(want) and matlab["bf"] > 0.9


def _stats(pred, target, convention):
    return boundary_stats(
        torch.from_numpy(pred)[None], torch.from_numpy(target)[None], 2, IGNORE,
        BoundaryOptions(bf_convention=convention),
    )  # fmt: skip


def test_a_missed_class_is_left_out_in_matlab_and_scores_0_in_segbench():
    target = np.zeros((40, 40), np.int64)
    target[10:20, 10:20] = 1
    pred = np.zeros_like(target)  # class 1 never predicted
    assert run(pred, target, 2)[1] == 0.0
    assert np.isnan(run(pred, target, 2, bf_convention="matlab")[1])


def test_the_convention_is_checked_and_recorded(tmp_path):
    from segbench.engine.run import train
    from tests.conftest import compose_config

    with pytest.raises(ValueError, match=r"boundary.bf_convention='bsds': expected one of"):
        BoundaryOptions(bf_convention="bsds")
    overrides = [
        "debug=fast", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "logger=none", "dataset.subset.train=4", "dataset.subset.val=2",
        "dataset.subset.test=2", "callbacks.run_plots=null", "callbacks.eval_outputs=null",
        "boundary.bf_convention=matlab",
    ]  # fmt: skip
    res = train(compose_config("train", overrides, tmp_path / "run"))
    assert res["boundary"]["bf_convention"] == "matlab"
    from segbench.leaderboard.build import build_tables
    from segbench.leaderboard.records import collect
    from segbench.leaderboard.render import notes

    (board,) = build_tables(collect([tmp_path / "run"])[0], preset="segnet")
    assert any("BF convention matlab" in note for note in notes(board))
