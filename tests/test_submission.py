"""Evaluation-server files (segbench/data/submission.py, ``evaluate.py ... format_only=true``): each
format read back through its dataset's own loading gives the predictions exactly; file names match
the split's ids one to one; a missing or extra file is refused; end to end on a tiny Cityscapes
(its val files scored by the official evaluator equal segbench's figures) and a tiny VOC."""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbench.data.ade20k import ADE20KDataset
from segbench.data.cityscapes import CityscapesDataset
from segbench.data.submission import check_complete, pack, split_images, submission_format
from segbench.data.voc import VOCDataset
from tests.conftest import compose_config
from tests.fixtures.ade20k import write_ade20k
from tests.fixtures.cityscapes import write_cityscapes
from tests.fixtures.cityscapes_oracle import official_evaluator, official_scores
from tests.fixtures.voc import write_voc

FAST = [
    "debug=fast",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "callbacks.run_plots=null",
    "callbacks.eval_outputs=null",
]


def predictions(k: int, n: int = 3, size=(20, 30), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    preds = [rng.integers(0, k, size) for _ in range(n)]
    for p in preds:  # every class, the first and the last included
        p.flat[:k] = np.arange(k)
    return preds


def round_trip(name: str, dataset, k: int, tmp_path: Path) -> None:
    fmt = submission_format(name)
    ids = [f"city_{i:06d}_000019" if name == "cityscapes" else f"img_{i}" for i in range(3)]
    folder = tmp_path / name
    for image_id, pred in zip(ids, predictions(k)):
        path = fmt.write(folder, image_id, pred)
        back = dataset.convert_mask(dataset.read_raw_mask(path))  # the dataset's own reading
        np.testing.assert_array_equal(back, pred)
    assert len(check_complete(folder, fmt, ids)) == 3


def test_voc_files_read_back_as_the_predictions(tmp_path):
    root = write_voc(tmp_path / "VOC2012", ["2007_000032"], ["2007_000039"])
    round_trip("voc", VOCDataset(str(root), "train"), 21, tmp_path)
    path = submission_format("voc").write(tmp_path / "p", "2008_000001", predictions(21)[0])
    assert path.relative_to(tmp_path / "p").as_posix() == (
        "results/VOC2012/Segmentation/comp6_test_cls/2008_000001.png"
    )
    with Image.open(path) as im:  # a palette PNG in the VOC colours
        assert im.mode == "P" and im.getpalette()[3:6] == [128, 0, 0]


def test_cityscapes_files_hold_label_ids_that_map_back(tmp_path):
    files = write_cityscapes(tmp_path / "cs")
    dataset = CityscapesDataset(str(files.root), "val")
    round_trip("cityscapes", dataset, 19, tmp_path)
    path = submission_format("cityscapes").write(
        tmp_path / "c", "a_000000_000019", np.array([[0, 18]])
    )
    assert path.name == "a_000000_000019_leftImg8bit.png"
    assert np.asarray(Image.open(path)).tolist() == [[7, 33]]  # road, bicycle: label ids


def test_ade20k_files_undo_the_zero_label_shift(tmp_path):
    write_ade20k(tmp_path / "ade")
    dataset = ADE20KDataset(str(tmp_path / "ade"), "val")
    round_trip("ade20k", dataset, 150, tmp_path)
    path = submission_format("ade20k").write(
        tmp_path / "a", "ADE_test_00000001", np.array([[0, 149]])
    )
    assert np.asarray(Image.open(path)).tolist() == [[1, 150]]


def test_a_missing_or_extra_file_is_refused_and_nothing_packed(tmp_path):
    fmt = submission_format("ade20k")
    folder = tmp_path / "sub"
    for image_id in ("a", "b"):
        fmt.write(folder, image_id, np.zeros((4, 4), dtype=np.int64))
    with pytest.raises(RuntimeError, match=r"missing 1, e\.g\. .*c\.png"):
        pack(folder, fmt, ["a", "b", "c"], tmp_path / "x.zip")
    (folder / "stray.png").write_bytes(b"")
    with pytest.raises(RuntimeError, match=r"extra 1, e\.g\. .*stray\.png"):
        pack(folder, fmt, ["a", "b"], tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()
    (folder / "stray.png").unlink()
    out = pack(folder, fmt, ["a", "b"], tmp_path / "x.zip")
    assert sorted(zipfile.ZipFile(out).namelist()) == ["a.png", "b.png"]
    with pytest.raises(FileExistsError):  # an archive is never replaced
        pack(folder, fmt, ["a", "b"], out)


def test_unknown_datasets_and_absent_test_splits_are_named(tmp_path):
    with pytest.raises(ValueError, match="no evaluation server format for dataset 'camvid'"):
        submission_format("camvid")
    with pytest.raises(FileNotFoundError, match=r"test\.txt does not exist: .*VOC2012test\.tar"):
        split_images("voc", tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="leftImg8bit_trainvaltest.zip"):
        split_images("cityscapes", tmp_path, "test")


def _add_cityscapes_test_split(root: Path) -> list[str]:
    """Test images only (as the release: no usable labels), copied from val."""
    ids = []
    for path in sorted((root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png")):
        target = (
            root
            / "leftImg8bit"
            / "test"
            / "berlin"
            / path.name.replace(path.name.split("_")[0], "berlin")
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
        ids.append(target.name[: -len("_leftImg8bit.png")])
    return ids


def test_cityscapes_end_to_end_test_and_val(tmp_path):
    """format_only on the test split writes one label-id PNG per image, zipped, reading no
    labels; on val the official evaluator scores the written files exactly as segbench's own
    evaluation does."""
    official_evaluator()
    from segbench.engine.run import evaluate, train

    data = tmp_path / "data"
    files = write_cityscapes(data / "cityscapes", per_split=3, size=(32, 64))
    test_ids = _add_cityscapes_test_split(files.root)
    run = tmp_path / "run"
    train(compose_config("train", [*FAST, "dataset=cityscapes", f"data_root={data}"], run))
    ckpt = f"ckpt={run / 'checkpoints' / 'best.ckpt'}"

    common = [ckpt, "logger=none", f"data_root={data}"]
    record = evaluate(
        compose_config("evaluate", [*common, "split=test", "format_only=true"], tmp_path / "test")
    )
    assert record["images"] == len(test_ids) == 3 and record["split"] == "test"
    names = zipfile.ZipFile(record["archive"]).namelist()
    assert sorted(names) == sorted(f"{i}_leftImg8bit.png" for i in test_ids)
    assert json.loads((tmp_path / "test" / "submission.json").read_text()) == record
    for name in names:
        values = np.asarray(Image.open(Path(record["files"]) / name))
        assert values.shape == (32, 64) and set(np.unique(values)) <= set(range(7, 34))

    sub = evaluate(
        compose_config("evaluate", [*common, "split=val", "format_only=true"], tmp_path / "vs")
    )
    scored = evaluate(compose_config("evaluate", [*common, "split=val"], tmp_path / "ve"))
    preds, gts = [], []
    for _, label in files.items["val"]:
        stem = label.name[: -len("_gtFine_labelIds.png")]
        preds.append(str(Path(sub["files"]) / f"{stem}_leftImg8bit.png"))
        gts.append(str(label))
    want = official_scores(preds, gts, instances=False)
    assert want["averageScoreClasses"] == pytest.approx(scored["metrics"]["mIoU"], rel=1e-9)
    assert want["averageScoreCategories"] == pytest.approx(
        scored["cityscapes"]["category_mIoU"], rel=1e-9
    )


def test_voc_end_to_end_tar(tmp_path):
    from segbench.engine.run import evaluate, train

    data = tmp_path / "data"
    ids = ["2007_000032", "2007_000039"], ["2007_000063"]
    voc = write_voc(data / "VOCdevkit/VOC2012", *ids, size=(32, 48))
    (voc / "ImageSets" / "Segmentation" / "test.txt").write_text("2012_900001\n2012_900002\n")
    run = tmp_path / "run"
    train(compose_config("train", [*FAST, "dataset=voc", f"data_root={data}"], run))
    record = evaluate(
        compose_config(
            "evaluate",
            [f"ckpt={run / 'checkpoints' / 'best.ckpt'}", "logger=none", f"data_root={data}",
             "split=test", "format_only=true"],
            tmp_path / "sub",
        )
    )  # fmt: skip
    assert record["archive"].endswith("results.tar.gz")
    with tarfile.open(record["archive"]) as tar:
        assert sorted(tar.getnames()) == [
            "results/VOC2012/Segmentation/comp6_test_cls/2012_900001.png",
            "results/VOC2012/Segmentation/comp6_test_cls/2012_900002.png",
        ]
    for image_id in ("2012_900001", "2012_900002"):
        with Image.open(voc / "JPEGImages" / f"{image_id}.jpg") as im:
            size = im.size
        with Image.open(Path(record["files"]) / "results/VOC2012/Segmentation/comp6_test_cls" /
                        f"{image_id}.png") as im:  # fmt: skip
            assert im.size == size and im.mode == "P" and max(np.unique(np.asarray(im))) < 21
