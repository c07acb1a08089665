"""Cityscapes' category IoU and iIoU (segbench/metrics/cityscapes.py) against the official
evaluator, cityscapesScripts' evalPixelLevelSemanticLabeling (a dev dependency), on scenes with
instances, crowd regions, void, an ignored instance class and a class absent from both."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import Cityscapes

from segbench.data.cityscapes import CLASS_NAMES, TRAIN_ID_LUT
from segbench.metrics import ConfusionMatrix
from segbench.metrics.cityscapes import CATEGORIES, category_iou, instance_iou, instance_sums
from tests.fixtures.cityscapes_oracle import official_evaluator
from tests.fixtures.cityscapes_oracle import official_scores as official_scores_of

official_evaluator()  # the whole module needs the oracle

BY_NAME = {c.name: c for c in Cityscapes.classes}
TRAIN_TO_LABEL = np.zeros(256, dtype=np.uint8)
for _c in Cityscapes.classes:
    if _c.train_id not in (255, -1):
        TRAIN_TO_LABEL[_c.train_id] = _c.id


def scene(seed: int, size=(48, 96)):
    """``(label ids, instance ids, predicted train ids)`` of a seeded street-like scene."""
    rng = np.random.default_rng(seed)
    h, w = size
    labels = np.full(size, BY_NAME["road"].id, dtype=np.int32)
    labels[: h // 3] = BY_NAME["sky"].id
    labels[h // 3 : h // 2, : w // 2] = BY_NAME["building"].id
    labels[h // 3 : h // 2, w // 2 :] = BY_NAME["vegetation"].id
    labels[-4:, :] = BY_NAME["ego vehicle"].id  # void
    instances = labels.copy()
    things = ["car", "person", "rider", "bicycle", "bus", "caravan"]
    for n in range(rng.integers(4, 9)):
        name = things[rng.integers(len(things))]
        y, x = rng.integers(h // 3, h - 10), rng.integers(0, w - 12)
        hh, ww = rng.integers(2, 9), rng.integers(2, 12)
        labels[y : y + hh, x : x + ww] = BY_NAME[name].id
        instances[y : y + hh, x : x + ww] = BY_NAME[name].id * 1000 + n
    # a crowd region: the label without an instance id
    labels[h // 2 : h // 2 + 3, 5:15] = BY_NAME["person"].id
    instances[h // 2 : h // 2 + 3, 5:15] = BY_NAME["person"].id
    train = TRAIN_TO_LABEL  # noqa: F841 (documents the inverse table used below)
    truth = TRAIN_ID_LUT[labels.astype(np.uint8)]
    pred = np.where(truth == 255, rng.integers(0, 19, size), truth).astype(np.int64)
    flip = rng.random(size) < 0.15
    pred[flip] = rng.integers(0, 19, int(flip.sum()))
    # a shifted copy of the things: partly right, partly their category's other class
    pred[pred == CLASS_NAMES.index("rider")] = CLASS_NAMES.index("person")
    return labels, instances, pred


def official_scores(tmp_path: Path, scenes) -> dict:
    """The official evaluator's result dictionary on ``scenes`` written as its files."""
    preds, gts = [], []
    for i, (labels, instances, pred) in enumerate(scenes):
        gt = tmp_path / f"city_{i:06d}_000019_gtFine_labelIds.png"
        Image.fromarray(labels.astype(np.uint8)).save(gt)
        Image.fromarray(instances.astype(np.uint16)).save(  # 16-bit, as the release
            tmp_path / f"city_{i:06d}_000019_gtFine_instanceIds.png"
        )
        p = tmp_path / f"city_{i:06d}_000019_pred.png"
        Image.fromarray(TRAIN_TO_LABEL[pred]).save(p)
        preds.append(str(p))
        gts.append(str(gt))
    return official_scores_of(preds, gts)


def ours(scenes) -> tuple[dict, dict, list]:
    cm = ConfusionMatrix(19, 255)
    classes, categories = [], []
    for labels, instances, pred in scenes:
        truth = torch.from_numpy(TRAIN_ID_LUT[labels.astype(np.uint8)].astype(np.int64))
        p = torch.from_numpy(pred)
        cm.update(torch.nn.functional.one_hot(p, 19).permute(2, 0, 1)[None].float(), truth[None])
        c, g = instance_sums(p[None], torch.from_numpy(instances)[None], 19)
        classes.append(c.numpy())
        categories.append(g.numpy())
    confusion = cm.compute()["confmat"].numpy()
    iiou = instance_iou(confusion, np.concatenate(classes), np.concatenate(categories), CLASS_NAMES)
    return category_iou(confusion), iiou, confusion


def same(a, b):
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return b is not None and a == pytest.approx(b, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seeds", [(0, 1, 2), (3,), (4, 5)])
def test_category_iou_and_iiou_equal_the_official_evaluator(tmp_path, seeds):
    scenes = [scene(s) for s in seeds]
    want = official_scores(tmp_path, scenes)
    cats, iiou, _ = ours(scenes)
    for name, value in want["categoryScores"].items():
        if name == "void":
            assert math.isnan(value)
            continue
        assert same(value, cats["categories"][name]), name
    assert same(want["averageScoreCategories"], cats["mean"])
    for name, value in want["classInstScores"].items():
        if name in iiou["classes"]:
            assert same(value, iiou["classes"][name]), name
        else:  # stuff and ignored classes have no iIoU
            assert math.isnan(value), name
    assert same(want["averageScoreInstClasses"], iiou["mean"])
    for name, value in want["categoryInstScores"].items():
        if name in iiou["categories"]:
            assert same(value, iiou["categories"][name]), name
        else:
            assert math.isnan(value), name
    assert same(want["averageScoreInstCategories"], iiou["category_mean"])
    # and the class IoU of the same matrix (segbench's metric) is the official one too
    cm_iou = {n: v for n, v in want["classScores"].items() if n in CLASS_NAMES}
    confusion = ours(scenes)[2].astype(np.float64)
    tp = np.diag(confusion)
    iou = tp / (confusion.sum(0) + confusion.sum(1) - tp)
    for name, value in cm_iou.items():
        assert same(
            value, None if np.isnan(iou[CLASS_NAMES.index(name)]) else iou[CLASS_NAMES.index(name)]
        )


def test_the_categories_are_the_official_seven():
    assert list(CATEGORIES) == [
        "flat", "construction", "object", "nature", "sky", "human", "vehicle"
    ]  # fmt: skip
    assert sorted(i for ids in CATEGORIES.values() for i in ids) == list(range(19))


def test_no_instances_no_weighted_sums():
    labels, _, pred = scene(6)
    instances = labels.copy()  # only label ids: no instance pixels
    c, g = instance_sums(torch.from_numpy(pred)[None], torch.from_numpy(instances)[None], 19)
    assert not c.any() and not g.any()


def test_a_run_on_cityscapes_reports_the_official_figures(tmp_path):
    """train.py on a tiny Cityscapes with instance files: results.json's category IoU and iIoU
    equal the official evaluator's on the run's own saved predictions; without the instance
    files evaluate.py says iIoU was not computed and why."""
    from segbench.engine.run import evaluate, train
    from tests.conftest import compose_config
    from tests.fixtures.cityscapes import write_cityscapes

    data = tmp_path / "data"
    written = write_cityscapes(data / "cityscapes", per_split=3, size=(32, 64), instances=True)
    run_dir = tmp_path / "run"
    overrides = [
        "debug=fast",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "dataset=cityscapes",
        f"data_root={data}",
        "dataset.eval_split=val",
        "callbacks.run_plots=null",
        "callbacks.eval_outputs.panels=0",
        "callbacks.eval_outputs.plots=false",
        "callbacks.eval_outputs.predictions=true",
    ]
    res = train(compose_config("train", overrides, run_dir))
    city = res["cityscapes"]
    assert city["iiou"]["computed"] and res["metrics"]["iIoU"] == city["iiou"]["mean"]

    # the official evaluator on the saved predictions (train ids -> label ids) and the labels
    preds, gts = [], []
    for _, label_path in written.items["val"]:
        stem = label_path.name[: -len("_gtFine_labelIds.png")]
        saved = list((run_dir / "predictions").glob(f"*{stem}*.png"))
        assert len(saved) == 1, (stem, sorted(p.name for p in (run_dir / "predictions").iterdir()))
        train_ids = np.asarray(Image.open(saved[0]))
        p = tmp_path / f"{stem}_pred.png"
        Image.fromarray(TRAIN_TO_LABEL[train_ids]).save(p)
        preds.append(str(p))
        gts.append(str(label_path))
    want = official_scores_of(preds, gts)
    for name, value in want["categoryScores"].items():
        if name != "void":
            assert same(value, city["category_iou"][name]), name
    assert same(want["averageScoreCategories"], city["category_mIoU"])
    assert same(want["averageScoreInstClasses"], city["iiou"]["mean"])
    assert same(want["averageScoreInstCategories"], city["iiou"]["category_mean"])
    assert same(want["averageScoreClasses"], res["metrics"]["mIoU"])

    # without instance files: said, never a silent zero
    for path in (data / "cityscapes" / "gtFine" / "val").glob("*/*_instanceIds.png"):
        path.unlink()
    again = evaluate(
        compose_config(
            "evaluate",
            [f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", "logger=none", f"data_root={data}"],
            tmp_path / "eval",
        )
    )
    iiou = again["cityscapes"]["iiou"]
    assert not iiou["computed"] and "instanceIds.png" in iiou["why"]
    assert again["metrics"]["iIoU"] is None and again["metrics"]["category_mIoU"] is not None
    printed = (tmp_path / "eval" / "results.json").read_text()
    assert "iIoU not computed" in printed
