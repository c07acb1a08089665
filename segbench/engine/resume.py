"""Reproducible and exactly resumable training.

- :class:`RunState` (a callback that ``train()`` always adds) reseeds torch, numpy and Python
  from ``(seed, rank, stage, epoch, batch)`` before every batch, so that dropout, the GAN's
  updates and anything else random in a step depend on where the step is, not on what ran
  before it. It writes ``checkpoints/last.ckpt`` every ``every_n_steps`` batches, and on
  SIGINT / SIGTERM (SLURM pre-emption) saves at the next batch boundary, prints the resume
  command and stops with :class:`RunInterrupted`.
- Those checkpoints are taken at the *start* of a batch: the state after the batches before
  it, everything included (the loop's position, the loader's, the partial epoch metrics,
  the CSV rows written so far), which is where a resumed run picks up.
- :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file and renames it, so
  a kill during a save leaves the previous ``last.ckpt`` intact.
- :func:`resolve_resume` and :func:`check_resume_config` turn ``resume=`` into a checkpoint
  and refuse one whose run configuration differs in anything that changes the figures.
"""

from __future__ import annotations

import csv
import random
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_info

from segbench.data.sampling import derive_seed

__all__ = [
    "LAST",
    "RunInterrupted",
    "RunState",
    "check_resume_config",
    "config_differences",
    "resolve_resume",
    "resume_command",
]

# keys a resumed run may change: how it is evaluated, logged, shown and loaded, never what
# it trains (prefixes of dotted keys)
RESUMABLE_KEYS = (
    "resume",
    "output_dir",
    "data_root",
    "logger",
    "callbacks",
    "inference",
    "bootstrap",
    "boundary",
    "evaluation",
    "dataset.figures",
    "reference",
    "verbose",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "dataset.num_workers",
    "dataset.cache",
    "dataset.eval_batch_size",
    "dataset.pin_memory",
    "dataset.check_on_setup",
    "dataset.root",
    "dataset.source.root",
)
# keys added after runs had been checkpointed without them, with the value that means what
# those runs did: a missing key equal to it is no difference
ADDED_KEYS = {
    "fast.channels_last": False,
    "fast.compile": False,
    "dataset.cache": "none",
    "model.crf.normalization": "after",  # DeepLab v1 + CRF before Krähenbühl's normalisation
    "model.separable": False,  # DeepLab v3+ (an architecture key: a difference is refused)
    "backbone.pretrained_tag": None,  # timm's default weights
    "reference": None,  # the published figures (documentation, not training)
    "ema.decay": None,  # no moving average of the weights
    "backbone.out_indices": None,  # every level of a timm encoder
    "backbone.freeze": False,  # the encoder trained with the rest
    "model.encoder.freeze": False,
    "model.segmenter.encoder.freeze": False,
    "optimizer.lr_mult": None,  # one learning rate for every parameter
    "scheduler.warmup_steps": 0,  # poly without warm-up
    "scheduler.warmup_ratio": 1.0e-6,
    **{f"val_inference.{k}": None for k in ("mode", "crop", "stride", "scales", "flip")},
}
STAGES = {"train": 0, "val": 1, "test": 2}
LAST = Path("checkpoints") / "last.ckpt"


def resume_command(run_dir: str | Path, overrides: list[str] | None = None) -> str:
    """The command that resumes the run in ``run_dir``: its own overrides (``overrides``, as
    Hydra recorded them) with ``resume=auto`` and the directory pinned."""
    run_dir = Path(run_dir)
    if overrides is None:
        path = run_dir / ".hydra" / "overrides.yaml"
        overrides = []
        if path.is_file():
            from omegaconf import OmegaConf

            overrides = [str(o) for o in OmegaConf.load(path)]
    pinned = ("resume", "hydra.run.dir")
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in pinned]
    args = [*kept, "resume=auto", f"hydra.run.dir={run_dir}"]
    return "python train.py " + " ".join(shlex.quote(a) for a in args)


class RunInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def _csv_rows(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        return max(sum(1 for _ in csv.reader(f)) - 1, 0)


def seed_step(seed: int, rank: int, stage: str, epoch: int, batch: int) -> None:
    """Seed torch (every device), numpy and Python for one batch."""
    s = derive_seed(seed, rank, STAGES[stage], epoch, batch)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


class RunState(pl.Callback):
    """Per-batch seeding, step checkpoints and a graceful stop on SIGINT / SIGTERM.

    Args:
        seed: the run seed.
        dirpath: where ``last.ckpt`` goes (the run's ``checkpoints/``).
        every_n_steps: write ``last.ckpt`` every this many training batches (0: only at the
            end of each epoch, by the ``checkpoint`` callback).
    """

    def __init__(self, seed: int, dirpath: str, every_n_steps: int = 500) -> None:
        if every_n_steps < 0:
            raise ValueError(f"callbacks.run_state.every_n_steps must be >= 0, got {every_n_steps}")
        self.seed = int(seed)
        self.dirpath = Path(dirpath)
        self.every_n_steps = int(every_n_steps)
        self.signum: int | None = None
        self.wandb_id: str | None = None
        self._handlers: dict[int, Any] = {}
        self._at_batch_start = False

    @property
    def last(self) -> Path:
        return self.dirpath / LAST.name

    # -- signals ---------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if self.signum is not None:  # a second one: stop now
            self._restore_handlers()
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\nreceived {signal.Signals(signum).name}: saving at the end of this batch "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def _restore_handlers(self) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers.clear()

    def on_fit_start(self, trainer, pl_module) -> None:
        self.signum = None
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger) and trainer.is_global_zero:
                self.wandb_id = lg.version

    def on_train_start(self, trainer, pl_module) -> None:
        # Installed here, after Lightning's own SIGTERM handler (which stops at the end of the
        # batch without saving, exit status 0), and instead of it. Under DDP the decision to
        # stop is shared by all ranks at the next batch (a signal to rank 0 only suffices).
        if trainer.received_sigterm:
            self.signum = signal.SIGTERM
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._handlers[signum] = signal.signal(signum, self._on_signal)
        except ValueError:  # not the main thread: no signal handling
            self._handlers.clear()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore_handlers()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore_handlers()

    # -- batches ---------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.total.completed
        stop = trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False)
        if stop or (self.every_n_steps and batch_idx > 0 and done % self.every_n_steps == 0):
            self._save(trainer)
        if stop:
            self._restore_handlers()
            signum = self.signum or signal.SIGTERM
            name = signal.Signals(signum).name
            overrides = _hydra_overrides()
            message = (
                f"stopped on {name} after {done} training batches; saved {self.last}\n"
                f"resume with:\n  {resume_command(self.dirpath.parent, overrides)}"
            )
            raise RunInterrupted(message, int(signum))
        seed_step(self.seed, trainer.global_rank, "train", trainer.current_epoch, batch_idx)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        seed_step(self.seed, trainer.global_rank, "val", trainer.current_epoch, batch_idx)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        seed_step(self.seed, trainer.global_rank, "test", 0, batch_idx)

    def _save(self, trainer) -> None:
        self._at_batch_start = True
        try:
            trainer.save_checkpoint(self.last, weights_only=False)
        finally:
            self._at_batch_start = False
        rank_zero_info(f"checkpoint: {self.last} (step {trainer.global_step})")

    def on_train_end(self, trainer, pl_module) -> None:
        """Save last.ckpt once more when training has finished, after the last epoch's rows
        were logged: the epoch-end checkpoint was written before them, so a run killed during
        the final evaluation and resumed from it lost the last epoch's training row. (This
        callback runs first, before the moving average is swapped in for good.)"""
        if trainer.interrupted or trainer.sanity_checking:
            return
        trainer.save_checkpoint(self.last, weights_only=False)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if not self._at_batch_start:
            return
        # Lightning's loop state assumes a checkpoint written at the *end* of a batch and
        # counts that batch's logging step again on restore; at the start of the next batch
        # that step is already counted.
        loop = checkpoint["loops"]["fit_loop"]
        loop["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1
        loop["epoch_loop.batch_progress"]["is_last_batch"] = False

    # -- what the checkpoint keeps besides Lightning's own state ---------------------------
    def state_dict(self) -> dict:
        trainer = self._trainer
        rows = {}
        if trainer is not None and trainer.is_global_zero:
            for lg in trainer.loggers:
                if isinstance(lg, CSVLogger):
                    lg.save()  # flush, so the file holds every row logged so far
                    rows[lg.log_dir] = _csv_rows(Path(lg.log_dir) / "metrics.csv")
        return {"seed": self.seed, "csv_rows": rows, "wandb_id": self.wandb_id}

    def load_state_dict(self, state: dict) -> None:
        self.loaded = state

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    _trainer: pl.Trainer | None = None
    loaded: dict | None = None


def _hydra_overrides() -> list[str] | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return [str(o) for o in HydraConfig.get().overrides.task]
    except (ImportError, ValueError):
        return None


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint ``resume=`` names: ``null`` none; ``auto`` the run directory's own
    ``checkpoints/last.ckpt`` if there is one (else ``None``: start afresh); a run directory
    its ``last.ckpt``; a file itself."""
    if resume in (None, ""):
        return None
    if resume == "auto":
        path = Path(output_dir) / LAST
        if path.is_file():
            return path
        rank_zero_info(f"resume=auto: no {path}, starting afresh")
        return None
    path = Path(str(resume)).expanduser()
    if path.is_dir():
        last = path / LAST
        if not last.is_file():
            raise FileNotFoundError(
                f"resume={resume}: {last} does not exist; resume= takes a run directory with "
                "checkpoints/last.ckpt, a checkpoint file, or auto"
            )
        return last
    if not path.is_file():
        raise FileNotFoundError(
            f"resume={resume}: no such file or directory; resume= takes a run directory, a "
            "checkpoint file (e.g. <run>/checkpoints/last.ckpt), or auto"
        )
    return path


def _flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(cfg, dict):
        out: dict[str, Any] = {}
        for k, v in cfg.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: cfg}


def config_differences(old: dict, new: dict, computed: bool = False) -> list[tuple[str, Any, Any]]:
    """``(key, checkpoint's value, this run's value)`` for every dotted key that differs and
    is not one a resumed run may change (:data:`RESUMABLE_KEYS`). With ``computed``, a
    ``class_weights`` given by name in ``new`` is taken to match the numbers the checkpoint's
    run computed from it (``new`` is a config before they are computed)."""
    a, b = _flatten(old), _flatten(new)
    if computed:
        for key, value in list(b.items()):
            if key.split(".")[-1] == "class_weights" and isinstance(value, str):
                a.pop(key, None), b.pop(key)
                for k in [k for k in a if k.startswith(key + ".")]:
                    a.pop(k)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if any(key == p or key.startswith(p + ".") for p in RESUMABLE_KEYS):
            continue
        default = ADDED_KEYS.get(key)  # absent: null, or the value that meant what runs did
        va, vb = a.get(key, default), b.get(key, default)
        if va != vb:
            diffs.append((key, va, vb))
    return diffs


def _override_value(value: Any) -> str:
    """``value`` as Hydra's override grammar writes it (``null``, ``true``, ``[a,b]`` ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    text = str(value)
    plain = text and all(c.isalnum() or c in "._-/:" for c in text) and text[0] != "-"
    return text if plain else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def restoring_overrides(diffs: list[tuple[str, Any, Any]]) -> list[str]:
    """The overrides that give this run the checkpoint's values for ``diffs``: ``key=value``,
    ``+key=value`` where this run lacks the key, ``~key`` where the checkpoint lacked it."""
    out = []
    for key, old, new in diffs:
        if old is None and new is not None:
            out.append(f"~{key}")
        elif new is None and old is not None:
            out.append(f"++{key}={_override_value(old)}")
        else:
            out.append(f"{key}={_override_value(old)}")
    return out


def check_resume_config(ckpt: dict, path: Path, config: dict, computed: bool = False) -> None:
    """Refuse to resume ``path`` when ``config`` differs from the checkpoint's run config in
    anything but evaluation or logging keys: the run would not end where it would have."""
    old = (ckpt.get("segbench") or {}).get("config")
    if old is None:
        raise ValueError(
            f"resume={path}: the checkpoint has no segbench run configuration (not written by "
            "train.py?); it cannot be resumed"
        )
    diffs = config_differences(old, config, computed)
    if diffs:
        lines = "\n".join(f"  {k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in diffs[:20])
        more = f"\n  ... and {len(diffs) - 20} more" if len(diffs) > 20 else ""
        fix = " ".join(shlex.quote(o) for o in restoring_overrides(diffs))
        raise ValueError(
            f"resume={path}: this run's configuration differs from the checkpoint's in "
            f"{len(diffs)} key(s) that change what is trained:\n{lines}{more}\n"
            f"Resume with the checkpoint's configuration (add to the command: {fix}), or "
            "start a new run without resume= in another hydra.run.dir."
        )
