"""``boundary.bf_convention=segnet`` (the default) against an independent implementation of
SegNet's authors' BF script (``Scripts/computeBFmeasure.m``, alexgkendall/SegNet-Tutorial),
written here from the BSDS code it calls, not from segbench's:

* ``seg2bdry(mask, 'imageSize')`` built literally on BSDS's double-size grid (edgels between
  pixels, their corners, the border rows and columns copied inwards, every second sample kept);
* ``correspondPixels`` as the assignment BSDS's ``match.cc`` solves: each pixel of one boundary
  either pairs with a pixel of the other at distance ``d <= maxDist x diagonal`` (cost ``d``) or
  goes to an outlier (cost ``100 x maxDist x diagonal``), solved exactly here with scipy's
  ``linear_sum_assignment`` on the dense cost matrix;
* the script's sums: a class counts where either map has a boundary of it, the image's BF is
  the mean over counted classes, the dataset's the mean over all images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from segbench.metrics.bf_segnet import seg2bdry_codes, segnet_bf
from segbench.metrics.boundary import BoundaryOptions, boundary_figures, boundary_stats
from tests.test_boundary import IGNORE, scene


def seg2bdry(seg: np.ndarray) -> np.ndarray:
    """BSDS seg2bdry(seg, 'imageSize'), 0-based transcription of its MATLAB indexing."""
    tx, ty = seg.shape
    b = np.zeros((2 * tx + 1, 2 * ty + 1))
    ev = np.zeros((tx, ty), bool)
    ev[:-1, :] = seg[:-1, :] != seg[1:, :]
    eh = np.zeros((tx, ty), bool)
    eh[:, :-1] = seg[:, :-1] != seg[:, 1:]
    b[2::2, 1::2] = ev  # MATLAB bdry(3:2:end, 2:2:end)
    b[1::2, 2::2] = eh  # bdry(2:2:end, 3:2:end)
    b[2:-1:2, 2:-1:2] = np.maximum(
        np.maximum(eh[:-1, :-1], eh[1:, :-1]), np.maximum(ev[:-1, :-1], ev[:-1, 1:])
    )  # bdry(3:2:end-1, 3:2:end-1)
    b[0, :] = b[1, :]
    b[:, 0] = b[:, 1]
    b[-1, :] = b[-2, :]
    b[:, -1] = b[:, -2]
    return b[2::2, 2::2] > 0  # bdry(3:2:end, 3:2:end)


def correspond(bmap1: np.ndarray, bmap2: np.ndarray, max_dist: float = 0.0075) -> int:
    """How many pixels BSDS's min-cost matching pairs (exact assignment, dense)."""
    h, w = bmap1.shape
    r = max_dist * math.hypot(h, w)
    oc = 100 * r
    p1, p2 = np.argwhere(bmap1), np.argwhere(bmap2)
    n1, n2 = len(p1), len(p2)
    if n1 == 0 or n2 == 0:
        return 0
    big = 1e9
    d = np.sqrt(((p1[:, None, :] - p2[None, :, :]) ** 2).sum(-1))
    cost = np.full((n1 + n2, n2 + n1), big)
    cost[:n1, :n2] = np.where(d * d <= r * r, d, big)
    cost[:n1, n2:] = np.where(np.eye(n1, dtype=bool), oc, big)  # 1's outliers
    cost[n1:, :n2] = np.where(np.eye(n2, dtype=bool), oc, big)  # 2's outliers
    cost[n1:, n2:] = 0.0  # outlier to outlier
    rows, cols = linear_sum_assignment(cost)
    return int(((rows < n1) & (cols < n2) & (cost[rows, cols] < big)).sum())


def script_image(pred: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """One image's F1 per class as computeBFmeasure.m computes it (NaN: classcount 0)."""
    f1 = np.full(k, np.nan)
    for n in range(k):
        g, p = seg2bdry(target == n), seg2bdry(pred == n)
        if not g.any() and not p.any():
            continue
        hits = correspond(p, g)
        recall = hits / g.sum() if g.any() else 0.0
        precision = hits / p.sum() if p.any() else 0.0
        total = precision + recall
        f1[n] = 2 * precision * recall / total if total > 0 else 0.0
    return f1


def script_dataset(images) -> float:
    scores = []
    for f1 in images:
        scores.append(np.nanmean(f1) if not np.isnan(f1).all() else 0.0)
    return float(np.mean(scores))


def small_scene(seed: int):
    pred, target = scene(seed, h=24, w=32, k=4, ignore_share=0.03)
    return pred, target


@pytest.mark.parametrize("seed", range(8))
def test_boundaries_are_bsds_seg2bdry(seed):
    pred, target = small_scene(seed)
    h, w = target.shape
    for labels in (pred, target):
        codes = seg2bdry_codes(labels, 4)
        for c in range(4):
            got = np.zeros(h * w, bool)
            got[codes[codes // (h * w) == c] % (h * w)] = True
            np.testing.assert_array_equal(got.reshape(h, w), seg2bdry(labels == c))


@pytest.mark.parametrize("seed", range(8))
def test_segnet_bf_matches_the_script_written_independently(seed):
    pred, target = small_scene(seed)
    np.testing.assert_allclose(
        segnet_bf(pred, target, 4, 0.0075), script_image(pred, target, 4), rtol=1e-12,
        equal_nan=True,
    )  # fmt: skip


def test_the_dataset_mean_counts_every_image_and_void_is_no_class():
    """Through boundary_stats and boundary_figures (the default convention): the mean over all
    images, one of them uniform (no class counted: 0, as the script's sum leaves it); void
    (255) is 'not the class' in both maps, so a class's edge along void is a boundary."""
    pairs = [small_scene(s) for s in range(3)]
    uniform = np.zeros((24, 32), np.int64)
    pairs.append((uniform, uniform.copy()))
    pred = torch.from_numpy(np.stack([p for p, _ in pairs]))
    target = torch.from_numpy(np.stack([t for _, t in pairs]))
    bf, counts = boundary_stats(pred, target, 4, IGNORE)
    assert BoundaryOptions().bf_convention == "segnet"
    figures = boundary_figures(bf.numpy(), counts.numpy(), every_image=True)
    want = script_dataset([script_image(p, t, 4) for p, t in pairs])
    assert figures["bf"] == pytest.approx(want, rel=1e-12)
    assert figures["bf_images"] == 4 and np.isnan(bf[3].numpy()).all()


def test_a_class_in_one_map_only_scores_0_and_counts():
    target = np.zeros((30, 40), np.int64)
    pred = target.copy()
    pred[10:16, 10:18] = 1  # a blob of a class the ground truth lacks
    f1 = segnet_bf(pred, target, 2, 0.0075)
    np.testing.assert_array_equal(f1, [0.0, 0.0])  # both have a predicted boundary only
    np.testing.assert_array_equal(f1, script_image(pred, target, 2))


def _scene_at(shift: int) -> np.ndarray:
    labels = np.zeros((360, 480), np.int64)
    labels[:, 200 + shift :] = 1
    labels[100:150, 50 + shift : 90 + shift] = 2
    return labels


def test_at_camvid_size_the_tolerance_is_4_5_pixels():
    """At 360x480 the tolerance is 4.5 px: boundaries moved by 4 px all match one to one, by 5
    px the vertical ones do not (the script's figures, from the oracle, agree)."""
    target = _scene_at(0)
    near, far = _scene_at(4), _scene_at(5)
    np.testing.assert_allclose(segnet_bf(near, target, 3, 0.0075), [1.0, 1.0, 1.0])
    got = segnet_bf(far, target, 3, 0.0075)
    np.testing.assert_allclose(got, script_image(far, target, 3), rtol=1e-12)
    assert got[1] == 0.0 and (got < 1.0).all()  # class 1's only boundary is the vertical line
