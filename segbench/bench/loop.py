"""``train.py``'s training loop against a bare PyTorch loop over the same loader, model, loss
and optimizer: what the Lightning loop and segbench's callbacks cost per step.

Both loops run ``warmup`` batches untimed, then ``steps`` timed ones, in this process. The
Lightning side is built exactly as ``train.py`` builds it (task, callbacks, loggers, progress
bar, the configured precision), with validation left out of the timed window (it runs no
validation at all: ``limit_val_batches=0``). The bare side is the textbook loop: ``forward``,
loss, ``zero_grad``, ``backward``, ``step`` (and the same autocast when the precision is
``bf16-mixed`` / ``16-mixed``). Images per second of both, and their ratio.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from segbench.engine.build import build_datamodule, build_model, build_task, resolve_class_weights
from segbench.inference.fast import autocast_for, prepare_batch

__all__ = ["bare_loop", "lightning_loop"]


class _StepTimer(pl.Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end: float | None = None
        self.images = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.start is not None:
            self.images += len(batch["image"])
            self.end = time.perf_counter()


def _fresh(cfg: DictConfig, output_dir: str) -> DictConfig:
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(cfg):
        cfg.output_dir = output_dir
        # the run's CSV log as train.py writes it; W&B left out (a benchmark is no run to log)
        logger = cfg.get("logger") or {}
        cfg.logger = {"csv": logger["csv"]} if "csv" in logger else None
    return cfg


def lightning_loop(cfg: DictConfig, steps: int, warmup: int = 5) -> float:
    """Images/s of ``train.py``'s loop on ``cfg`` (a composed ``conf/train.yaml``) over
    ``steps`` batches after ``warmup``."""
    from segbench.engine.build import build_trainer

    with tempfile.TemporaryDirectory(prefix="segbench-bench-") as out:
        cfg = _fresh(cfg, str(Path(out) / "run"))
        with open_dict(cfg):
            cfg.trainer.max_steps = warmup + steps
            cfg.trainer.max_epochs = -1
            cfg.trainer.limit_val_batches = 0
            cfg.trainer.num_sanity_val_steps = 0
        torch.manual_seed(cfg.seed)
        dm = build_datamodule(cfg.dataset, ["train", "val"], seed=cfg.seed)
        resolve_class_weights(cfg.loss, dm)
        task = build_task(cfg, dm, build_model(cfg.model), run_config={})
        trainer = build_trainer(cfg, task)
        timer = _StepTimer(warmup)
        trainer.callbacks.append(timer)
        trainer.fit(task, datamodule=dm)
        if timer.start is None or timer.end is None:
            raise RuntimeError(f"the training loop ran fewer than {warmup + 1} batches")
        return timer.images / (timer.end - timer.start)


def bare_loop(cfg: DictConfig, steps: int, warmup: int = 5) -> float:
    """Images/s of a plain PyTorch loop over the same loader, model, loss and optimizer."""
    cfg = _fresh(cfg, "unused")
    torch.manual_seed(cfg.seed)
    dm = build_datamodule(cfg.dataset, ["train"], seed=cfg.seed)
    resolve_class_weights(cfg.loss, dm)
    task = build_task(cfg, dm, build_model(cfg.model), run_config={})
    model, loss_fn = task.model, task.loss  # the task applied the fast.* options to it
    fast = task.fast
    optimizer = task.optimizer_factory(model.parameters())
    autocast = autocast_for(str(cfg.trainer.get("precision", "32-true")), torch.device("cpu"))
    model.train()
    n, start = 0, None
    done = 0
    while done < warmup + steps:
        for batch in dm.train_dataloader():
            if done == warmup:
                start = time.perf_counter()
            images, masks = prepare_batch(batch["image"], fast), batch["mask"]
            with autocast if autocast is not None else nullcontext():
                out = model(images)
                loss = loss_fn(out["out"], masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if start is not None:
                n += len(images)
            done += 1
            if done == warmup + steps:
                break
    return n / (time.perf_counter() - start)
