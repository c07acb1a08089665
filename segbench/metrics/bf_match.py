"""The distance test of the BF score's ``segbench`` and ``matlab`` conventions: how many pixels
of one boundary lie within a radius of the other boundary's pixels of their class (see
:mod:`segbench.metrics.boundary`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["matched"]


def _dy_order(r: int) -> list[int]:
    return [0] + [s * dy for dy in range(1, r + 1) for s in (1, -1)]


def _half_width(radius: float, dy: int, strict: bool) -> int:
    """The largest ``dx >= 0`` with ``dx^2 + dy^2 <= radius^2`` (``< radius^2`` when
    ``strict``); -1 when there is none."""
    limit = radius * radius - dy * dy
    if limit < 0 or (strict and limit <= 0):
        return -1
    half = int(math.floor(math.sqrt(limit)))
    while (half + 1) ** 2 <= limit:  # floating-point sqrt, made exact
        half += 1
    while half >= 0 and (half * half > limit or (strict and half * half >= limit)):
        half -= 1
    return half


def matched(
    query: Tensor,
    query_label: Tensor,
    mark: Tensor,
    mark_label: Tensor,
    radius: float,
    k: int,
    strict: bool = False,
) -> Tensor:
    """``(K,)`` int64: per class, how many ``query`` pixels lie within Euclidean distance
    ``radius`` of a ``mark`` pixel of their own label (``< radius`` when ``strict``, else
    ``<=``).

    Args:
        query, mark: ``(H, W)`` bool maps; ``query_label``, ``mark_label``: ``(H, W)`` labels.

    Each mark is a sorted code ``(label, row, column)``. A disk is the union of its rows: for
    each ``|dy| <= radius`` (nearest rows first; a query found is not looked up again) a
    query looks for a mark of its label in the row segment ``|dx| <= sqrt(radius^2 - dy^2)``
    with one binary search."""
    h, w = query.shape
    marks = (mark_label.long() * h * w + torch.arange(h * w, device=mark.device).view(h, w))[mark]
    marks = marks.sort().values
    if marks.numel() == 0:
        return torch.zeros(k, dtype=torch.int64)
    y, x = query.nonzero(as_tuple=True)
    label = query_label[y, x].long()
    hits = torch.zeros(k, dtype=torch.int64, device=query.device)
    pending = torch.arange(y.numel(), device=y.device)
    r = int(math.floor(radius))
    for dy in _dy_order(r):
        if pending.numel() == 0:
            break
        half = _half_width(radius, dy, strict)
        if half < 0:
            continue
        yy = y[pending] + dy
        xx = x[pending]
        row = (label[pending] * h + yy) * w
        lo = row + (xx - half).clamp_min(0)
        hi = row + (xx + half).clamp_max(w - 1)
        at = torch.searchsorted(marks, lo).clamp_max(marks.numel() - 1)
        found = (marks[at] >= lo) & (marks[at] <= hi) & (yy >= 0) & (yy < h)
        hits += torch.bincount(label[pending[found]], minlength=k)
        pending = pending[~found]
    return hits.cpu()
