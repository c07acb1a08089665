"""What an evaluation leaves besides results.json: palette PNG predictions, uncertainty
heatmaps, side-by-side overlays, the confusion-matrix heatmap and the per-class IoU chart."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from segbench.engine.build import build_model
from segbench.engine.callbacks import EvaluationOutputs
from segbench.engine.run import evaluate
from segbench.plots import colorize, panel, plot_per_class_iou, save_palette_png
from tests.conftest import compose_config


def test_saved_predictions_are_the_models_argmax_as_palette_pngs(trained_run, tmp_path):
    res = json.loads((trained_run / "results.json").read_text())
    cfg = compose_config(
        "evaluate",
        [f"ckpt={res['checkpoint']}", "logger=csv", "trainer=cpu", "save_predictions=true"],
        tmp_path / "eval",
    )
    evaluate(cfg)
    out = tmp_path / "eval"
    # an independent forward pass of the checkpoint's model over the same images
    run_cfg = OmegaConf.create(res["config"])
    model = build_model(run_cfg.model)
    state = torch.load(res["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
    model.eval()
    dm = instantiate(run_cfg.dataset)
    ds = dm.dataset("test")
    files = sorted((out / "predictions").glob("*.png"))
    assert len(files) == len(ds) == 9
    for i in range(len(ds)):
        sample = ds[i]
        with torch.no_grad():
            expected = model(sample["image"][None])["out"].argmax(1)[0].numpy()
        saved = Image.open(out / "predictions" / f"{Path(sample['name']).stem}.png")
        assert saved.mode == "P"  # indices, shown in the dataset's colours
        np.testing.assert_array_equal(np.array(saved), expected)
        assert saved.getpalette()[:6] == [c for rgb in dm.palette[:2] for c in rgb]
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == 9  # fewer than the 16 asked for: all of them
    with Image.open(overlays[0]) as im:
        assert im.size == (3 * 64 + 2 * 4, 64)  # image | ground truth | prediction
    for plot in ("confusion_matrix.png", "per_class_iou.png"):
        with Image.open(out / plot) as im:
            assert im.width > 300 and im.height > 200
    assert not (out / "uncertainty").exists()  # FCN gives no uncertainty


def _fake_trainer(tmp_path: Path, rank: int = 0):
    dm = SimpleNamespace(
        palette=[[0, 0, 0], [255, 0, 0], [0, 0, 255]],
        num_classes=3,
        ignore_index=255,
        name="toy",
        eval_transform=SimpleNamespace(denormalize=lambda x: (x * 0 + 100).clamp(0, 255).byte()),
    )
    return SimpleNamespace(datamodule=dm, global_rank=rank, is_global_zero=rank == 0, loggers=[])


def test_uncertainty_is_saved_next_to_each_prediction_and_in_the_panel(tmp_path):
    cb = EvaluationOutputs(str(tmp_path), predictions=True, overlays=1, plots=False)
    trainer = _fake_trainer(tmp_path)
    cb.on_test_start(trainer, None)
    unc = torch.zeros(2, 4, 6)
    unc[0, 1, 2] = 0.2
    unc[1, 3, 5] = 0.05
    outputs = {"pred": torch.zeros(2, 4, 6, dtype=torch.long), "uncertainty": unc}
    batch = {
        "image": torch.zeros(2, 3, 4, 6),
        "mask": torch.full((2, 4, 6), 255),
        "name": ["/data/a/img.png", "/data/b/img.png"],  # the same stem twice
    }
    cb.on_test_batch_end(trainer, None, outputs, batch, 0)
    cb.on_test_end(trainer, SimpleNamespace(eval_split="test", results={}, class_names=[]))
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == ["img.png", "img_2.png"]
    heat = np.array(Image.open(tmp_path / "uncertainty" / "img.png"))
    assert heat.shape == (4, 6, 3)
    hottest = np.unravel_index(heat.sum(-1).argmax(), (4, 6))
    assert hottest == (1, 2) and heat[0, 0].sum() < heat[1, 2].sum()
    scales = json.loads((tmp_path / "uncertainty" / "scale.rank0.json").read_text())
    assert scales == pytest.approx({"img": 0.2, "img_2": 0.05})  # what each heatmap spans
    panels = list((tmp_path / "overlays").iterdir())
    assert len(panels) == 1  # overlays=1
    with Image.open(panels[0]) as im:
        assert im.size == (4 * 6 + 3 * 4, 4)  # image | truth | prediction | uncertainty


def test_palette_png_round_trip_and_colours(tmp_path):
    mask = np.array([[0, 1], [2, 1]])
    path = save_palette_png(mask, [[1, 2, 3], [4, 5, 6], [7, 8, 9]], tmp_path / "m.png")
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.array(im), mask)
        np.testing.assert_array_equal(np.array(im.convert("RGB"))[1, 0], [7, 8, 9])
    colours = colorize(np.array([[0, 255, 9]]), [[10, 10, 10]], ignore_index=255)
    assert colours.tolist() == [[[10, 10, 10], [255, 255, 255], [255, 0, 255]]]
    assert panel([np.zeros((2, 3, 3), np.uint8)] * 2, gap=1).shape == (2, 7, 3)


def test_iou_chart_marks_classes_without_a_value(tmp_path):
    path = plot_per_class_iou([0.5, None, 0.25], ["a", "b", "c"], tmp_path / "iou.png")
    with Image.open(path) as im:
        assert im.width > 300


def test_evaluation_modes_are_recorded_and_a_whole_window_slide_changes_nothing(
    trained_run, tmp_path
):
    res = json.loads((trained_run / "results.json").read_text())
    base = [f"ckpt={res['checkpoint']}", "logger=csv", "trainer=cpu", "callbacks.eval_outputs=null"]

    def run(name: str, *extra: str) -> dict:
        return evaluate(compose_config("evaluate", [*base, *extra], tmp_path / name))

    whole = run("whole")
    assert whole["eval_mode"] == "single-scale" and whole["inference"]["mode"] == "whole"
    assert whole["metrics"] == res["metrics"]  # the training run's final evaluation
    one_window = run(
        "slide64", "inference=slide", "inference.crop=[64,64]", "inference.stride=[32,32]"
    )
    assert one_window["eval_mode"] == "slide"
    assert one_window["confusion_matrix"] == whole["confusion_matrix"]
    tta = run("msflip", "inference=ms_flip", "inference.scales=[0.75,1.0,1.25]")
    assert tta["eval_mode"] == "ms+flip"
    assert tta["inference"] == {
        "mode": "whole",
        "crop": None,
        "stride": None,
        "scales": [0.75, 1.0, 1.25],
        "flip": True,
    }
    assert tta["confusion_matrix"] != whole["confusion_matrix"]  # other predictions
    assert sum(map(sum, tta["confusion_matrix"])) == sum(map(sum, whole["confusion_matrix"]))


def test_a_training_run_draws_its_curves_and_validation_predictions(trained_run):
    """history.json (what curves.png draws) holds the logged per-epoch figures."""
    import csv

    history = json.loads((trained_run / "history.json").read_text())
    logged: dict[int, dict] = {}
    for row in csv.DictReader((trained_run / "csv" / "metrics.csv").open()):
        for key, name in (
            ("train/loss", "train/loss_epoch"),
            ("train/mIoU", "train/mIoU"),
            ("val/loss", "val/loss"),
            ("val/mIoU", "val/mIoU"),
        ):
            if row.get(name):
                logged.setdefault(int(row["epoch"]) + 1, {})[key] = float(row[name])
    assert [h["epoch"] for h in history] == sorted(logged) == [1, 2]
    for h in history:
        for key, value in logged[h["epoch"]].items():
            assert h[key] == pytest.approx(value, rel=1e-6), (h["epoch"], key)
    with Image.open(trained_run / "curves.png") as im:
        assert im.width > 500
    with Image.open(trained_run / "val_predictions.png") as im:
        # 8 validation images of 64x64, two batches of 4: image | truth | prediction each
        assert im.size == (3 * 64 + 2 * 4, 8 * 64 + 7 * 4)
