"""``segbench bench --sections boundary``: what the boundary figures cost per image.

On seeded synthetic label maps (smooth regions of ``k`` classes, a prediction with shifted
boundaries and noise blobs, a void strip) at CamVid's 360x480 and Cityscapes' 1024x2048, in
turns, median of ``repeats``: seconds per image of
:func:`segbench.metrics.boundary.boundary_stats` (the BF score and the boundary IoU together, as
the evaluation computes them) against the per-image pixel counts of every other figure
(:func:`segbench.metrics.per_image.image_counts`), on the machine's threads.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from segbench.metrics.boundary import BoundaryOptions, boundary_stats
from segbench.metrics.per_image import image_counts

__all__ = ["bench_boundary", "synthetic_labels"]

IGNORE = 255


def synthetic_labels(k: int, size: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(pred, target)`` ``(1, H, W)`` int64 label maps of ``k`` classes (target with void)."""
    h, w = size
    gen = torch.Generator().manual_seed(seed)
    low = torch.randn(1, k, max(1, h // 40), max(1, w // 40), generator=gen)
    target = F.interpolate(low, size=size, mode="bicubic", align_corners=False)[0].argmax(0)
    pred = torch.roll(target, shifts=3, dims=1).clone()
    blobs = torch.rand(h // 8, w // 8, generator=gen) < 0.02
    blobs = F.interpolate(blobs[None, None].float(), size=size, mode="nearest")[0, 0].bool()
    pred[blobs] = torch.randint(0, k, (int(blobs.sum()),), generator=gen)
    target[torch.rand(h, w, generator=gen) < 0.03] = IGNORE
    return pred[None], target[None]


def bench_boundary(
    cases: tuple[tuple[tuple[int, int], int], ...] = (((360, 480), 11), ((1024, 2048), 19)),
    repeats: int = 3,
) -> dict:
    """Seconds per image of the boundary figures and of the pixel counts, per case."""
    options = BoundaryOptions()
    rows = []
    for size, k in cases:
        pred, target = synthetic_labels(k, size)
        ours, counts = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            boundary_stats(pred, target, k, IGNORE, options)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            image_counts(pred, target, k, IGNORE)
            counts.append(time.perf_counter() - start)
        rows.append(
            {
                "size": list(size),
                "classes": k,
                "boundary_s": statistics.median(ours),
                "counts_s": statistics.median(counts),
                "ratio": statistics.median(ours) / statistics.median(counts),
            }
        )
    return {
        "options": {"bf_tolerance": options.bf_tolerance, "iou_dilation": options.iou_dilation},
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
