"""CamVid (SegNet release): the loader on a fixture in the official layout, and on the real
data in ../shared/data/CamVid when it is there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from segbench.data.camvid import CamVidDataset
from segbench.data.errors import DataError
from tests.conftest import ROOT, compose_config
from tests.fixtures.camvid import first, write_camvid

REAL = ROOT.parent / "shared" / "data" / "CamVid"


def camvid_cfg(tmp_path: Path, root: Path, *extra: str):
    return compose_config(
        "train", ["dataset=camvid", f"dataset.source.root={root}", *extra], tmp_path / "run"
    )


def test_config_reads_the_split_files_and_keeps_void_as_ignore(tmp_path):
    root = write_camvid(tmp_path / "CamVid")
    dm = instantiate(camvid_cfg(tmp_path, root).dataset)
    assert (dm.num_classes, dm.ignore_index) == (11, 11)
    assert dm.class_names[0] == "Sky" and dm.class_names[-1] == "Bicyclist"
    assert len(dm.palette) == 11 and dm.palette[3] == [128, 64, 128]  # Road
    val = dm.dataset("val")
    assert len(val) == 2 and len(dm.dataset("train")) == 4
    image_path, label_path = sorted(
        zip(*(sorted((root / d).glob("*.png")) for d in ("val", "valannot")))
    )[0]
    sample = val[0]
    expected = np.array(Image.open(label_path)).astype(np.int64)
    assert sample["name"] == str(label_path)
    np.testing.assert_array_equal(sample["mask"].numpy(), expected)  # eval: untouched
    assert 11 in expected  # the void column is there and stays 11
    assert tuple(sample["image"].shape) == (3, 24, 32)


def test_split_file_paths_are_read_under_the_root(tmp_path):
    """The lines name /SegNet/CamVid/... (the authors' machine): the last two parts count."""
    root = write_camvid(tmp_path / "data" / "CamVid", prefix="/home/someone/SegNet/CamVid")
    ds = CamVidDataset(root, "train")
    assert all(p.is_relative_to(root) and p.is_file() for pair in ds.items for p in pair)
    assert [img.parent.name for img, _ in ds.items] == ["train"] * 4
    assert [lbl.parent.name for _, lbl in ds.items] == ["trainannot"] * 4


def test_training_pipeline_crops_pads_with_void_and_never_invents_labels(tmp_path):
    root = write_camvid(tmp_path / "CamVid", size=(24, 32))
    cfg = camvid_cfg(tmp_path, root, "dataset.train_transform.crop=[40,48]")
    ds = instantiate(cfg.dataset).dataset("train")
    raw = set()
    for i in range(len(ds)):
        raw |= set(np.unique(ds.load(i)[1]).tolist())
    seen_pad = False
    for _ in range(6):
        for i in range(len(ds)):
            mask = ds[i]["mask"]
            assert tuple(mask.shape) == (40, 48)
            assert set(mask.unique().tolist()) <= raw | {11}  # nearest: only stored labels
            seen_pad |= bool((mask == 11).float().mean() > 0.3)  # padding is void
    assert seen_pad


def test_missing_root_and_missing_split_say_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist.*annot"):
        CamVidDataset(tmp_path / "nowhere", "train")
    root = write_camvid(tmp_path / "CamVid", per_split={"train": 2, "val": 1})
    with pytest.raises(FileNotFoundError, match=r"test\.txt does not exist.*\['train', 'val'\]"):
        CamVidDataset(root, "test")


def test_layout_problems_are_refused_by_name(tmp_path):
    root = write_camvid(tmp_path / "CamVid")
    image, label = first(root)
    label.unlink()
    with open(root / "val.txt", "a") as f:
        f.write("/SegNet/CamVid/val/ghost.png /SegNet/CamVid/valannot/ghost.png\n")
    ds = CamVidDataset(root, "train")
    assert any(f"{image.name} (image without mask)" in p for p in ds.layout_problems)
    assert any("trainannot" in p and "does not exist" in p for p in ds.layout_problems)
    dm = instantiate(camvid_cfg(tmp_path, root).dataset)
    with pytest.raises(DataError, match=image.stem):
        dm.dataset("train")
    with pytest.raises(DataError, match=r"val/ghost\.png is listed but does not exist"):
        dm.dataset("val")


def test_32_class_labels_are_named_as_such(tmp_path):
    root = write_camvid(tmp_path / "CamVid")
    _, label = first(root)
    mask = np.array(Image.open(label))
    mask[:3] = 30
    Image.fromarray(mask).save(label)
    problems = CamVidDataset(root, "train").scan(full=True)
    assert any(label.name in p and "32-class" in p for p in problems)
    assert any(label.name in p and "[30]" in p for p in problems)


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real CamVid not found at {REAL}")
class TestRealCamVid:
    """The SegNet release as it is on this machine (train and val only)."""

    def test_splits_sizes_and_labels(self):
        train, val = CamVidDataset(REAL, "train"), CamVidDataset(REAL, "val")
        assert (len(train), len(val)) == (367, 101)
        assert train.layout_problems == [] and val.layout_problems == []
        for ds in (train, val):
            for index in (0, len(ds) // 2, len(ds) - 1):
                image, mask, name = ds.load(index)
                assert image.shape == (360, 480, 3) and mask.shape == (360, 480)
                assert set(np.unique(mask).tolist()) <= set(range(12)), name

    def test_config_trains_a_step_on_the_real_data(self, tmp_path):
        from segbench.engine.run import train

        cfg = compose_config(
            "train",
            [
                "dataset=camvid",
                f"dataset.source.root={REAL}",
                "dataset.eval_split=val",
                "dataset.check_on_setup=false",  # the full scan is the checker test's job
                "backbone=tiny",
                "logger=csv",
                "trainer=cpu",
                "trainer.max_steps=1",
                "+trainer.limit_val_batches=1",
                "+trainer.limit_test_batches=1",
                "trainer.num_sanity_val_steps=0",
                "dataset.batch_size=2",
                "dataset.num_workers=0",
                "dataset.train_transform.crop=[96,128]",
            ],
            tmp_path / "run",
        )
        results = train(cfg)
        assert results["dataset"] == "camvid"
        assert set(results["metrics"]["per_class_iou"]) == set(cfg.dataset.class_names)
