"""What a user sees: quiet runs (one line per epoch and the result table), the timestamped
``train.log`` / ``evaluate.log``, and refused runs as one paragraph without a traceback, as
``train.py``, ``evaluate.py`` and ``segbench <verb>`` print them."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
import torch
from hydra.errors import ConfigCompositionException
from PIL import Image

from segbench.config import compose
from segbench.engine.console import _LogFile, _Tee
from segbench.engine.progress import duration
from segbench.report import is_user_error, key_suggestion, nearest_keys

from .conftest import ROOT, run_cli

STAMP = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] "
EPOCH = (
    r"epoch {n}/2  train loss \d+\.\d{{4}}  val loss \d+\.\d{{4}}  val mIoU \d+\.\d\d%  "
    r"time \S+ \S+"
)
NOISE = ("💡 Tip", "GPU available", "TPU available", "LeafSpec", "weights_only", "┏", "wandb:")

# one worker runs this module (make test: --dist loadgroup), so that its training run (a
# session-scoped fixture: the worker interleaves other modules' tests) is made once
pytestmark = pytest.mark.xdist_group("console")


def _lines(proc) -> list[str]:
    return (proc.stdout + proc.stderr).splitlines()


def _refused(proc, *expected: str) -> str:
    """The paragraph of a refused run: status 1, no traceback, ``Error: ...`` on stderr."""
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert proc.stderr.startswith("Error: ") or "\nError: " in proc.stderr, proc.stderr
    for text in expected:
        assert text in proc.stderr, proc.stderr
    return proc.stderr


@pytest.fixture(scope="session")
def quiet_run(tmp_path_factory):
    """``train.py debug=fast`` as a user runs it: its run directory and its output."""
    run_dir = tmp_path_factory.mktemp("console") / "run"
    proc = run_cli("train.py", "debug=fast", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    return run_dir, proc


def test_train_prints_one_line_per_epoch_and_the_table(quiet_run):
    run_dir, proc = quiet_run
    lines = _lines(proc)
    assert len(lines) <= 40, "\n".join(lines)
    out = proc.stdout + proc.stderr
    for noise in NOISE:
        assert noise not in out, out
    assert "Traceback" not in out and "Epoch 0" not in out  # no progress bar under a pipe
    assert re.search(rf"^{EPOCH.format(n=1)}  ETA \S+ s$", proc.stdout, re.M), proc.stdout
    assert re.search(rf"^{EPOCH.format(n=2)}$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^mIoU +\d+\.\d\d$", proc.stdout, re.M)
    assert f"results written to {run_dir / 'results.json'}" in proc.stdout
    # Lightning's lines print plain, not in Hydra's log format (its handler is its own)
    assert not re.search(r"^\[\d{4}-\d\d-\d\d [\d:,]+\]\[", out, re.M), out
    assert re.search(r"^run directory: ", out, re.M), out


def test_train_log_has_the_same_lines_with_timestamps(quiet_run):
    run_dir, proc = quiet_run
    log = (run_dir / "train.log").read_text().splitlines()
    assert log and all(re.match(STAMP, line) for line in log), log[:5]
    text = [re.sub(f"^{STAMP}", "", line) for line in log]
    printed = [line for line in _lines(proc) if line.strip()]
    assert sorted(text) == sorted(printed)  # every line printed, and only those
    assert any(re.fullmatch(rf"{EPOCH.format(n=2)}", line) for line in text), text
    assert text[-1] == f"results written to {run_dir / 'results.json'}"


def test_the_recorded_config_has_no_verbose_key(quiet_run):
    run_dir, _ = quiet_run
    import json

    config = json.loads((run_dir / "results.json").read_text())["config"]
    assert "verbose" not in config and config["trainer"]["max_epochs"] == 2


@pytest.mark.slow  # a command-line evaluation of its own (14 s)
def test_evaluate_with_offline_wandb_is_quiet(quiet_run, tmp_path):
    run_dir, _ = quiet_run
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}  # W&B's defaults
    env.update(PYTHONUNBUFFERED="1", NETRC=str(tmp_path / "none"))  # no key: W&B offline
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}"]
        + [f"hydra.run.dir={out}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _lines(proc)
    assert len(lines) <= 30, "\n".join(lines)
    for noise in NOISE:
        assert noise not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert sum("W&B offline" in line for line in lines) == 1
    assert (out / "wandb").is_dir()  # W&B still ran, offline
    log = (out / "evaluate.log").read_text()
    assert re.search(rf"^{STAMP}mIoU +\d+\.\d\d$", log, re.M), log
    assert re.search(rf"^{STAMP}evaluating on test: 1 batch$", log, re.M), log


@pytest.mark.slow  # a command-line run of its own (10-20 s)
def test_verbose_true_brings_lightning_back(quiet_run, tmp_path):
    run_dir, _ = quiet_run
    out = tmp_path / "eval"
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    proc = run_cli(
        "evaluate.py",
        f"ckpt={ckpt}",
        "logger=csv",
        "verbose=true",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert "GPU available" in proc.stderr and "💡 Tip" in proc.stderr
    assert "GPU available" in (out / "evaluate.log").read_text()
    assert "Testing" not in proc.stdout  # verbose, but no progress bar: stdout is a pipe


# ------------------------------------------------------------------ errors are messages


def test_missing_data_root_is_one_paragraph_and_its_traceback_is_logged(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "train.py",
        "dataset=camvid",
        "data_root=/nonexistent",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
        check=False,
    )
    err = _refused(proc, "Error: CamVid root '/nonexistent/CamVid' does not exist")
    assert f"the traceback is in {out / 'train.log'}" in err
    assert len(err.strip().splitlines()) == 2 and proc.stdout == ""
    log = (out / "train.log").read_text()
    assert "Traceback (most recent call last)" in log and "FileNotFoundError" in log
    assert re.search(rf"^{STAMP}Error: CamVid root", log, re.M)


@pytest.mark.slow  # a command-line run of its own (10-20 s)
def test_hydra_full_error_prints_the_traceback(tmp_path):
    proc = run_cli(
        "train.py",
        "dataset=camvid",
        "data_root=/nonexistent",
        f"hydra.run.dir={tmp_path / 'r'}",
        cwd=tmp_path,
        check=False,
        env={"HYDRA_FULL_ERROR": "1"},
    )
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "FileNotFoundError" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_trainer_gpu_without_cuda_is_refused_before_any_data_is_read(tmp_path):
    proc = run_cli(
        "train.py",
        "trainer=gpu",
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'r'}",
        cwd=tmp_path,
        check=False,
    )
    _refused(proc, "trainer.accelerator=gpu, but this machine has no CUDA GPU", "trainer=cpu")
    assert "cached" not in proc.stdout + proc.stderr  # no split was opened


@pytest.mark.slow  # a command-line run of its own (10-20 s)
def test_unset_num_classes_gives_the_fix(tmp_path):
    proc = run_cli(
        "train.py",
        "dataset=folder",
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'r'}",
        cwd=tmp_path,
        check=False,
    )
    _refused(
        proc,
        "dataset.num_classes, dataset.class_names, dataset.source.root have no value",
        "dataset.num_classes=3 'dataset.class_names=[background,road,car]'",
    )


def test_misspelt_key_names_the_nearest_key_and_the_corrected_command(tmp_path):
    proc = run_cli("train.py", "debug=fast", "trainer.max_epoch=3", cwd=tmp_path, check=False)
    err = _refused(proc, "trainer.max_epoch is not a key", "did you mean trainer.max_epochs")
    assert "python train.py debug=fast trainer.max_epochs=3" in err
    assert not (tmp_path / "outputs").exists()  # refused before any run directory


@pytest.mark.slow  # a command-line run of its own (10-20 s)
def test_misspelt_key_in_a_sweep(tmp_path):
    proc = run_cli(
        "train.py",
        "-m",
        "debug=fast",
        "optimizer.lrr=0.1,0.2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
        check=False,
    )
    err = _refused(proc, "did you mean optimizer.lr? Use optimizer.lr=0.1,0.2")
    assert "python train.py -m debug=fast optimizer.lr=0.1,0.2 hydra.sweep.dir=" in err


@pytest.mark.slow  # a command-line run of its own (10-20 s)
def test_a_failed_sweep_job_is_a_paragraph_and_the_other_jobs_run(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train.py",
        "-m",
        "debug=fast",
        "dataset=camvid",
        "data_root=/nonexistent",
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        check=False,
    )
    _refused(proc, "Error: CamVid root")
    for job in ("0_fcn8s_tiny_camvid", "1_fcn8s_tiny_camvid"):  # both ran, both logged
        assert "FileNotFoundError" in (sweep / job / "train.log").read_text()


@pytest.mark.slow  # a command-line run of its own (10-20 s)
def test_evaluate_missing_checkpoint_and_missing_ckpt_key(tmp_path):
    proc = run_cli("evaluate.py", "ckpt=missing.ckpt", "logger=csv", cwd=tmp_path, check=False)
    _refused(proc, "Error: checkpoint 'missing.ckpt' does not exist")
    proc = run_cli("evaluate.py", "logger=csv", cwd=tmp_path, check=False)
    _refused(proc, "ckpt has no value", "ckpt=outputs/train/")


def test_segbench_verbs_report_errors_as_paragraphs(tmp_path):
    def segbench(*args):
        return subprocess.run(
            [sys.executable, "-m", "segbench", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )

    _refused(segbench("stats", "dataset=camvid", "data_root=/nonexistent"), "CamVid root")
    proc = segbench("check", "trainer.max_epoch=2")
    _refused(proc, "did you mean trainer.max_epochs", "segbench check trainer.max_epochs=2")
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    proc = segbench("predict", "ckpt=missing.ckpt", f"input={image}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "checkpoint 'missing.ckpt' does not exist" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr


# ------------------------------------------------------------------------ the pieces


def test_key_suggestion_of_a_composed_config():
    with pytest.raises(ConfigCompositionException) as err:
        compose("train", ["dataset.batchsize=2"])
    message = key_suggestion(err.value, ["dataset.batchsize=2"], "python train.py")
    assert "did you mean dataset.batch_size" in message
    assert "python train.py dataset.batch_size=2" in message
    assert nearest_keys("modle", ["model", "seed", "model.name"]) == ["model"]


def test_user_errors_and_bugs():
    from segbench.data.errors import DataError

    assert is_user_error(DataError("bad mask"))
    try:
        [][1]
    except IndexError as bug:
        assert not is_user_error(bug)
    try:
        compose("train", ["dataset=folder"]).dataset.num_classes  # noqa: B018
    except Exception as missing:
        assert is_user_error(missing)


def test_log_lines_keep_what_a_terminal_shows_last(tmp_path):
    path = tmp_path / "train.log"
    log, screen = _LogFile(path), io.StringIO()
    tee = _Tee(screen, log)
    tee.write("caching 0%\rcaching 100%\n\x1b[1mbold\x1b[0m line\npart")
    tee.write("ial\n")
    tee.write("\x1b[2K\x1b[1Aredrawn bar\n  its second line\n")  # a live display, one write
    log.close()
    text = [re.sub(f"^{STAMP}", "", line) for line in path.read_text().splitlines()]
    assert text == ["caching 100%", "bold line", "partial"]
    assert screen.getvalue().startswith("caching 0%\rcaching 100%\n")  # the screen gets all


def test_durations():
    assert [duration(s) for s in (4.24, 185, 7500)] == ["4.2 s", "3 min 05 s", "2 h 05 min"]


def test_a_long_epoch_prints_a_line_every_heartbeat(capsys):
    from types import SimpleNamespace

    from segbench.engine.progress import ProgressLines

    trainer = SimpleNamespace(
        is_global_zero=True,
        callback_metrics={"train/loss_step": torch.tensor(0.5)},
        num_training_batches=10,
        current_epoch=0,
        max_epochs=3,
        max_steps=-1,
        accumulate_grad_batches=1,
    )
    lines = ProgressLines(heartbeat_s=0.0)
    lines.on_train_epoch_start(trainer, None)
    lines.on_train_batch_end(trainer, None, None, None, 3)
    assert re.fullmatch(
        r"epoch 1/3  batch 4/10  train loss 0\.5000  \d\.\d s\n", capsys.readouterr().out
    )
    lines.heartbeat_s = 3600.0
    lines.on_train_batch_end(trainer, None, None, None, 4)
    assert capsys.readouterr().out == ""  # not before the next heartbeat
    trainer.max_epochs, trainer.max_steps = -1, 25  # 10 batches an epoch: 3 epochs
    assert ProgressLines.total_epochs(trainer) == 3
