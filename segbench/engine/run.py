"""``train(cfg)`` and ``evaluate(cfg)``: the pipelines behind ``train.py`` and ``evaluate.py``.

Both take a composed config and return the ``results.json`` record they wrote, so tests call
them without a shell. Every check that can fail runs before any training or evaluation starts.

The call chain of ``train(cfg)``::

    train(cfg)                                   # holds the run directory, ends the W&B run
      check_reference(cfg.reference)             # segbench/reference.py
      start_run(cfg, "train")                    # claim the directory, seed  (scoring.py)
      resolve_resume(cfg.resume)                 # checkpoint to carry on from  (resume.py)
      build_datamodule(cfg.dataset, splits)      # every split opened now  (build.py)
      resolve_class_weights(cfg.loss, dm)        # weights computed over train, recorded
      load_checkpoint + check_resume_config      # when resuming: same training config
      build_task(cfg, dm, build_model(cfg.model))
        loss, optimizer, scheduler, inference, val_inference
        build_evaluator(cfg, dm)                 # evaluation.figures + dataset.figures
      check_input_sizes(model, dm, splits)       # images not smaller than the total stride
      build_trainer(cfg, task)                   # loggers, callbacks, EMA, atomic checkpoints
      trainer.fit(task, dm, ckpt_path)
      best checkpoint -> task weights            # the ModelCheckpoint's best (or last)
      score(trainer, task, dm, eval_split, run)  # scoring.py
        trainer.test -> task.evaluator -> EvaluationRecord
        build_results(record, RunFacts) -> results.json, per_image.npz, the printed table

``evaluate(cfg)`` takes the same path from ``evaluation_config`` (the checkpoint's run config
with the evaluation's choices checked, :mod:`segbench.checkpoints.store`) and
``evaluation_task`` to ``score``; ``format_only=true`` goes to :mod:`segbench.engine.submit`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_info

from segbench.checkpoints.evaluation import evaluation_config
from segbench.checkpoints.store import load_checkpoint
from segbench.config import register_resolvers
from segbench.engine.build import (
    build_datamodule,
    build_model,
    build_task,
    build_trainer,
    check_input_sizes,
    evaluation_task,
    resolve_class_weights,
)
from segbench.engine.console import trainer_config
from segbench.engine.loggers import CSVLogger, end_wandb_run
from segbench.engine.progress import attach
from segbench.engine.resume import RunState, check_resume_config, resolve_resume
from segbench.engine.rundir import release
from segbench.engine.scoring import score, start_run
from segbench.reference import check_reference

register_resolvers()  # before train.py / evaluate.py compose conf/

__all__ = ["evaluate", "train"]


@contextmanager
def _held_run(cfg: DictConfig):
    """A run's lifetime: on leaving, end its W&B run (``WANDB_MODE`` as before) and give up
    its run directory, so that the next run in the process starts clean."""
    wandb_mode = os.environ.get("WANDB_MODE")
    try:
        yield
    finally:
        end_wandb_run(wandb_mode)
        release(cfg.output_dir)


def train(cfg: DictConfig) -> dict:
    """Train, evaluate the best checkpoint on the dataset's evaluation split, write results.

    ``cfg.resume`` (``auto``, a run directory or a checkpoint) carries on an interrupted run
    where it stopped (see :mod:`segbench.engine.resume`); it raises
    :class:`~segbench.engine.resume.RunInterrupted` when a signal stops training. The run
    directory is held (:mod:`segbench.engine.rundir`) until it returns.
    """
    with _held_run(cfg):
        return _train(cfg)


def _train(cfg: DictConfig) -> dict:
    check_reference(cfg.get("reference"))  # a malformed block is refused before any work
    run = start_run(cfg, "train")
    ckpt_path = resolve_resume(cfg.get("resume"), cfg.output_dir)

    splits = ["train", "val", cfg.dataset.eval_split]
    dm = build_datamodule(cfg.dataset, splits, seed=cfg.seed)
    resolve_class_weights(cfg.loss, dm)
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("verbose", None)  # what the console shows: no part of the run
    state = {}
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        check_resume_config(ckpt, ckpt_path, config)
        state = (ckpt.get("callbacks") or {}).get(RunState.__qualname__) or {}
        fit_loop = (ckpt.get("loops") or {}).get("fit_loop") or {}
        loaders = (fit_loop.get("state_dict") or {}).get("combined_loader") or [None]
        dm.resume_position = loaders[0]
        del ckpt
        wandb_cfg = (cfg.get("logger") or {}).get("wandb")
        if state.get("wandb_id") and wandb_cfg is not None:
            wandb_cfg.id, wandb_cfg.resume = state["wandb_id"], "allow"
        rank_zero_info(f"resuming {ckpt_path}")
    task = build_task(cfg, dm, build_model(cfg.model), run_config=config)
    check_input_sizes(task.model, dm, splits)
    trainer = build_trainer(trainer_config(cfg), task)
    attach(trainer)
    for lg in trainer.loggers:
        if isinstance(lg, CSVLogger) and ckpt_path is not None:
            rows = state.get("csv_rows") or {}
            lg.keep_rows = rows.get(lg.log_dir, 0)
        lg.log_hyperparams(config)
    rank_zero_info(f"run directory: {Path(cfg.output_dir).resolve()}")

    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)

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
    """Evaluate a checkpoint on a split and write ``results.json``; with
    ``format_only=true`` write the evaluation server's files instead (no labels read,
    :mod:`segbench.engine.submit`)."""
    with _held_run(cfg):
        if cfg.get("format_only"):
            from segbench.engine.submit import submit

            return submit(cfg)
        return _evaluate(cfg)


def _evaluate(cfg: DictConfig) -> dict:
    run = start_run(cfg, "evaluate")
    run_cfg, state_dict = evaluation_config(cfg)
    split = cfg.get("split") or run_cfg.dataset.eval_split

    dm = build_datamodule(run_cfg.dataset, [split], seed=cfg.seed)
    task, speed = evaluation_task(cfg, run_cfg, state_dict, dm)

    trainer = build_trainer(trainer_config(cfg))
    attach(trainer)
    config = OmegaConf.to_container(
        OmegaConf.merge(
            run_cfg,
            {"ckpt": str(cfg.ckpt), "split": split, "trainer": cfg.trainer},
            speed,
        ),
        resolve=True,
    )
    for lg in trainer.loggers:
        lg.log_hyperparams(config)
    return score(trainer, task, dm, split, replace(run, config=config, checkpoint=str(cfg.ckpt)))
