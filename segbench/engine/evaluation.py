"""``evaluate(cfg)``: the pipeline behind ``evaluate.py``: a checkpoint evaluated on a split,
its ``results.json`` written and returned."""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from segbench.engine.build import build_datamodule, build_model, build_task, build_trainer
from segbench.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    merge_eval_config,
    trained_config,
)
from segbench.engine.scoring import RunInfo, check_output_dir, score

__all__ = ["evaluate"]


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate a checkpoint on a split and write ``results.json``."""
    start = time.time()
    output_dir = Path(cfg.output_dir)
    check_output_dir(output_dir)
    pl.seed_everything(cfg.seed, workers=True)

    ckpt_path = str(cfg.ckpt)
    ckpt = load_checkpoint(ckpt_path)
    run_cfg = merge_eval_config(cfg, trained_config(ckpt, ckpt_path), ckpt_path)
    split = cfg.get("split") or run_cfg.dataset.eval_split

    dm = build_datamodule(run_cfg.dataset, [split])
    task_cfg = OmegaConf.merge(run_cfg, {"optimizer": None, "scheduler": None})
    task = build_task(task_cfg, dm, build_model(run_cfg.model))
    try:
        task.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint {ckpt_path!r} does not fit model {run_cfg.model.get('name')!r}: {err}"
        ) from err

    trainer = build_trainer(cfg)
    config = OmegaConf.to_container(
        OmegaConf.merge(run_cfg, {"ckpt": ckpt_path, "split": split, "trainer": cfg.trainer}),
        resolve=True,
    )
    for lg in trainer.loggers:
        lg.log_hyperparams(config)
    run = RunInfo(
        kind="evaluate",
        config=config,
        checkpoint=ckpt_path,
        output_dir=str(output_dir),
        seed=int(cfg.seed),
        start=start,
    )
    return score(trainer, task, dm, split, run)
