"""Tests for segbench.metrics.calibration (ECE / NLL / Brier) and plots.plot_reliability."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from segbench.metrics.calibration import Calibration, calibration_record
from segbench.plots import plot_reliability

BINS = 15


# --------------------------------------------------------------------------------------------
# Independent numpy reference: whole-array softmax, floor binning, explicit per-bin loop
# --------------------------------------------------------------------------------------------
def reference(scores: np.ndarray, target: np.ndarray, ignore_index=255, bins: int = BINS):
    """scores (B, K, H, W), target (B, H, W) -> dict of figures, all in float64."""
    x = np.moveaxis(np.asarray(scores, dtype=np.float64), 1, -1)  # (B, H, W, K)
    t = np.asarray(target).astype(np.int64)
    valid = t != ignore_index if ignore_index is not None else np.ones(t.shape, bool)
    x, t = x[valid], t[valid]  # (N, K), (N,)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    n = len(t)
    onehot = np.eye(p.shape[1])[t]
    conf = p.max(axis=1)
    right = p.argmax(axis=1) == t
    which = np.minimum(np.floor(conf * bins).astype(np.int64), bins - 1)
    count = np.zeros(bins, np.int64)
    mean_conf = np.full(bins, np.nan)
    acc = np.full(bins, np.nan)
    ece = 0.0
    for b in range(bins):
        m = which == b
        count[b] = m.sum()
        if count[b]:
            mean_conf[b] = conf[m].mean()
            acc[b] = right[m].mean()
            ece += count[b] / n * abs(acc[b] - mean_conf[b])
    return {
        "ece": ece,
        "nll": float(-np.log(p[np.arange(n), t]).mean()),
        "brier": float(((p - onehot) ** 2).sum(axis=1).mean()),
        "pixels": n,
        "count": count,
        "confidence": mean_conf,
        "accuracy": acc,
    }


def random_batch(gen: torch.Generator, b=2, k=5, h=9, w=11, scale=3.0, ignore=255):
    logits = torch.randn(b, k, h, w, generator=gen, dtype=torch.float64) * scale
    target = torch.randint(0, k, (b, h, w), generator=gen)
    # make the argmax right more often than chance, so the bins have some spread in accuracy
    agree = torch.rand(b, h, w, generator=gen) < 0.5
    target = torch.where(agree, logits.argmax(1), target)
    if ignore is not None:
        target[torch.rand(b, h, w, generator=gen) < 0.2] = ignore
    return logits, target


def assert_matches(values: dict, ref: dict) -> None:
    for key in ("ece", "nll", "brier"):
        assert values[key].dtype == torch.float64
        assert values[key].item() == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key
    assert int(values["pixels"]) == ref["pixels"]
    np.testing.assert_array_equal(values["count"].numpy(), ref["count"])
    for key in ("confidence", "accuracy"):
        np.testing.assert_allclose(values[key].numpy(), ref[key], rtol=1e-9, equal_nan=True)


# --------------------------------------------------------------------------------------------
# Against the reference
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_over_several_updates_logits_and_log_probs(seed):
    gen = torch.Generator().manual_seed(seed)
    batches = [random_batch(gen) for _ in range(3)]
    from_logits, from_log_probs = Calibration(5), Calibration(5)
    for logits, target in batches:
        from_logits.update(logits, target)
        from_log_probs.update(torch.log_softmax(logits, dim=1), target)
    ref = reference(
        np.concatenate([s.numpy() for s, _ in batches]),
        np.concatenate([t.numpy() for _, t in batches]),
    )
    assert ref["pixels"] < 3 * 2 * 9 * 11  # the ignore index is present
    a, b = from_logits.compute(), from_log_probs.compute()
    assert_matches(a, ref)
    assert_matches(b, ref)
    np.testing.assert_array_equal(a["edges"].numpy(), np.arange(BINS + 1) / BINS)
    for key in ("ece", "nll", "brier", "confidence", "accuracy"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-12, atol=1e-12, equal_nan=True)


def test_float32_scores_custom_bins_and_ignore_index():
    gen = torch.Generator().manual_seed(3)
    logits, target = random_batch(gen, b=3, k=4, h=8, w=8, ignore=11)
    metric = Calibration(4, ignore_index=11, bins=10)
    metric.update(logits.float(), target)
    ref = reference(logits.float().numpy(), target.numpy(), ignore_index=11, bins=10)
    values = metric.compute()
    for key in ("ece", "nll", "brier"):
        assert values[key].item() == pytest.approx(ref[key], rel=1e-5), key
    assert values["count"].sum().item() == ref["pixels"] == int(values["pixels"])
    assert len(values["edges"]) == 11


def test_ignore_index_none_counts_every_pixel():
    gen = torch.Generator().manual_seed(4)
    logits, target = random_batch(gen, ignore=None)
    metric = Calibration(5, ignore_index=None)
    metric.update(logits, target)
    assert_matches(metric.compute(), reference(logits.numpy(), target.numpy(), None))
    assert int(metric.compute()["pixels"]) == target.numel()


def test_hand_computed_two_pixels():
    # pixel 1: p = (0.75, 0.25), label 0 -> right, conf 0.75; pixel 2: p = (0.5, 0.5), label 1
    # -> argmax 0 (first of a tie) wrong, conf 0.5. (0.75, not 0.8: a confidence on a bin edge
    # lands on either side depending on the CPU's exp/log rounding.)
    p = torch.tensor([[0.75, 0.5], [0.25, 0.5]], dtype=torch.float64).reshape(1, 2, 1, 2)
    metric = Calibration(2, bins=10)
    metric.update(p.log(), torch.tensor([[[0, 1]]]))
    v = metric.compute()
    assert v["ece"].item() == pytest.approx(0.5 * abs(1 - 0.75) + 0.5 * abs(0 - 0.5))
    assert v["nll"].item() == pytest.approx(-(np.log(0.75) + np.log(0.5)) / 2)
    assert v["brier"].item() == pytest.approx((2 * 0.25**2 + 2 * 0.5**2) / 2)
    assert v["count"].tolist() == [0, 0, 0, 0, 0, 1, 0, 1, 0, 0]


def test_confidence_of_one_goes_in_the_last_bin():
    scores = torch.tensor([0.0, -1e4, -1e4]).reshape(1, 3, 1, 1)  # softmax is exactly (1, 0, 0)
    metric = Calibration(3)
    metric.update(scores, torch.zeros(1, 1, 1, dtype=torch.long))
    v = metric.compute()
    assert v["count"].tolist() == [0] * (BINS - 1) + [1]
    assert v["ece"].item() == 0.0 and v["brier"].item() == 0.0 and v["nll"].item() == 0.0


def test_no_valid_pixel_gives_nan_and_a_null_record():
    metric = Calibration(3)
    metric.update(torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), 255))
    v = metric.compute()
    assert all(torch.isnan(v[k]) for k in ("ece", "nll", "brier"))
    assert int(v["pixels"]) == 0 and v["count"].sum() == 0
    assert torch.isnan(v["confidence"]).all() and torch.isnan(v["accuracy"]).all()
    record = calibration_record(v)
    assert record["ece"] is None and record["nll"] is None and record["brier"] is None
    assert record["reliability"]["accuracy"] == [None] * BINS
    json.dumps(record, allow_nan=False)


# --------------------------------------------------------------------------------------------
# Calibrated and over-confident synthetic predictors
# --------------------------------------------------------------------------------------------
def calibrated_data(seed: int, batches: int = 8, k: int = 4, side: int = 64):
    """Per pixel a probability vector p ~ Dirichlet(0.6) and a label drawn from p, so the
    label is distributed exactly as the prediction says; (log p as (B, K, H, W), label)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        p = rng.dirichlet(np.full(k, 0.6), size=(4, side, side))  # (B, H, W, K)
        u = rng.random((4, side, side, 1))
        label = np.minimum((p.cumsum(-1) < u).sum(-1), k - 1)  # inverse-CDF draw from p
        log_p = np.log(np.maximum(p, 1e-12)).transpose(0, 3, 1, 2)
        out.append((torch.tensor(log_p, dtype=torch.float32), torch.from_numpy(label)))
    return out


# Measured (seed 0): 131,072 valid pixels (8 batches of 4 x 64 x 64, K = 4) give ECE = 0.0025
# for the calibrated predictor and 0.230 once its log-probabilities are sharpened x3
# (seeds 1-5: calibrated ECE 0.0026-0.0033).
def test_calibrated_predictor_has_near_zero_ece_and_overconfident_does_not():
    data = calibrated_data(seed=0)
    gen = torch.Generator().manual_seed(0)
    calibrated, sharpened = Calibration(4), Calibration(4)
    for log_p, label in data:
        # a per-pixel offset turns log-probabilities into logits without changing softmax
        offset = torch.randn(log_p.shape[0], 1, *log_p.shape[2:], generator=gen)
        calibrated.update(log_p + offset, label)
        sharpened.update(3.0 * log_p, label)
    good, bad = calibrated.compute(), sharpened.compute()
    assert int(good["pixels"]) == 8 * 4 * 64 * 64
    assert good["ece"].item() < 0.01
    assert bad["ece"].item() > 0.1
    assert bad["nll"].item() > good["nll"].item()
    assert bad["brier"].item() > good["brier"].item()
    # every well-filled bin of the calibrated predictor sits on the diagonal
    filled = good["count"] > 2000
    assert filled.sum() >= 5
    gaps = (good["accuracy"] - good["confidence"])[filled].abs()
    assert gaps.max().item() < 0.03


# --------------------------------------------------------------------------------------------
# Accumulation across processes
# --------------------------------------------------------------------------------------------
def test_halves_summed_equal_one_metric_fed_all():
    gen = torch.Generator().manual_seed(5)
    batches = [random_batch(gen) for _ in range(4)]
    whole, first, second = Calibration(5), Calibration(5), Calibration(5)
    for i, (logits, target) in enumerate(batches):
        whole.update(logits, target)
        (first if i < 2 else second).update(logits, target)
    expected = whole.compute()

    # the states summed by hand, as DDP's dist_reduce_fx="sum" does
    summed = Calibration(5)
    for name in summed._defaults:
        setattr(summed, name, getattr(first, name) + getattr(second, name))
        assert getattr(summed, name).dtype in (torch.int64, torch.float64)
    summed._update_count = 1

    first.merge_state(second)
    for merged in (summed.compute(), first.compute()):
        for key, value in expected.items():
            torch.testing.assert_close(merged[key], value, rtol=1e-12, atol=0, equal_nan=True)


# --------------------------------------------------------------------------------------------
# Input dtypes and bad input
# --------------------------------------------------------------------------------------------
def test_bf16_and_half_scores_are_accepted():
    gen = torch.Generator().manual_seed(6)
    logits, target = random_batch(gen)
    low = logits.to(torch.bfloat16)
    a, b = Calibration(5), Calibration(5)
    a.update(low, target)
    b.update(low.float(), target)  # the same values, already in float32
    va, vb = a.compute(), b.compute()
    for key in ("ece", "nll", "brier", "count", "confidence", "accuracy"):
        torch.testing.assert_close(va[key], vb[key], equal_nan=True)
    ref = reference(low.float().numpy(), target.numpy())
    assert va["nll"].item() == pytest.approx(ref["nll"], rel=1e-5)
    c = Calibration(5)
    c.update(logits.half(), target)
    assert torch.isfinite(c.compute()["ece"])


def test_scores_that_require_grad_and_uint8_targets():
    gen = torch.Generator().manual_seed(7)
    logits, target = random_batch(gen)
    metric = Calibration(5)
    metric.update(logits.float().requires_grad_(), target.to(torch.uint8))
    values = metric.compute()
    ref = reference(logits.float().numpy(), target.numpy())
    for key in ("ece", "nll", "brier"):
        assert values[key].item() == pytest.approx(ref[key], rel=1e-5), key
    assert int(values["pixels"]) == ref["pixels"]


@pytest.mark.parametrize(
    ("scores_shape", "target_shape", "words"),
    [
        ((2, 3, 4, 5), (2, 4, 6), "(2, 3, 4, 5) does not match target (2, 4, 6)"),
        ((2, 3, 4, 5), (3, 4, 5), "(2, 3, 4, 5) does not match target (3, 4, 5)"),
        ((2, 3, 4, 5), (2, 3, 4, 5), "does not match target (2, 3, 4, 5)"),
        ((2, 4, 4, 5), (2, 4, 5), "4 channels"),
    ],
)
def test_shape_mismatch_raises_naming_shapes(scores_shape, target_shape, words):
    metric = Calibration(3)
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        metric.update(torch.randn(scores_shape), torch.zeros(target_shape, dtype=torch.long))


@pytest.mark.parametrize("bad", [3, 7, -1])
def test_out_of_range_label_raises_naming_value(bad):
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    target[0, 1, 1] = bad
    metric = Calibration(3)
    with pytest.raises(ValueError, match=rf"\[{bad}\] lie outside \[0, 3\)"):
        metric.update(torch.randn(1, 3, 2, 2), target)
    with pytest.raises(ValueError, match=r"\[255\] lie outside"):
        Calibration(3, ignore_index=None).update(
            torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), 255)
        )


def test_other_bad_input_and_arguments():
    metric = Calibration(3)
    with pytest.raises(ValueError, match="floating-point"):
        metric.update(torch.zeros(1, 3, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2).long())
    with pytest.raises(ValueError, match="integer labels"):
        metric.update(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2))
    scores = torch.randn(1, 3, 2, 2)
    scores[0, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        metric.update(scores, torch.zeros(1, 2, 2, dtype=torch.long))
    for kwargs, words in (
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 3, "bins": 0}, "bins"),
        ({"num_classes": 3, "ignore_index": 2.5}, "ignore_index"),
    ):
        with pytest.raises(ValueError, match=words):
            Calibration(**kwargs)


# --------------------------------------------------------------------------------------------
# Record and plot
# --------------------------------------------------------------------------------------------
def test_record_is_json_ready_and_plot_writes_png(tmp_path):
    gen = torch.Generator().manual_seed(8)
    metric = Calibration(5)
    for _ in range(2):
        metric.update(*random_batch(gen))
    values = metric.compute()
    record = calibration_record(values)
    assert set(record) == {"ece", "nll", "brier", "pixels", "bins", "binning", "reliability"}
    assert record["bins"] == BINS and isinstance(record["pixels"], int)
    assert record["binning"] == "15 equal-width bins of top-label confidence over valid pixels"
    rel = record["reliability"]
    assert len(rel["edges"]) == BINS + 1 and len(rel["count"]) == BINS
    assert sum(rel["count"]) == record["pixels"]
    empty = [i for i, c in enumerate(rel["count"]) if c == 0]
    assert all(rel["accuracy"][i] is None and rel["confidence"][i] is None for i in empty)
    assert record["ece"] == pytest.approx(values["ece"].item())
    json.loads(json.dumps(record, allow_nan=False))

    path = plot_reliability(record, tmp_path / "figs" / "reliability.png", title="test")
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with warnings.catch_warnings():  # torchmetrics warns of compute() before any update()
        warnings.simplefilter("ignore", UserWarning)
        empty_record = calibration_record(Calibration(5).compute())
    assert plot_reliability(empty_record, tmp_path / "empty.png").stat().st_size > 1000


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_deterministic_mode_matches_cpu():
    gen = torch.Generator().manual_seed(9)
    batches = [random_batch(gen) for _ in range(2)]
    cpu, gpu = Calibration(5), Calibration(5).cuda()
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for logits, target in batches:
            cpu.update(logits, target)
            gpu.update(logits.cuda(), target.cuda())
        on_gpu = {k: v.cpu() for k, v in gpu.compute().items()}
    finally:
        torch.use_deterministic_algorithms(before)
    for key, value in cpu.compute().items():
        torch.testing.assert_close(on_gpu[key], value, equal_nan=True)


def test_ece_matches_torchmetrics_calibration_error():
    """An outside implementation of the same definition: torchmetrics' top-label L1
    calibration error with 15 bins, on the valid pixels."""
    from torchmetrics.classification import MulticlassCalibrationError

    gen = torch.Generator().manual_seed(3)
    k, ignore = 6, 255
    scores = torch.randn(3, k, 20, 24, generator=gen) * 2.5
    target = torch.randint(0, k, (3, 20, 24), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.15] = ignore
    ours = Calibration(k, ignore_index=ignore)
    ours.update(scores, target)
    theirs = MulticlassCalibrationError(num_classes=k, n_bins=15, norm="l1", ignore_index=ignore)
    theirs.update(torch.softmax(scores, dim=1), target)
    assert float(ours.compute()["ece"]) == pytest.approx(float(theirs.compute()), abs=1e-6)
