"""What an evaluation leaves besides results.json: palette PNG predictions, uncertainty
heatmaps, the side-by-side panels (titled columns, legend, each image's id and mIoU), the
confusion-matrix heatmap and the per-class IoU chart; and training's val_predictions.png."""

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
from segbench.panels import GAP_IN, LABEL_IN, TILE_IN
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
    panels = sorted((out / "panels").glob("*.png"))
    assert len(panels) == 9  # fewer than the 16 asked for: all of them
    assert [p.stem for p in panels] == sorted(Path(ds[i]["name"]).stem for i in range(9))
    with Image.open(panels[0]) as im:
        assert im.width == figure_width(4)  # image | ground truth | prediction | errors
        assert im.height < im.width
    assert not (out / "overlays").exists()  # one word: predict's blends are the overlays
    for plot in ("confusion_matrix.png", "per_class_iou.png"):
        with Image.open(out / plot) as im:
            assert im.width > 300 and im.height > 200
    assert not (out / "uncertainty").exists()  # FCN gives no uncertainty


def figure_width(columns: int, dpi: int = 100) -> int:
    """Pixel width of a panel figure of ``columns`` tiles (segbench.panels' layout)."""
    return round((LABEL_IN + columns * TILE_IN + (columns - 1) * GAP_IN + 0.15) * dpi)


def _fake_trainer(tmp_path: Path, rank: int = 0):
    dm = SimpleNamespace(
        palette=[[0, 0, 0], [255, 0, 0], [0, 0, 255]],
        class_names=["bg", "red", "blue"],
        num_classes=3,
        ignore_index=255,
        name="toy",
        eval_transform=SimpleNamespace(denormalize=lambda x: (x * 0 + 100).clamp(0, 255).byte()),
    )
    return SimpleNamespace(datamodule=dm, global_rank=rank, is_global_zero=rank == 0, loggers=[])


def test_uncertainty_is_saved_next_to_each_prediction_and_in_the_panel(tmp_path):
    cb = EvaluationOutputs(str(tmp_path), predictions=True, panels=1, plots=False)
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
    panels = list((tmp_path / "panels").iterdir())
    assert len(panels) == 1  # panels=1
    with Image.open(panels[0]) as im:
        assert im.width == figure_width(5)  # image | truth | prediction | errors | uncertainty


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
        "rescale": None,
        "rescale_divisor": None,
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
        # the 8 validation images of debug=fast (all of them), 64x64: square tiles, 8 rows of
        # image | truth | prediction | errors
        assert im.width == figure_width(4)
        assert im.height > 8 * TILE_IN * 100


# --- the panels' content: titles, legend, ids, per-image mIoU; which images training shows ---

CLASSES = ["sky", "road", "car", "tree"]
PALETTE = [[128, 128, 128], [128, 64, 128], [64, 0, 128], [128, 128, 0]]


def _row(name: str, seed: int, with_void: bool = True):
    from segbench.panels import PanelRow

    rng = np.random.default_rng(seed)
    gt = np.zeros((12, 16), np.int64)
    gt[:, 8:] = 1
    if with_void:
        gt[0] = 255
    pred = gt.copy()
    pred[pred == 255] = 0
    pred[4:8, 2:6] = 2  # car where the ground truth has sky
    return PanelRow(name, rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), gt, pred)


def _texts(fig) -> list[str]:
    texts = [t.get_text() for t in fig.texts]
    texts += [ax.get_title() for ax in fig.axes]
    return [t for t in texts if t]


def test_a_panel_figure_titles_its_columns_and_rows_and_has_one_legend():
    from segbench.panels import MIOU_NOTE, draw_panels, image_miou
    from segbench.plots import _pyplot

    rows = [_row("0016E5_07959", 0), _row("0016E5_08085", 1, with_void=False)]
    fig = draw_panels(rows, CLASSES, PALETTE, ignore_index=255, title="camvid/val: epoch 2")
    try:
        titles = [ax.get_title() for ax in fig.axes]
        # the column titles once, over the first row; no title over the second row's tiles
        assert titles == ["image", "ground truth", "prediction", "errors"] + [""] * 4
        texts = _texts(fig)
        assert "camvid/val: epoch 2" in texts and MIOU_NOTE in texts
        assert "void" in MIOU_NOTE and "ground truth or prediction" in MIOU_NOTE
        for row in rows:
            miou = image_miou(row.gt, row.pred, len(CLASSES), 255)
            label = next(t for t in texts if t.startswith(row.id))
            assert f"mIoU {100 * miou:.1f}%" in label
        # sky, road and car are shown, tree is not: the legend names the classes shown, once
        assert len(fig.legends) == 1
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert labels == ["sky", "road", "car", "void (ignored)", "predicted wrong"]
        colours = [tuple(np.round(h.get_facecolor()[:3], 3)) for h in fig.legends[0].legend_handles]
        assert colours[:3] == [tuple(np.round(np.asarray(c) / 255, 3)) for c in PALETTE[:3]]
    finally:
        _pyplot().close(fig)


def test_the_errors_tile_marks_wrong_pixels_red_and_void_neutral():
    from segbench.panels import ERROR_COLOUR, errors_map
    from segbench.plots import IGNORE_COLOUR

    row = _row("x", 0)
    tile = errors_map(row.image, row.gt, row.pred, 255)
    wrong = (row.gt != row.pred) & (row.gt != 255)
    assert (tile[wrong] == ERROR_COLOUR).all() and wrong.sum() == 16
    assert (tile[row.gt == 255] == IGNORE_COLOUR).all()  # void: neither right nor wrong
    right = (row.gt == row.pred) & (row.gt != 255)
    assert (tile[right][:, 0] == tile[right][:, 1]).all()  # the image, in grey
    assert not np.isin(tile[right], [IGNORE_COLOUR, ERROR_COLOUR]).all(axis=-1).any()


def test_a_panels_mIoU_is_the_per_image_mIoU_of_results_json():
    """The same definition as per_image.summarize: classes in ground truth or prediction."""
    from segbench.metrics.confusion import metrics_from_counts
    from segbench.panels import image_miou

    rng = np.random.default_rng(3)
    for _ in range(20):
        gt = rng.integers(0, 5, (20, 20))
        gt[rng.random((20, 20)) < 0.2] = 255
        pred = np.where(rng.random((20, 20)) < 0.6, gt, rng.integers(0, 5, (20, 20)))
        pred[pred == 255] = 4
        valid = gt != 255
        g, p = gt[valid], pred[valid]
        counts = [np.bincount(x, minlength=5) for x in (g[g == p], g, p)]
        expected = metrics_from_counts(*map(torch.from_numpy, counts))["mIoU"].item()
        assert image_miou(gt, pred, 5, 255) == pytest.approx(expected)
    assert image_miou(np.full((2, 2), 255), np.zeros((2, 2), int), 5, 255) is None
    # one class right, another predicted where it is absent: mean of 1/2 and 0 over 2 classes
    gt, pred = np.array([[0, 0]]), np.array([[0, 1]])
    assert image_miou(gt, pred, 3, 255) == pytest.approx(0.25)


def test_validation_images_are_spread_over_the_split_and_seeded():
    from segbench.panels import spread_indices

    picked = spread_indices(101, 8, seed=0)
    assert picked == spread_indices(101, 8, seed=0)  # the same images every time
    assert picked != spread_indices(101, 8, seed=1)
    edges = np.linspace(0, 101, 9).round().astype(int)
    assert all(lo <= i < hi for i, lo, hi in zip(picked, edges[:-1], edges[1:]))
    assert picked != list(range(8)) and max(picked) >= 88  # not the first frames
    assert spread_indices(5, 8) == [0, 1, 2, 3, 4] and spread_indices(5, 0) == []


def test_run_plots_draws_the_spread_images_with_their_ids(tmp_path, monkeypatch):
    import segbench.panels
    from segbench.engine.run_plots import RunPlots

    samples = [
        {
            "image": torch.full((3, 8, 10), float(i)),
            "mask": torch.full((8, 10), i % 3),
            "name": f"/data/frames/f{i:03d}.png",
        }
        for i in range(40)
    ]
    dm = SimpleNamespace(
        name="toy",
        class_names=["a", "b", "c"],
        num_classes=3,
        palette=[[0, 0, 0], [255, 0, 0], [0, 0, 255]],
        ignore_index=255,
        dataset=lambda split: samples if split == "val" else None,
        eval_transform=SimpleNamespace(denormalize=lambda x: x.clamp(0, 255).byte()),
    )
    trainer = SimpleNamespace(datamodule=dm, current_epoch=1)

    class Net(torch.nn.Conv2d):  # a module with Lightning's ``device``
        device = torch.device("cpu")

    model = Net(3, 3, 1)
    drawn = []
    real = segbench.panels.save_panels
    monkeypatch.setattr(
        segbench.panels,
        "save_panels",
        lambda rows, *a, **k: drawn.append((rows, k)) or real(rows, *a, **k),
    )
    cb = RunPlots(str(tmp_path), num_images=4, seed=0)
    cb._draw_predictions(trainer, model)
    cb._draw_predictions(trainer, model)
    (first, kwargs), (second, _) = drawn
    ids = [r.id for r in first]
    expected = [f"f{i:03d}" for i in segbench.panels.spread_indices(40, 4, 0)]
    assert ids == expected == [r.id for r in second]  # the same images after each validation
    assert ids != ["f000", "f001", "f002", "f003"]
    assert "4 of 40 images, spread over the split (seed 0)" in kwargs["title"]
    assert "after epoch 2" in kwargs["title"]
    assert model.training  # put back in training mode
    with Image.open(tmp_path / "val_predictions.png") as im:
        assert im.width == figure_width(4)


def test_the_old_overlays_key_is_taken_as_panels_with_a_warning(tmp_path):
    from segbench.engine.resume import config_differences

    with pytest.warns(FutureWarning, match="callbacks.eval_outputs.panels"):
        cb = EvaluationOutputs(str(tmp_path), overlays=3)
    assert cb.panels == 3
    cfg = compose_config("evaluate", ["ckpt=x.ckpt", "callbacks.eval_outputs.overlays=0"], tmp_path)
    with pytest.warns(FutureWarning, match="panels"):
        assert instantiate(cfg.callbacks.eval_outputs).panels == 0
    assert instantiate(compose_config("train", [], tmp_path).callbacks.eval_outputs).panels == 8
    # a run checkpointed with the old key resumes: callbacks may differ
    old = {"callbacks": {"eval_outputs": {"overlays": 8}}, "seed": 0}
    new = {"callbacks": {"eval_outputs": {"panels": 8, "overlays": None}}, "seed": 0}
    assert config_differences(old, new) == []
