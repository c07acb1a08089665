"""``segbench bench --sections crf``: segbench's dense CRF against the original C++ one.

The reference is Krähenbühl & Koltun's implementation as ``pydensecrf2`` (installed with the dev
dependency group; the section is skipped with a note without it). Both run DeepLab-LargeFOV's
parameters (bilateral w 4, xy std 121, rgb std 5; Gaussian w 3, xy std 3), 10 mean-field
iterations, one CPU thread, on the same seeded synthetic scene (smooth regions, one colour per
class with shading and texture noise, unaries that are right on about 70 % of the pixels), for
each normalisation (``symmetric``: the C++ default ``NORMALIZE_SYMMETRIC``; ``after``:
``NORMALIZE_AFTER``), in turns, median of ``repeats``. Reported: seconds of each, their ratio,
and the share of pixels whose labels agree.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from segbench.inference.crf import IMAGENET_MEAN, IMAGENET_STD, NORMALIZATIONS, DenseCRF

__all__ = ["DEEPLAB_CRF", "bench_crf", "synthetic_scene"]

DEEPLAB_CRF = {
    "bilateral_weight": 4.0,
    "bilateral_xy_std": 121.0,
    "bilateral_rgb_std": 5.0,
    "gaussian_weight": 3.0,
    "gaussian_xy_std": 3.0,
}


def _smooth(gen: torch.Generator, c: int, size: tuple[int, int], scale: int) -> Tensor:
    h, w = size
    low = torch.randn(1, c, max(1, h // scale), max(1, w // scale), generator=gen)
    return F.interpolate(low, size=size, mode="bicubic", align_corners=False)[0]


def synthetic_scene(
    k: int, size: tuple[int, int] = (360, 480), seed: int = 0, texture: float = 20.0
) -> tuple[Tensor, Tensor]:
    """``(rgb (3, H, W) in 0-255, logits (k, H, W))`` of a seeded scene of ``k`` classes."""
    gen = torch.Generator().manual_seed(seed)
    labels = _smooth(gen, k, size, 40).argmax(0)
    palette = torch.rand(k, 3, generator=gen) * 200 + 25
    rgb = palette[labels].permute(2, 0, 1) + 15 * _smooth(gen, 3, size, 60)
    rgb = (rgb + texture * torch.randn(3, *size, generator=gen)).clamp(0, 255).round()
    onehot = F.one_hot(labels, k).permute(2, 0, 1).float()
    logits = 3.0 * onehot + 0.8 * _smooth(gen, k, size, 16) + torch.randn(k, *size, generator=gen)
    return rgb, logits


def _oracle(dcrf, rgb: Tensor, logits: Tensor, normalization: str) -> Tensor:
    from pydensecrf.utils import unary_from_softmax

    k, h, w = logits.shape
    kind = {"symmetric": dcrf.NORMALIZE_SYMMETRIC, "after": dcrf.NORMALIZE_AFTER}[normalization]
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(torch.softmax(logits, 0).numpy())))
    p = DEEPLAB_CRF
    crf.addPairwiseGaussian(
        sxy=p["gaussian_xy_std"], compat=p["gaussian_weight"], normalization=kind
    )
    crf.addPairwiseBilateral(
        sxy=p["bilateral_xy_std"],
        srgb=p["bilateral_rgb_std"],
        rgbim=np.ascontiguousarray(rgb.permute(1, 2, 0).numpy().astype(np.uint8)),
        compat=p["bilateral_weight"],
        normalization=kind,
    )
    return torch.from_numpy(np.array(crf.inference(10)).reshape(k, h, w))


def _segbench(rgb: Tensor, logits: Tensor, normalization: str) -> Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    crf = DenseCRF(iterations=10, normalization=normalization, **DEEPLAB_CRF)
    with torch.no_grad():
        return crf(logits[None], ((rgb / 255.0 - mean) / std)[None])[0]


def bench_crf(
    size: tuple[int, int] = (360, 480), labels: tuple[int, ...] = (21, 11), repeats: int = 3
) -> dict:
    """Both CRFs timed in turns on one thread; ``{"note": ...}`` without ``pydensecrf2``."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        return {"note": "no CRF reference measured: pydensecrf2 is not installed (uv sync)"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for k in labels:
            rgb, logits = synthetic_scene(k, size)
            for normalization in NORMALIZATIONS:
                ours, theirs = [], []
                for _ in range(repeats):
                    start = time.perf_counter()
                    a = _segbench(rgb, logits, normalization)
                    ours.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    b = _oracle(dcrf, rgb, logits, normalization)
                    theirs.append(time.perf_counter() - start)
                agree = (a.argmax(0) == b.argmax(0)).double().mean().item()
                rows.append(
                    {
                        "labels": k,
                        "normalization": normalization,
                        "segbench_s": statistics.median(ours),
                        "pydensecrf2_s": statistics.median(theirs),
                        "ratio": statistics.median(ours) / statistics.median(theirs),
                        "agreement": agree,
                    }
                )
    finally:
        torch.set_num_threads(threads)
    return {"size": list(size), "iterations": 10, "threads": 1, "rows": rows}
