"""PASCAL VOC 2012 (dataset=voc) and VOC + SBD (dataset=voc_aug) on tiny releases in the official
layouts (tests/fixtures/voc.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from hydra.utils import instantiate
from PIL import Image

from segbench.data.errors import DataError
from segbench.data.sbd import main, read_sbd_mat
from segbench.data.voc import VOCAugDataset, VOCDataset, voc_colormap
from tests.conftest import ROOT, compose_config
from tests.fixtures.voc import image_for, object_labels, voc_label, write_sbd, write_voc

# VOCopts.classes of the VOC devkit, background first
CLASSES = (
    "background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse "
    "motorbike person pottedplant sheep sofa train tvmonitor"
).split()

VOC_TRAIN = ["2007_000032", "2007_000039", "2007_000063"]
VOC_VAL = ["2007_000033", "2007_000042"]
# 2007_000039 is in VOC train too, 2007_000033 / 2007_000042 are VOC val (must be dropped),
# 2008_000015 is in both SBD lists (must appear once)
SBD_TRAIN = ["2007_000039", "2007_000033", "2008_000008", "2008_000015"]
SBD_VAL = ["2008_000015", "2008_000019", "2007_000042"]
SBD_ONLY = ["2008_000008", "2008_000015", "2008_000019"]
TRAIN_AUG = sorted(VOC_TRAIN + SBD_ONLY)


def make_voc(tmp_path: Path, **kwargs) -> Path:
    return write_voc(tmp_path / "VOCdevkit" / "VOC2012", VOC_TRAIN, VOC_VAL, **kwargs)


def make_voc_aug(tmp_path: Path, **voc_kwargs) -> tuple[Path, Path]:
    """VOC + SBD under ``tmp_path`` (the data_root); 2008_000008 also has a VOC JPEG."""
    voc_kwargs.setdefault("images_only", ["2012_900001", "2008_000008"])
    voc = make_voc(tmp_path, **voc_kwargs)
    sbd = write_sbd(tmp_path / "benchmark_RELEASE" / "dataset", SBD_TRAIN, SBD_VAL)
    return voc, sbd


def datamodule(option: str, tmp_path: Path, *overrides: str):
    cfg = compose_config("train", [f"dataset={option}", *overrides], tmp_path / "run")
    return instantiate(cfg.dataset)


def ids_of(ds) -> list[str]:
    return [Path(mask).stem for _, mask in ds.items]


def test_voc_palette_has_the_devkit_colours():
    cmap = voc_colormap()
    assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
    assert cmap[0].tolist() == [0, 0, 0]
    assert cmap[1].tolist() == [128, 0, 0]  # aeroplane
    assert cmap[2].tolist() == [0, 128, 0]  # bicycle
    assert cmap[15].tolist() == [192, 128, 128]  # person
    assert cmap[20].tolist() == [0, 64, 128]  # tvmonitor
    assert cmap[255].tolist() == [224, 224, 192]  # void
    assert len({tuple(c) for c in cmap.tolist()}) == 256


@pytest.mark.parametrize("option", ["voc", "voc_aug"])
def test_config_names_palette_and_training_recipe(option, tmp_path):
    cfg = compose_config("train", [f"dataset={option}", "data_root=/d"], tmp_path)
    ds = cfg.dataset
    assert ds.name == option and ds.num_classes == 21 and ds.ignore_index == 255
    assert list(ds.class_names) == CLASSES
    assert [list(c) for c in ds.palette] == voc_colormap(21).tolist()
    assert ds.palette[15] == [192, 128, 128]
    assert list(ds.splits) == ["train", "val"] and ds.eval_split == "val"
    assert ds.eval_batch_size == 1 and not any(ds.eval_transform.values())  # nothing: full size
    assert list(ds.train_transform.scale) == [0.5, 2.0]
    assert list(ds.train_transform.crop) == [512, 512] and ds.train_transform.hflip == 0.5
    assert ds.source.root == "/d/VOCdevkit/VOC2012"
    if option == "voc_aug":
        assert ds.source.sbd_root == "/d/benchmark_RELEASE/dataset"


def test_voc_loads_through_config(tmp_path):
    make_voc(tmp_path)
    dm = datamodule("voc", tmp_path, f"data_root={tmp_path}")
    train = dm.dataset("train")
    assert len(train) == len(VOC_TRAIN) and train.layout_problems == []  # JPEG-only: normal
    sample = train[0]
    assert sample["image"].shape == (3, 512, 512) and sample["mask"].shape == (512, 512)
    values = set(sample["mask"].unique().tolist())
    assert values <= set(range(21)) | {255} and 255 in values  # padding and void: ignore
    val = dm.dataset("val")
    assert ids_of(val) == sorted(VOC_VAL)
    sample = val[0]  # eval_transform {}: the original resolution, labels untouched
    assert sample["image"].shape == (3, 24, 32)
    assert np.array_equal(sample["mask"].numpy(), voc_label(VOC_VAL[0]))
    assert sample["name"].endswith(f"SegmentationClass/{VOC_VAL[0]}.png")


def test_voc_labels_are_the_palette_indices_with_255_kept(tmp_path):
    root = make_voc(tmp_path)
    with Image.open(root / "SegmentationClass" / f"{VOC_TRAIN[0]}.png") as im:
        assert im.mode == "P"  # as released: colours on disk, indices inside
    ds = VOCDataset(root, "train")
    for i, image_id in enumerate(ids_of(ds)):
        image, mask, name = ds.load(i)
        expected = voc_label(image_id)
        assert np.array_equal(mask, expected)
        assert 255 in mask and set(np.unique(mask).tolist()) & set(range(1, 21))
        assert name == str(root / "SegmentationClass" / f"{image_id}.png")
        assert image.shape == (24, 32, 3)
        assert np.abs(image.astype(int) - image_for(image_id)).mean() < 8  # JPEG, lossy
    assert ds.scan(full=True) == []


def test_voc_missing_root_names_the_directory_and_layout(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        datamodule("voc", tmp_path, f"data_root={missing}").dataset("train")
    text = str(err.value)
    assert str((missing / "VOCdevkit" / "VOC2012").absolute()) in text
    assert "JPEGImages" in text and "SegmentationClass" in text
    assert "ImageSets/Segmentation" in text
    root = make_voc(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"test\.txt.*\['train', 'trainval', 'val'\]"):
        VOCDataset(root, "test")


def test_voc_listed_ids_without_image_or_mask_are_layout_problems(tmp_path):
    root = make_voc(tmp_path, missing_mask=["2007_000039"], missing_image=["2007_000063"])
    ds = VOCDataset(root, "train")
    assert ids_of(ds) == ["2007_000032"]
    split_file = root / "ImageSets" / "Segmentation" / "train.txt"
    assert ds.layout_problems == [
        f"{split_file}: 2007_000039 (image without mask: no "
        f"{root / 'SegmentationClass' / '2007_000039.png'})",
        f"{split_file}: 2007_000063 (mask without image: no "
        f"{root / 'JPEGImages' / '2007_000063.jpg'})",
    ]
    assert not any("2012_900001" in p for p in ds.layout_problems)  # unannotated JPEGs: normal
    dm = datamodule("voc", tmp_path, f"data_root={tmp_path}")
    with pytest.raises(DataError, match="2 problems") as err:
        dm.dataset("train")
    assert "2007_000039 (image without mask" in str(err.value)
    assert "2007_000063 (mask without image" in str(err.value)
    assert len(dm.dataset("val")) == len(VOC_VAL)  # the other split is unaffected


def test_voc_void_remapped_to_background_is_found_and_refused(tmp_path):
    root = make_voc(tmp_path, void_as_background=["2007_000039"])
    bad = root / "SegmentationClass" / "2007_000039.png"
    problems = VOCDataset(root, "train").scan(full=True)
    assert len(problems) == 1 and problems[0].startswith(f"{bad}: object labels")
    assert "void (255) seems to have been remapped to background (0)" in problems[0]
    assert "segbench keeps 255 as ignore" in problems[0]
    with pytest.raises(DataError) as err:
        datamodule("voc", tmp_path, f"data_root={tmp_path}").dataset("train")
    assert str(bad) in str(err.value) and "remapped to background" in str(err.value)
    assert "2007_000032" not in str(err.value)
    # a mask of background only has no object to outline: nothing to report
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(bad)
    assert VOCDataset(root, "train").scan(full=True) == []


def test_voc_rgb_colour_mask_is_refused(tmp_path):
    root = make_voc(tmp_path, rgb_mask=["2007_000063"])
    bad = root / "SegmentationClass" / "2007_000063.png"
    problems = VOCDataset(root, "train").scan(full=True)
    assert len(problems) == 1 and problems[0].startswith(f"{bad}: mask has mode RGB")
    with pytest.raises(DataError, match="colour-coded RGB mask"):
        datamodule("voc", tmp_path, f"data_root={tmp_path}").dataset("train")


def test_train_aug_is_sbd_and_voc_train_minus_voc_val(tmp_path):
    voc, sbd = make_voc_aug(tmp_path)
    train = VOCAugDataset(voc, "train", sbd_root=sbd)
    assert ids_of(train) == TRAIN_AUG  # deduplicated, sorted, no VOC val id
    assert len(train) == 6 and not set(ids_of(train)) & set(VOC_VAL)
    assert train.split == "train_aug" and train.layout_problems == []
    val = VOCAugDataset(voc, "val", sbd_root=sbd)
    assert ids_of(val) == sorted(VOC_VAL)
    assert all(m.parent == voc / "SegmentationClass" for _, m in val.items)


def test_voc_aug_prefers_voc_masks_and_images(tmp_path):
    voc, sbd = make_voc_aug(tmp_path)
    ds = VOCAugDataset(voc, "train", sbd_root=sbd)
    pairs = {Path(m).stem: (i, m) for i, m in ds.items}
    for image_id in VOC_TRAIN:  # 2007_000039 is in SBD too: VOC's finer mask wins
        assert pairs[image_id] == (
            voc / "JPEGImages" / f"{image_id}.jpg",
            voc / "SegmentationClass" / f"{image_id}.png",
        )
    for image_id in SBD_ONLY:
        assert pairs[image_id][1] == sbd / "cls" / f"{image_id}.mat"
    assert pairs["2008_000008"][0] == voc / "JPEGImages" / "2008_000008.jpg"
    assert pairs["2008_000019"][0] == sbd / "img" / "2008_000019.jpg"
    for i, image_id in enumerate(ids_of(ds)):
        _, mask, _ = ds.load(i)
        if image_id in VOC_TRAIN:
            assert np.array_equal(mask, voc_label(image_id)) and 255 in mask
        else:
            assert np.array_equal(mask, object_labels(image_id)) and 255 not in mask
    # SBD masks have no void band by design: the void-remapped check must stay silent
    assert ds.scan(full=True) == []


def test_sbd_mat_reads_back_like_the_release(tmp_path):
    sbd = write_sbd(tmp_path / "sbd", ["2008_000008"], [], no_gtcls=["2008_000008"])
    path = sbd / "cls" / "2008_000008.mat"
    with pytest.raises(DataError, match=f"{path}: no GTcls struct"):
        read_sbd_mat(path)
    sbd = write_sbd(tmp_path / "sbd2", ["2008_000008"], [])
    path = sbd / "cls" / "2008_000008.mat"
    gt = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"]
    assert gt.Segmentation.dtype == np.uint8 and gt.Segmentation.shape == (24, 32)
    assert len(gt.Boundaries) == 20
    labels = object_labels("2008_000008")
    assert sorted(np.atleast_1d(gt.CategoriesPresent).tolist()) == sorted(
        np.unique(labels[labels > 0]).tolist()
    )
    assert np.array_equal(read_sbd_mat(path), labels)
    with pytest.raises(DataError, match="mask file does not exist"):
        read_sbd_mat(tmp_path / "none.mat")


def test_convert_sbd_command_writes_the_fast_path_and_is_idempotent(tmp_path, capsys):
    voc, sbd = make_voc_aug(tmp_path)
    on_the_fly = VOCAugDataset(voc, "train", sbd_root=sbd)
    command = [
        sys.executable,
        "-m",
        "segbench",
        "convert-sbd",
        "--sbd",
        str(sbd),
        "--voc",
        str(voc),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "wrote 6 masks" in first.stdout and "skipped 0 identical" in first.stdout
    assert "6/6" in first.stderr  # the progress bar
    listing = voc / "ImageSets" / "Segmentation" / "train_aug.txt"
    assert listing.read_text().split() == TRAIN_AUG
    out = voc / "SegmentationClassAug"
    assert sorted(p.stem for p in out.iterdir()) == TRAIN_AUG
    with Image.open(out / "2008_000019.png") as im:
        assert im.mode == "P"
        palette = np.array(im.getpalette()[: 256 * 3]).reshape(256, 3)
        assert palette[15].tolist() == [192, 128, 128] and palette[255].tolist() == [224, 224, 192]
        assert np.array_equal(np.array(im), object_labels("2008_000019"))
    with Image.open(out / "2007_000039.png") as im:  # VOC's mask where the id has one
        assert np.array_equal(np.array(im), voc_label("2007_000039"))

    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    # the second run in-process (the command's start-up, importing torch, is the slow part)
    assert main(["--sbd", str(sbd), "--voc", str(voc), "--no-progress"]) == 0
    again = capsys.readouterr().out
    assert "wrote 0 masks" in again and "skipped 6 identical" in again
    assert f"skipped {listing} (identical)" in again
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps

    # fast path: the converted PNGs are read (no .mat), with the very same labels
    fast = VOCAugDataset(voc, "train", sbd_root=sbd)
    assert fast.converted and not on_the_fly.converted
    assert [i for i, _ in fast.items] == [i for i, _ in on_the_fly.items]
    assert not any(m.suffix == ".mat" for _, m in fast.items)
    assert (out / "2008_000015.png") in [m for _, m in fast.items]
    for i in range(len(fast)):
        assert np.array_equal(fast.load(i)[1], on_the_fly.load(i)[1])
    assert fast.scan(full=True) == []  # converted SBD masks: no void diagnosis either

    # a different existing file is never overwritten
    changed = out / "2008_000015.png"
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(changed)
    assert main(["--sbd", str(sbd), "--voc", str(voc), "--no-progress"]) == 1
    with Image.open(changed) as im:
        assert np.array(im).max() == 0


def test_convert_sbd_refusal_is_reported(tmp_path, capsys):
    voc, sbd = make_voc_aug(tmp_path)
    out = voc / "SegmentationClassAug"
    out.mkdir()
    Image.fromarray(np.ones((24, 32), np.uint8)).save(out / "2008_000019.png")
    assert main(["--sbd", str(sbd), "--voc", str(voc), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"refused to overwrite {out / '2008_000019.png'}" in err
    assert not (voc / "ImageSets" / "Segmentation" / "train_aug.txt").exists()
    assert main(["--sbd", str(tmp_path / "no"), "--voc", str(voc)]) == 2
    assert str((tmp_path / "no").absolute()) in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--sbd", str(sbd)])  # --voc missing: argparse's usage error names the command
    assert exit_.value.code == 2
    assert "usage: segbench convert-sbd" in capsys.readouterr().err


def test_voc_aug_through_config_and_its_checks(tmp_path):
    make_voc_aug(tmp_path)
    dm = datamodule("voc_aug", tmp_path, f"data_root={tmp_path}")
    train = dm.dataset("train")  # check_on_setup scans SBD masks without 255: passes
    assert len(train) == 6 and train.verified
    assert train[0]["mask"].shape == (512, 512)
    assert len(dm.dataset("val")) == 2

    bad_root = tmp_path / "bad"
    voc, _ = make_voc_aug(bad_root, void_as_background=["2007_000063"])
    with pytest.raises(DataError) as err:
        datamodule("voc_aug", tmp_path, f"data_root={bad_root}").dataset("train")
    text = str(err.value)
    assert "1 problem in the data" in text
    assert f"{voc / 'SegmentationClass' / '2007_000063.png'}: object labels" in text


def test_voc_aug_without_sbd_or_conversion_says_what_to_do(tmp_path):
    voc = make_voc(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        datamodule("voc_aug", tmp_path, f"data_root={tmp_path}").dataset("train")
    text = str(err.value)
    assert str(tmp_path / "benchmark_RELEASE" / "dataset") in text
    assert "SegmentationClassAug" in text and "cls/<id>.mat" in text
    assert "segbench convert-sbd --sbd <benchmark_RELEASE/dataset> --voc" in text
    assert len(VOCAugDataset(voc, "val")) == 2  # VOC val needs no SBD


def test_voc_aug_train_list_leaking_val_ids_is_a_layout_problem(tmp_path):
    voc, sbd = make_voc_aug(tmp_path)
    (voc / "SegmentationClassAug").mkdir()
    listing = voc / "ImageSets" / "Segmentation" / "train_aug.txt"
    listing.write_text("2007_000032\n2007_000033\n2008_000008\n")
    ds = VOCAugDataset(voc, "train", sbd_root=sbd)
    assert ds.converted
    assert any(
        p.startswith(f"{listing}: 1 ids of VOC val") and "2007_000033" in p
        for p in ds.layout_problems
    )
    # 2008_000008 has no converted mask: reported, not dropped silently
    assert any("2008_000008 (image without mask" in p for p in ds.layout_problems)
