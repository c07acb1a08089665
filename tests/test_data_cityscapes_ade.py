"""Cityscapes and ADE20K: official layouts, label mapping, class tables, classic mistakes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image
from torchvision.datasets import Cityscapes

from segbench.data.ade20k import ADE20KDataset
from segbench.data.cityscapes import CLASS_NAMES, PALETTE, CityscapesDataset
from segbench.data.errors import DataError
from tests.conftest import compose_config
from tests.fixtures.ade20k import write_ade20k
from tests.fixtures.cityscapes import write_cityscapes


def datamodule(tmp_path: Path, name: str, *overrides: str):
    cfg = compose_config(
        "train",
        [f"dataset={name}", "backbone=tiny", "dataset.num_workers=0", *overrides],
        tmp_path / "run",
    )
    return cfg, instantiate(cfg.dataset)


def torchvision_train_id(label_id: int) -> int:
    """The official table, looked up one id at a time (independent of the dataset's LUT)."""
    (cls,) = [c for c in Cityscapes.classes if c.id == label_id]
    return 255 if cls.train_id in (255, -1) else cls.train_id


def messages_naming(problems: list[str], path: Path) -> list[str]:
    return [p for p in problems if str(path) in p]


# ----------------------------------------------------------------------------- Cityscapes


def test_cityscapes_loads_through_the_config(tmp_path):
    files = write_cityscapes(tmp_path / "data" / "cityscapes", per_split=3)
    # the default root is ${data_root}/cityscapes
    cfg, dm = datamodule(tmp_path, "cityscapes", f"data_root={tmp_path / 'data'}")
    assert cfg.dataset.source.label_files == "labelIds"
    assert dm.num_classes == 19 and dm.ignore_index == 255 and dm.splits == ["train", "val"]
    assert dm.eval_batch_size == 1
    train = dm.dataset("train")
    assert len(train) == 3 and train.verified  # check_on_setup scanned it
    sample = train[0]
    assert sample["image"].shape == (3, 512, 1024)  # training crop (padded up from 16x32)
    assert sample["mask"].shape == (512, 1024)
    assert sample["name"].endswith("_gtFine_labelIds.png")
    values = set(sample["mask"].unique().tolist())
    assert values <= set(range(19)) | {255} and values - {255}
    val = dm.dataset("val")[0]  # evaluation at full resolution
    assert val["image"].shape == (3, 16, 32) and val["mask"].shape == (16, 32)
    assert sorted(m for _, m in dm.dataset("val").items) == sorted(m for _, m in files.items["val"])


def test_cityscapes_label_ids_map_to_train_ids_by_the_official_table(tmp_path):
    files = write_cityscapes(tmp_path, per_split=2)
    ds = CityscapesDataset(str(tmp_path), "train", num_classes=19)
    for index, (_, label_path) in enumerate(files.items["train"]):
        raw = np.array(Image.open(label_path))
        assert set(np.unique(raw).tolist()) == set(range(34))  # every label id 0..33
        _, mask, name = ds.load(index)
        assert name == str(label_path)
        expected = np.vectorize(torchvision_train_id)(raw)
        assert np.array_equal(mask, expected)
        # ignore handling: every void id (0-6, 9, 10, 14-16, 18, 29, 30) becomes 255
        void = [i for i in range(34) if torchvision_train_id(i) == 255]
        assert void == [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]
        assert (mask[np.isin(raw, void)] == 255).all()
        assert set(np.unique(mask).tolist()) == set(range(19)) | {255}
    # a few entries by hand: road 7 -> 0, car 26 -> 13, bicycle 33 -> 18, caravan 29 -> void
    for label_id, train_id in ((7, 0), (26, 13), (33, 18), (29, 255), (0, 255)):
        assert ds.lut[label_id] == train_id
    assert ds.scan(full=True) == []


def test_cityscapes_label_train_ids_files_are_used_as_stored(tmp_path):
    files = write_cityscapes(tmp_path, per_split=2, label_files="labelTrainIds")
    by_ids = CityscapesDataset(str(tmp_path), "val", num_classes=19)
    by_train_ids = CityscapesDataset(str(tmp_path), "val", 19, label_files="labelTrainIds")
    for index, (_, label_path) in enumerate(files.items["val"]):
        assert label_path.name.endswith("_gtFine_labelTrainIds.png")
        _, mask, name = by_train_ids.load(index)
        assert name == str(label_path)
        assert np.array_equal(mask, np.array(Image.open(label_path)))
        assert np.array_equal(mask, by_ids.load(index)[1])  # both routes agree
    assert by_train_ids.scan(full=True) == []


def test_cityscapes_class_names_and_palette_match_torchvision(tmp_path):
    cfg, _ = datamodule(tmp_path, "cityscapes", f"dataset.source.root={tmp_path}")
    official = sorted(
        (c for c in Cityscapes.classes if c.train_id not in (255, -1)), key=lambda c: c.train_id
    )
    assert [c.train_id for c in official] == list(range(19))
    names = [c.name for c in official]
    colours = [list(c.color) for c in official]
    assert list(cfg.dataset.class_names) == names == CLASS_NAMES
    assert [list(c) for c in cfg.dataset.palette] == colours == PALETTE
    assert names[:3] == ["road", "sidewalk", "building"] and names[-1] == "bicycle"


@pytest.mark.parametrize(
    ("label_files", "mistake", "pattern"),
    [
        ("labelIds", "train_ids_as_label_ids", r"looks like train ids.*label_files=labelTrainIds"),
        ("labelIds", "invalid_label_ids", r"\[40\].*not a labelIds file.*labelTrainIds"),
        (
            "labelTrainIds",
            "label_ids_as_train_ids",
            r"label ids not converted to train ids.*raw label ids.*label_files=labelIds",
        ),
        ("labelIds", "missing_gt", r"image without label file .*_gtFine_labelIds\.png"),
        ("labelTrainIds", "missing_gt", r"image without label file .*_labelTrainIds\.png"),
        ("labelIds", "missing_image", r"label file without image .*_leftImg8bit\.png"),
    ],
)
def test_cityscapes_planted_mistakes_are_found_and_refused(tmp_path, label_files, mistake, pattern):
    root = tmp_path / "cityscapes"
    files = write_cityscapes(root, per_split=1, label_files=label_files, plant=[mistake])
    for split in ("train", "val"):
        (planted,) = [p for p in files.planted[mistake] if f"/{split}/" in str(p)]
        ds = CityscapesDataset(str(root), split, 19, label_files=label_files)
        found = messages_naming(ds.scan(full=True), planted)
        assert found and any(re.search(pattern, m) for m in found), found
    _, dm = datamodule(
        tmp_path, "cityscapes", f"dataset.source.root={root}",
        f"dataset.source.label_files={label_files}",
    )  # fmt: skip
    with pytest.raises(DataError, match=files.planted[mistake][0].name):
        dm.dataset("train")


def test_cityscapes_invalid_label_ids_are_refused_on_load_too(tmp_path):
    """Without a scan (check_on_setup: false) the table must not map a bad file silently."""
    files = write_cityscapes(tmp_path, per_split=1, plant=["train_ids_as_label_ids"])
    ds = CityscapesDataset(str(tmp_path), "train", 19)
    bad = [
        i for i, (_, m) in enumerate(ds.items) if m == files.planted["train_ids_as_label_ids"][0]
    ]
    with pytest.raises(DataError, match="looks like train ids"):
        ds[bad[0]]


def test_cityscapes_missing_root_and_files(tmp_path):
    missing = tmp_path / "nowhere" / "cityscapes"
    with pytest.raises(FileNotFoundError, match=str(missing.absolute())) as err:
        CityscapesDataset(str(missing), "train", 19)
    assert "leftImg8bit/{train,val}/<city>/" in str(err.value)
    assert "_gtFine_labelIds.png" in str(err.value)
    # the full config, with the default ${data_root}/cityscapes root
    _, dm = datamodule(tmp_path, "cityscapes", f"data_root={tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError, match=str(missing.absolute())):
        dm.dataset("train")
    # a root without gtFine/val: the missing directory is named
    write_cityscapes(tmp_path / "cs", per_split=1)
    shutil.rmtree(tmp_path / "cs" / "gtFine" / "val")
    with pytest.raises(FileNotFoundError, match=r"no gtFine/val/ directory"):
        CityscapesDataset(str(tmp_path / "cs"), "val", 19)
    with pytest.raises(ValueError, match="no public labels"):
        CityscapesDataset(str(tmp_path / "cs"), "test", 19)


def test_cityscapes_label_train_ids_never_made(tmp_path):
    write_cityscapes(tmp_path, per_split=2)  # labelIds only
    ds = CityscapesDataset(str(tmp_path), "train", 19, label_files="labelTrainIds")
    assert len(ds) == 0
    assert "createTrainIdLabelImgs" in ds.layout_problems[0]
    assert "label_files=labelIds" in ds.layout_problems[0]
    assert len(ds.layout_problems) == 1 + 2  # the hint, then each image by name
    assert all("_leftImg8bit.png: image without label file" in p for p in ds.layout_problems[1:])


# ----------------------------------------------------------------------------- ADE20K

# objectInfo150.csv (CSAIL sceneparsing): 1-based index → first name
OBJECT_INFO_150 = {1: "wall", 2: "building", 13: "person", 21: "car", 45: "chest of drawers"}
OBJECT_INFO_150 |= {90: "television receiver", 128: "bicycle", 137: "traffic light", 150: "flag"}


def test_ade20k_loads_through_the_config(tmp_path):
    root = tmp_path / "data" / "ADEChallengeData2016"
    files = write_ade20k(root, n_train=3, n_val=2)
    cfg, dm = datamodule(tmp_path, "ade20k", f"data_root={tmp_path / 'data'}")
    assert cfg.dataset.source.reduce_zero_label is True
    assert dm.num_classes == 150 and dm.eval_batch_size == 1 and dm.splits == ["train", "val"]
    train = dm.dataset("train")
    assert len(train) == 3 and train.verified
    sample = train[0]
    assert sample["image"].shape == (3, 512, 512) and sample["mask"].shape == (512, 512)
    assert "annotations/training/ADE_train_" in sample["name"]
    val = dm.dataset("val")
    assert [m for _, m in val.items] == [m for _, m in files.items["val"]]
    sizes = {tuple(val[i]["image"].shape[1:]) for i in range(len(val))}
    assert sizes == {(24, 32), (28, 32)}  # full resolution, sizes vary


def test_ade20k_reduce_zero_label(tmp_path):
    files = write_ade20k(tmp_path, n_train=2, n_val=1)
    ds = ADE20KDataset(str(tmp_path), "train", 150)
    for index, (_, mask_path) in enumerate(files.items["train"]):
        raw = np.array(Image.open(mask_path))
        assert set(np.unique(raw).tolist()) == set(range(151))
        _, mask, name = ds.load(index)
        assert name == str(mask_path)
        assert (mask[raw == 0] == 255).all()  # "other" is ignored
        assert (mask[raw == 1] == 0).all() and (mask[raw == 150] == 149).all()
        keep = raw > 0
        assert np.array_equal(mask[keep].astype(int), raw[keep].astype(int) - 1)
        assert set(np.unique(mask).tolist()) == set(range(150)) | {255}
    assert ds.scan(full=True) == []
    # without the reduction the stored values are the labels (0 = "other" as class 0)
    plain = ADE20KDataset(str(tmp_path), "train", 151, reduce_zero_label=False)
    raw = np.array(Image.open(files.items["train"][0][1]))
    assert np.array_equal(plain.load(0)[1], raw) and plain.scan(full=True) == []


def test_ade20k_class_names_and_palette(tmp_path):
    cfg, _ = datamodule(tmp_path, "ade20k", f"dataset.source.root={tmp_path}")
    names = list(cfg.dataset.class_names)
    assert len(names) == 150 == len(set(names))
    for index, name in OBJECT_INFO_150.items():
        assert names[index - 1] == name
    palette = [list(c) for c in cfg.dataset.palette]
    assert len(palette) == 150
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in palette)
    # first and last colours of the ADE20K colour coding (color150)
    assert palette[:3] == [[120, 120, 120], [180, 120, 120], [6, 230, 230]]
    assert palette[-1] == [92, 0, 255]


@pytest.mark.parametrize(
    ("mistake", "pattern"),
    [
        ("value_above_150", r"raw annotation values \[151, 200\] exceed 150"),
        ("already_reduced", r"already reduced.*reduce_zero_label=false"),
        ("rgb_annotation", r"mode RGB"),
        ("missing_annotation", r"image without annotation .*annotations/.*\.png"),
        ("missing_image", r"annotation without image .*images/.*\.jpg"),
    ],
)
def test_ade20k_planted_mistakes_are_found_and_refused(tmp_path, mistake, pattern):
    root = tmp_path / "ADEChallengeData2016"
    files = write_ade20k(root, n_train=1, n_val=1, plant=[mistake])
    for split, sub in (("train", "training"), ("val", "validation")):
        (planted,) = [p for p in files.planted[mistake] if f"/{sub}/" in str(p)]
        ds = ADE20KDataset(str(root), split, 150)
        found = messages_naming(ds.scan(full=True), planted)
        assert found and any(re.search(pattern, m) for m in found), found
    _, dm = datamodule(tmp_path, "ade20k", f"dataset.source.root={root}")
    with pytest.raises(DataError, match=files.planted[mistake][0].name):
        dm.dataset("train")


def test_ade20k_missing_root(tmp_path):
    missing = tmp_path / "nowhere" / "ADEChallengeData2016"
    _, dm = datamodule(tmp_path, "ade20k", f"data_root={tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError, match=str(missing.absolute())) as err:
        dm.dataset("train")
    text = str(err.value)
    assert "images/{training,validation}/ADE_*.jpg" in text
    assert "annotations/{training,validation}/ADE_*.png" in text
    write_ade20k(tmp_path / "ade", n_train=1, n_val=1)
    shutil.rmtree(tmp_path / "ade" / "annotations" / "validation")
    with pytest.raises(FileNotFoundError, match=r"no annotations/validation/ directory"):
        ADE20KDataset(str(tmp_path / "ade"), "val", 150)
