"""How a run writes its checkpoints: atomically (a kill during a save leaves the previous one),
with a message naming the disk when a save fails, and ``last.ckpt`` after every epoch."""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from segbench.engine.resume import resume_command

__all__ = ["AtomicCheckpointIO", "CheckpointWriteError", "ModelCheckpoint"]


class ModelCheckpoint(pl.callbacks.ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with ``last.ckpt`` written after every validation, as
    segbench documents it. Lightning (since 2.5) writes ``last.ckpt`` only when ``best.ckpt`` is
    written too, so after an epoch that did not improve, ``last.ckpt`` held an older epoch and a
    resume repeated epochs. The class keeps Lightning's name, so its state in a checkpoint has the
    same key and older runs resume."""

    def _save_last_too(self, trainer: pl.Trainer, at_train_epoch_end: bool) -> None:
        if (
            self.save_last
            and not self._should_skip_saving_checkpoint(trainer)
            and self._should_save_on_train_epoch_end(trainer) == at_train_epoch_end
            and self._last_global_step_saved != trainer.global_step
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_too(trainer, at_train_epoch_end=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_last_too(trainer, at_train_epoch_end=False)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, most often); the message says where,
    how much space is free and how much the checkpoint needs."""


def _checkpoint_bytes(checkpoint: dict) -> int:
    """About the bytes of ``checkpoint`` on disk: the sum of its tensors' storage."""
    total = 0
    stack = [checkpoint]
    while stack:
        node = stack.pop()
        if isinstance(node, torch.Tensor):
            total += node.numel() * node.element_size()
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return total


def _write_failure(path: Path, err: BaseException, written: int, needed: int) -> str:
    """The message of a failed checkpoint save at ``path``."""
    import shutil

    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    message = f"could not write checkpoint {path}: {first}."
    if free is not None:
        message += f" The disk holding {path.parent} has {free / 1e6:.1f} MB free"
        message += f"; the checkpoint needs about {needed / 1e6:.1f} MB"
        if written:
            message += f" ({written / 1e6:.1f} MB were written before the save failed)"
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    message += (
        ". The temporary file is removed and the previous checkpoint, if any, is unchanged. "
        "Free that much space, then carry the run on from its last checkpoint: "
        f"{resume_command(run_dir)}"
    )
    return message


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to ``<name>.tmp`` in the same directory, flushes it to disk and
    renames it over ``<name>``: readers see the old file or the new one, never half of one.


    A save that fails (a full disk: torch reports ``enforce fail at inline_container.cc``)
    removes its temporary file, so it does not keep the disk full, leaves the previous
    checkpoint as it was, and stops the run with :class:`CheckpointWriteError`, which names the
    disk, its free space and the size the checkpoint needs."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:
            written = tmp.stat().st_size if tmp.exists() else 0
            tmp.unlink(missing_ok=True)
            needed = _checkpoint_bytes(checkpoint)
            raise CheckpointWriteError(_write_failure(path, err, written, needed)) from err
