"""Same command, same numbers: seeded runs, exact resume after SIGKILL / SIGTERM, and run
directories that are never changed by a run they refuse."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segbench.engine.resume import config_differences
from segbench.engine.run import train
from tests.conftest import ROOT, compose_config, run_cli

FAST = ["debug=fast", "trainer.enable_progress_bar=false"]

# one worker runs this module (make test: --dist loadgroup), so that its training run (a
# session-scoped fixture: the worker interleaves other modules' tests) is made once
pytestmark = pytest.mark.xdist_group("reproducibility")


def figures(run_dir: Path) -> dict:
    """What must not change between two runs of one command: every figure of results.json
    (per-class lists and the confusion matrix included) and the best validation score."""
    res = json.loads((run_dir / "results.json").read_text())
    return {"metrics": res["metrics"], "best_val_mIoU": res.get("best_val_mIoU")}


def csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def tree_digest(run_dir: Path) -> dict[str, str]:
    """Every file under ``run_dir`` with its content hash and modification time."""
    return {
        str(
            p.relative_to(run_dir)
        ): f"{hashlib.sha1(p.read_bytes()).hexdigest()} {p.stat().st_mtime_ns}"
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def _train(tmp_path: Path, name: str, overrides: list[str]) -> dict:
    out = tmp_path / name
    train(compose_config("train", [*FAST, *overrides], out))
    return figures(out)


@pytest.mark.parametrize(
    "model, extra",
    [
        (
            "fcn8s",
            ["dataset.train_transform.scale=[0.75,1.25]", "dataset.train_transform.crop=[48,48]"],
        ),
        # dropout in training and MC dropout in evaluation
        pytest.param("bayesian_segnet", [], marks=pytest.mark.slow),
        # two optimizers, the discriminator's updates
        pytest.param("ganseg", [], marks=pytest.mark.slow),
    ],
)
def test_same_command_same_figures(tmp_path, model, extra):
    """hflip (and for FCN-8s random scale and crop) on: albumentations' draws are seeded."""
    overrides = [f"model={model}", "trainer.max_epochs=1", *extra]
    first = _train(tmp_path, "a", overrides)
    assert _train(tmp_path, "b", overrides) == first
    if model == "fcn8s":  # loader workers never change what a sample becomes
        assert _train(tmp_path, "w2", [*overrides, "dataset.num_workers=2"]) == first
        assert _train(tmp_path, "seed1", [*overrides, "seed=1"]) != first


def test_augmentation_depends_on_seed_epoch_and_sample_only():
    from segbench.data.sampling import EpochSampler, SeededView
    from segbench.data.shapes import ShapesDataset
    from segbench.data.transforms import SegTransform

    ds = ShapesDataset("train", sizes={"train": 8}, image_size=32)
    ds.transform = SegTransform(255, hflip=0.5, scale=[0.5, 1.5], crop=[24, 24])
    view = SeededView(ds, seed=3)
    a = view[(5, 2)]["image"]
    view[(1, 2)], view[(5, 0)]  # other draws in between change nothing
    assert (view[(5, 2)]["image"] == a).all()
    assert any(not (view[(5, e)]["image"] == a).all() for e in (0, 1, 3))  # epochs differ
    sampler = EpochSampler(ds, seed=3)
    sampler.set_epoch(1)
    order = [i for i, _ in sampler]
    sampler.resume(1, 5)
    assert [i for i, _ in sampler] == order[5:]  # a resumed epoch: the samples left, in order
    assert [i for i, _ in sampler] == order[5:]  # however often that epoch is started
    sampler.set_epoch(2)
    assert len([i for i, _ in sampler]) == 8  # the next epoch is whole again
    shards = [EpochSampler(ds, 3, num_replicas=3, rank=r) for r in range(3)]
    drawn = [i for s in shards for i, _ in s]  # 8 samples padded to 3 x 3, each rank 3
    assert len(drawn) == 9 and set(drawn) == set(range(8))


# ----------------------------------------------------------------------------------------
# resume after SIGKILL and SIGTERM, in real subprocesses

RESUME = [
    *FAST,
    "trainer.max_epochs=3",
    "dataset.subset.train=32",  # 8 batches per epoch
    "callbacks.run_state.every_n_steps=3",
]


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("resume") / "uninterrupted"
    run_cli("train.py", *RESUME, f"hydra.run.dir={run_dir}", cwd=ROOT)
    return run_dir


def _start(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *RESUME, f"hydra.run.dir={run_dir}", *extra],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(proc: subprocess.Popen, needle: str, timeout: float = 300) -> list[str]:
    """Read the process's output until a line contains ``needle``; returns the lines."""
    lines, deadline = [], time.time() + timeout
    for line in proc.stdout:
        lines.append(line)
        if needle in line:
            return lines
        assert time.time() < deadline, "".join(lines[-30:])
    raise AssertionError(f"{needle!r} never printed:\n{''.join(lines[-30:])}")


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    assert figures(run_dir) == figures(reference)
    assert json.loads((run_dir / "history.json").read_text()) == json.loads(
        (reference / "history.json").read_text()
    )
    assert csv_rows(run_dir) == csv_rows(reference)  # nothing lost, nothing twice
    for name in ("curves.png", "val_predictions.png", "confusion_matrix.png"):
        assert (run_dir / name).is_file(), name


def test_sigkill_mid_epoch_then_resume_auto_ends_as_uninterrupted(tmp_path, uninterrupted):
    run_dir = tmp_path / "killed"
    proc = _start(run_dir)
    _wait_for(proc, "(step 12)")  # epoch 1, batch 4 of 8: mid-epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "results.json").exists()
    # a fresh start in the killed run's directory is refused: it would lose the record
    refused = run_cli("train.py", *RESUME, f"hydra.run.dir={run_dir}", cwd=ROOT, check=False)
    assert refused.returncode == 1 and "unfinished training run" in refused.stderr
    assert "resume=auto" in refused.stderr
    run_cli("train.py", *RESUME, f"hydra.run.dir={run_dir}", "resume=auto", cwd=ROOT)
    _assert_same_run(run_dir, uninterrupted)
    assert (run_dir / ".hydra" / "resume_1" / "overrides.yaml").is_file()  # original kept


@pytest.mark.slow  # 30 s; the SIGKILL test runs the resume path in the fast suite
def test_sigterm_saves_prints_the_resume_command_which_works_pasted(tmp_path, uninterrupted):
    run_dir = tmp_path / "preempted"
    proc = _start(run_dir)
    _wait_for(proc, "(step 3)")
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait() == 128 + signal.SIGTERM
    assert "stopped on SIGTERM" in rest and "resume with:" in rest
    command = rest.split("resume with:")[1].strip().splitlines()[0]
    args = shlex.split(command)
    assert args[:2] == ["python", "train.py"]
    subprocess.run([sys.executable, *args[1:]], cwd=ROOT, check=True, capture_output=True)
    _assert_same_run(run_dir, uninterrupted)


@pytest.mark.slow  # a training, a refused resume and the pasted fix run, 29 s: make test-all
def test_resume_with_another_configuration_is_refused_naming_the_keys(tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_config("train", [*FAST, "trainer.max_epochs=1"], run_dir)
    train(cfg)
    (run_dir / "results.json").rename(run_dir / "results.json.bak")  # as if it had been killed
    before = tree_digest(run_dir)
    proc = run_cli(
        "train.py",
        *FAST,
        "trainer.max_epochs=1",
        "optimizer=adamw",
        "resume=auto",
        f"hydra.run.dir={run_dir}",
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode != 0
    assert "optimizer._target_" in proc.stderr and "differs from the checkpoint" in proc.stderr
    assert "None in the checkpoint, None now" not in proc.stderr
    assert tree_digest(run_dir) == before  # refused before Hydra wrote a byte
    # the fix the message gives, added to the same command, resumes the run
    fix = proc.stderr.split("add to the command: ")[1].split("), or start")[0]
    assert "optimizer._target_=torch.optim.SGD" in fix
    pasted = run_cli(
        "train.py", *FAST, "trainer.max_epochs=1", "optimizer=adamw", "resume=auto",
        f"hydra.run.dir={run_dir}", *shlex.split(fix), cwd=ROOT, check=False,
    )  # fmt: skip
    assert "differs from the checkpoint" not in pasted.stderr, pasted.stderr[-2000:]


def test_resumable_keys_are_evaluation_and_logging_only():
    old = {"optimizer": {"lr": 0.1}, "logger": {"csv": {}}, "dataset": {"num_workers": 2}}
    new = {"optimizer": {"lr": 0.2}, "logger": None, "dataset": {"num_workers": 0}}
    assert config_differences(old, new) == [("optimizer.lr", 0.1, 0.2)]
    # a key absent on one side and null on the other is no difference ("None ... None now")
    assert config_differences({"model": {"crf": None, "x": 1}}, {"model": {"x": 1}}) == []


# ----------------------------------------------------------------------------------------
# a run directory is one run


def test_refused_runs_leave_a_finished_run_untouched(trained_run):
    before = tree_digest(trained_run)
    for script, args in (
        ("train.py", ["debug=fast", "model=unet"]),
        ("evaluate.py", [f"ckpt={trained_run / 'checkpoints' / 'best.ckpt'}"]),
    ):
        proc = run_cli(script, *args, f"hydra.run.dir={trained_run}", cwd=ROOT, check=False)
        assert proc.returncode == 1 and "holds a finished run" in proc.stderr
    assert tree_digest(trained_run) == before


def test_a_directory_locked_by_another_process_is_refused_naming_its_pid(tmp_path):
    """The lock alone, fast: another process holds ``.lock`` as a live run does."""
    import subprocess
    import sys

    from segbench.engine.rundir import LOCK_FILE, RunDirError, claim, release

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time\n"
                f"fd = os.open({str(run_dir / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                "os.pwrite(fd, f'{os.getpid()}\\n'.encode(), 0)\n"
                "print('held', flush=True)\n"
                "sys.stdin.readline()\n"
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=rf"in use by a running process \(PID {holder.pid}"):
            claim(run_dir, "train")
    finally:
        holder.communicate("\n", timeout=30)
    claim(run_dir, "train")  # free once the holder is gone
    release(run_dir)


@pytest.mark.slow  # two live training processes (23 s); the lock alone: the test above
def test_a_second_run_in_a_live_directory_is_refused_at_once(tmp_path):
    run_dir = tmp_path / "live"
    first = _start(run_dir)
    _wait_for(first, "run directory:")
    first.send_signal(signal.SIGSTOP)  # held mid-run while the second one starts
    try:
        tic = time.time()
        second = run_cli("train.py", *RESUME, f"hydra.run.dir={run_dir}", cwd=ROOT, check=False)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1 and time.time() - tic < 60
    assert f"in use by a running process (PID {first.pid}" in second.stderr
    first.stdout.read()
    assert first.wait() == 0
    assert (run_dir / "results.json").is_file() and csv_rows(run_dir)


def test_logger_none_trains(tmp_path):
    out = tmp_path / "run"
    train(compose_config("train", [*FAST, "logger=none", "trainer.max_epochs=1"], out))
    assert (out / "results.json").is_file() and not (out / "csv").exists()


def test_image_smaller_than_the_total_stride_is_refused_before_training(tmp_path):
    out = tmp_path / "run"
    cfg = compose_config("train", [*FAST, "backbone=resnet18", "dataset.source.image_size=16"], out)
    with pytest.raises(ValueError, match=r"smaller than its total stride 32.*at least 32"):
        train(cfg)
    assert not (out / "checkpoints").exists()


class LastCheckpointEpochs:
    """A callback that notes, as each epoch starts, the epoch and step last.ckpt holds."""

    seen: list = []

    def __new__(cls):
        import pytorch_lightning as pl
        import torch

        class _Record(pl.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                path = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
                if path.is_file():
                    ckpt = torch.load(path, weights_only=True)
                    cls.seen.append((trainer.current_epoch, ckpt["global_step"]))

        return _Record()


def test_last_ckpt_is_written_after_every_epoch_also_without_improvement(tmp_path):
    """Lightning writes last.ckpt only with a new best.ckpt; segbench's ModelCheckpoint writes it
    after every validation. A run whose validation mIoU falls after epoch 0 (lr 0.5 on
    debug=fast) keeps epoch 0 as best, and as each epoch starts last.ckpt holds the one before."""
    import torch

    run_dir = tmp_path / "run"
    overrides = [
        "debug=fast", "trainer.max_epochs=3", "optimizer.lr=0.5", "logger=csv",
        "trainer.enable_progress_bar=false", "callbacks.run_plots=null",
        "callbacks.eval_outputs=null",
        "+callbacks.record._target_=tests.test_reproducibility.LastCheckpointEpochs",
    ]  # fmt: skip
    LastCheckpointEpochs.seen.clear()
    train(compose_config("train", overrides, run_dir))
    rows = list(csv.DictReader(open(next(run_dir.rglob("metrics.csv")))))
    val = [float(r["val/mIoU"]) for r in rows if r.get("val/mIoU")]
    assert len(val) == 3 and max(val) == val[0] > val[-1]  # no improvement after epoch 0
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    steps = best["global_step"]  # one epoch's steps
    assert best["epoch"] == 0
    assert LastCheckpointEpochs.seen == [(1, steps), (2, 2 * steps)]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3 * steps  # the finished run's


def test_a_full_disk_names_the_space_needed_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    """torch.save failing as on a full disk: the temporary file is removed, the previous
    checkpoint kept, and the error names the disk's free space, the size needed and the
    command that resumes."""
    import torch

    from segbench.engine.checkpointing import AtomicCheckpointIO, CheckpointWriteError

    folder = tmp_path / "run" / "checkpoints"
    io_ = AtomicCheckpointIO()
    state = {"state_dict": {"w": torch.zeros(1000)}}
    io_.save_checkpoint(state, folder / "last.ckpt")
    before = (folder / "last.ckpt").read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"x" * 4096)  # part of the file, then the disk is full
        raise RuntimeError(
            "[enforce fail at inline_container.cc:671] . PytorchStreamWriter failed writing file"
        )

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError) as err:
        io_.save_checkpoint({"state_dict": {"w": torch.zeros(10**6)}}, folder / "last.ckpt")
    monkeypatch.setattr(torch, "save", real_save)
    message = str(err.value)
    assert "could not write checkpoint" in message and "MB free" in message
    assert "needs about 4.0 MB" in message and "resume=auto" in message
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # no .last.ckpt.tmp
    assert (folder / "last.ckpt").read_bytes() == before


class KillAtTest:
    """A callback that SIGKILLs its process as the final evaluation starts (a crash there)."""

    def __new__(cls):
        import pytorch_lightning as pl

        class _Kill(pl.Callback):
            def on_test_start(self, trainer, pl_module):
                os.kill(os.getpid(), signal.SIGKILL)

        return _Kill()


def test_sigkill_during_the_final_evaluation_then_resume_keeps_every_row(tmp_path, uninterrupted):
    """Killed after training, during the final evaluation: resume=auto evaluates and the run's
    metrics.csv holds every row of the uninterrupted run (the last epoch's included)."""
    run_dir = tmp_path / "killed"
    kill = "+callbacks.kill._target_=tests.test_reproducibility.KillAtTest"
    proc = _start(run_dir, kill)
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL and not (run_dir / "results.json").exists()
    run_cli("train.py", *RESUME, f"hydra.run.dir={run_dir}", "resume=auto", cwd=ROOT)
    _assert_same_run(run_dir, uninterrupted)
