"""Bad data on disk is found before training starts, by an error naming the file, entry or value
and saying what was expected, or by a warning where the data may be legitimate: repeated and
leaking split lists, mixed binary encodings, smoothed (JPEG) masks, empty splits, truncated
files. Also: every key of the dataset configs' transforms can be set without ``+``."""

from __future__ import annotations

import inspect
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from segbench.data.ade20k import ADE20KDataset
from segbench.data.camvid import CamVidDataset
from segbench.data.check import main as check_main
from segbench.data.cityscapes import CityscapesDataset
from segbench.data.errors import DataError, DataWarning
from segbench.data.folder import FolderDataset
from segbench.data.shapes import ShapesDataset
from segbench.data.transforms import SegTransform
from segbench.data.voc import VOCAugDataset, VOCDataset
from tests.conftest import CONF, ROOT, compose_config
from tests.fixtures.camvid import write_camvid
from tests.fixtures.voc import write_voc

REAL_CAMVID = ROOT.parent / "shared" / "data" / "CamVid"
VOC_TRAIN = ["2007_000032", "2007_000039", "2007_000063"]
VOC_VAL = ["2007_000033", "2007_000042"]


def regions(labels: tuple[int, ...] = (1, 2), size: tuple[int, int] = (96, 128)) -> np.ndarray:
    """A clean label map: background 0, a rectangle of ``labels[0]``, a disc of
    ``labels[-1]``."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros(size, np.uint8)
    mask[h // 8 : h // 2, w // 8 : w // 2] = labels[0]
    mask[(yy - 2 * h // 3) ** 2 + (xx - 2 * w // 3) ** 2 < (h // 4) ** 2] = labels[-1]
    return mask


def smoothed(mask: np.ndarray, quality: int = 90) -> np.ndarray:
    """``mask`` after a round trip through JPEG, as a grey image."""
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="JPEG", quality=quality)
    return np.array(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))


def write_folder(
    root: Path, masks: dict[str, np.ndarray], splits: dict[str, list[str]] | None = None
) -> Path:
    """A ``folder`` dataset: a random JPEG image per mask, the masks as PNG, split files."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem, mask in masks.items():
        image = rng.integers(0, 256, size=(*mask.shape, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{stem}.jpg")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    if splits is not None:
        (root / "splits").mkdir()
        for split, stems in splits.items():
            (root / "splits" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    return root


ALL_TRAIN = "dataset.source.split_ratio.train=1.0"  # every sample in train (ratio split)
NO_VAL_TEST = ["dataset.source.split_ratio.val=0.0", "dataset.source.split_ratio.test=0.0"]


def folder_cfg(tmp_path: Path, root: Path, num_classes: int = 3, *extra: str):
    names = ",".join(f"c{i}" for i in range(num_classes))
    overrides = [
        "dataset=folder",
        f"dataset.source.root={root}",
        f"dataset.num_classes={num_classes}",
        f"dataset.class_names=[{names}]",
        "dataset.num_workers=0",
        *extra,
    ]
    if ALL_TRAIN in extra:
        overrides += NO_VAL_TEST
    return compose_config("train", overrides, tmp_path / "run")


# --- 1. split lists: repeats and leaks -----------------------------------------------------


def test_a_repeated_line_of_a_camvid_split_file_names_the_entry_and_its_lines(tmp_path):
    root = write_camvid(tmp_path / "CamVid")
    split_file = root / "train.txt"
    lines = split_file.read_text().splitlines()
    split_file.write_text("\n".join([*lines, "", lines[1]]) + "\n")  # line 6 repeats line 2
    name = lines[1].split()[0].rsplit("/", 1)[1]
    with pytest.raises(DataError) as err:
        CamVidDataset(root, "train")
    text = str(err.value)
    assert str(split_file) in text and f"train/{name} on lines 2 and 6" in text
    assert "listed more than once" in text


def test_repeated_ids_of_voc_and_folder_split_files_are_refused(tmp_path):
    voc = write_voc(tmp_path / "VOC2012", VOC_TRAIN, VOC_VAL)
    split_file = voc / "ImageSets" / "Segmentation" / "train.txt"
    split_file.write_text("2007_000032\n2007_000039\n2007_000032\n2007_000063\n2007_000039\n")
    with pytest.raises(DataError) as err:
        VOCDataset(voc, "train")
    text = str(err.value)
    assert str(split_file) in text and "2 entries are listed more than once" in text
    assert "2007_000032 on lines 1 and 3" in text and "2007_000039 on lines 2 and 5" in text

    masks = {f"m{i}": regions() for i in range(4)}
    root = write_folder(tmp_path / "mine", masks, {"train": ["m0", "m1", "m0"], "val": ["m3"]})
    with pytest.raises(
        DataError, match=r"(?s)splits/train\.txt: 1 entry is listed.*m0 on lines 1 and 3"
    ):
        FolderDataset(root, "train", num_classes=3)


def test_camvid_images_listed_for_training_and_evaluation_are_a_leak(tmp_path):
    root = write_camvid(tmp_path / "CamVid")
    train_lines = (root / "train.txt").read_text().splitlines()
    with open(root / "val.txt", "a") as f:  # two training images, also listed for validation
        f.write("\n".join(train_lines[:2]) + "\n")
    shared = sorted(line.split()[0].rsplit("/", 1)[1] for line in train_lines[:2])
    ds = CamVidDataset(root, "train")
    (leak,) = [p for p in ds.layout_problems if "share" in p]
    assert f"{root / 'train.txt'} and {root / 'val.txt'} share 2 samples" in leak
    assert all(name in leak for name in shared) and "leak into evaluation" in leak
    # training refuses to start: from the training side and from the validation side
    cfg = compose_config(
        "train", ["dataset=camvid", f"dataset.source.root={root}"], tmp_path / "run"
    )
    dm = instantiate(cfg.dataset)
    with pytest.raises(DataError, match=re.escape(shared[0])):
        dm.dataset("train")
    with pytest.raises(DataError, match=r"val\.txt and .*train\.txt share 2 samples"):
        dm.dataset("val")
    assert CamVidDataset(root, "test").layout_problems == []  # test shares nothing


def test_voc_train_and_val_sharing_ids_is_a_leak(tmp_path):
    voc = write_voc(tmp_path / "VOC2012", VOC_TRAIN, VOC_VAL)
    splits = voc / "ImageSets" / "Segmentation"
    (splits / "val.txt").write_text("".join(f"{i}\n" for i in [*VOC_VAL, VOC_TRAIN[1]]))
    ds = VOCDataset(voc, "train")
    assert any(
        "train.txt and" in p and "val.txt share 1 samples (2007_000039)" in p
        for p in ds.layout_problems
    )
    assert VOCDataset(voc, "trainval").layout_problems == []  # the union: no partner
    # voc_aug's converted train_aug list against VOC's test list
    (voc / "SegmentationClassAug").mkdir()
    (splits / "train_aug.txt").write_text("2007_000032\n2007_000063\n")
    (splits / "test.txt").write_text("2007_000063\n2008_000001\n")
    aug = VOCAugDataset(voc, "train")
    assert any("train_aug.txt and" in p and "test.txt share 1" in p for p in aug.layout_problems)


def test_folder_split_files_that_overlap_are_refused_and_identical_ones_warned(tmp_path):
    masks = {f"m{i}": regions() for i in range(6)}
    root = write_folder(
        tmp_path / "leak", masks, {"train": ["m0", "m1", "m2", "m3"], "val": ["m3", "m4"]}
    )
    with pytest.raises(DataError, match=r"train\.txt and .*val\.txt share 1 samples \(m3\)"):
        instantiate(folder_cfg(tmp_path, root).dataset).dataset("train")
    # the same list for both: deliberate more often than not (an overfitting check)
    same = ["m0", "m1", "m2"]
    root = write_folder(tmp_path / "same", masks, {"train": same, "val": same})
    with pytest.warns(DataWarning, match=r"train\.txt and .*val\.txt list the same 3 samples"):
        ds = FolderDataset(root, "train", num_classes=3)
    assert ds.layout_problems == [] and len(ds.data_warnings) == 1


def test_a_folder_split_cut_by_the_ratio_is_compared_with_the_split_files(tmp_path):
    """Without splits/test.txt the ratio cuts test from every image, train.txt's included."""
    masks = {f"m{i}": regions() for i in range(10)}
    stems = sorted(masks)
    root = write_folder(tmp_path / "data", masks, {"train": stems[:8], "val": stems[8:]})
    cut = FolderDataset(root, "test", num_classes=3, split_ratio={"train": 0.5, "test": 0.5})
    (leak,) = cut.layout_problems
    assert leak.startswith("split_ratio test=0.5 of") and "train.txt share" in leak
    assert "write" in leak and "splits/test.txt too" in leak


# --- 2. binary masks in two encodings ------------------------------------------------------


def test_masks_mixing_0_1_and_0_255_are_named_by_kind(tmp_path):
    base = regions((1, 1))
    masks = {f"ones{i}": base for i in range(3)}
    masks |= {f"white{i}": base * 255 for i in range(2)}
    root = write_folder(tmp_path / "data", masks)
    ds = FolderDataset(root, "train", num_classes=2, split_ratio={"train": 1.0})
    problems = ds.scan()
    (mixed,) = problems  # one split-wide problem, nothing per file
    assert "binary masks in two encodings: 3 hold 0/1" in mixed and "2 hold 0/255" in mixed
    assert "ones0.png" in mixed and "white0.png" in mixed and "white1.png" in mixed
    assert "store the foreground as 1" in mixed
    cfg = folder_cfg(tmp_path, root, 2, ALL_TRAIN)
    with pytest.raises(DataError, match="two encodings"):
        instantiate(cfg.dataset).dataset("train")  # before training starts


def test_0_255_masks_next_to_masks_using_255_as_ignore_are_not_a_mix(tmp_path):
    """When 255 marks ignored pixels next to the foreground 1, a mask of 0 and 255 only is an
    image without foreground whose ignored pixels are legitimate."""
    base = regions((1, 1))
    ignored = base.copy()
    ignored[0] = 255
    root = write_folder(tmp_path / "data", {"a": ignored, "b": base, "c": (base * 255)})
    ds = FolderDataset(root, "train", num_classes=2, split_ratio={"train": 1.0})
    assert ds.scan() == []


# --- 3. smoothed (JPEG-compressed) masks ---------------------------------------------------


def test_a_jpeg_compressed_mask_with_valid_values_is_a_warning_naming_it(tmp_path):
    clean = regions((40, 100))
    masks = {"clean": clean, "jpeg": smoothed(clean)}
    root = write_folder(tmp_path / "data", masks)
    assert len(np.unique(masks["jpeg"])) > 10 and masks["jpeg"].max() < 150  # all in range
    ds = FolderDataset(root, "train", num_classes=150, split_ratio={"train": 1.0})
    with pytest.warns(DataWarning) as caught:
        assert ds.scan() == []  # not an error: the values are valid labels
    (message,) = [str(w.message) for w in caught]
    assert f"{root / 'masks' / 'jpeg.png'}: looks smoothed" in message
    assert "JPEG-compressed" in message and "clean.png" not in message
    # the passed scan is remembered, and its warning with it
    with pytest.warns(DataWarning, match="jpeg.png: looks smoothed"):
        ds.check_all()
    again = FolderDataset(root, "train", num_classes=150, split_ratio={"train": 1.0})
    with pytest.warns(DataWarning, match="jpeg.png: looks smoothed"):
        again.check_all()
    assert again.verified and again.scan_warnings


def test_clean_masks_with_thin_regions_are_not_called_smoothed(tmp_path):
    clean = regions((40, 100))
    clean[48, 16:64] = 20  # one pixel thin, between 40 above and 0 below: gradual pixels
    clean[:, 5] = 20
    nearest = np.array(Image.fromarray(clean).resize((256, 192), Image.NEAREST))
    root = write_folder(tmp_path / "data", {"thin": clean, "nearest": nearest})
    ds = FolderDataset(root, "train", num_classes=150, split_ratio={"train": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert ds.scan() == []
    # resized with interpolation instead: smoothed too
    bilinear = np.array(Image.fromarray(clean).resize((256, 192), Image.BILINEAR))
    Image.fromarray(bilinear).save(root / "masks" / "nearest.png")
    with pytest.warns(DataWarning, match=r"nearest\.png: looks smoothed"):
        FolderDataset(root, "train", num_classes=150, split_ratio={"train": 1.0}).scan()


def test_a_jpeg_compressed_camvid_mask_is_an_error_that_says_why(tmp_path):
    root = write_camvid(tmp_path / "CamVid", size=(96, 128))
    label = sorted((root / "trainannot").glob("*.png"))[0]
    Image.fromarray(smoothed(regions((3, 8)) * 20)).save(label)  # values up to ~170
    problems = [p for p in CamVidDataset(root, "train").scan() if str(label) in p]
    assert any("lie outside [0, 11)" in p and "values)" in p for p in problems)  # shortened
    assert any("looks smoothed" in p for p in problems)  # the cause, next to the error


def test_a_jpeg_file_named_png_is_refused_as_a_mask(tmp_path):
    root = write_folder(tmp_path / "data", {"a": regions(), "b": regions()})
    Image.fromarray(regions()).save(root / "masks" / "b.png", format="JPEG", quality=100)
    ds = FolderDataset(root, "train", num_classes=3, split_ratio={"train": 1.0})
    (problem,) = ds.scan()
    assert problem.startswith(f"{root / 'masks' / 'b.png'}: mask is a JPEG file named .png")
    assert "lossless" in problem


# --- 4. empty splits -----------------------------------------------------------------------


def test_an_empty_split_file_is_refused_when_the_split_is_opened(tmp_path):
    root = write_camvid(tmp_path / "CamVid")
    (root / "val.txt").write_text("\n\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(root / 'val.txt'))}: the 'val' split is"):
        CamVidDataset(root, "val")
    CamVidDataset(root, "train")  # only the opened split is checked
    voc = write_voc(tmp_path / "VOC2012", VOC_TRAIN, VOC_VAL)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("")
    with pytest.raises(DataError, match=r"val\.txt: the 'val' split is empty: the file lists no"):
        VOCDataset(voc, "val")
    masks = {f"m{i}": regions() for i in range(3)}
    root = write_folder(tmp_path / "mine", masks, {"train": ["m0"], "val": []})
    with pytest.raises(DataError, match=r"splits/val\.txt: the 'val' split is empty"):
        FolderDataset(root, "val", num_classes=3)


def test_empty_directories_and_empty_ratio_cuts_are_refused(tmp_path):
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    with pytest.raises(DataError, match=r"mine/images/ and .*mine/masks/: the 'train' split"):
        FolderDataset(root, "train", num_classes=3, split_ratio={"train": 1.0})
    root = write_folder(tmp_path / "few", {f"m{i}": regions() for i in range(4)})
    with pytest.raises(DataError, match=r"split_ratio test=0.1 .*the 'test' split is empty"):
        FolderDataset(root, "test", num_classes=3, split_ratio={"train": 0.9, "test": 0.1})
    for sub in ("leftImg8bit/val", "gtFine/val"):
        (tmp_path / "cityscapes" / sub).mkdir(parents=True)
    with pytest.raises(DataError, match=r"leftImg8bit/val/ and .*gtFine/val/: the 'val' split"):
        CityscapesDataset(str(tmp_path / "cityscapes"), "val")
    for sub in ("images/validation", "annotations/validation"):
        (tmp_path / "ade" / sub).mkdir(parents=True)
    with pytest.raises(DataError, match=r"images/validation/ and .*: the 'val' split is empty"):
        ADE20KDataset(str(tmp_path / "ade"), "val")
    with pytest.raises(ValueError, match=r"sizes.test=0.*dataset.source.sizes.test"):
        ShapesDataset("test", sizes={"train": 4, "test": 0})


# --- 5. truncated files --------------------------------------------------------------------


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_a_truncated_image_is_found_by_the_setup_scan(tmp_path, fmt):
    """The setup scan reads only image headers; the end marker gives a truncated file away."""
    root = write_folder(tmp_path / "data", {f"m{i}": regions() for i in range(3)})
    image = root / "images" / f"m1.{fmt}"
    if fmt == "png":
        (root / "images" / "m1.jpg").unlink()
        noise = np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        Image.fromarray(noise).save(image)
    truncate(image)
    cfg = folder_cfg(tmp_path, root, 3, ALL_TRAIN)
    with pytest.raises(DataError) as err:
        instantiate(cfg.dataset).dataset("train")  # check_on_setup: before training
    text = str(err.value)
    assert f"{image}: unreadable image: the file is truncated" in text
    assert ("FF D9" if fmt == "jpg" else "IEND") in text
    assert "m0." not in text and "m2." not in text
    # segbench check decodes every image in full: it says the same
    ds = FolderDataset(root, "train", num_classes=3, split_ratio={"train": 1.0})
    assert any(f"{image}: unreadable image: the file is truncated" in p for p in ds.scan(full=True))


def test_bytes_after_the_end_marker_are_not_truncation(tmp_path):
    root = write_folder(tmp_path / "data", {"a": regions(), "b": regions()})
    with open(root / "images" / "a.jpg", "ab") as f:
        f.write(b"appended by a camera" * 4)
    ds = FolderDataset(root, "train", num_classes=3, split_ratio={"train": 1.0})
    assert ds.scan() == [] and ds.scan(full=True) == []


def test_a_truncated_mask_is_named(tmp_path):
    root = write_folder(tmp_path / "data", {"a": regions(), "b": regions()})
    truncate(root / "masks" / "b.png", 0.3)
    ds = FolderDataset(root, "train", num_classes=3, split_ratio={"train": 1.0})
    (problem,) = ds.scan()
    assert problem.startswith(f"{root / 'masks' / 'b.png'}: unreadable mask: the file is truncated")


# --- the checker's report ------------------------------------------------------------------


def test_check_prints_warnings_without_failing(tmp_path, capsys):
    clean = regions((40, 100))
    root = write_folder(tmp_path / "data", {"clean": clean, "jpeg": smoothed(clean)})
    names = ",".join(f"c{i}" for i in range(150))
    args = ["dataset=folder", f"dataset.source.root={root}", "dataset.num_classes=150"]
    args += [f"dataset.class_names=[{names}]", ALL_TRAIN, *NO_VAL_TEST]
    assert check_main([*args, "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "folder/train: ok" in out and "folder/train: warning:" in out
    assert "jpeg.png: looks smoothed" in out


# --- 6. every transform key in every dataset config -----------------------------------------

TRANSFORM_KEYS = [
    name
    for name in inspect.signature(SegTransform).parameters
    if name not in ("ignore_index", "mean", "std")
]
DATASETS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml"))


@pytest.mark.parametrize("option", DATASETS)
def test_every_transform_key_is_in_every_dataset_config(option, tmp_path):
    overrides = [f"dataset={option}", "dataset.eval_transform.resize=[64,64]"]
    if option != "shapes":
        overrides.append("dataset.train_transform.crop=[360,480]")
    cfg = compose_config("train", overrides, tmp_path)  # no '+' needed
    for key in ("train_transform", "eval_transform"):
        assert sorted(cfg.dataset[key]) == sorted(TRANSFORM_KEYS), (option, key)
    assert list(cfg.dataset.eval_transform.resize) == [64, 64]
    assert "subset" in cfg.dataset and "pin_memory" in cfg.dataset
    # unset keys are off: the pipelines are the ones the shorter configs used to build
    plain = compose_config("train", [f"dataset={option}"], tmp_path).dataset
    evaluation = SegTransform(plain.ignore_index, **plain.eval_transform)
    assert evaluation.pipeline is None
    train = SegTransform(plain.ignore_index, **plain.train_transform)
    set_keys = {k: v for k, v in plain.train_transform.items() if v not in (None, 0, 0.0)}
    before = SegTransform(plain.ignore_index, **set_keys)
    steps = [type(t).__name__ for t in (train.pipeline or [])]
    assert steps == [type(t).__name__ for t in (before.pipeline or [])]


# --- the real data passes the new checks ----------------------------------------------------


@pytest.mark.skipif(not REAL_CAMVID.is_dir(), reason=f"real CamVid not found at {REAL_CAMVID}")
def test_the_real_camvid_has_no_leak_no_repeat_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        for split in ("train", "val"):
            ds = CamVidDataset(REAL_CAMVID, split)
            assert ds.layout_problems == [] and ds.scan() == [], split
