"""``segbench bench --sections boundary``: what the boundary figures cost per image.

On seeded synthetic label maps (smooth regions of ``k`` classes, a prediction with shifted
boundaries and noise blobs, a void strip) at CamVid's 360x480 and Cityscapes' 1024x2048, in
turns, median of ``repeats``: seconds per image of
:func:`segbench.metrics.boundary.boundary_stats` (the BF score and the boundary IoU together, as
the evaluation computes them), in each BF convention (``boundary.bf_convention``), against the
per-image pixel counts of every other figure (:func:`segbench.metrics.per_image.image_counts`),
on the machine's threads.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from segbench.metrics.boundary import BF_CONVENTIONS, BoundaryOptions, boundary_stats
from segbench.metrics.per_image import image_counts

__all__ = ["bench_boundary", "bench_boundary_labels", "synthetic_labels"]

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


def _time(pairs, k: int, ignore: int, convention: str, repeats: int) -> tuple[float, float]:
    """Seconds per image of the boundary figures in ``convention`` and of the pixel counts over
    ``pairs`` of ``(pred, target)``: the median of ``repeats`` rounds."""
    chosen = BoundaryOptions(bf_convention=convention)
    ours, counts = [], []
    for _ in range(repeats):
        ours.append(0.0)
        counts.append(0.0)
        for pred, target in pairs:
            start = time.perf_counter()
            boundary_stats(pred, target, k, ignore, chosen)
            ours[-1] += (time.perf_counter() - start) / len(pairs)
            start = time.perf_counter()
            image_counts(pred, target, k, ignore)
            counts[-1] += (time.perf_counter() - start) / len(pairs)
    return statistics.median(ours), statistics.median(counts)


def bench_boundary(
    cases: tuple[tuple[tuple[int, int], int], ...] = (((360, 480), 11), ((1024, 2048), 19)),
    repeats: int = 3,
    conventions: tuple[str, ...] = BF_CONVENTIONS,
) -> dict:
    """Seconds per image of the boundary figures (per BF convention) and of the pixel counts,
    per case."""
    options = BoundaryOptions()
    rows = []
    for size, k in cases:
        pred, target = synthetic_labels(k, size)
        for convention in conventions:
            ours, counts = _time([(pred, target)], k, IGNORE, convention, repeats)
            rows.append(
                {
                    "size": list(size),
                    "classes": k,
                    "bf_convention": convention,
                    "boundary_s": ours,
                    "counts_s": counts,
                    "ratio": ours / counts,
                }
            )
    return {
        "options": {"bf_tolerance": options.bf_tolerance, "iou_dilation": options.iou_dilation},
        "threads": torch.get_num_threads(),
        "rows": rows,
    }


def bench_boundary_labels(
    folder: str | Path,
    k: int,
    size: tuple[int, int] | None = None,
    limit: int | None = None,
    shift: int = 3,
    conventions: tuple[str, ...] = BF_CONVENTIONS,
) -> dict:
    """Seconds per image of the boundary figures on real label maps: the PNGs of ``folder``
    (sorted; the first ``limit``), each scored against the next one shifted ``shift`` pixels to
    the right (a prediction with real structure and real errors; its labels ``>= k`` made 0),
    resized (nearest) to ``size`` when given; labels ``>= k`` are void in the target."""
    import numpy as np
    from PIL import Image

    files = sorted(Path(folder).glob("*.png"))[: limit or None]
    if len(files) < 2:
        raise ValueError(f"--boundary-labels {folder}: expected 2 or more .png label maps there")

    def read(path: Path) -> torch.Tensor:
        image = Image.open(path)
        if size is not None:
            image = image.resize((size[1], size[0]), Image.NEAREST)
        return torch.from_numpy(np.asarray(image).astype(np.int64))

    labels = [read(f) for f in files]
    pairs = []
    for target, after in zip(labels, labels[1:]):
        pred = torch.roll(after, shifts=shift, dims=1).clone()
        pred[pred >= k] = 0
        pairs.append((pred[None], target[None]))
    rows = []
    for convention in conventions:
        ours, counts = _time(pairs, k, k, convention, 1)
        rows.append(
            {
                "size": list(pairs[0][1].shape[-2:]),
                "classes": k,
                "bf_convention": convention,
                "images": len(pairs),
                "boundary_s": ours,
                "counts_s": counts,
                "ratio": ours / counts,
            }
        )
    return {"folder": str(folder), "shift": shift, "rows": rows}
