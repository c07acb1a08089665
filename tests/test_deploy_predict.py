"""``segbench predict``: images, folders, globs and video, no labels; the same predictions as
``evaluate.py save_predictions=true``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbench.cli import main as segbench
from segbench.deploy.images import load_image
from segbench.deploy.predictor import Predictor
from tests.conftest import make_folder_dataset, run_cli
from tests.fixtures.camvid import write_camvid
from tests.fixtures.checkpoints import untrained_checkpoint


def write_images(folder: Path, sizes, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes):
        paths.append(folder / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def camvid_run(tmp_path_factory):
    """A tiny CamVid and a U-Net checkpoint on it, untrained: at random weights it predicts
    several classes per image (a debug-trained one predicts one class everywhere, which would
    make the comparison below empty)."""
    work = tmp_path_factory.mktemp("camvid")
    # 64x96: half-scale passes of ms_flip still reach the tiny backbone's deepest level
    root = write_camvid(work / "data" / "CamVid", per_split={"train": 4, "val": 3}, size=(64, 96))
    data = [f"data_root={work / 'data'}", "dataset.eval_split=val"]
    ckpt = untrained_checkpoint("unet", work / "unet.ckpt", "dataset=camvid", *data, seed=2)
    return work, root, ckpt


@pytest.mark.parametrize(
    "eval_dir, extra",
    [("eval", []), pytest.param("eval_ms", ["inference=ms_flip"], marks=pytest.mark.slow)],
)
def test_predict_gives_exactly_what_evaluate_saves(camvid_run, eval_dir, extra):
    work, root, ckpt = camvid_run
    data = work / "data"
    run_cli(
        "evaluate.py", f"ckpt={ckpt}", "split=val", "save_predictions=true", f"data_root={data}",
        *extra, f"hydra.run.dir={work / eval_dir}", cwd=work,
    )  # fmt: skip
    out = work / f"predict_{eval_dir}"
    assert segbench(["predict", f"ckpt={ckpt}", f"input={root / 'val'}", f"out={out}", *extra]) == 0
    saved = sorted((work / eval_dir / "predictions").glob("*.png"))
    assert len(saved) == 3
    classes = {int(c) for path in saved for c in np.unique(np.asarray(Image.open(path)))}
    assert len(classes) >= 2, classes  # a comparison of several classes, not of one
    for path in saved:
        mine = np.asarray(Image.open(out / "masks" / path.name))
        assert np.array_equal(mine, np.asarray(Image.open(path))), path.name
    record = json.loads((out / "predictions.json").read_text())
    assert record["eval_mode"] == ("ms+flip" if extra else "single-scale")


def test_folder_glob_file_mixed_modes_and_a_broken_file(trained_run, tmp_path, capsys):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    folder = tmp_path / "in"
    write_images(folder, [(40, 56), (40, 56), (33, 47)])
    gray = np.arange(32 * 40, dtype=np.uint8).reshape(32, 40)
    Image.fromarray(gray).save(folder / "gray.png")
    rgba = np.zeros((40, 44, 4), dtype=np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    # EXIF orientation 6 (rotate 90° clockwise to view): stored 32x48, shown 48x32
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(folder / "rotated.jpg", exif=exif)
    (folder / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "tiny.png")  # < the stride
    out = tmp_path / "out"
    status = segbench(["predict", f"ckpt={ckpt}", f"input={folder}", f"out={out}", "batch_size=2"])
    assert status == 1  # one input failed
    assert "2 of 8 inputs failed" in capsys.readouterr().err
    record = json.loads((out / "predictions.json").read_text())
    failed = {Path(f["input"]).name: f["error"] for f in record["failed"]}
    assert sorted(failed) == ["broken.png", "tiny.png"]
    assert "cannot predict a 8x8 image" in failed["tiny.png"]
    sizes = {Path(p["input"]).name: (p["height"], p["width"]) for p in record["predictions"]}
    assert sizes == {
        "img0.png": (40, 56), "img1.png": (40, 56), "img2.png": (33, 47), "gray.png": (32, 40),
        "rgba.png": (40, 44), "rotated.jpg": (48, 32),
    }  # fmt: skip
    predictor = Predictor(ckpt)
    for name in ("img2.png", "rotated.jpg", "gray.png"):
        stem = Path(name).stem
        mask = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert np.array_equal(mask, predictor.predict(load_image(folder / name)).classes)
        # the overlay's image part: the input blended half and half with the mask's colours
        overlay = np.asarray(Image.open(out / "overlays" / f"{stem}.png").convert("RGB"))
        h, w = mask.shape
        colours = np.asarray(predictor.palette, dtype=np.float64)[mask]
        expected = (0.5 * load_image(folder / name) + 0.5 * colours).round()
        assert np.abs(overlay[:h, :w].astype(np.float64) - expected).max() <= 1
    with open(out / "shares.csv", newline="") as f:
        rows = {r["stem"]: r for r in csv.DictReader(f)}
    mask = np.asarray(Image.open(out / "masks" / "img0.png"))
    counts = np.bincount(mask.ravel(), minlength=predictor.num_classes) / mask.size
    for i, name in enumerate(predictor.class_names):
        assert float(rows["img0"][name]) == pytest.approx(counts[i], abs=1e-6)
    # a glob and a single file
    out2 = tmp_path / "glob"
    assert segbench(["predict", f"ckpt={ckpt}", f"input={folder}/img*.png", f"out={out2}"]) == 0
    assert sorted(p.name for p in (out2 / "masks").iterdir()) == [
        "img0.png",
        "img1.png",
        "img2.png",
    ]
    out3 = tmp_path / "one"
    assert segbench(["predict", f"ckpt={ckpt}", f"input={folder / 'gray.png'}", f"out={out3}"]) == 0


def test_outputs_are_never_overwritten_silently(trained_run, tmp_path, capsys):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    write_images(tmp_path / "in", [(32, 32)])
    out = tmp_path / "out"
    args = ["predict", f"ckpt={ckpt}", f"input={tmp_path / 'in'}", f"out={out}"]
    assert segbench(args) == 0
    before = (out / "masks" / "img0.png").stat().st_mtime_ns
    assert segbench(args) == 1
    err = capsys.readouterr().err
    assert "already holds files" in err and "overwrite=true" in err
    assert (out / "masks" / "img0.png").stat().st_mtime_ns == before
    (out / "notes.txt").write_text("mine")
    assert segbench([*args, "overwrite=true"]) == 0  # the suggestion, pasted
    assert (out / "notes.txt").read_text() == "mine"  # only predictions are replaced


@pytest.mark.parametrize(
    "args, message",
    [
        (["input=x"], "ckpt= is required"),
        (["ckpt=c", "inptu=x"], "unknown key 'inptu'"),
        (["ckpt=c", "input=/no/such/dir"], "no such file or folder"),
        (["ckpt=c", "input=/no/such/*.png"], "matches no file"),
        (["ckpt=c", "input=x", "batch_size=two"], "expected an integer"),
    ],
)
def test_bad_arguments_are_named(args, message, capsys):
    assert segbench(["predict", *args]) in (1, 2)
    assert message in capsys.readouterr().err


def test_a_video_gives_an_overlay_video_at_its_frame_rate(trained_run, tmp_path):
    import cv2

    ckpt = trained_run / "checkpoints" / "best.ckpt"
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (48, 32))
    rng = np.random.default_rng(0)
    for _ in range(6):
        writer.write(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    writer.release()
    out = tmp_path / "out"
    assert (
        segbench(
            [
                "predict",
                f"ckpt={ckpt}",
                f"input={video}",
                f"out={out}",
                "frames=true",
                "batch_size=4",
            ]
        )
        == 0
    )
    capture = cv2.VideoCapture(str(out / "videos" / "clip.mp4"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == 6 and capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    assert len(list((out / "frames" / "clip" / "masks").glob("*.png"))) == 6
    record = json.loads((out / "predictions.json").read_text())
    assert record["predictions"][0]["frames"] == 6


def test_bayesian_segnet_writes_uncertainty_maps(tmp_path):
    ckpt = untrained_checkpoint("bayesian_segnet", tmp_path / "bayes.ckpt", "model.mc_samples=2")
    write_images(tmp_path / "in", [(32, 32), (32, 32)])
    out = tmp_path / "out"
    assert segbench(["predict", f"ckpt={ckpt}", f"input={tmp_path / 'in'}", f"out={out}"]) == 0
    assert sorted(p.name for p in (out / "uncertainty").iterdir()) == ["img0.png", "img1.png"]
    # model.mc_samples=0 (weight averaging): no sampling, no uncertainty
    out0 = tmp_path / "out0"
    args = [
        "predict",
        f"ckpt={ckpt}",
        f"input={tmp_path / 'in'}",
        f"out={out0}",
        "model.mc_samples=0",
    ]
    assert segbench(args) == 0
    assert not (out0 / "uncertainty").exists()


def test_overwrite_replaces_only_what_a_predict_run_wrote(trained_run, tmp_path, capsys):
    """overwrite=true pointed at a dataset root would have deleted its masks/: now a predict run
    lists the files it writes (predictions.json) and overwrite=true removes only those; an out=
    holding others' files where predictions go, or holding the inputs, or inside the inputs'
    folder, is refused before anything is written or deleted."""
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    root = make_folder_dataset(tmp_path / "data", n=3)  # images/ and masks/ (ground truth)
    truth = {p.name: p.read_bytes() for p in (root / "masks").iterdir()}
    base = ["predict", f"ckpt={ckpt}"]
    for out, expected in [
        (root, "holds the input"),
        (root / "images" / "preds", "lies inside the folder the inputs are read from"),
    ]:
        args = [*base, f"input={root / 'images'}", f"out={out}", "overwrite=true"]
        assert segbench(args) == 1, out
        assert expected in capsys.readouterr().err
    # a dataset root given as out= for other inputs: its masks/ are someone else's
    other = tmp_path / "other"
    write_images(other, [(32, 32)])
    assert segbench([*base, f"input={other}", f"out={root}", "overwrite=true"]) == 1
    assert "did not record writing" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (root / "masks").iterdir()} == truth
    # a predict run's own folder: replaced file by file, a stale prediction removed
    out = tmp_path / "out"
    write_images(tmp_path / "two", [(32, 32), (32, 32)])
    assert segbench([*base, f"input={tmp_path / 'two'}", f"out={out}"]) == 0
    record = json.loads((out / "predictions.json").read_text())
    assert "masks/img1.png" in record["written"] and "shares.csv" in record["written"]
    (tmp_path / "two" / "img1.png").unlink()
    assert segbench([*base, f"input={tmp_path / 'two'}", f"out={out}", "overwrite=true"]) == 0
    assert not (out / "masks" / "img1.png").exists() and (out / "masks" / "img0.png").exists()
