"""The data tooling: the checker, class statistics and weights, the augmentation pipeline, the
preview grid and the throughput command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

import segbench.data.stats as stats_module
from segbench.data.check import main as check_main
from segbench.data.errors import DataError
from segbench.data.folder import FolderDataset
from segbench.data.stats import class_statistics, weights_from
from segbench.data.transforms import SegTransform, collate
from tests.conftest import ROOT, compose_config, make_folder_dataset, run_cli
from tests.fixtures.camvid import first, write_camvid

FOLDER = ["dataset=folder", "dataset.num_classes=3", "dataset.class_names=[a,b,c]"]


def run_segbench(verb: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``segbench <verb> args...`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "segbench", verb, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(cwd)},
    )


# --- the checker --------------------------------------------------------------------------


@pytest.mark.slow  # 23 s; the checker in-process: the tests below
def test_check_command_passes_a_clean_dataset_and_fails_a_broken_one(tmp_path, capsys):
    root = write_camvid(tmp_path / "CamVid")
    ok = run_segbench("check", "dataset=camvid", f"data_root={tmp_path}", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr  # as a user runs it
    assert "camvid/train: ok" in ok.stdout and "camvid/test: ok" in ok.stdout
    _, label = first(root, "val")
    Image.fromarray(np.full((24, 32), 12, np.uint8)).save(label)
    assert check_main(["dataset=camvid", f"data_root={tmp_path}"]) == 1
    out = capsys.readouterr().out
    assert f"{label.name}: label values [12] lie outside [0, 11)" in out
    assert "camvid/train: ok" in out  # the other splits are still checked


def test_a_release_without_its_test_split_is_checked_without_it(tmp_path, capsys):
    write_camvid(tmp_path / "CamVid", per_split={"train": 2, "val": 2})
    assert check_main(["dataset=camvid", f"data_root={tmp_path}", "dataset.eval_split=val"]) == 0
    captured = capsys.readouterr()
    assert "camvid/test: absent, not checked" in captured.err
    assert "set e.g. dataset.eval_split=val" not in captured.err  # it is already set
    assert "dataset.eval_split=val)" in captured.err
    # ... unless training would evaluate on it
    assert check_main(["dataset=camvid", f"data_root={tmp_path}"]) == 1
    assert "test.txt does not exist" in capsys.readouterr().out


def test_check_reports_every_planted_problem_by_file(tmp_path, capsys):
    root = make_folder_dataset(tmp_path / "data", n=8)
    (root / "masks" / "img00.png").rename(root / "masks" / "orphan.png")  # both directions
    Image.fromarray(np.zeros((20, 32), np.uint8)).save(root / "masks" / "img01.png")  # size
    (root / "images" / "img02.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    mask = np.array(Image.open(root / "masks" / "img03.png"))
    mask[4, 4] = 7
    Image.fromarray(mask).save(root / "masks" / "img03.png")  # label out of range
    rgb = np.zeros((32, 32, 3), np.uint8)
    Image.fromarray(rgb).save(root / "masks" / "img04.png")  # colour mask
    code = check_main([*FOLDER, f"dataset.source.root={root}", "--split", "train"])
    out = capsys.readouterr().out
    assert code == 1
    for expected in (
        "img00 (image without mask)",
        "orphan (mask without image)",
        "img01.png: image size 32x32 does not match mask size 32x20",
        "img02.jpg: unreadable image",
        "img03.png: label values [7] lie outside [0, 3)",
        "img04.png: mask has mode RGB",
    ):
        assert expected in out, expected
    assert "img05" not in out  # a clean sample is not reported


def test_binary_masks_stored_as_0_255_are_caught(tmp_path):
    root = make_folder_dataset(tmp_path / "data", n=4, num_classes=2)
    for path in (root / "masks").glob("*.png"):
        mask = np.array(Image.open(path))
        Image.fromarray(np.where(mask == 1, 255, 0).astype(np.uint8)).save(path)
    ds = FolderDataset(root, "train", num_classes=2)
    problems = ds.scan(full=True)
    assert len(problems) == 1 and "binary masks stored as 0/255" in problems[0]
    cfg = compose_config(
        "train",
        ["dataset=folder", "dataset.num_classes=2", "dataset.class_names=[bg,fg]"]
        + [f"dataset.source.root={root}"],
        tmp_path / "run",
    )
    with pytest.raises(DataError, match="0/255"):
        instantiate(cfg.dataset).dataset("train")  # training refuses it too
    # with another ignore index, the per-file message says the same
    ds = FolderDataset(root, "train", num_classes=2, ignore_index=11)
    assert all("binary mask stored as 0/255" in p for p in ds.scan())


def test_a_passed_scan_is_remembered_until_a_file_changes(tmp_path, monkeypatch):
    root = make_folder_dataset(tmp_path / "data", n=4)
    FolderDataset(root, "train", num_classes=3).check_all()
    calls = []
    monkeypatch.setattr(FolderDataset, "scan", lambda self, **kw: calls.append(1) or [])
    FolderDataset(root, "train", num_classes=3).check_all()
    assert calls == []  # remembered
    FolderDataset(root, "train", num_classes=4).check_all()
    assert calls == [1]  # other label settings: scanned again
    mask = root / "masks" / "img01.png"
    Image.fromarray(np.full((32, 32), 2, np.uint8)).save(mask)
    FolderDataset(root, "train", num_classes=3).check_all()
    assert calls == [1, 1]  # a changed file: scanned again


# --- class statistics -----------------------------------------------------------------------


def test_median_frequency_weights_match_an_independent_computation(tmp_path, monkeypatch):
    root = write_camvid(tmp_path / "CamVid", per_split={"train": 6}, seed=3)
    from segbench.data.camvid import CamVidDataset

    ds = CamVidDataset(root, "train")
    masks = [ds.load(i)[1] for i in range(len(ds))]
    stats = class_statistics(ds)
    present = np.array(stats["pixels"]) > 0
    # SegNet's definition written plainly: freq(c) over the images that contain c
    freq = np.array(
        [
            sum((m == c).sum() for m in masks if (m == c).any())
            / max(sum((m != 11).sum() for m in masks if (m == c).any()), 1)
            for c in range(11)
        ]
    )
    expected = np.where(present, np.median(freq[present]) / np.where(present, freq, 1), 0.0)
    np.testing.assert_allclose(stats["weights"]["median_frequency"], expected, rtol=1e-5)
    assert stats["pixels"][:11] == [sum(int((m == c).sum()) for m in masks) for c in range(11)]
    assert stats["ignored_pixels"] == sum(int((m == 11).sum()) for m in masks)
    # remembered: a second call does not read the masks again
    monkeypatch.setattr(stats_module, "compute_statistics", lambda *a, **k: 1 / 0)
    assert class_statistics(CamVidDataset(root, "train")) == stats


def test_weights_of_an_absent_class_are_zero():
    stats = {"pixels": [10, 0, 30], "image_pixels": [40, 0, 40]}
    assert weights_from(stats, "median_frequency") == [2.0, 0.0, round(2 / 3, 6)]
    assert weights_from(stats, "inverse_frequency") == [2.0, 0.0, round(2 / 3, 6)]
    with pytest.raises(ValueError, match="unknown class weighting 'median'"):
        weights_from(stats, "median")


def test_loss_class_weights_from_config_are_computed_and_recorded(tmp_path):
    from segbench.engine.run import train

    root = make_folder_dataset(tmp_path / "data", n=6)
    cfg = compose_config(
        "train",
        [
            *FOLDER,
            f"dataset.source.root={root}",
            "dataset.eval_split=val",
            "dataset.num_workers=0",
            "loss.class_weights=median_frequency",
            "backbone=tiny",
            "logger=csv",
            "trainer=cpu",
            "trainer.max_steps=1",
            "trainer.num_sanity_val_steps=0",
        ],
        tmp_path / "run",
    )
    results = train(cfg)
    expected = class_statistics(instantiate(cfg.dataset).dataset("train"))["weights"]
    ckpt = torch.load(results["checkpoint"], map_location="cpu", weights_only=True)
    recorded = ckpt["segbench"]["config"]["loss"]["class_weights"]
    assert recorded == expected["median_frequency"]
    assert len(recorded) == 3 and recorded != [1.0, 1.0, 1.0]


def test_stats_command_prints_the_table(tmp_path, capsys):
    """The verb's entry point (``segbench stats`` hands it its arguments; the command line
    itself is run for the checker above and for every verb in tests/test_layout.py)."""
    from segbench.data.stats import main as stats_main

    write_camvid(tmp_path / "CamVid")
    assert stats_main(["dataset=camvid", f"data_root={tmp_path}"]) in (0, None)
    out = capsys.readouterr().out
    assert "camvid/train: 4 images" in out
    assert sum(line.startswith("|") for line in out.splitlines()) == 13  # head, rule, 11


# --- augmentation ---------------------------------------------------------------------------


def _labelled_image(h=30, w=40):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = (np.arange(w)[None, :] // 5 % 4).repeat(h, 0).astype(np.uint8)  # stripes 0..3
    return image, mask


def test_scale_and_crop_keep_masks_nearest_and_pad_with_the_ignore_index():
    image, mask = _labelled_image()
    t = SegTransform(ignore_index=200, scale=[0.5, 2.0], crop=[64, 64])
    padded = False
    for _ in range(30):
        img, m = t(image, mask)
        assert tuple(img.shape) == (3, 64, 64) and tuple(m.shape) == (64, 64)
        assert set(m.unique().tolist()) <= {0, 1, 2, 3, 200}  # never an interpolated label
        pad = m == 200
        if pad.any():
            padded = True  # padded image pixels are 0 before normalisation
            raw = t.denormalize(img[None])[0].permute(1, 2, 0)
            assert int(raw[pad].max()) <= 1
    assert padded


def test_flip_moves_image_and_mask_together_and_jitter_leaves_the_mask():
    image, mask = _labelled_image()
    img, m = SegTransform(hflip=1.0)(image, mask)
    np.testing.assert_array_equal(m.numpy(), mask[:, ::-1])
    back = SegTransform().denormalize(img[None])[0].permute(1, 2, 0).numpy()
    assert np.abs(back.astype(int) - image[:, ::-1]).max() <= 1
    jit = SegTransform(jitter={"brightness": 0.5, "contrast": 0.5, "p": 1.0})
    out_img, out_mask = jit.augment(image, mask)
    np.testing.assert_array_equal(out_mask, mask)
    assert not np.array_equal(out_img, image)
    with pytest.raises(ValueError, match=r"unknown keys \['sharpness'\]"):
        SegTransform(jitter={"sharpness": 0.1})
    with pytest.raises(ValueError, match=r"crop must be \[height, width\]"):
        SegTransform(crop=[512])


def test_eval_resize_uses_nearest_for_masks():
    image, mask = _labelled_image()
    img, m = SegTransform(resize=[45, 61])(image, mask)
    assert tuple(img.shape) == (3, 45, 61) and set(m.unique().tolist()) <= {0, 1, 2, 3}


def test_a_batch_of_mixed_sizes_names_the_images_and_the_fix():
    samples = [
        {"image": torch.zeros(3, 8, 8), "mask": torch.zeros(8, 8), "name": "a.png"},
        {"image": torch.zeros(3, 8, 9), "mask": torch.zeros(8, 9), "name": "b.png"},
    ]
    with pytest.raises(ValueError, match=r"a\.png \(8x8\), b\.png \(9x8\).*eval_batch_size=1"):
        collate(samples)


# --- looking at data, and its speed -------------------------------------------------------


def test_preview_writes_a_grid_of_augmented_samples(tmp_path):
    from segbench.data.preview import main as preview_main

    write_camvid(tmp_path / "CamVid")
    out = tmp_path / "grid.png"
    assert (
        preview_main(["dataset=camvid", f"data_root={tmp_path}", "--num", "4", "--out", str(out)])
        == 0
    )
    with Image.open(out) as im:
        assert im.width > 600 and im.height > 150
        pixels = np.array(im.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # images, not a blank canvas


def test_throughput_command_measures_three_rates(tmp_path):
    from segbench.bench.throughput import measure

    cfg = compose_config("train", ["debug=fast"], tmp_path / "run")
    r = measure(cfg, batches=2, warmup=1, rounds=3)
    for key in ("loader_images_per_s", "step_images_per_s", "end_to_end_images_per_s"):
        assert r[key] > 0
    # the step alone and end to end in turns: each rate the median of its three rounds
    assert r["step_images_per_s"] == sorted(r["rounds"]["step"])[1]
    assert r["end_to_end_images_per_s"] == sorted(r["rounds"]["end_to_end"])[1]
    assert r["loader_over_step"] == pytest.approx(r["loader_images_per_s"] / r["step_images_per_s"])
    assert json.dumps(r)  # plain numbers, ready for a report


def test_check_command_names_the_classic_mistakes(tmp_path, capsys):
    """VOC void remapped to background, Cityscapes label ids not converted to train ids."""
    from tests.fixtures.cityscapes import write_cityscapes
    from tests.fixtures.voc import write_voc

    data = tmp_path / "data"
    write_voc(
        data / "VOCdevkit/VOC2012",
        ["2007_000032", "2007_000039"],
        ["2007_000033"],
        void_as_background=["2007_000039"],
    )
    assert check_main(["dataset=voc", f"data_root={data}"]) == 1
    out = capsys.readouterr().out
    assert "voc/train: 1 problem" in out and "voc/val: ok" in out
    assert "2007_000039.png: object labels" in out and "remapped to background" in out

    write_cityscapes(
        data / "cityscapes", label_files="labelTrainIds", plant=["label_ids_as_train_ids"]
    )
    overrides = ["dataset=cityscapes", f"data_root={data}"]
    assert check_main([*overrides, "dataset.source.label_files=labelTrainIds"]) == 1
    out = capsys.readouterr().out
    assert "label ids not converted to train ids" in out
    assert out.count("label ids not converted") == 2  # the planted file of train and of val


def test_an_unwritable_cache_warns_once_and_the_run_goes_on(tmp_path, monkeypatch):
    """HOME (or SEGBENCH_CACHE) that cannot be written: the scan and the statistics are computed
    and the run goes on, after one warning that names SEGBENCH_CACHE."""
    import warnings

    from segbench.data import cache

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SEGBENCH_CACHE", str(blocker / "cache"))  # mkdir fails, even as root
    monkeypatch.setattr(cache, "_warned", set())
    root = make_folder_dataset(tmp_path / "data", n=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FolderDataset(root, "train", num_classes=3).check_all()
        FolderDataset(root, "val", num_classes=3).check_all()
        stats = class_statistics(FolderDataset(root, "train", num_classes=3))
    assert len(stats["pixels"]) == 3
    messages = [str(w.message) for w in caught if issubclass(w.category, cache.CacheWarning)]
    assert len(messages) == 1 and "SEGBENCH_CACHE" in messages[0]
    assert str(blocker / "cache") in messages[0]


def test_train_py_runs_with_an_unwritable_home(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    root = make_folder_dataset(tmp_path / "data", n=4)
    env = {"HOME": str(blocker / "home"), "SEGBENCH_CACHE": ""}
    proc = run_cli(
        "train.py", "debug=fast", "dataset=folder", f"dataset.source.root={root}",
        "dataset.num_classes=3", "dataset.class_names=[a,b,c]", "dataset.check_on_setup=true",
        "logger=none", f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert (tmp_path / "run" / "results.json").is_file()
    assert proc.stderr.count("cannot be written") == 1
