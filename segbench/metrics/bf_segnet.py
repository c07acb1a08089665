"""The BF score as SegNet's authors computed it (``boundary.bf_convention=segnet``).

Their script, ``Scripts/computeBFmeasure.m`` in alexgkendall/SegNet-Tutorial ("An example script to
compute the BF measure described in SegNet, PAMI 2017"), uses the Berkeley segmentation
benchmark's (BSDS) tools. For each image and each class ``c``:

* the boundary of a map is BSDS's ``seg2bdry(map == c, 'imageSize')``: a pixel ``(i, j)`` is on it
  when the 2x2 block ``(i..i+1, j..j+1)`` is not all in or all out of the class; on the last row
  when ``(i, j)`` and ``(i, j+1)`` differ, on the last column when ``(i, j)`` and ``(i+1, j)`` do;
  the bottom-right pixel never (the image border is no boundary). Void is simply "not ``c``"
  in both maps: nothing is masked;
* the two boundaries are matched one to one with BSDS's ``correspondPixels`` at
  ``maxDist = 0.0075`` of the image diagonal (a pair matches when its Euclidean distance is at
  most ``maxDist x diagonal``: ``d^2 <= r^2`` in BSDS's ``match.cc``); precision is the share of
  predicted boundary pixels matched, recall that of true ones, F1 ``2PR / (P + R)`` (0 when both
  are 0);
* the class counts in the image's mean when either map has a boundary of it (so a class present
  in only one of them scores 0); an image's BF is the mean over its counted classes, the
  dataset's the mean over *all* images, an image with no counted class contributing 0.

``correspondPixels`` solves a minimum-cost assignment (CSA) in which an unmatched pixel costs
``100 x maxDist``; since one more match saves at least ``199 x maxDist``, its optimum is a
maximum matching, unless an augmenting path would lengthen the total distance by more than that
(a path of hundreds of pixels, which does not arise on label maps). segbench takes a maximum
matching of the same graph (a unit-capacity maximum flow, Dinic's algorithm, scipy);
``tests/test_bf_segnet.py`` checks it against BSDS's objective solved exactly.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow

__all__ = ["segnet_bf", "seg2bdry_codes"]


def seg2bdry_codes(labels: np.ndarray, k: int) -> np.ndarray:
    """``(H, W)`` labels -> sorted unique int64 codes ``c * H * W + i * W + j``: every class
    ``c < k`` whose BSDS ``seg2bdry`` boundary holds pixel ``(i, j)`` (see the module docstring),
    for every class at once."""
    h, w = labels.shape
    lab = labels.astype(np.int64, copy=False)
    index = np.arange(h * w, dtype=np.int64).reshape(h, w)
    parts = []

    def add(stack: list[np.ndarray], where: np.ndarray, at: np.ndarray) -> None:
        # every label of a non-uniform group is a class with a boundary there
        for member in stack:
            c = member[where]
            keep = c < k
            parts.append(c[keep] * (h * w) + at[where][keep])

    if h > 1 and w > 1:
        block = [lab[:-1, :-1], lab[:-1, 1:], lab[1:, :-1], lab[1:, 1:]]
        mixed = (block[0] != block[1]) | (block[0] != block[2]) | (block[0] != block[3])
        add(block, mixed, index[:-1, :-1])
    if w > 1:  # the last row: its horizontal neighbours
        row = [lab[-1, :-1], lab[-1, 1:]]
        add(row, row[0] != row[1], index[-1, :-1])
    if h > 1:  # the last column: its vertical neighbours
        col = [lab[:-1, -1], lab[1:, -1]]
        add(col, col[0] != col[1], index[:-1, -1])
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(parts))


def _disk(radius: float) -> tuple[np.ndarray, np.ndarray]:
    r = int(math.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy * dy + dx * dx <= radius * radius
    return dy[keep].astype(np.int64), dx[keep].astype(np.int64)


def _matched(pred: np.ndarray, true: np.ndarray, shape: tuple[int, int], radius: float, k: int):
    """Per class, the size of a maximum one-to-one matching between the predicted and true
    boundary pixels (codes) of that class within ``radius``."""
    h, w = shape
    if pred.size == 0 or true.size == 0:
        return np.zeros(k, dtype=np.int64)
    cls, pix = np.divmod(pred, h * w)
    y, x = np.divmod(pix, w)
    dy, dx = _disk(radius)
    # first, which offsets land on any true boundary pixel (one gather from a padded map) ...
    r = int(math.ceil(radius))
    wide = w + 2 * r
    occupied = np.zeros((h + 2 * r, wide), dtype=bool)
    ty, tx = np.divmod(true % (h * w), w)
    occupied[ty + r, tx + r] = True
    near = occupied.ravel()[((y + r) * wide + x + r)[:, None] + (dy * wide + dx)[None, :]]
    node, k_off = near.nonzero()
    # ... then, of those, which hold a true boundary pixel of the node's own class
    code = cls[node] * (h * w) + (y[node] + dy[k_off]) * w + x[node] + dx[k_off]
    at = np.searchsorted(true, code).clip(max=true.size - 1)
    same = true[at] == code
    rows, cols = node[same], at[same]
    # a maximum matching as a unit-capacity maximum flow, source -> predicted -> true -> sink,
    # by Dinic's algorithm (scipy's maximum_bipartite_matching can take exponential time on the
    # ladder-like graphs two nearby lines make: scipy issue 26147)
    n, m = pred.size, true.size
    source, sink = n + m, n + m + 1
    tails = np.concatenate([np.full(n, source), rows, n + np.arange(m)])
    heads = np.concatenate([np.arange(n), n + cols, np.full(m, sink)])
    network = csr_matrix(
        (np.ones(tails.size, dtype=np.int32), (tails, heads)), shape=(n + m + 2, n + m + 2)
    )
    sent = maximum_flow(network, source, sink, method="dinic").flow[source].toarray()[0, :n]
    return np.bincount(cls[sent > 0], minlength=k)[:k]


def segnet_bf(pred: np.ndarray, target: np.ndarray, k: int, tolerance: float) -> np.ndarray:
    """One image's ``(K,)`` float64 BF F1 per class in SegNet's convention, NaN for a class that
    neither map has a boundary of (left out of the image's mean).

    Args:
        pred, target: ``(H, W)`` label maps (the target's void, any label ``>= k``, is "no
            class"); ``tolerance``: the fraction of the diagonal (``boundary.bf_tolerance``)."""
    h, w = target.shape
    radius = tolerance * math.hypot(h, w)
    p, t = seg2bdry_codes(pred, k), seg2bdry_codes(target, k)
    p_n = np.bincount(p // (h * w), minlength=k)[:k].astype(np.float64)
    t_n = np.bincount(t // (h * w), minlength=k)[:k].astype(np.float64)
    hits = _matched(p, t, (h, w), radius, k).astype(np.float64)
    precision = np.divide(hits, p_n, out=np.zeros(k), where=p_n > 0)
    recall = np.divide(hits, t_n, out=np.zeros(k), where=t_n > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(k), where=total > 0)
    f1[(p_n == 0) & (t_n == 0)] = np.nan
    return f1
