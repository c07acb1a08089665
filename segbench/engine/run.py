"""``train(cfg)`` and ``evaluate(cfg)``: the pipelines behind ``train.py`` and ``evaluate.py``.

Both take a composed config and return the ``results.json`` record they wrote, so tests call
them without a shell. Every check that can fail runs before any training or evaluation starts.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

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
from segbench.engine.checkpoint import evaluation_config, load_checkpoint, load_weights
from segbench.engine.scoring import score, start_run

__all__ = ["evaluate", "train"]


def train(cfg: DictConfig) -> dict:
    """Train, evaluate the best checkpoint on the dataset's evaluation split, write results."""
    run = start_run(cfg, "train")

    dm = build_datamodule(cfg.dataset, ["train", "val", cfg.dataset.eval_split])
    resolve_class_weights(cfg.loss, dm)
    config = OmegaConf.to_container(cfg, resolve=True)
    task = build_task(cfg, dm, build_model(cfg.model), run_config=config)
    trainer = build_trainer(cfg, task)
    for lg in trainer.loggers:
        lg.log_hyperparams(config)
    rank_zero_info(f"run directory: {Path(cfg.output_dir).resolve()}")

    trainer.fit(task, datamodule=dm, ckpt_path=cfg.get("resume"))

    ckpt_cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    best, best_val = None, None
    if ckpt_cb is not None:
        best = ckpt_cb.best_model_path or ckpt_cb.last_model_path or None
        if ckpt_cb.best_model_score is not None and ckpt_cb.monitor == "val/mIoU":
            best_val = float(ckpt_cb.best_model_score)
    if best:  # evaluate the best weights, loaded the same safe way evaluate.py does
        task.load_state_dict(load_checkpoint(best)["state_dict"])
    run = replace(run, config=config, checkpoint=best, best_val_miou=best_val)
    return score(trainer, task, dm, cfg.dataset.eval_split, run)


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate a checkpoint on a split and write ``results.json``."""
    run = start_run(cfg, "evaluate")
    run_cfg, state_dict = evaluation_config(cfg)
    split = cfg.get("split") or run_cfg.dataset.eval_split

    dm = build_datamodule(run_cfg.dataset, [split])
    task_cfg = OmegaConf.merge(run_cfg, {"optimizer": None, "scheduler": None})
    task = build_task(task_cfg, dm, build_model(run_cfg.model))
    load_weights(task, state_dict, str(cfg.ckpt), run_cfg.model.get("name"))

    trainer = build_trainer(cfg)
    config = OmegaConf.to_container(
        OmegaConf.merge(run_cfg, {"ckpt": str(cfg.ckpt), "split": split, "trainer": cfg.trainer}),
        resolve=True,
    )
    for lg in trainer.loggers:
        lg.log_hyperparams(config)
    return score(trainer, task, dm, split, replace(run, config=config, checkpoint=str(cfg.ckpt)))
