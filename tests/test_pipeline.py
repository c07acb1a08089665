"""End to end: the commands a user runs, their results.json, and an independent recomputation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segbench.engine.build import build_model
from segbench.engine.run import train
from tests.conftest import compose_config, run_cli

SCHEMA_KEYS = {
    "schema_version",
    "kind",
    "model",
    "backbone",
    "dataset",
    "split",
    "eval_mode",
    "inference",
    "classes",
    "num_classes",
    "ignore_index",
    "num_images",
    "metrics",
    "confusion_matrix",
    "params",
    "seed",
    "created",
    "duration_s",
    "throughput",
    "best_val_mIoU",
    "checkpoint",
    "segbench_version",
    "git_commit",
    "git_dirty",
    "config",
}
CLASSES = ["background", "circle", "square", "triangle", "star", "cross", "ring"]


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_train_cli_writes_results_and_checkpoints(trained_run):
    res = read_results(trained_run)
    assert SCHEMA_KEYS <= set(res)
    assert (res["kind"], res["model"], res["backbone"], res["dataset"], res["split"]) == (
        "train",
        "fcn8s",
        "tiny",
        "shapes",
        "test",
    )
    assert res["classes"] == CLASSES and res["num_images"] == 9
    m = res["metrics"]
    assert set(m["per_class_iou"]) == set(CLASSES)
    for key in ("mIoU", "pixel_acc", "mean_acc", "fwIoU", "mDice"):
        assert 0.0 <= m[key] <= 1.0
    assert all(v is None or 0.0 <= v <= 1.0 for v in m["per_class_iou"].values())
    assert res["params"] == sum(
        p.numel() for p in build_model(OmegaConf.create(res["config"]["model"])).parameters()
    )
    assert res["config"]["model"]["num_classes"] == 7  # resolved, not "${dataset.num_classes}"
    assert res["created"][:4].isdigit() and "T" in res["created"]
    tp = res["throughput"]  # the final evaluation's images/s, as leaderboards show it
    assert (
        tp["images_per_s"] > 0
        and tp["processes"] == 1
        and tp["batch_size"] == res["config"]["dataset"]["eval_batch_size"]
    )
    assert res["num_images"] / tp["images_per_s"] < res["duration_s"]
    ckpt = Path(res["checkpoint"])
    assert ckpt.name == "best.ckpt" and (ckpt.parent / "last.ckpt").is_file()
    # safe loading: the checkpoint holds tensors and plain containers only
    loaded = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert loaded["segbench"]["config"]["model"]["name"] == "fcn8s"
    # the curves a user looks for
    rows = list(csv.DictReader((trained_run / "csv" / "metrics.csv").open()))
    keys = set().union(*rows)
    assert {"train/loss_step", "val/loss", "val/mIoU", "val/pixel_acc", "val/fwIoU"} <= keys
    assert any(k.startswith("val/iou/") for k in keys)


def test_evaluate_cli_reproduces_the_training_figures(trained_run, tmp_path):
    ckpt = read_results(trained_run)["checkpoint"]
    proc = run_cli(
        "evaluate.py",
        f"ckpt={ckpt}",
        "logger=csv",
        "trainer=cpu",
        f"hydra.run.dir={tmp_path / 'eval'}",
        cwd=tmp_path,
    )
    assert "mIoU" in proc.stdout and "background" in proc.stdout  # the per-class table
    ev, tr = read_results(tmp_path / "eval"), read_results(trained_run)
    assert ev["kind"] == "evaluate" and ev["split"] == "test" and ev["checkpoint"] == ckpt
    assert ev["metrics"] == tr["metrics"]  # same weights, same images: identical figures
    assert ev["confusion_matrix"] == tr["confusion_matrix"]


def test_results_match_an_independent_computation(trained_run):
    """Recompute the test figures with numpy from the checkpoint's own predictions."""
    res = read_results(trained_run)
    cfg = OmegaConf.create(res["config"])
    model = build_model(cfg.model)
    state = torch.load(res["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(
        {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    )
    model.eval()
    dm = instantiate(cfg.dataset)
    ds = dm.dataset("test")
    inter = np.zeros(7)
    union = np.zeros(7)
    correct = valid_total = 0
    for i in range(len(ds)):
        sample = ds[i]
        with torch.no_grad():
            pred = model(sample["image"][None])["out"].argmax(1)[0].numpy()
        gt = sample["mask"].numpy()
        valid = gt != 255
        correct += (pred[valid] == gt[valid]).sum()
        valid_total += valid.sum()
        for c in range(7):
            p, g = (pred == c) & valid, (gt == c) & valid
            inter[c] += (p & g).sum()
            union[c] += (p | g).sum()
    present = union > 0
    iou = inter[present] / union[present]
    assert res["metrics"]["mIoU"] == pytest.approx(iou.mean(), abs=1e-9)
    assert res["metrics"]["pixel_acc"] == pytest.approx(correct / valid_total, abs=1e-9)
    for c, name in enumerate(CLASSES):
        expected = inter[c] / union[c] if union[c] else None
        assert res["metrics"]["per_class_iou"][name] == pytest.approx(expected, abs=1e-9)


def test_train_in_process_returns_the_results(tmp_path):
    cfg = compose_config("train", ["debug=fast", "model=fcn32s", "trainer.max_epochs=1"], tmp_path)
    res = train(cfg)
    assert res == read_results(tmp_path)
    assert res["model"] == "fcn32s" and res["config"]["model"]["variant"] == "32s"


@pytest.mark.slow  # tests/test_reproducibility.py checks the same refusal byte for byte
def test_an_earlier_run_is_never_overwritten(trained_run, tmp_path):
    before = (trained_run / "results.json").read_bytes()
    proc = run_cli(
        "train.py", "debug=fast", f"hydra.run.dir={trained_run}", cwd=tmp_path, check=False
    )
    assert proc.returncode != 0
    assert "holds a finished run (results.json)" in proc.stderr
    assert "Epoch 0" not in proc.stderr + proc.stdout  # refused before training
    assert (trained_run / "results.json").read_bytes() == before


def test_wandb_offline_run_has_config_curves_table_and_masks(tmp_path):
    run_dir = tmp_path / "run"
    run_cli(
        "train.py",
        "debug=fast",
        "logger=default",
        "trainer.max_epochs=1",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    files = offline / "files"
    media = [p.relative_to(files).as_posix() for p in files.rglob("*") if p.is_file()]
    assert any("per_class_iou" in p and p.endswith(".table.json") for p in media), media
    assert any(p.startswith("media/images/mask/") for p in media), media  # mask overlays
    assert any(p.startswith("media/images/") and p.endswith(".png") for p in media), media
    # the final evaluation's pictures: heatmap, IoU chart, image | truth | prediction panels
    for name in ("confusion_matrix", "per_class_iou", "panels"):
        assert any(name in p and p.endswith(".png") for p in media), (name, media)
    # the run log that `wandb sync` uploads holds the resolved config and the curves
    (history,) = offline.glob("*.wandb")
    data = history.read_bytes()
    for needle in (b"tiny", b"ignore_index", b"val/mIoU", b"train/loss_step"):
        assert needle in data, needle


@pytest.mark.slow  # tests/test_sweeps.py and tests/test_families.py run sweeps too
def test_multirun_sweep_writes_one_results_file_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli(
        "train.py",
        "-m",
        "model=fcn32s,fcn8s",
        "debug=fast",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    found = sorted(sweep.glob("*/results.json"))
    assert [json.loads(p.read_text())["model"] for p in found] == ["fcn32s", "fcn8s"]
    assert [p.parent.name for p in found] == [
        "0_fcn32s_tiny_shapes",
        "1_fcn8s_tiny_shapes",
    ]
