"""A run directory holds one run: a finished or running one is never touched by another.

``claim(run_dir, ...)`` decides, before anything is written, whether this process may use the
directory, and then holds an exclusive ``flock`` on ``<run_dir>/.lock`` (with its PID in it)
until the process exits. Hydra calls it through :class:`RunDirGuard` before it writes
``.hydra/`` or the log file; ``train()`` / ``evaluate()`` call it again (a no-op in the
process that holds the lock), so that runs composed without Hydra are guarded too.

The states of a directory:

- *new*: absent or empty: claimed;
- *finished*: it holds ``results.json``: refused, whatever the run asks;
- *running*: another process holds the lock: refused at once, naming its PID;
- *interrupted*: ``checkpoints/last.ckpt`` but no results (a killed or pre-empted run):
  refused unless the run resumes it (``resume=auto`` or ``resume=<this dir>``);
- anything else (e.g. only ``.hydra/`` of a run that failed before training): claimed.

DDP ranks other than 0 re-enter the same directory on purpose and never claim it.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from segbench.engine.resume import LAST, check_resume_config, resolve_resume, resume_command
from segbench.results import RESULTS_FILE

__all__ = [
    "LOCK_FILE",
    "RunDirError",
    "RunDirGuard",
    "checkpoint_dir_of",
    "claim",
    "is_rank_zero",
    "release",
]

LOCK_FILE = ".lock"
_held: dict[Path, int] = {}  # run directory -> open lock file descriptor of this process


class RunDirError(RuntimeError):
    """The run directory cannot be used by this run; the message says why and what to do."""


def is_rank_zero() -> bool:
    """Whether this process is rank 0 (read from the environment the launchers set)."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key) not in (None, "", "0"):
            return False
    return True


def _holder(lock: Path) -> str | None:
    """The PID written in ``lock`` if another process holds it, else ``None``; opens the file
    read-only, so it changes nothing."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def checkpoint_dir_of(resume: str | None) -> Path | None:
    """The run directory a ``resume=`` value points to (a run directory or a checkpoint in
    its ``checkpoints/``), or ``None`` for ``null`` / ``auto``."""
    if resume in (None, "", "auto"):
        return None
    path = Path(str(resume)).expanduser()
    if path.is_dir():
        return path
    if path.parent.name == "checkpoints":
        return path.parent.parent
    return None


def claim(run_dir: str | Path, kind: str, resume: str | None = None, lock: bool = True) -> None:
    """Take ``run_dir`` for this process, or raise :class:`RunDirError` without changing a
    byte of it. ``kind`` is ``train`` or ``evaluate``; ``resume`` the run's ``resume=``;
    ``lock=False`` only checks."""
    run_dir = Path(run_dir).absolute()
    if run_dir in _held or not is_rank_zero():
        return
    results = run_dir / RESULTS_FILE
    if results.exists():
        raise RunDirError(
            f"{run_dir} holds a finished run ({results.name}); segbench never changes an earlier "
            "run's directory. Choose another hydra.run.dir (or leave it out: every run gets a new "
            "timestamped one)."
        )
    pid = _holder(run_dir / LOCK_FILE)
    if pid is not None:
        raise RunDirError(
            f"{run_dir} is in use by a running process (PID {pid}, {run_dir / LOCK_FILE}); two "
            "runs never share a directory. Wait for it to finish or choose another hydra.run.dir."
        )
    target = checkpoint_dir_of(resume)
    resuming = kind == "train" and (
        resume == "auto" or (target is not None and target.absolute() == run_dir)
    )
    if (run_dir / LAST).exists() and not resuming:
        what = (
            "Resume it with\n  " + resume_command(run_dir)
            if kind == "train"
            else "Evaluate its checkpoint from another directory: python evaluate.py "
            f"ckpt={run_dir / LAST}"
        )
        raise RunDirError(
            f"{run_dir} holds an unfinished training run ({LAST}, no {RESULTS_FILE}). {what}\n"
            "or choose another hydra.run.dir."
        )
    if not lock:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another process took it between the check and here
        os.close(fd)
        raise RunDirError(
            f"{run_dir} was just taken by another process ({run_dir / LOCK_FILE})"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[run_dir] = fd


def release(run_dir: str | Path) -> None:
    """Give up the lock on ``run_dir`` (it is also dropped when the process exits)."""
    fd = _held.pop(Path(run_dir).absolute(), None)
    if fd is not None:
        os.close(fd)


class RunDirGuard(Callback):
    """Hydra callback: claims the run directory before Hydra writes into it.

    Single runs are claimed in ``on_run_start``, before ``.hydra/`` and the log file exist.
    A run that resumes a checkpoint in another run's directory (``resume=<dir or ckpt>``
    without ``hydra.run.dir``) is moved into that directory, and every resume keeps its
    config in ``.hydra/resume_<n>/`` so that the original ``.hydra/`` stays as it was.
    Multirun jobs are claimed by the run itself, once Hydra has made their directories.

    Args:
        kind: ``train`` or ``evaluate``.
    """

    def __init__(self, kind: str = "train") -> None:
        self.kind = kind

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Refuse a sweep directory that holds another sweep (its ``multirun.yaml``): a second
        sweep there would overwrite that file and the leaderboard and mix the two sweeps' runs.
        The same sweep again with ``resume=auto`` carries it on."""
        sweep_dir = Path(str(config.hydra.sweep.dir))
        problem = _other_sweep(sweep_dir, [str(o) for o in config.hydra.overrides.task])
        if problem:
            print(f"Error: {problem}", file=sys.stderr)
            sys.exit(1)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_rank_zero():  # DDP ranks > 0: launched into rank 0's directory
            return
        resume = config.get("resume") if self.kind == "train" else None
        overrides = [str(o) for o in config.hydra.overrides.task]
        pinned = any(o.startswith("hydra.run.dir=") for o in overrides)
        target = checkpoint_dir_of(resume)
        with open_dict(config):
            if target is not None and not pinned:
                config.hydra.run.dir = str(target)
            run_dir = Path(str(config.hydra.run.dir))
            try:
                claim(run_dir, self.kind, resume, lock=False)
                if resume is not None:
                    _precheck_resume(config, run_dir)
                claim(run_dir, self.kind, resume)
            except (RunDirError, ValueError, FileNotFoundError) as err:
                print(f"Error: {err}", file=sys.stderr)
                sys.exit(1)
            if resume is not None and (run_dir / ".hydra").is_dir():
                n = 1
                while (run_dir / ".hydra" / f"resume_{n}").exists():
                    n += 1
                config.hydra.output_subdir = f".hydra/resume_{n}"


def _sweep_overrides(overrides: list[str]) -> list[str]:
    """A sweep's definition: its overrides without ``resume`` and the sweep directory."""
    skip = ("resume", "hydra.sweep.dir")
    return sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in skip)


def _other_sweep(sweep_dir: Path, overrides: list[str]) -> str | None:
    """Why ``sweep_dir`` cannot take the sweep of ``overrides`` (None when it can)."""
    if not sweep_dir.is_dir() or not any(sweep_dir.iterdir()):
        return None
    record = sweep_dir / "multirun.yaml"
    earlier = None
    if record.is_file():
        try:
            earlier = [str(o) for o in OmegaConf.load(record).hydra.overrides.task]
        except Exception:  # an unreadable record: treated as another sweep's
            earlier = None
    resuming = any(o.split("=", 1)[0].lstrip("+~") == "resume" for o in overrides)
    if earlier is not None and _sweep_overrides(earlier) == _sweep_overrides(overrides):
        if resuming:
            return None
        return (
            f"hydra.sweep.dir={sweep_dir} already holds this sweep; to carry it on after an "
            "interruption, run the same command with resume=auto added (its runs resume from "
            "their last.ckpt), or give this sweep a new hydra.sweep.dir"
        )
    what = f"another sweep ({' '.join(earlier)})" if earlier is not None else "other files"
    return (
        f"hydra.sweep.dir={sweep_dir} already holds {what}; a second sweep there would "
        "overwrite its multirun.yaml and leaderboard and mix the two sweeps' runs. Give this "
        "sweep a directory of its own: hydra.sweep.dir=<new folder>"
    )


def _precheck_resume(config: DictConfig, run_dir: Path) -> None:
    """Refuse a resume whose configuration differs from its checkpoint's before Hydra writes
    anything (``train()`` checks again once the class weights are computed)."""
    import torch

    path = resolve_resume(config.get("resume"), run_dir)
    if path is None:
        return
    cfg = config.copy()
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.output_dir = str(run_dir.absolute())
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    check_resume_config(ckpt, path, OmegaConf.to_container(cfg, resolve=True), computed=True)
