"""``train(cfg)``: the pipeline behind ``train.py``; returns the ``results.json`` record, so
tests call it without a shell. Every check that can fail runs before training starts."""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_info

from segbench.engine.build import (
    build_datamodule,
    build_model,
    build_task,
    build_trainer,
    resolve_class_weights,
)
from segbench.engine.checkpoint import load_checkpoint
from segbench.engine.scoring import RunInfo, check_output_dir, score

__all__ = ["train"]


def train(cfg: DictConfig) -> dict:
    """Train, evaluate the best checkpoint on the dataset's evaluation split, write results."""
    start = time.time()
    output_dir = Path(cfg.output_dir)
    check_output_dir(output_dir)
    pl.seed_everything(cfg.seed, workers=True)

    dm = build_datamodule(cfg.dataset, ["train", "val", cfg.dataset.eval_split])
    resolve_class_weights(cfg.loss, dm)
    config = OmegaConf.to_container(cfg, resolve=True)
    task = build_task(cfg, dm, build_model(cfg.model), run_config=config)
    trainer = build_trainer(cfg, task)
    for lg in trainer.loggers:
        lg.log_hyperparams(config)
    rank_zero_info(f"run directory: {output_dir.resolve()}")

    trainer.fit(task, datamodule=dm, ckpt_path=cfg.get("resume"))

    ckpt_cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    best, best_val = None, None
    if ckpt_cb is not None:
        best = ckpt_cb.best_model_path or ckpt_cb.last_model_path or None
        if ckpt_cb.best_model_score is not None and ckpt_cb.monitor == "val/mIoU":
            best_val = float(ckpt_cb.best_model_score)
    if best:  # evaluate the best weights, loaded the same safe way evaluate.py does
        task.load_state_dict(load_checkpoint(best)["state_dict"])
    run = RunInfo(
        kind="train",
        config=config,
        checkpoint=best,
        output_dir=str(output_dir),
        seed=int(cfg.seed),
        start=start,
        best_val_miou=best_val,
    )
    return score(trainer, task, dm, cfg.dataset.eval_split, run)
