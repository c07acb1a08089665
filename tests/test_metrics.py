"""Tests for segbench.metrics.ConfusionMatrix against the PASCAL VOC metric conventions."""

from __future__ import annotations

import os
import pickle
import socket
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segbench.metrics import ConfusionMatrix

SCALARS = ("pixel_acc", "mean_acc", "mIoU", "fwIoU", "mDice")
VECTORS = ("iou", "dice", "acc")


# --------------------------------------------------------------------------------------------
# Independent reference implementation (boolean masks per class, no confusion matrix)
# --------------------------------------------------------------------------------------------
def reference_metrics(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index=255):
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    valid = gt != ignore_index if ignore_index is not None else np.ones(gt.shape, dtype=bool)
    n_valid = int(valid.sum())
    iou = np.full(num_classes, np.nan)
    dice = np.full(num_classes, np.nan)
    acc = np.full(num_classes, np.nan)
    freq = np.zeros(num_classes)
    correct = 0
    for c in range(num_classes):
        p = (pred == c) & valid
        g = (gt == c) & valid
        inter = int((p & g).sum())
        union = int((p | g).sum())
        n_p, n_g = int(p.sum()), int(g.sum())
        correct += inter
        if union > 0:
            iou[c] = inter / union
        if n_p + n_g > 0:
            dice[c] = 2 * inter / (n_p + n_g)
        if n_g > 0:
            acc[c] = inter / n_g
        freq[c] = n_g / n_valid if n_valid else 0.0

    def mean_defined(v):
        d = v[~np.isnan(v)]
        return float(d.mean()) if d.size else float("nan")

    defined = ~np.isnan(iou)
    return {
        "pixel_acc": correct / n_valid if n_valid else float("nan"),
        "mean_acc": mean_defined(acc),
        "mIoU": mean_defined(iou),
        "fwIoU": float((freq[defined] * iou[defined]).sum()) if n_valid else float("nan"),
        "mDice": mean_defined(dice),
        "iou": iou,
        "dice": dice,
        "acc": acc,
    }


def to_numpy(result: dict) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in result.items()}


def assert_results_close(got: dict, expected: dict, rtol=1e-12, atol=1e-12):
    for k in SCALARS + VECTORS:
        np.testing.assert_allclose(
            np.asarray(got[k], dtype=np.float64),
            np.asarray(expected[k], dtype=np.float64),
            rtol=rtol,
            atol=atol,
            equal_nan=True,
            err_msg=k,
        )


def run_metric(preds, target, num_classes, ignore_index=255) -> dict:
    m = ConfusionMatrix(num_classes=num_classes, ignore_index=ignore_index)
    m.update(torch.as_tensor(preds), torch.as_tensor(target))
    return to_numpy(m.compute())


def random_case(seed: int, num_classes: int = 6, shape=(3, 17, 23), ignore_index=255):
    """Random labels where class 4 is absent everywhere, class 5 only predicted, ~10% ignored."""
    rs = np.random.RandomState(seed)
    gt = rs.randint(0, 4, size=shape)  # ground truth uses classes 0..3 only
    pred = gt.copy()
    flip = rs.rand(*shape) < 0.4
    pred[flip] = rs.choice([0, 1, 2, 3, 5], size=int(flip.sum()))  # 5 appears only in prediction
    ignored = rs.rand(*shape) < 0.1
    gt[ignored] = ignore_index
    # Some predictions at ignored pixels use class 4: they must not make class 4 "present".
    pred[ignored & (rs.rand(*shape) < 0.5)] = 4
    return pred, gt


# --------------------------------------------------------------------------------------------
# 1. Against the independent reference
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_matches_reference_on_random_data(seed):
    pred, gt = random_case(seed)
    # Sanity of the construction itself.
    assert (gt == 255).any() and (pred[gt == 255] == 4).any()
    assert not ((gt == 4).any() or (pred[gt != 255] == 4).any())
    assert (pred[gt != 255] == 5).any() and not (gt == 5).any()

    got = run_metric(pred, gt, num_classes=6)
    ref = reference_metrics(pred, gt, num_classes=6)
    assert_results_close(got, ref)

    # Class 4 is absent from both: NaN IoU/Dice/acc, and the means leave it out.
    assert np.isnan(got["iou"][4]) and np.isnan(got["dice"][4]) and np.isnan(got["acc"][4])
    present = [0, 1, 2, 3, 5]
    np.testing.assert_allclose(got["mIoU"], got["iou"][present].mean(), rtol=1e-12)
    np.testing.assert_allclose(got["mDice"], got["dice"][present].mean(), rtol=1e-12)
    assert np.isfinite(got["mIoU"]) and np.isfinite(got["mDice"])

    # Class 5 is predicted but absent from the ground truth: IoU 0, counted in the mean;
    # its recall is undefined and so it is left out of mean_acc.
    assert got["iou"][5] == 0.0 and got["dice"][5] == 0.0
    assert np.isnan(got["acc"][5])
    np.testing.assert_allclose(got["mIoU"], got["iou"][:4].sum() / 5, rtol=1e-12)
    np.testing.assert_allclose(got["mean_acc"], got["acc"][:4].mean(), rtol=1e-12)

    # fwIoU weights by ground-truth frequency, which sums to 1 over the valid pixels.
    valid = gt != 255
    freq = np.array([((gt == c) & valid).sum() for c in range(4)]) / valid.sum()
    np.testing.assert_allclose(got["fwIoU"], (freq * got["iou"][:4]).sum(), rtol=1e-12)

    for k in SCALARS:
        assert got[k].shape == () and got[k].dtype == np.float64
    for k in VECTORS:
        assert got[k].shape == (6,) and got[k].dtype == np.float64


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_matches_reference_uint8_targets_and_many_classes(seed):
    rs = np.random.RandomState(seed)
    num_classes = 21  # VOC
    gt = rs.randint(0, num_classes, size=(2, 31, 29)).astype(np.uint8)
    gt[rs.rand(*gt.shape) < 0.15] = 255
    pred = np.where(rs.rand(*gt.shape) < 0.7, gt, rs.randint(0, num_classes, size=gt.shape))
    pred = np.where(gt == 255, rs.randint(0, num_classes, size=gt.shape), pred).astype(np.int64)
    got = run_metric(pred, gt, num_classes=num_classes)
    assert_results_close(got, reference_metrics(pred, gt, num_classes))


# --------------------------------------------------------------------------------------------
# 2. Hand-computed case
# --------------------------------------------------------------------------------------------
def test_hand_computed_2x3():
    # gt   = [[0, 0, 1],      pred = [[0, 1, 1],
    #         [1, 2, 255]]            [1, 1, 0]]       (3 classes, last pixel ignored)
    # Valid pixels (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,1)   -> 5 pixels
    # Confusion matrix (rows gt, cols pred):
    #   gt0: [1, 1, 0]   gt1: [0, 2, 0]   gt2: [0, 1, 0]
    # class 0: TP=1, gt=2, pred=1, union=2 -> IoU 1/2, Dice 2/3, acc 1/2
    # class 1: TP=2, gt=2, pred=4, union=4 -> IoU 1/2, Dice 4/6 = 2/3, acc 1
    # class 2: TP=0, gt=1, pred=0, union=1 -> IoU 0,   Dice 0,   acc 0
    # mIoU   = (1/2 + 1/2 + 0) / 3 = 1/3
    # mDice  = (2/3 + 2/3 + 0) / 3 = 4/9
    # pixel  = 3/5 ; mean_acc = (1/2 + 1 + 0) / 3 = 1/2
    # fwIoU  = 2/5 * 1/2 + 2/5 * 1/2 + 1/5 * 0 = 2/5
    gt = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 1, 0]]])
    m = ConfusionMatrix(num_classes=3)
    m.update(pred, gt)
    assert torch.equal(m.confmat, torch.tensor([[1, 1, 0], [0, 2, 0], [0, 1, 0]]))
    r = to_numpy(m.compute())

    expected = {
        "mIoU": Fraction(1, 3),
        "mDice": Fraction(4, 9),
        "pixel_acc": Fraction(3, 5),
        "mean_acc": Fraction(1, 2),
        "fwIoU": Fraction(2, 5),
    }
    for k, v in expected.items():
        assert r[k] == pytest.approx(float(v), abs=1e-15), k
    np.testing.assert_allclose(r["iou"], [1 / 2, 1 / 2, 0], atol=1e-15)
    np.testing.assert_allclose(r["dice"], [2 / 3, 2 / 3, 0], atol=1e-15)
    np.testing.assert_allclose(r["acc"], [1 / 2, 1, 0], atol=1e-15)
    assert_results_close(r, reference_metrics(pred.numpy(), gt.numpy(), 3))


def test_hand_computed_absent_class_and_prediction_only_class():
    # 4 classes. gt = [0, 0, 1, 1], pred = [0, 0, 1, 3]; class 2 absent from both.
    # class 0: IoU 2/2 = 1; class 1: IoU 1/2; class 2: NaN; class 3: IoU 0/1 = 0 (only predicted)
    # mIoU = (1 + 1/2 + 0) / 3 = 1/2 ; mean_acc = (1 + 1/2) / 2 = 3/4 (only gt classes)
    # Dice: class 0 = 1, class 1 = 2/3, class 3 = 0 -> mDice = (1 + 2/3 + 0) / 3 = 5/9
    # fwIoU = 1/2 * 1 + 1/2 * 1/2 = 3/4
    r = run_metric(torch.tensor([[[0, 0, 1, 3]]]), torch.tensor([[[0, 0, 1, 1]]]), 4)
    np.testing.assert_allclose(r["iou"], [1, 0.5, np.nan, 0], equal_nan=True, atol=1e-15)
    np.testing.assert_allclose(r["dice"], [1, 2 / 3, np.nan, 0], equal_nan=True, atol=1e-15)
    np.testing.assert_allclose(r["acc"], [1, 0.5, np.nan, np.nan], equal_nan=True, atol=1e-15)
    assert r["mIoU"] == pytest.approx(1 / 2, abs=1e-15)
    assert r["mean_acc"] == pytest.approx(3 / 4, abs=1e-15)
    assert r["mDice"] == pytest.approx(5 / 9, abs=1e-15)
    assert r["fwIoU"] == pytest.approx(3 / 4, abs=1e-15)
    assert r["pixel_acc"] == pytest.approx(3 / 4, abs=1e-15)


def test_all_pixels_ignored_gives_nan_and_perfect_prediction_gives_ones():
    gt = torch.full((1, 2, 2), 255)
    r = run_metric(torch.zeros(1, 2, 2, dtype=torch.long), gt, 3)
    for k in SCALARS + VECTORS:
        assert np.all(np.isnan(r[k])), k

    gt = torch.tensor([[[0, 1], [2, 2]]])
    r = run_metric(gt.clone(), gt, 3)
    for k in SCALARS + VECTORS:
        np.testing.assert_array_equal(r[k], np.ones_like(r[k]), err_msg=k)


# --------------------------------------------------------------------------------------------
# 3. Logits input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_logits_equal_argmax_indices(seed):
    num_classes = 5
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, num_classes, 11, 13, generator=g)
    target = torch.randint(0, num_classes, (3, 11, 13), generator=g)
    target[torch.rand(3, 11, 13, generator=g) < 0.1] = 255

    m_logits = ConfusionMatrix(num_classes=num_classes)
    m_logits.update(logits, target)
    m_idx = ConfusionMatrix(num_classes=num_classes)
    m_idx.update(logits.argmax(dim=1), target)
    assert torch.equal(m_logits.confmat, m_idx.confmat)
    r_logits, r_idx = to_numpy(m_logits.compute()), to_numpy(m_idx.compute())
    for k in SCALARS + VECTORS:
        np.testing.assert_array_equal(r_logits[k], r_idx[k], err_msg=k)
    # And both agree with the reference on the argmax.
    ref = reference_metrics(logits.argmax(1).numpy(), target.numpy(), num_classes)
    assert_results_close(r_logits, ref)

    # Probabilities (softmax) give the same argmax, hence the same figures.
    m_prob = ConfusionMatrix(num_classes=num_classes)
    m_prob.update(logits.softmax(dim=1), target)
    assert torch.equal(m_prob.confmat, m_idx.confmat)


# --------------------------------------------------------------------------------------------
# 4. ignore_index
# --------------------------------------------------------------------------------------------
def test_predictions_at_ignored_pixels_do_not_matter():
    pred, gt = random_case(7)
    ignored = gt == 255
    base = run_metric(pred, gt, 6)
    rs = np.random.RandomState(99)
    for _ in range(3):
        pred2 = pred.copy()
        pred2[ignored] = rs.randint(0, 6, size=int(ignored.sum()))
        assert (pred2 != pred).any()
        other = run_metric(pred2, gt, 6)
        for k in SCALARS + VECTORS:
            np.testing.assert_array_equal(other[k], base[k], err_msg=k)


def test_custom_ignore_index_camvid():
    # CamVid: 11 classes (0..10), void label 11.
    rs = np.random.RandomState(5)
    gt = rs.randint(0, 11, size=(2, 19, 21))
    gt[rs.rand(*gt.shape) < 0.2] = 11
    pred = np.where(rs.rand(*gt.shape) < 0.6, gt, rs.randint(0, 11, size=gt.shape))
    pred[gt == 11] = rs.randint(0, 11, size=int((gt == 11).sum()))

    m = ConfusionMatrix(num_classes=11, ignore_index=11)
    m.update(torch.as_tensor(pred), torch.as_tensor(gt))
    assert int(m.confmat.sum()) == int((gt != 11).sum())
    got = to_numpy(m.compute())
    assert_results_close(got, reference_metrics(pred, gt, 11, ignore_index=11))

    # Changing the predictions at void pixels changes nothing.
    pred2 = pred.copy()
    pred2[gt == 11] = (pred2[gt == 11] + 1) % 11
    got2 = run_metric(pred2, gt, 11, ignore_index=11)
    for k in SCALARS + VECTORS:
        np.testing.assert_array_equal(got2[k], got[k], err_msg=k)

    # With the default ignore_index (255) the label 11 is out of range for 11 classes.
    with pytest.raises(ValueError, match="11"):
        run_metric(pred, gt, 11)


def test_ignore_index_none_counts_every_pixel():
    gt = torch.tensor([[[0, 1], [1, 0]]])
    pred = torch.tensor([[[0, 1], [0, 0]]])
    m = ConfusionMatrix(num_classes=2, ignore_index=None)
    m.update(pred, gt)
    assert torch.equal(m.confmat, torch.tensor([[2, 0], [1, 1]]))
    r = to_numpy(m.compute())
    assert_results_close(r, reference_metrics(pred.numpy(), gt.numpy(), 2, ignore_index=None))
    assert r["mIoU"] == pytest.approx((2 / 3 + 1 / 2) / 2, abs=1e-15)


# --------------------------------------------------------------------------------------------
# 5. Out-of-range labels
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [7, -1, 5])
def test_out_of_range_label_raises_naming_value(bad):
    gt = torch.tensor([[[0, 1, 2], [3, 4, 255]]])
    gt[0, 0, 1] = bad
    pred = torch.zeros_like(gt)
    m = ConfusionMatrix(num_classes=5)
    with pytest.raises(ValueError) as excinfo:
        m.update(pred, gt)
    msg = str(excinfo.value)
    assert str(bad) in msg
    # The value must be named as a value, not only match by accident (e.g. "[0, 5)").
    assert f"[{bad}]" in msg
    # The failed update left no partial state behind.
    assert int(m.confmat.sum()) == 0


def test_out_of_range_negative_with_custom_ignore():
    gt = torch.tensor([[[0, -1, 11, 12]]])
    m = ConfusionMatrix(num_classes=11, ignore_index=11)
    with pytest.raises(ValueError) as excinfo:
        m.update(torch.zeros_like(gt), gt)
    msg = str(excinfo.value)
    # Both bad values are named; the ignore label 11 is not reported as bad.
    assert "[-1, 12]" in msg


# --------------------------------------------------------------------------------------------
# 6. Accumulation
# --------------------------------------------------------------------------------------------
def test_accumulation_equals_single_update():
    preds, gts = [], []
    for seed in range(4):
        p, g = random_case(20 + seed, shape=(1 + seed % 3, 9, 14))
        preds.append(torch.as_tensor(p))
        gts.append(torch.as_tensor(g))

    acc = ConfusionMatrix(num_classes=6)
    for p, g in zip(preds, gts, strict=True):
        acc.update(p, g)
    single = ConfusionMatrix(num_classes=6)
    single.update(torch.cat(preds), torch.cat(gts))

    assert torch.equal(acc.confmat, single.confmat)
    r_acc, r_single = to_numpy(acc.compute()), to_numpy(single.compute())
    for k in SCALARS + VECTORS:
        np.testing.assert_array_equal(r_acc[k], r_single[k], err_msg=k)
    ref = reference_metrics(torch.cat(preds).numpy(), torch.cat(gts).numpy(), 6)
    assert_results_close(r_acc, ref)

    # reset() starts over.
    acc.reset()
    assert int(acc.confmat.sum()) == 0
    acc.update(preds[0], gts[0])
    assert_results_close(to_numpy(acc.compute()), run_metric(preds[0], gts[0], 6))


# --------------------------------------------------------------------------------------------
# 7. DDP: two gloo ranks on uneven shards equal one process on everything
# --------------------------------------------------------------------------------------------
DDP_NUM_CLASSES = 6


def ddp_dataset():
    """Five images of a fixed dataset (class 4 absent, class 5 only predicted, some ignored)."""
    pred, gt = random_case(123, num_classes=DDP_NUM_CLASSES, shape=(5, 16, 20))
    return torch.as_tensor(pred), torch.as_tensor(gt)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        pred, gt = ddp_dataset()
        shard = slice(0, 3) if rank == 0 else slice(3, 5)  # uneven: 3 images vs 2
        m = ConfusionMatrix(num_classes=DDP_NUM_CLASSES)
        # Two updates on rank 0 to mix accumulation with the cross-rank sum.
        if rank == 0:
            m.update(pred[0:1], gt[0:1])
            m.update(pred[1:3], gt[1:3])
        else:
            m.update(pred[shard], gt[shard])
        local = m.confmat.clone()
        result = m.compute()  # torchmetrics syncs the confusion matrix across ranks
        payload = {
            "local_confmat": local.numpy(),
            "synced_confmat": m.confmat.clone().numpy(),
            "result": {k: v.detach().cpu().numpy() for k, v in result.items()},
        }
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump(payload, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_equal_single_process(tmp_path):
    world_size = 2
    mp.spawn(
        _ddp_worker,
        args=(world_size, _free_port(), str(tmp_path)),
        nprocs=world_size,
        join=True,
    )

    pred, gt = ddp_dataset()
    single = ConfusionMatrix(num_classes=DDP_NUM_CLASSES)
    single.update(pred, gt)
    expected = to_numpy(single.compute())
    assert_results_close(expected, reference_metrics(pred.numpy(), gt.numpy(), DDP_NUM_CLASSES))

    results = []
    for rank in range(world_size):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as f:
            results.append(pickle.load(f))

    # Each rank really saw only its own shard...
    shard_sizes = [3, 2]
    for rank, res in enumerate(results):
        assert int(res["local_confmat"].sum()) < int(single.confmat.sum())
        lo = sum(shard_sizes[:rank])
        n_valid = int((gt[lo : lo + shard_sizes[rank]] != 255).sum())
        assert int(res["local_confmat"].sum()) == n_valid
    np.testing.assert_array_equal(
        results[0]["local_confmat"] + results[1]["local_confmat"], single.confmat.numpy()
    )

    # ...and after the sync both ranks report exactly the single-process numbers.
    for rank, res in enumerate(results):
        for k in SCALARS + VECTORS:
            got = res["result"][k]
            same = torch.equal(
                torch.as_tensor(np.nan_to_num(np.asarray(got), nan=-1.0)),
                torch.as_tensor(np.nan_to_num(np.asarray(expected[k]), nan=-1.0)),
            )
            assert same, (rank, k)
            np.testing.assert_array_equal(got, expected[k], err_msg=f"rank {rank} {k}")
    assert np.isnan(expected["iou"][4]) and expected["iou"][5] == 0.0


@pytest.mark.parametrize("bad", [5, -1, 255])
def test_out_of_range_prediction_raises(bad):
    m = ConfusionMatrix(num_classes=5)
    with pytest.raises(ValueError, match=rf"\[{bad}\]"):
        m.update(torch.tensor([[[bad, 0]]]), torch.tensor([[[0, 1]]]))
    assert int(m.confmat.sum()) == 0
