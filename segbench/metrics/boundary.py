"""Boundary accuracy, image by image: the BF score (Csurka, Larlus & Perronnin, "What is a good
evaluation measure for semantic segmentation?", BMVC 2013), as SegNet reports it on CamVid, and
the boundary IoU (Cheng, Girshick, Dollár, Berg & Kirillov, CVPR 2021).

Both are computed on the evaluated label maps (the labels' resolution), one image at a time, and
kept per image (``per_image.npz``), so that the dataset's figures are the same on one process
and on N (the rows are gathered, as the pixel counts of :mod:`segbench.metrics.per_image` are).

BF score. A class's *boundary* in a label map is the set of its pixels with a 4-neighbour of
another label inside the image (the image's own border is not a boundary; a ground-truth
pixel next to an ignored one is). For each image and each class present in its ground truth
(ignored pixels left out), with ``theta = bf_tolerance x the image diagonal`` (0.75 %: 4.5 px at
360x480):

* precision: the share of the predicted boundary's pixels within Euclidean distance ``theta``
  of the true boundary; recall: the share of the true boundary's pixels within ``theta`` of
  the predicted one; the class's F1 is ``2PR / (P + R)`` (0 when both are 0);
* predicted boundary pixels on ignored pixels are left out; a class with neither a true nor a
  predicted boundary (it fills the image) scores 1, one with only one of them 0.

An image's BF is the mean of its classes' F1; the dataset's BF the mean over the images that have
a valid pixel; a class's BF the mean over the images whose ground truth contains it.

Boundary IoU. A mask's boundary region is its pixels within distance ``d`` of its contour,
``M & ~erode(M, d)``: the erosion by a ``(2d+1) x (2d+1)`` square, pixels outside the image
counting as outside the mask (as in the paper's code, whose image border is a contour), with
``d = max(1, round(iou_dilation x diagonal))`` (2 %: 12 px at 360x480). Per class, over the
dataset, ``sum |G_d & P_d| / sum |G_d | P_d|`` with ``G_d`` and ``P_d`` the regions of the true and
predicted masks, ignored pixels left out of both: counts that add up across images like IoU's.
A class absent from every true and predicted map is left out of the mean.

That is ``boundary.bf_convention=segbench``. ``segnet`` (the default) is the BF of SegNet's
authors' script, BSDS's boundaries and one-to-one matching (:mod:`segbench.metrics.bf_segnet`).
``matlab`` is MATLAB's ``bfscore`` as ``evaluateSemanticSegmentation`` uses it: the image border
counts as boundary, predicted boundary pixels on void are kept, a ground-truth class that the
prediction misses entirely is left out of the image's mean (NaN, not 0), and a pixel matches at
a distance strictly below ``theta``.

Both are exact and cost a few passes over the image, whatever the number of classes: the bands
of every class at once are the pixels whose box is not uniform (two summed-area tables), and a
boundary pixel is matched by binary searches for the other boundary's pixels of its class in the
row segments of its disk, nearest rows first, so the cost grows with the boundary pixels left
unmatched, not with the pixels times the disk's area.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from segbench.metrics.bf_match import matched
from segbench.metrics.bf_segnet import segnet_bf
from segbench.metrics.evaluator import EvalBatch, Figure, FigureResult, Totals

__all__ = ["BoundaryFigures", "BoundaryOptions", "boundary_figures", "boundary_stats"]


# how the BF score treats the image border, void, a class the prediction misses and the
# tolerance's edge (see the module docstring)
BF_CONVENTIONS = ("segnet", "segbench", "matlab")


@dataclass(frozen=True)
class BoundaryOptions:
    """``boundary.*`` of the run config: whether the final evaluation computes the boundary
    figures, and their widths as fractions of the image diagonal."""

    enabled: bool = True
    bf_tolerance: float = 0.0075
    iou_dilation: float = 0.02
    bf_convention: str = "segnet"

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"boundary.enabled must be true or false, got {self.enabled!r}")
        if self.bf_convention not in BF_CONVENTIONS:
            raise ValueError(
                f"boundary.bf_convention={self.bf_convention!r}: expected one of "
                f"{', '.join(BF_CONVENTIONS)}"
            )
        for key in ("bf_tolerance", "iou_dilation"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and 0 < value < 1):
                raise ValueError(
                    f"boundary.{key} must be a fraction of the image diagonal in (0, 1), "
                    f"got {value!r} (the published values: "
                    f"{', '.join(f'{f.name}={f.default}' for f in fields(self)[1:3])})"
                )

    @classmethod
    def from_config(cls, cfg) -> BoundaryOptions:
        """From ``boundary`` of a run config (a mapping or ``None``: the defaults)."""
        if cfg is None:
            return cls()
        known = {"enabled", "bf_tolerance", "iou_dilation", "bf_convention"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(
                f"boundary.{unknown[0]}: unknown key; the keys are "
                + ", ".join(f"boundary.{k}" for k in sorted(known))
            )
        return cls(**{k: cfg[k] for k in cfg})


def _box_sums(values: Tensor, n: int) -> Tensor:
    """``(H, W)`` int64 -> ``(H - n + 1, W - n + 1)``: the sum over each ``n x n`` box that lies
    in the image (a summed-area table, four shifted reads)."""
    t = F.pad(values, (1, 0, 1, 0)).cumsum(-1).cumsum(-2)
    return t[n:, n:] - t[:-n, n:] - t[n:, :-n] + t[:-n, :-n]


def _band(labels: Tensor, d: int) -> Tensor:
    """``(H, W)`` -> bool: the pixels whose ``(2d+1)^2`` box leaves the image or holds another
    label, i.e. for every class at once its mask minus the mask's erosion (outside the image
    outside the mask). A box is uniform when ``sum (l - l_p)^2 = 0``, from two box sums."""
    h, w = labels.shape
    n = 2 * d + 1
    band = torch.ones(h, w, dtype=torch.bool, device=labels.device)
    if h < n or w < n:
        return band
    lab = labels.long()
    centre = lab[d : h - d, d : w - d]
    spread = _box_sums(lab * lab, n) - 2 * centre * _box_sums(lab, n) + n * n * centre * centre
    band[d : h - d, d : w - d] = spread != 0
    return band


def _edges(labels: Tensor, border: bool = False) -> Tensor:
    """``(H, W)`` -> bool: pixels with a 4-neighbour of another label (inside the image); with
    ``border``, also every pixel on the image's border (outside counts as another label)."""
    edge = torch.zeros_like(labels, dtype=torch.bool)
    if border:
        edge[0, :] = edge[-1, :] = True
        edge[:, 0] = edge[:, -1] = True
    across = labels[:, 1:] != labels[:, :-1]
    edge[:, 1:] |= across
    edge[:, :-1] |= across
    down = labels[1:, :] != labels[:-1, :]
    edge[1:, :] |= down
    edge[:-1, :] |= down
    return edge


def _image(
    pred: Tensor, target: Tensor, k: int, ignore_index: int | None, options: BoundaryOptions
) -> tuple[Tensor, Tensor]:
    """One image's ``(bf (K,) float64, NaN where the class is not in the ground truth;
    counts (2, K) int64: boundary intersection, boundary union)``."""
    h, w = target.shape
    diagonal = math.hypot(h, w)
    if ignore_index is None:
        valid = torch.ones_like(target, dtype=torch.bool)
    else:
        valid = target != ignore_index
    counts = torch.zeros(2, k, dtype=torch.int64)
    bf = torch.full((k,), math.nan, dtype=torch.float64)
    if not valid.any():
        return bf, counts

    def per_class(labels: Tensor, where: Tensor) -> Tensor:
        return torch.bincount(labels[where].long(), minlength=k)[:k].cpu()

    # boundary IoU: every class's inner band at once (the classes partition each map)
    d = max(1, round(options.iou_dilation * diagonal))
    true_band, pred_band = _band(target, d) & valid, _band(pred, d) & valid
    both = true_band & pred_band & (pred == target)
    counts[0] = per_class(target, both)
    counts[1] = per_class(target, true_band) + per_class(pred, pred_band) - counts[0]

    if options.bf_convention == "segnet":
        f1 = segnet_bf(pred.cpu().numpy(), target.cpu().numpy(), k, options.bf_tolerance)
        return torch.from_numpy(f1), counts

    # BF: each class of the ground truth, its boundary against the prediction's
    theta = options.bf_tolerance * diagonal
    matlab = options.bf_convention == "matlab"
    true_edge = _edges(target, border=matlab) & valid
    pred_edge = _edges(pred, border=matlab)
    if not matlab:  # MATLAB keeps the predicted boundary on void
        pred_edge &= valid
    true_n, pred_n = per_class(target, true_edge).double(), per_class(pred, pred_edge).double()
    precision = matched(pred_edge, pred, true_edge, target, theta, k, strict=matlab).double()
    recall = matched(true_edge, target, pred_edge, pred, theta, k, strict=matlab).double()
    precision = torch.where(pred_n > 0, precision / pred_n.clamp_min(1), 0.0)
    recall = torch.where(true_n > 0, recall / true_n.clamp_min(1), 0.0)
    total = precision + recall
    f1 = torch.where(total > 0, 2 * precision * recall / total.clamp_min(1e-300), 0.0)
    f1 = torch.where((true_n == 0) & (pred_n == 0), 1.0, f1)
    if matlab:  # a class the prediction misses entirely: left out of the image's mean
        f1 = torch.where(pred_n == 0, math.nan, f1)
    present = per_class(target, valid) > 0
    bf[present] = f1[present]
    return bf, counts


def boundary_stats(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    ignore_index: int | None,
    options: BoundaryOptions | None = None,
) -> tuple[Tensor, Tensor]:
    """The boundary figures of each image of a batch.

    Args:
        pred: predicted class indices ``(B, H, W)``.
        target: labels ``(B, H, W)`` in ``[0, K)`` or ``ignore_index``.

    Returns:
        ``bf (B, K)`` float64 (each class's BF F1 in each image, NaN where the class is not in
        the image's ground truth) and ``counts (B, 2, K)`` int64 (boundary IoU's intersection
        and union pixels), on the CPU.
    """
    options = options or BoundaryOptions()
    if pred.shape != target.shape or target.ndim != 3:
        raise ValueError(
            f"boundary_stats expects pred and target (B, H, W) of one shape, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    rows = [
        _image(p, t, num_classes, ignore_index, options) for p, t in zip(pred.long(), target.long())
    ]
    if not rows:
        return torch.zeros(0, num_classes, dtype=torch.float64), torch.zeros(
            0, 2, num_classes, dtype=torch.int64
        )
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


def _mean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def boundary_figures(bf: np.ndarray, counts: np.ndarray, every_image: bool = False) -> dict:
    """The dataset's boundary figures from the per-image ``bf (N, K)`` and ``counts (N, 2, K)``
    (see the module docstring); ``None`` where nothing defines a figure. ``every_image``
    (SegNet's convention): an image without a scored class counts as 0 in the dataset's mean."""
    bf = np.asarray(bf, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.int64)
    k = bf.shape[1] if bf.ndim == 2 else 0
    per_image = np.array(
        [np.nan if np.isnan(row).all() else np.nanmean(row) for row in bf], dtype=np.float64
    )
    if every_image:
        per_image = np.nan_to_num(per_image, nan=0.0)
    per_class = [_mean(bf[:, c]) for c in range(k)]
    inter, union = counts.sum(axis=0) if counts.size else (np.zeros(k), np.zeros(k))
    iou = [float(i / u) if u > 0 else None for i, u in zip(inter, union)]
    defined = [v for v in iou if v is not None]
    return {
        "bf": _mean(per_image),
        "bf_per_class": per_class,
        "bf_images": int((~np.isnan(per_image)).sum()),
        "boundary_iou": float(np.mean(defined)) if defined else None,
        "boundary_iou_per_class": iou,
    }


class BoundaryFigures(Figure):
    """The BF score and boundary IoU of the final evaluation (see the module docstring), kept
    per image as ``bf (N, K)`` and ``boundary_counts (N, 2, K)``.

    Args:
        options: the ``boundary.*`` keys (:class:`BoundaryOptions`; ``None``: the defaults).
            With ``enabled=false`` nothing is computed and ``results.json`` says so.
    """

    name = "boundary"

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None,
        class_names,
        options: BoundaryOptions | Mapping | None = None,
    ) -> None:
        super().__init__(num_classes, ignore_index, class_names)
        if not isinstance(options, BoundaryOptions):
            options = BoundaryOptions.from_config(options)
        self.options = options

    def update(self, batch: EvalBatch) -> dict[str, Tensor]:
        if not self.options.enabled:
            return {}
        bf, counts = boundary_stats(
            batch.pred, batch.target, self.num_classes, self.ignore_index, self.options
        )
        return {"bf": bf, "boundary_counts": counts}

    def compute(self, totals: Totals) -> FigureResult:
        names = self.class_names
        if not self.options.enabled or "bf" not in totals.arrays:
            empty = dict.fromkeys(names)
            return FigureResult(
                metrics={
                    "bf": None,
                    "boundary_iou": None,
                    "per_class_bf": empty,
                    "per_class_boundary_iou": dict(empty),
                },
                entries={
                    "boundary": {"computed": False, "why": "boundary.enabled=false: not computed"}
                },
                notes=["BF, boundary IoU: boundary.enabled=false: not computed"],
            )
        record = boundary_figures(
            totals.arrays["bf"],
            totals.arrays["boundary_counts"],
            every_image=self.options.bf_convention == "segnet",
        )
        record["bf_tolerance"] = self.options.bf_tolerance
        record["iou_dilation"] = self.options.iou_dilation
        record["bf_convention"] = self.options.bf_convention
        return FigureResult(
            record=record,
            metrics={
                "bf": record["bf"],
                "boundary_iou": record["boundary_iou"],
                "per_class_bf": dict(zip(names, record["bf_per_class"])),
                "per_class_boundary_iou": dict(zip(names, record["boundary_iou_per_class"])),
            },
            entries={
                "boundary": {
                    "computed": True,
                    "bf_tolerance": record["bf_tolerance"],
                    "iou_dilation": record["iou_dilation"],
                    "bf_convention": record["bf_convention"],
                    "bf_images": record["bf_images"],
                }
            },
            logged={"bf": record["bf"], "boundary_iou": record["boundary_iou"]},
            columns={
                "BF %": record["bf_per_class"],
                "bIoU %": record["boundary_iou_per_class"],
            },
            rows=[("BF", record["bf"]), ("boundary IoU", record["boundary_iou"])],
        )
