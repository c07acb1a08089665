"""``segbench compare`` and the leaderboard's intervals and † markers, on runs written here
(results.json + per_image.npz from chosen counts) and on a real trained run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segbench.leaderboard import publish
from segbench.leaderboard.compare import main as compare_main
from segbench.leaderboard.render import to_csv, to_latex, to_markdown
from segbench.metrics import metrics_from_counts
from segbench.metrics.per_image import PER_IMAGE_FILE, write_per_image

CLASSES = ["background", "road", "car"]


def _counts(rng: np.random.Generator, n: int, quality: float) -> np.ndarray:
    """Per-image counts of a predictor that gets about ``quality`` of each class right, on ``n``
    images whose ground truth depends on ``n`` only (as real runs on the same images share it)."""
    gt = np.random.default_rng(n).integers(50, 400, (n, len(CLASSES)))
    tp = np.floor(gt * np.clip(quality + rng.normal(0, 0.08, gt.shape), 0, 1)).astype(np.int64)
    pred = tp + rng.integers(0, 60, gt.shape)
    return np.stack([tp, gt, pred], axis=1)


def write_run(directory, counts, *, model="fcn8s", seed=0, ids=None, classes=CLASSES, lr=0.01):
    """A run directory as evaluate.py leaves it: results.json and its per-image counts."""
    directory.mkdir(parents=True)
    ids = ids or [f"val/{i:04d}.png" for i in range(len(counts))]
    total = torch.from_numpy(counts.sum(0))
    fig = metrics_from_counts(total[0], total[1], total[2])
    clean = lambda v: None if np.isnan(v) else float(v)  # noqa: E731
    record = {
        "kind": "train",
        "model": model,
        "backbone": "resnet18",
        "dataset": "toy",
        "split": "val",
        "eval_mode": "single-scale",
        "classes": classes,
        "num_classes": len(classes),
        "seed": seed,
        "metrics": {
            **{k: clean(fig[k]) for k in ("mIoU", "pixel_acc", "mean_acc", "fwIoU", "mDice")},
            "per_class_iou": {c: clean(v) for c, v in zip(classes, fig["iou"].tolist())},
        },
        "per_image": {"file": PER_IMAGE_FILE},
        "config": {"model": {"name": model}, "optimizer": {"lr": lr}, "seed": seed},
    }
    (directory / "results.json").write_text(json.dumps(record))
    write_per_image(directory / PER_IMAGE_FILE, ids, counts, classes, "toy", "val")
    return directory


def _compare(capsys, *args) -> tuple[int, str, str]:
    status = compare_main([str(a) for a in args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_identical_runs_give_zero_difference_and_p_one(tmp_path, capsys):
    counts = _counts(np.random.default_rng(0), 40, 0.7)
    a = write_run(tmp_path / "a", counts)
    b = write_run(tmp_path / "b", counts, model="unet")
    status, out, _ = _compare(capsys, a, b, "--out", tmp_path / "cmp.json")
    assert status == 0
    result = json.loads((tmp_path / "cmp.json").read_text())
    assert result["metrics"]["mIoU"]["delta"] == 0.0 and result["metrics"]["mIoU"]["p"] == 1.0
    assert all(c["delta"] == 0.0 and c["p"] == 1.0 for c in result["per_class"])
    assert "no significant difference" in out and "Holm" in out


def test_a_run_better_on_every_image_is_significant(tmp_path, capsys):
    rng = np.random.default_rng(1)
    worse = _counts(rng, 40, 0.5)
    better = worse.copy()
    better[:, 0] = np.minimum(better[:, 0] + 40, better[:, 1])  # more right on every image
    better[:, 2] = np.maximum(better[:, 2], better[:, 0])
    status, out, _ = _compare(
        capsys,
        write_run(tmp_path / "a", better),
        write_run(tmp_path / "b", worse, model="unet"),
        "--out",
        tmp_path / "cmp.json",
    )
    assert status == 0
    m = json.loads((tmp_path / "cmp.json").read_text())["metrics"]["mIoU"]
    assert m["delta"] > 0 and m["low"] > 0 and m["p"] <= 2 / 10001
    assert "A is better in mIoU" in out


def test_seeds_on_each_side(tmp_path, capsys):
    """A directory of several runs of one configuration is one side (its seeds)."""
    rng = np.random.default_rng(2)
    for seed in range(3):
        write_run(tmp_path / "a" / f"s{seed}", _counts(rng, 30, 0.7), seed=seed)
        write_run(tmp_path / "b" / f"s{seed}", _counts(rng, 30, 0.7), model="unet", seed=seed)
    status, out, _ = _compare(capsys, tmp_path / "a", tmp_path / "b", "--out", tmp_path / "c.json")
    assert status == 0
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["runs"] == [3, 3] and result["a"]["seeds"] == [0, 1, 2]
    means = [
        np.mean(
            [
                json.loads(p.read_text())["metrics"]["mIoU"]
                for p in (tmp_path / s).rglob("results.json")
            ]
        )
        for s in ("a", "b")
    ]
    assert result["metrics"]["mIoU"]["a"] == pytest.approx(means[0], abs=1e-12)
    assert result["metrics"]["mIoU"]["delta"] == pytest.approx(means[0] - means[1], abs=1e-12)


def test_refuses_different_images(tmp_path, capsys):
    counts = _counts(np.random.default_rng(3), 5, 0.7)
    a = write_run(tmp_path / "a", counts)
    ids = [f"val/{i:04d}.png" for i in range(5)]
    ids[3] = "val/other.png"
    b = write_run(tmp_path / "b", counts, model="unet", ids=ids)
    status, _, err = _compare(capsys, a, b)
    assert status == 2
    assert "not evaluated on the same images" in err
    assert "image 3 is 'val/0003.png' in" in err and "'val/other.png'" in err
    c = write_run(tmp_path / "c", counts[:4], model="unet")
    status, _, err = _compare(capsys, a, c)
    assert status == 2 and "has 5 images" in err and "'val/0004.png'" in err


def test_refuses_different_class_lists(tmp_path, capsys):
    counts = _counts(np.random.default_rng(4), 5, 0.7)
    a = write_run(tmp_path / "a", counts)
    b = write_run(tmp_path / "b", counts, model="unet", classes=["background", "road", "bus"])
    status, _, err = _compare(capsys, a, b)
    assert status == 2
    assert "different class lists" in err and "['car']" in err and "['bus']" in err


def test_refuses_runs_without_counts_and_mixed_configurations(tmp_path, capsys):
    counts = _counts(np.random.default_rng(5), 5, 0.7)
    a = write_run(tmp_path / "a", counts)
    old = write_run(tmp_path / "old", counts, model="unet")
    (old / PER_IMAGE_FILE).unlink()
    status, _, err = _compare(capsys, a, old)
    assert status == 2 and "per-image file" in err and PER_IMAGE_FILE in err
    write_run(tmp_path / "mixed" / "x", counts, lr=0.01)
    write_run(tmp_path / "mixed" / "y", counts, lr=0.1)
    status, _, err = _compare(capsys, a, tmp_path / "mixed")
    assert status == 2 and "holds runs of 2 configurations" in err


def test_refuses_counts_that_do_not_belong_to_the_run(tmp_path, capsys):
    rng = np.random.default_rng(6)
    a = write_run(tmp_path / "a", _counts(rng, 5, 0.7))
    b = write_run(tmp_path / "b", _counts(rng, 5, 0.7), model="unet")
    (b / PER_IMAGE_FILE).unlink()
    write_per_image(
        b / PER_IMAGE_FILE,
        [f"val/{i:04d}.png" for i in range(5)],
        _counts(rng, 5, 0.2),
        CLASSES,
        "toy",
        "val",
    )
    status, _, err = _compare(capsys, a, b)
    assert status == 2 and "does not belong to that run" in err


def test_compare_on_a_trained_run(trained_run, tmp_path, capsys):
    """A real run's files (a run directory against its results.json): Δ = 0, p = 1."""
    status, out, err = _compare(
        capsys,
        trained_run,
        trained_run / "results.json",
        "--out",
        tmp_path / "self.json",
        "--permutations",
        "500",
    )
    assert status == 0, err
    result = json.loads((tmp_path / "self.json").read_text())
    assert result["num_images"] == 9 and result["metrics"]["mIoU"]["p"] == 1.0
    assert "mIoU" in out and "Verdict" in out


# ------------------------------------------------------------------ the leaderboard's markers


def _board(tmp_path, **options):
    outcome = publish([tmp_path / "runs"], tmp_path / "out", ["md"], **options)
    assert outcome.error is None and len(outcome.boards) == 1
    return outcome.boards[0]


def test_leaderboard_marks_rows_not_significantly_below_the_best(tmp_path):
    rng = np.random.default_rng(7)
    best = _counts(rng, 60, 0.75)
    close = best.copy()
    close[::2, 0] = np.maximum(close[::2, 0] - 3, 0)  # a hair worse on half the images
    close[1::2, 0] = np.minimum(close[1::2, 0] + 2, close[1::2, 1])
    close[:, 2] = np.maximum(close[:, 2], close[:, 0])
    far = best.copy()
    far[:, 0] = far[:, 0] // 2
    write_run(tmp_path / "runs" / "best", best, model="pspnet")
    write_run(tmp_path / "runs" / "close", close, model="unet")
    write_run(tmp_path / "runs" / "far", far, model="segnet")
    old = write_run(tmp_path / "runs" / "old", far, model="deconvnet")
    (old / PER_IMAGE_FILE).unlink()
    board = _board(tmp_path)
    rows = {r.model: r for r in board.rows}
    assert board.rows[0].model == "pspnet" and rows["pspnet"].tied_with_best is None
    assert rows["unet"].tied_with_best is True and rows["unet"].p_vs_best >= 0.05
    assert rows["segnet"].tied_with_best is False and rows["segnet"].p_vs_best < 0.05
    assert rows["deconvnet"].tied_with_best is None
    md = to_markdown(board)
    unet_line = next(line for line in md.splitlines() if line.startswith("| unet"))
    segnet_line = next(line for line in md.splitlines() if line.startswith("| segnet"))
    assert "†" in unet_line and "†" not in segnet_line
    assert "not significantly below the best row's (pspnet / resnet18, single-scale)" in md
    assert "Holm over the 2 rows tested" in md and "α = 0.05" in md
    assert "Not tested against the best row: deconvnet / resnet18" in md
    assert "$^\\dagger$" in to_latex(board)
    header, *lines = to_csv(board).splitlines()
    assert header.split(",")[-4:] == ["p_vs_best", "tied_with_best", "kind", "runs"]
    off = _board(tmp_path, alpha=None)
    assert "†" not in to_markdown(off) and off.significance is None


def test_leaderboard_intervals_instead_of_std(tmp_path):
    rng = np.random.default_rng(8)
    for seed in range(2):
        write_run(tmp_path / "runs" / f"a{seed}", _counts(rng, 30, 0.7), seed=seed)
    board = _board(tmp_path, spread="ci")
    row = board.rows[0]
    low, high = row.intervals["mIoU"]
    assert low < row.stats["mIoU"].mean < high
    md = to_markdown(board)
    assert f"[{100 * low:.2f}, {100 * high:.2f}]" in md and "±" not in md.split("\n")[4]
    assert "percentile bootstrap over images" in md
    header = to_csv(board).splitlines()[0].split(",")
    assert "mIoU_low" in header and "mIoU_high" in header


def test_a_per_image_file_with_rows_moved_between_images_is_refused(tmp_path, capsys, monkeypatch):
    """Counts swapped between images keep every dataset figure (they are sums) but break the
    pairing: the digest results.json records catches it, and without one (an older run), the
    ground-truth pixels per class, which belong to the image whatever the model, do."""
    from segbench.metrics.per_image import counts_digest

    monkeypatch.chdir(tmp_path)  # the default output: outputs/compare/a_vs_b.json

    rng = np.random.default_rng(5)
    a_counts, b_counts = _counts(rng, 30, 0.6), _counts(rng, 30, 0.7)
    a = write_run(tmp_path / "a", a_counts)
    ids = [f"val/{i:04d}.png" for i in range(30)]
    record = json.loads((a / "results.json").read_text())
    record["per_image"]["digest"] = counts_digest(ids, a_counts)
    (a / "results.json").write_text(json.dumps(record))
    shuffled = a_counts[np.random.default_rng(0).permutation(30)]
    b = write_run(tmp_path / "b", b_counts, model="unet")
    assert _compare(capsys, a, b)[0] == 0  # as written: compares
    assert (tmp_path / "outputs" / "compare" / "a_vs_b.json").is_file()
    (tmp_path / "outputs" / "compare" / "a_vs_b.json").unlink()  # not what is tested below
    (a / PER_IMAGE_FILE).unlink()
    write_per_image(a / PER_IMAGE_FILE, ids, shuffled, CLASSES, "toy", "val")
    status, _, err = _compare(capsys, a, b)
    assert status != 0 and "do not match the digest its results.json records" in err
    del record["per_image"]["digest"]  # a run written before digests: the labels tell
    (a / "results.json").write_text(json.dumps(record))
    status, _, err = _compare(capsys, a, b)
    assert status != 0 and "disagree on the ground truth of image 'val/0000.png'" in err


def test_results_json_records_the_digest_of_its_per_image_file(trained_run):
    from segbench.metrics.per_image import counts_digest, read_per_image

    record = json.loads((trained_run / "results.json").read_text())
    data = read_per_image(trained_run / PER_IMAGE_FILE)
    assert record["per_image"]["digest"] == counts_digest(data.ids, data.counts)
