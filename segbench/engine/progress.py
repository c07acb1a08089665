"""The progress of a run as plain lines, one per epoch: what ``train.py`` shows in place of a
progress bar, readable in a log file, under ``nohup`` and in a SLURM output file::

    epoch 3/50  train loss 0.8123  val loss 0.9012  val mIoU 41.27%  time 2 min 05 s  ETA 1 h 38 min

A training or test pass longer than ``heartbeat_s`` also gets a line every ``heartbeat_s``
seconds (``epoch 3/50  batch 400/1000  train loss 0.7710  2 min 30 s``), so that a long epoch
still shows it is alive.
"""

from __future__ import annotations

import math
import time

import pytorch_lightning as pl

__all__ = ["ProgressLines", "attach", "duration"]


def duration(seconds: float) -> str:
    """``4.2 s``, ``3 min 05 s``, ``2 h 05 min``."""
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest:02d} s"
    hours, rest = divmod(round(seconds / 60), 60)
    return f"{hours} h {rest:02d} min"


def _number(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class ProgressLines(pl.Callback):
    """Prints one line per training epoch on rank 0: the epoch of how many, its mean training
    loss, the validation loss and mIoU when it was validated, its time and the estimated time
    left; and a line when the final evaluation starts.

    Args:
        heartbeat_s: a line every this many seconds within a long epoch or evaluation.
    """

    def __init__(self, heartbeat_s: float = 300.0) -> None:
        self.heartbeat_s = heartbeat_s
        self._epoch_times: list[float] = []
        self._start = self._last = time.monotonic()
        self._validated = False

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def total_epochs(trainer: pl.Trainer) -> int | None:
        """How many epochs the run trains: ``max_epochs``, or fewer when ``max_steps`` stops
        it first; None when neither bounds it."""
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        steps, batches = trainer.max_steps, trainer.num_training_batches
        if steps and steps > 0 and batches and math.isfinite(batches):
            per_epoch = max(batches // max(trainer.accumulate_grad_batches, 1), 1)
            by_steps = math.ceil(steps / per_epoch)
            epochs = by_steps if epochs is None else min(epochs, by_steps)
        return epochs

    def _epoch_label(self, trainer: pl.Trainer) -> str:
        total = self.total_epochs(trainer)
        return f"epoch {trainer.current_epoch + 1}" + (f"/{total}" if total else "")

    @staticmethod
    def _say(text: str) -> None:
        from segbench.engine.console import live_display, log_line

        print(text, flush=True)
        if live_display():  # printed above a progress bar, which the log file leaves out
            log_line(text)

    # -- training --------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = self._last = time.monotonic()
        self._validated = False

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if not trainer.is_global_zero or now - self._last < self.heartbeat_s:
            return
        self._last = now
        batches = trainer.num_training_batches
        parts = [self._epoch_label(trainer), f"batch {batch_idx + 1}/{batches}"]
        loss = _number(trainer.callback_metrics, "train/loss_step")
        if loss is not None:
            parts.append(f"train loss {loss:.4f}")
        parts.append(duration(now - self._start))
        self._say("  ".join(parts))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        elapsed = time.monotonic() - self._start
        self._epoch_times.append(elapsed)
        metrics = trainer.callback_metrics
        parts = [self._epoch_label(trainer)]
        loss = _number(metrics, "train/loss_epoch")
        if loss is not None:
            parts.append(f"train loss {loss:.4f}")
        if self._validated:
            val_loss, miou = _number(metrics, "val/loss"), _number(metrics, "val/mIoU")
            if val_loss is not None:
                parts.append(f"val loss {val_loss:.4f}")
            if miou is not None:
                parts.append(f"val mIoU {100 * miou:.2f}%")
        parts.append(f"time {duration(elapsed)}")
        total = self.total_epochs(trainer)
        left = (total - trainer.current_epoch - 1) if total else None
        if left:
            mean = sum(self._epoch_times) / len(self._epoch_times)
            parts.append(f"ETA {duration(mean * left)}")
        self._say("  ".join(parts))

    # -- the final evaluation --------------------------------------------------------------
    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start = self._last = time.monotonic()
        if trainer.is_global_zero:
            split = getattr(pl_module, "eval_split", None) or "test"
            batches = sum(trainer.num_test_batches)
            self._say(f"evaluating on {split}: {batches} batch{'es' if batches != 1 else ''}")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        now = time.monotonic()
        if not trainer.is_global_zero or now - self._last < self.heartbeat_s:
            return
        self._last = now
        total = sum(trainer.num_test_batches)
        self._say(f"evaluating: batch {batch_idx + 1}/{total}  {duration(now - self._start)}")


def attach(trainer) -> None:
    """Add the per-epoch lines (:class:`ProgressLines`) to ``trainer``."""
    trainer.callbacks.append(ProgressLines())
