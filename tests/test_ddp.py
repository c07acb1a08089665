"""DDP with 2 CPU processes (gloo): the same figures as 1 process, and a full training run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segbench.metrics.per_image import read_per_image
from tests.conftest import run_cli


def test_two_process_evaluation_equals_one_process(trained_run, tmp_path):
    """9 test images over 2 ranks (5 + 4, no padding): the summed confusion matrix is exact."""
    single = json.loads((trained_run / "results.json").read_text())
    run_cli(
        "evaluate.py",
        f"ckpt={single['checkpoint']}",
        "trainer=ddp_cpu",
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'ddp'}",
        cwd=tmp_path,
    )
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert ddp["num_images"] == single["num_images"] == 9
    assert ddp["confusion_matrix"] == single["confusion_matrix"]
    assert ddp["metrics"] == single["metrics"]
    assert sum(map(sum, ddp["confusion_matrix"])) > 0
    # per-image counts: each rank's images gathered and written once, in dataset order
    one = read_per_image(trained_run / "per_image.npz")
    two = read_per_image(tmp_path / "ddp" / "per_image.npz")
    assert two.ids == one.ids and len(one.ids) == 9
    np.testing.assert_array_equal(two.counts, one.counts)
    assert (tmp_path / "ddp" / "per_image.npz").read_bytes() == (
        trained_run / "per_image.npz"
    ).read_bytes()
    assert ddp["per_image"] == single["per_image"]
    assert ddp["intervals"] == single["intervals"]
    # calibration: the pixel and bin counts are exact; the probabilities themselves come from
    # float32 logits, which differ in their last bits when the images are batched otherwise
    # (2e-9 relative in NLL measured), so the float figures agree to float32 precision
    a, b = single["calibration"], ddp["calibration"]
    assert a["pixels"] == b["pixels"] > 0
    assert a["reliability"]["count"] == b["reliability"]["count"]
    for key in ("ece", "nll", "brier"):
        assert b[key] == pytest.approx(a[key], rel=1e-6), key


# two full DDP trainings (GAN-seg: the case with unused parameters): `make test-all`; the fast
# suite keeps the 2-process evaluation above
@pytest.mark.slow
@pytest.mark.parametrize("model", ["fcn8s", "ganseg"])
def test_two_process_training_writes_one_results_file(model, tmp_path):
    """GAN-seg's alternating updates each leave one network unused: DDP must be told."""
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train.py",
        f"model={model}",
        "debug=fast",
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"]["trainer"]["devices"] == 2
    assert results["config"]["trainer"]["strategy"] == "ddp"
    assert 0.0 <= results["metrics"]["mIoU"] <= 1.0
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    switched = "strategy ddp_find_unused_parameters_true" in proc.stdout + proc.stderr
    assert switched == (model == "ganseg")
