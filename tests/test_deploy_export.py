"""``segbench export``: every family to ONNX and TorchScript with the built-in parity check, the
refusals, and ``segbench predict`` on an exported ONNX file (no torch on its path)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from segbench.cli import main as segbench
from segbench.deploy.images import load_image
from segbench.deploy.onnx_runtime import OnnxPredictor
from segbench.deploy.predictor import Predictor
from tests.conftest import ROOT
from tests.fixtures.checkpoints import untrained_checkpoint

# (model, dynamic H/W expected): the families whose forward branches on Python-side sizes (the
# FCN skip crops, U-Net's and ReSeg's size alignment) trace at one size; PSPNet's ONNX form has
# its pyramid pooling at fixed bins, so its ONNX file has a fixed size too
FAST = [("fcn8s", False), ("deeplabv3plus", True), ("segnet", True), ("pspnet", None)]
SLOW = [
    ("fcn", False), ("fcn16s", False), ("fcn32s", True), ("deeplabv1", True), ("deeplabv3", True),
    ("unet", False), ("segnet_basic", True), ("deconvnet", True), ("reseg", False),
    ("ganseg", False), ("segformer", True), ("upernet", None), ("mask2former", True),
    ("linear_probe", True),
]  # fmt: skip
CASES = [pytest.param(m, d, id=m) for m, d in FAST] + [
    pytest.param(m, d, id=m, marks=pytest.mark.slow) for m, d in SLOW
]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("model, dynamic", CASES)
def test_every_family_exports_and_passes_its_parity_check(model, dynamic, fmt, tmp_path, capsys):
    ckpt = untrained_checkpoint(model, tmp_path / f"{model}.ckpt")
    out = tmp_path / f"{model}.{'onnx' if fmt == 'onnx' else 'pt'}"
    args = ["export", f"ckpt={ckpt}", f"format={fmt}", f"out={out}", "size=64x64", "speed=false"]
    status = segbench(args)
    assert status == 0, capsys.readouterr()
    record = json.loads(out.with_name(out.name + ".parity.json").read_text())
    assert record["passed"] and out.is_file()
    assert record["parity"]["min_agreement"] >= 0.999
    assert record["parity"]["max_abs_logit_diff"] <= 1e-4
    expected = dynamic if dynamic is not None else fmt == "torchscript"
    assert record["dynamic_hw"] is expected, record["fixed_size_because"]
    assert (record["fixed_size_because"] is None) is expected
    meta = record["metadata"]
    info = Predictor(ckpt).info()
    assert meta["model"] == info["model"] and meta["classes"] == info["classes"]
    if fmt == "onnx":  # the metadata travels in the file itself
        props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(props["segbench"])["classes"] == meta["classes"]


@pytest.mark.parametrize(
    "model, fix",
    [("deeplabv1_crf", "model.crf=null"), ("bayesian_segnet", "model.mc_samples=0")],
)
def test_what_cannot_export_is_refused_and_the_suggested_fix_works(model, fix, tmp_path, capsys):
    ckpt = untrained_checkpoint(model, tmp_path / f"{model}.ckpt")
    out = tmp_path / "model.onnx"
    assert segbench(["export", f"ckpt={ckpt}", f"out={out}", "size=64x64"]) == 1
    assert fix in capsys.readouterr().err and not out.exists()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    assert segbench(["export", f"ckpt={ckpt}", f"out={out}", "size=64x64", fix]) == 0
    assert out.is_file()


def test_multiscale_inference_is_refused(trained_run, tmp_path, capsys):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "x.onnx"
    assert segbench(["export", f"ckpt={ckpt}", f"out={out}", "inference=ms_flip"]) == 1
    assert "one scale" in capsys.readouterr().err and not out.exists()


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """The trained debug run exported to ONNX (default place: <run>/export/best.onnx)."""
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    out = tmp_path_factory.mktemp("exported") / "best.onnx"
    assert segbench(["export", f"ckpt={ckpt}", f"out={out}", "size=64x64"]) == 0
    speed = json.loads(out.with_name(out.name + ".parity.json").read_text())["speed"]
    assert speed["pytorch_ms_per_image"] > 0 and speed["onnx_ms_per_image"] > 0
    return ckpt, out


def test_an_existing_file_is_refused_and_overwrite_replaces_it(exported, capsys):
    ckpt, out = exported
    assert segbench(["export", f"ckpt={ckpt}", f"out={out}"]) == 1
    assert "overwrite=true" in capsys.readouterr().err
    before = out.stat().st_mtime_ns
    assert segbench(["export", f"ckpt={ckpt}", f"out={out}", "size=64x64", "overwrite=true"]) == 0
    assert out.stat().st_mtime_ns != before


def test_onnx_predictions_match_pytorch_and_predict_takes_the_file(exported, tmp_path, capsys):
    ckpt, out = exported
    rng = np.random.default_rng(3)
    folder = tmp_path / "in"
    folder.mkdir()
    for i, (h, w) in enumerate([(64, 64), (64, 64), (48, 80)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    torch_predictor, onnx_predictor = Predictor(ckpt), OnnxPredictor(out)
    assert onnx_predictor.class_names == torch_predictor.class_names
    for path in sorted(folder.iterdir()):
        image = load_image(path)
        a = torch_predictor.predict(image).classes
        b = onnx_predictor.predict(image).classes
        assert a.shape == b.shape == image.shape[:2]
        if image.shape[:2] == (64, 64):  # FCN-8s exports at its traced size (64x64)
            assert (a == b).mean() >= 0.999, path.name
    # segbench predict with the ONNX file: the same masks, and no evaluate.yaml override taken
    pred_out = tmp_path / "pred"
    assert segbench(["predict", f"ckpt={out}", f"input={folder}", f"out={pred_out}"]) == 0
    for path in sorted(folder.iterdir()):
        mask = np.asarray(Image.open(pred_out / "masks" / path.name))
        assert np.array_equal(mask, onnx_predictor.predict(load_image(path)).classes)
    assert segbench(["predict", f"ckpt={out}", f"input={folder}", "inference=slide"]) == 1
    assert "ONNX file" in capsys.readouterr().err


def test_the_onnx_path_needs_no_torch(exported, tmp_path):
    _, out = exported
    code = (
        "import sys, numpy as np\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "from segbench.deploy.onnx_runtime import OnnxPredictor\n"
        "p = OnnxPredictor(sys.argv[1])\n"
        "r = p.predict(np.zeros((64, 64, 3), np.uint8))\n"
        "print(r.classes.shape, p.overlay(np.zeros((64, 64, 3), np.uint8), r).shape[0])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[:2] == ["(64,", "64)"]


def test_a_file_segbench_did_not_export_is_named(tmp_path):
    import torch

    path = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 2, 1), (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False)
    with pytest.raises(ValueError, match="no segbench metadata"):
        OnnxPredictor(Path(path))


def test_a_passing_export_prints_no_runtime_error(trained_run, tmp_path):
    """The fixed-size probes fail on purpose (fcn8s at odd sizes): the export passes and its
    output holds no onnxruntime error line."""
    import sys

    ckpt = trained_run / "checkpoints" / "best.ckpt"
    proc = subprocess.run(
        [sys.executable, "-m", "segbench", "export", f"ckpt={ckpt}", f"out={tmp_path / 'm.onnx'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "passed" in proc.stdout and "fixed size" in proc.stdout  # the probe did fail
    assert "[E:onnxruntime" not in proc.stderr + proc.stdout
