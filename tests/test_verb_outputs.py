"""The verbs' outputs and protocols: named default files under ``outputs/`` that are never
overwritten unasked, the interleaved rounds of ``inference-bench``, the progress lines of
``throughput``, and a SLURM job requeued by submitit resuming its run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from segbench.bench.inference import format_markdown, run_benchmark
from segbench.bench.speed import main as bench_main
from segbench.bench.throughput import main as throughput_main
from segbench.leaderboard.cli import main as leaderboard_main
from segbench.leaderboard.compare import main as compare_main
from tests.conftest import ROOT

# --- named outputs, refused when they exist ------------------------------------------------


def test_leaderboard_writes_under_outputs_and_overwrites_only_when_asked(
    trained_run, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert leaderboard_main([str(trained_run), "--format", "md"]) == 0
    table = tmp_path / "outputs" / "leaderboards" / "leaderboard_shapes_test.md"
    assert table.is_file() and "written: outputs/leaderboards/" in capsys.readouterr().out
    table.write_text("mine")
    assert leaderboard_main([str(trained_run), "--format", "md,csv"]) == 2
    err = capsys.readouterr().err
    assert str(table.relative_to(tmp_path)) in err and "--overwrite" in err
    assert table.read_text() == "mine"  # nothing written, the csv neither
    assert not table.with_suffix(".csv").exists()
    assert leaderboard_main([str(trained_run), "--format", "md,csv", "--overwrite"]) == 0
    assert table.read_text().startswith("### shapes") and table.with_suffix(".csv").is_file()


def test_compare_writes_a_named_file_and_overwrites_only_when_asked(
    trained_run, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    for side in ("fcn", "unet"):  # two copies of one run: a comparison of identical figures
        shutil.copytree(trained_run, tmp_path / "runs" / side)
    args = ["runs/fcn", "runs/unet", "--resamples", "50", "--permutations", "50"]
    assert compare_main(args) == 0
    out = tmp_path / "outputs" / "compare" / "fcn_vs_unet.json"
    assert json.loads(out.read_text())["metrics"]["mIoU"]["delta"] == 0.0
    out.write_text("{}")
    assert compare_main(args) == 2
    assert "fcn_vs_unet.json exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "{}"
    assert compare_main([*args, "--overwrite"]) == 0
    assert json.loads(out.read_text())["a"]["given"] == "runs/fcn"
    # a results.json and a glob are named after their directories
    assert compare_main(["runs/fcn/results.json", "runs/*", "--resamples", "20"]) == 0
    assert (tmp_path / "outputs" / "compare" / "fcn_vs_runs-all.json").is_file()


def test_bench_default_output_is_named_after_the_model_and_kept(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    quick = ["debug=fast", "--sections", "step", "--variants", "fp32", "--steps", "1"]
    quick += ["--repeats", "1", "--batch", "1", "--size", "32", "32"]
    assert bench_main(quick) == 0
    out = tmp_path / "outputs" / "bench" / "fcn8s_tiny.json"
    assert json.loads(out.read_text())["step"]
    out.write_text("{}")
    with pytest.raises(SystemExit) as refused:  # a usage error, before anything is timed
        bench_main(quick)
    assert refused.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert out.read_text() == "{}"
    assert bench_main([*quick, "--overwrite"]) == 0 and json.loads(out.read_text())["step"]


# --- inference-bench: warm-up, interleaved rounds ------------------------------------------


class PixelCost(nn.Module):
    """A network whose forward pass sleeps in proportion to its input's pixels (a stand-in
    with a known cost), and whose first ``slow`` calls each cost ``first`` seconds more: the
    first-call costs (allocator growth, kernel selection) that a single warm-up call on one
    mode does not absorb."""

    def __init__(self, per_pixel: float = 2e-6, slow: int = 6, first: float = 0.05) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.per_pixel, self.slow, self.first = per_pixel, slow, first

    def forward(self, x):
        delay = self.per_pixel * x.shape[-2] * x.shape[-1]
        if self.slow > 0:
            self.slow -= 1
            delay += self.first
        time.sleep(delay)
        return {"out": self.conv(x)}


@pytest.mark.slow  # times five rounds of every mode (10 s)
def test_inference_bench_ranks_modes_by_their_passes_despite_first_call_costs():
    rows = {r["mode"]: r for r in run_benchmark(PixelCost(), torch.randn(2, 3, 64, 64))}
    # slower than one pass by about their pixel counts (ms: 0.75² + 1 + 1.25² = 3.1 passes);
    # a single round with one warm-up call timed whole with the first-call costs: ms 0.4x
    assert 1.5 < rows["flip"]["ratio"] < 2.6
    assert 2.4 < rows["ms"]["ratio"] < 3.8
    assert rows["ms+flip"]["ratio"] > rows["ms"]["ratio"] > rows["flip"]["ratio"] > 1
    assert all(
        len(r["rounds"]) == 5 and r["min"] <= r["seconds"] <= r["max"] for r in rows.values()
    )
    assert "not a ranking" not in format_markdown(list(rows.values()))
    one = run_benchmark(PixelCost(slow=0), torch.randn(1, 3, 16, 16), repeat=1)
    assert "1 round(s)" in format_markdown(one) and "not a ranking" in format_markdown(one)


# --- throughput: a line per stage ----------------------------------------------------------


def test_throughput_prints_each_stage_as_it_goes(capsys):
    assert throughput_main(["debug=fast", "--batches", "2", "--rounds", "2"]) == 0
    captured = capsys.readouterr()
    err = [line for line in captured.err.replace("\r", "\n").splitlines() if "throughput:" in line]
    for stage in ("opening shapes/train", "building fcn8s/tiny", "1/3 loader alone", "round 2/2"):
        assert any(stage in line and line.endswith("...") for line in err), stage
        assert any(stage in line and "done in" in line for line in err), stage
    assert "end to end" in captured.out and "images/s" in captured.out


# --- SLURM: the requeue signal, and a requeued job resuming its run ------------------------


def test_slurm_launcher_requeues_on_its_time_limit_signal(tmp_path, monkeypatch):
    """The sbatch script submitit would submit asks for USR2 before the time limit, and a
    timed-out job may be requeued (max_num_timeout); the requeued job is the same call."""
    import submitit
    from hydra.utils import instantiate

    from tests.test_sweeps import compose_hydra

    class Submitted(Exception):
        pass

    seen = {}

    def fake_map_array(self, fn, *args):
        seen["executor"], seen["fn"], seen["args"] = self, fn, args
        raise Submitted

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", fake_map_array)
    cfg = compose_hydra(["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}", "resume=auto"])
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=lambda c: None, config=cfg)
    with pytest.raises(Submitted):
        launcher.launch([["seed=0"]], initial_job_idx=0)
    executor = seen["executor"]._executor
    assert "#SBATCH --signal=USR2@120" in executor._make_submission_file_text("CMD", "uid")
    assert executor.max_num_timeout == 3
    job = [a[0] for a in seen["args"]]
    again = launcher.checkpoint(*job)  # what submitit pickles and requeues on USR2
    assert again.function is launcher and list(again.args) == job


@pytest.mark.slow  # 90 s: a real submitit job timed out, requeued and resumed
def test_a_timed_out_submitit_job_is_requeued_and_resumes_its_run(tmp_path):
    """submitit's local executor signals USR2 30 s before its 1-minute limit and requeues the
    job as SLURM's does (the same pickled call): the run comes back in its directory and, with
    resume=auto, carries on from its last.ckpt to the end."""
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=1",
        "+hydra.launcher.max_num_timeout=3",
        "debug=fast",
        "trainer.max_epochs=12",
        "dataset.subset.train=32",
        "callbacks.run_state.every_n_steps=2",
        "resume=auto",
        f"hydra.sweep.dir={sweep}",
    ]
    subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        check=True,
        timeout=600,
    )
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    if "Caught signal SIGUSR2" not in logs:
        pytest.skip("the run finished within 30 s: nothing was requeued")
    assert "resuming " in logs.split("Caught signal SIGUSR2")[1]
    run_dir = sweep / "0_fcn8s_tiny_shapes"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"]["trainer"]["max_epochs"] == 12
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, 13))  # every epoch, once
