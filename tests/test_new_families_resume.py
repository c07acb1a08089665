"""The new families resume exactly: killed mid-epoch (SIGKILL) and resumed with
``resume=auto``, a run ends with the files and figures of the uninterrupted one (the machinery:
tests/test_reproducibility.py). Mask2Former's own task draws random points in its loss; the
linear probe's encoder is frozen; UPerNet has an auxiliary head."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import ROOT, run_cli
from tests.test_reproducibility import RESUME, _assert_same_run, _start, _wait_for

FAMILIES = {
    "segformer": [],
    "upernet": [],
    "mask2former": ["model.hidden_dim=64", "model.num_queries=10", "task.num_points=1024"],
    "linear_probe": [],
}


@pytest.mark.slow  # 3 runs of 3 epochs each: 40-90 s a family
@pytest.mark.parametrize("model", sorted(FAMILIES))
def test_killed_and_resumed_ends_as_uninterrupted(model, tmp_path):
    extra = [f"model={model}", *FAMILIES[model]]
    reference = tmp_path / "uninterrupted"
    run_cli("train.py", *RESUME, *extra, f"hydra.run.dir={reference}", cwd=ROOT)
    run_dir = tmp_path / "killed"
    proc = _start(run_dir, *extra)
    _wait_for(proc, "(step 12)")  # epoch 1, batch 4 of 8: mid-epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "results.json").exists()
    run_cli("train.py", *RESUME, *extra, f"hydra.run.dir={run_dir}", "resume=auto", cwd=ROOT)
    _assert_same_run(run_dir, reference)
