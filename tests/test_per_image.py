"""Per-image counts: computed right, reproduce every dataset-level figure exactly, written once
in dataset order, compact, and refused when broken."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from segbench.metrics import ConfusionMatrix
from segbench.metrics.per_image import (
    PER_IMAGE_FILE,
    PerImageRecorder,
    image_counts,
    read_per_image,
    summarize,
    write_per_image,
)


def _numpy_counts(pred: np.ndarray, target: np.ndarray, k: int, ignore: int) -> np.ndarray:
    """Per image, per class: |pred == c & gt == c|, |gt == c|, |pred == c| over valid pixels."""
    out = np.zeros((len(pred), 3, k), dtype=np.int64)
    for i in range(len(pred)):
        valid = target[i] != ignore
        for c in range(k):
            gt_c = (target[i] == c) & valid
            pr_c = (pred[i] == c) & valid
            out[i, :, c] = [(gt_c & pr_c).sum(), gt_c.sum(), pr_c.sum()]
    return out


def test_image_counts_match_a_direct_count():
    gen = torch.Generator().manual_seed(0)
    k, ignore = 5, 255
    target = torch.randint(0, k, (4, 9, 11), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.2] = ignore
    target[2] = ignore  # an image without a valid pixel
    pred = torch.randint(0, k, (4, 9, 11), generator=gen)
    counts = image_counts(pred, target, k, ignore)
    assert counts.shape == (4, 3, k)
    np.testing.assert_array_equal(
        counts.numpy(), _numpy_counts(pred.numpy(), target.numpy(), k, ignore)
    )
    # summed over the batch they are the confusion matrix's diagonal, row and column sums
    cm = ConfusionMatrix(k, ignore)
    cm.update(pred, target)
    total = counts.sum(0)
    torch.testing.assert_close(total[0], cm.confmat.diag())
    torch.testing.assert_close(total[1], cm.confmat.sum(1))
    torch.testing.assert_close(total[2], cm.confmat.sum(0))


def test_per_image_file_reproduces_the_run_figures_exactly(trained_run):
    """The dataset-level figures of results.json, recomputed from per_image.npz: identical."""
    results = json.loads((trained_run / "results.json").read_text())
    assert results["per_image"]["file"] == PER_IMAGE_FILE
    data = read_per_image(trained_run / PER_IMAGE_FILE)
    assert len(data.ids) == results["num_images"] == 9
    assert data.ids == sorted(data.ids) and len(set(data.ids)) == 9  # dataset order, no repeats
    assert data.classes == results["classes"] and data.split == results["split"]
    figures = data.figures()
    metrics = results["metrics"]
    for key in ("mIoU", "pixel_acc", "mean_acc", "fwIoU", "mDice"):
        assert float(figures[key]) == metrics[key], key
    for name, value in zip(data.classes, figures["iou"].tolist()):
        expected = metrics["per_class_iou"][name]
        assert (math.isnan(value) and expected is None) or value == expected, name
    cm = np.asarray(results["confusion_matrix"])
    total = data.counts.sum(0)
    np.testing.assert_array_equal(total, [cm.diagonal(), cm.sum(1), cm.sum(0)])


def test_per_image_summary_in_results(trained_run):
    results = json.loads((trained_run / "results.json").read_text())
    data = read_per_image(trained_run / PER_IMAGE_FILE)
    # each image's mIoU, computed here without the library: classes in its gt or prediction
    per_image = []
    for tp, gt, pred in data.counts:
        union = gt + pred - tp
        per_image.append(float(np.mean(tp[union > 0] / union[union > 0])))
    summary = results["per_image"]
    assert summary["images"] == 9 and summary["images_without_valid_pixels"] == 0
    assert summary["mean_mIoU"] == pytest.approx(np.mean(per_image), abs=1e-12)
    assert summary["median_mIoU"] == pytest.approx(np.median(per_image), abs=1e-12)
    worst = sorted(range(9), key=lambda i: per_image[i])[:5]
    assert [w["id"] for w in summary["worst"]] == [data.ids[i] for i in worst]
    # the intervals of the figures are recorded with how they were made
    intervals = results["intervals"]
    assert intervals["resamples"] == results["config"]["bootstrap"]["resamples"]
    assert intervals["seed"] == 0 and intervals["level"] == 0.95
    miou = intervals["metrics"]["mIoU"]
    assert miou["low"] <= results["metrics"]["mIoU"] <= miou["high"]


def test_summary_leaves_out_images_without_valid_pixels():
    counts = np.zeros((3, 3, 2), dtype=np.int64)
    counts[0] = [[5, 0], [10, 0], [5, 0]]  # IoU 0.5 on class 0
    counts[2] = [[4, 4], [4, 4], [4, 4]]  # perfect
    summary = summarize(["a", "b", "c"], counts, worst=2)
    assert summary["images_without_valid_pixels"] == 1
    assert summary["mean_mIoU"] == 0.75 and summary["median_mIoU"] == 0.75
    assert [w["id"] for w in summary["worst"]] == ["a", "c"]


def test_recorder_joins_ranks_in_dataset_order_and_refuses_repeats():
    rec = PerImageRecorder()
    counts = torch.arange(2 * 3 * 2).reshape(2, 3, 2)
    rec.add(torch.tensor([3, 1]), ["d", "b"], counts)
    rec.add([0], ["a"], counts[:1] + 100)
    names, joined = rec.gather()
    assert names == ["a", "b", "d"]
    np.testing.assert_array_equal(joined, np.stack([counts[0] + 100, counts[1], counts[0]]))
    rec.add([1], ["b"], counts[:1])
    with pytest.raises(RuntimeError, match=r"images \[1\] were evaluated more than once"):
        rec.gather()


def test_file_is_compact_for_150_classes(tmp_path):
    """ADE20K's val split: 2,000 images x 150 classes must stay well under 10 MB."""
    rng = np.random.default_rng(0)
    n, k = 2000, 150
    counts = np.zeros((n, 3, k), dtype=np.int64)
    for i in range(n):  # an ADE20K-like image: 512x512, about 10 classes present
        present = rng.choice(k, size=10, replace=False)
        gt = rng.multinomial(512 * 512, rng.dirichlet(np.ones(10)))
        tp = (gt * rng.uniform(0.3, 1.0, 10)).astype(np.int64)
        counts[i, 0, present], counts[i, 1, present] = tp, gt
        counts[i, 2, present] = tp + rng.integers(0, 5000, 10)
    ids, classes = [f"img{i}" for i in range(n)], [f"c{c}" for c in range(k)]
    realistic = write_per_image(tmp_path / "ade.npz", ids, counts, classes, "ade20k", "val")
    dense = rng.integers(0, 2**31, (n, 3, k))  # the worst case: every class in every image
    worst = write_per_image(tmp_path / "dense.npz", ids, dense, classes, "ade20k", "val")
    assert realistic.stat().st_size / n < 1000  # bytes per image
    assert worst.stat().st_size < 5_000_000
    np.testing.assert_array_equal(read_per_image(worst).counts, dense)


def test_write_never_overwrites_and_read_names_bad_files(tmp_path):
    path = write_per_image(
        tmp_path / PER_IMAGE_FILE, ["a"], np.ones((1, 3, 2), int), ["x", "y"], "d", "val"
    )
    with pytest.raises(FileExistsError):
        write_per_image(path, ["a"], np.ones((1, 3, 2), int), ["x", "y"], "d", "val")
    with pytest.raises(ValueError, match=r"counts must be \(N, 3, 2\)"):
        write_per_image(tmp_path / "b.npz", ["a"], np.ones((1, 2, 2), int), ["x", "y"], "d", "v")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="broken.npz"):
        read_per_image(broken)
    other = tmp_path / "other.npz"
    np.savez(other, something=np.zeros(3))
    with pytest.raises(ValueError, match=r"other.npz: not a segbench per-image file \(lacks"):
        read_per_image(other)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        read_per_image(tmp_path / "missing.npz")


def test_further_arrays_follow_the_rows_and_round_trip(tmp_path):
    """The boundary (and iIoU) arrays are recorded beside the counts, joined in dataset order,
    written and read back unchanged; a name of the file's own keys is refused."""
    rec = PerImageRecorder()
    counts = torch.ones(2, 3, 2, dtype=torch.long)
    rec.add([2, 0], ["c", "a"], counts, {"bf": torch.tensor([[0.5, 1.0], [0.25, math.nan]])})
    rec.add([1], ["b"], counts[:1], {"bf": torch.tensor([[0.0, 0.75]])})
    names, joined, extra = rec.gather_all()
    assert names == ["a", "b", "c"]
    np.testing.assert_array_equal(extra["bf"], [[0.25, np.nan], [0.0, 0.75], [0.5, 1.0]])
    with pytest.raises(ValueError, match="per-image arrays"):
        rec.add([5], ["e"], counts[:1])  # the other batches had bf
    path = write_per_image(tmp_path / "p.npz", names, joined, ["x", "y"], "d", "val", extra)
    back = read_per_image(path)
    np.testing.assert_array_equal(back.extra["bf"], extra["bf"])
    with pytest.raises(ValueError, match="'counts'"):
        write_per_image(
            tmp_path / "q.npz", names, joined, ["x", "y"], "d", "val", {"counts": joined}
        )
