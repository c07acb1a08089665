"""The default recipe learns: FCN-8s on a ResNet-18 from scratch, trained for 800 SGD steps
(about 1.5 minutes on 2 cores), scores over twice the mIoU of the all-background predictor on
shapes and finds most shape classes; the full default job (marked slow) reaches about 5x."""

from __future__ import annotations

import numpy as np
import pytest
from hydra.utils import instantiate

from segbench.engine.run import train
from tests.conftest import compose_config


def all_background_miou(dm, split: str, num_classes: int, ignore_index: int) -> float:
    """mIoU of predicting background everywhere, computed directly from the masks."""
    ds = dm.dataset(split)
    gt_counts = np.zeros(num_classes)
    for i in range(len(ds)):
        mask = ds.load(i)[1]
        mask = mask[mask != ignore_index]
        gt_counts += np.bincount(mask, minlength=num_classes)
    # background: IoU = background pixels / all pixels; every other class present has IoU 0
    present = gt_counts > 0
    return (gt_counts[0] / gt_counts.sum()) / present.sum()


@pytest.mark.slow  # 3 minutes on 2 cores: over the fast suite's budget
def test_fcn8s_learns_shapes(tmp_path):
    overrides = [
        "logger=csv",
        "trainer=cpu",
        "trainer.max_epochs=4",
        "trainer.enable_progress_bar=false",
        "dataset.source.sizes={train: 3200, val: 100, test: 100}",
        "dataset.num_workers=1",
    ]
    cfg = compose_config("train", overrides, tmp_path)
    res = train(cfg)
    chance = all_background_miou(instantiate(cfg.dataset), "test", 7, 255)
    assert 0.08 < chance < 0.13
    assert res["metrics"]["mIoU"] > 1.35 * chance, (res["metrics"]["mIoU"], chance)
    found = [
        c for c, v in res["metrics"]["per_class_iou"].items() if c != "background" and v > 0.05
    ]
    assert len(found) >= 3, res["metrics"]["per_class_iou"]


@pytest.mark.slow
def test_default_main_job_learns(tmp_path):
    """The README's `make train` configuration, unchanged (about 5 minutes on 2 cores)."""
    cfg = compose_config("train", ["logger=csv", "trainer.enable_progress_bar=false"], tmp_path)
    res = train(cfg)
    chance = all_background_miou(instantiate(cfg.dataset), "test", 7, 255)
    assert res["metrics"]["mIoU"] > 4 * chance, (res["metrics"]["mIoU"], chance)
