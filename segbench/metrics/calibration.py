"""Calibration of per-pixel class probabilities: top-label ECE, NLL and Brier score.

The probabilities of a pixel are ``softmax(scores)`` over the class dimension, whether the
scores are logits or log-probabilities (``softmax`` of log-probabilities gives the
probabilities back). Pixels labelled ``ignore_index`` are left out.

* **ECE** (expected calibration error; Guo et al. 2017, "On Calibration of Modern Neural
  Networks"): the valid pixels are binned by their top-label confidence ``max_k p_k`` into
  ``bins`` equal-width bins over ``[0, 1]`` (bin ``b`` holds ``[b/bins, (b+1)/bins)``, the last
  one also ``1``), and ``ECE = sum_b (n_b / N) |acc_b - conf_b|`` with ``acc_b`` the fraction of
  the bin's pixels whose argmax is right and ``conf_b`` their mean confidence.
* **NLL**: the mean of ``-log p_target``.
* **Brier score** (Brier 1950, multi-class): the mean of ``sum_k (p_k - [k == target])^2``,
  summed over the classes, so it lies in ``[0, 2]``.

Only per-bin sums and three totals are kept, never pixels, and they are summed across
processes, so one process and N DDP ranks give the same figures on the same images.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

from segbench.metrics.evaluator import EvalBatch, Figure, FigureResult, Totals

__all__ = ["CalibrationFigures", "Calibration", "calibration_record"]


class Calibration(Metric):
    """Accumulates calibration statistics of per-pixel class scores over batches.

    Args:
        num_classes: number of real classes ``K``; labels must lie in ``[0, K)`` and the scores
            have ``K`` channels.
        ignore_index: label value excluded from every figure (``None``: none is).
        bins: number of equal-width confidence bins over ``[0, 1]`` for the ECE and the
            reliability diagram (15, as Guo et al. 2017).
        **kwargs: passed to :class:`torchmetrics.Metric`.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(
        self, num_classes: int, ignore_index: int | None = 255, bins: int = 15, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
        if ignore_index is not None and (
            isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
        ):
            raise ValueError(f"ignore_index must be an integer or None, got {ignore_index!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.bins = bins
        i64, f64 = torch.int64, torch.float64
        self.add_state("bin_count", default=torch.zeros(bins, dtype=i64), dist_reduce_fx="sum")
        self.add_state("bin_correct", default=torch.zeros(bins, dtype=i64), dist_reduce_fx="sum")
        self.add_state("bin_confidence", default=torch.zeros(bins, dtype=f64), dist_reduce_fx="sum")
        self.add_state("nll_sum", default=torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("brier_sum", default=torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("pixels", default=torch.zeros((), dtype=i64), dist_reduce_fx="sum")

    def _check(self, scores: Tensor, target: Tensor) -> None:
        if not scores.is_floating_point():
            raise ValueError(
                f"scores must be floating-point logits or log-probabilities, got {scores.dtype}"
            )
        if target.is_floating_point() or target.is_complex():
            raise ValueError(f"target must hold integer labels, got {target.dtype}")
        if (
            scores.dim() != target.dim() + 1
            or scores.dim() < 2
            or scores.shape[0] != target.shape[0]
            or scores.shape[2:] != target.shape[1:]
        ):
            raise ValueError(
                f"scores shape {tuple(scores.shape)} does not match target "
                f"{tuple(target.shape)}: expected scores (B, K, H, W) and target (B, H, W)"
            )
        if scores.shape[1] != self.num_classes:
            raise ValueError(
                f"scores have {scores.shape[1]} channels (shape {tuple(scores.shape)}), "
                f"expected num_classes={self.num_classes}"
            )

    def update(self, scores: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            scores: ``(B, K, H, W)`` logits or log-probabilities (any floating dtype; the
                softmax is taken in float32, or float64 for float64 scores).
            target: ``(B, H, W)`` ground-truth labels.
        """
        self._check(scores, target)
        target = target.long()
        valid = target != self.ignore_index if self.ignore_index is not None else None
        labels = target[valid] if valid is not None else target.flatten()
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)].unique()[:10].tolist()
            raise ValueError(
                f"label values {bad} lie outside [0, {self.num_classes}) and are not the "
                f"ignore index ({self.ignore_index})"
            )
        if not labels.numel():
            return
        # one image at a time: the (1, K, H, W) temporaries below stay a fraction of the
        # batch's logits (ADE20K: 150 x 512 x 512 floats per image)
        for i in range(scores.shape[0]):
            self._add(
                scores[i : i + 1], target[i : i + 1], None if valid is None else valid[i : i + 1]
            )

    def _add(self, scores: Tensor, target: Tensor, valid: Tensor | None) -> None:
        """Accumulate checked scores and labels (``valid``: the pixels that count)."""
        labels = target[valid] if valid is not None else target.flatten()
        if not labels.numel():
            return
        dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
        # (B, K, H, W) temporaries: the log-probabilities (log_softmax casts low-precision
        # scores to float32 first) and one exp of them; everything after is per pixel
        logp = torch.log_softmax(scores.detach(), dim=1, dtype=dtype)
        top, pred = logp.max(dim=1)  # (B, H, W)
        safe = target if valid is None else torch.where(valid, target, 0)
        logp_t = logp.gather(1, safe.unsqueeze(1)).squeeze(1)
        sum_sq = logp.exp().square_().sum(dim=1)
        del logp

        def pick(x: Tensor) -> Tensor:
            return (x[valid] if valid is not None else x.flatten()).to(torch.float64)

        conf, logp_t, sum_sq = pick(top).exp().clamp(max=1.0), pick(logp_t), pick(sum_sq)
        correct = (pred[valid] if valid is not None else pred.flatten()) == labels
        if torch.isnan(conf).any():
            raise ValueError("scores hold NaN or +inf values at valid pixels")

        p_t = logp_t.exp()
        # sum_k (p_k - [k = t])^2 = (1 - p_t)^2 + sum_{k != t} p_k^2
        brier = (1.0 - p_t).square() + (sum_sq - p_t.square()).clamp(min=0.0)

        edges = torch.arange(self.bins + 1, dtype=torch.float64, device=conf.device) / self.bins
        # bin b holds [edges[b], edges[b + 1]); a confidence of exactly 1 lands in the last bin
        idx = torch.bucketize(conf, edges[1:-1], right=True)
        self.bin_count += torch.bincount(idx, minlength=self.bins)
        self.bin_correct += torch.bincount(idx[correct], minlength=self.bins)
        # index_add_ rather than a weighted bincount: deterministic under
        # torch.use_deterministic_algorithms on CUDA, where a weighted bincount refuses to run
        self.bin_confidence.index_add_(0, idx, conf)
        self.nll_sum += -logp_t.sum()
        self.brier_sum += brier.sum()
        self.pixels += labels.numel()

    def compute(self) -> dict[str, Tensor]:
        """The figures over everything added, on all processes.

        Returns:
            float64 scalars ``ece``, ``nll``, ``brier``; int64 ``pixels`` (valid pixels ``N``);
            per bin: int64 ``count``, float64 ``confidence`` (mean confidence) and ``accuracy``
            (fraction right; both NaN for an empty bin); float64 ``edges`` (``bins + 1``).
            Every float figure is NaN when no valid pixel was seen.
        """
        f64 = torch.float64
        device = self.bin_count.device
        nan = torch.tensor(float("nan"), dtype=f64, device=device)
        count = self.bin_count.to(f64)
        filled = count > 0
        confidence = torch.where(filled, self.bin_confidence / count.clamp(min=1), nan)
        accuracy = torch.where(filled, self.bin_correct.to(f64) / count.clamp(min=1), nan)
        n = self.pixels.to(f64)
        some = n > 0
        gap = (self.bin_correct.to(f64) - self.bin_confidence).abs().sum()
        return {
            "ece": torch.where(some, gap / n.clamp(min=1), nan),
            "nll": torch.where(some, self.nll_sum / n.clamp(min=1), nan),
            "brier": torch.where(some, self.brier_sum / n.clamp(min=1), nan),
            "pixels": self.pixels.clone(),
            "count": self.bin_count.clone(),
            "confidence": confidence,
            "accuracy": accuracy,
            "edges": torch.arange(self.bins + 1, dtype=f64, device=device) / self.bins,
        }


def _number(value) -> float | None:
    """A float, or None for NaN/inf (which strict JSON cannot hold)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _list(values) -> list:
    return values.tolist() if isinstance(values, Tensor) else list(values)


def _numbers(values) -> list[float | None]:
    return [_number(v) for v in _list(values)]


def calibration_record(values: dict) -> dict:
    """:meth:`Calibration.compute`'s output as the JSON-ready ``calibration`` entry of
    ``results.json``: plain floats and ints, ``None`` for NaN (empty bins, no valid pixel) and
    for an infinite NLL (a valid pixel whose label had probability exactly 0)."""
    count = [int(c) for c in _list(values["count"])]
    bins = len(count)
    return {
        "ece": _number(values["ece"]),
        "nll": _number(values["nll"]),
        "brier": _number(values["brier"]),
        "pixels": int(values["pixels"]),
        "bins": bins,
        "binning": f"{bins} equal-width bins of top-label confidence over valid pixels",
        "reliability": {
            "edges": _numbers(values["edges"]),
            "count": count,
            "confidence": _numbers(values["confidence"]),
            "accuracy": _numbers(values["accuracy"]),
        },
    }


class CalibrationFigures(Figure):
    """ECE, NLL and Brier score of the evaluation's probabilities (``softmax`` of the scores)
    and the reliability diagram's bins, summed over ranks (:class:`Calibration`)."""

    name = "calibration"

    def __init__(
        self, num_classes: int, ignore_index: int | None, class_names, bins: int = 15
    ) -> None:
        super().__init__(num_classes, ignore_index, class_names)
        self.metric = Calibration(num_classes, ignore_index, bins=bins)

    def update(self, batch: EvalBatch) -> dict[str, Tensor]:
        self.metric.update(batch.scores, batch.target)
        return {}

    def reset(self) -> None:
        self.metric.reset()

    def compute(self, totals: Totals) -> FigureResult:
        record = calibration_record(self.metric.compute())  # summed over ranks
        return FigureResult(
            record=record,
            entries={"calibration": record},
            logged={k: record[k] for k in ("ece", "nll", "brier")},
        )
