"""The final evaluation of a run: test one split, time it, count FLOPs, write ``results.json``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import OmegaConf

from segbench.data.datamodule import SegDataModule
from segbench.engine.rundir import claim
from segbench.engine.task import SegmentationTask
from segbench.inference import eval_mode
from segbench.inference.flops import count_flops
from segbench.metrics.per_image import PER_IMAGE_FILE, image_id, summarize, write_per_image
from segbench.models.base import count_parameters, segmenter_of
from segbench.results import RunFacts, build_results, format_table, write_results
from segbench.significance import bootstrap, check_bootstrap_options

__all__ = ["RunInfo", "check_accelerator", "check_trainer", "score", "start_run"]


@dataclass(frozen=True)
class RunInfo:
    """What ``results.json`` says about the run besides its figures."""

    kind: str  # "train" or "evaluate"
    output_dir: str
    seed: int
    start: float  # time.time() when the run started
    config: dict = field(default_factory=dict)  # the resolved run config
    checkpoint: str | None = None  # the weights evaluated
    best_val_miou: float | None = None
    bootstrap: dict = field(default_factory=dict)  # resamples, level, seed of the intervals


def check_accelerator(trainer) -> None:
    """Refuse a GPU trainer on a machine without a CUDA GPU before any data is read (Lightning
    would say so only when the trainer is built, after the splits were opened and cached)."""
    import torch

    accelerator = str((trainer or {}).get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"trainer.accelerator={accelerator}, but this machine has no CUDA GPU that PyTorch "
            "can use (torch.cuda.is_available() is False); run on the CPU with trainer=cpu "
            "(or trainer.accelerator=cpu)"
        )


def check_trainer(trainer) -> None:
    """Refuse a trainer that would train nothing (``trainer.max_epochs=0``,
    ``trainer.max_steps=0``): the run would write results for an untrained network."""
    if trainer is None:
        return
    check_accelerator(trainer)
    for key in ("max_epochs", "max_steps"):
        value = trainer.get(key)
        if value == 0:
            raise ValueError(
                f"trainer.{key}=0: nothing would be trained, and the results of the untrained "
                f"network would count as a finished run; set trainer.{key} to 1 or more (to "
                "evaluate a checkpoint without training: python evaluate.py ckpt=PATH)"
            )


def start_run(cfg, kind: str) -> RunInfo:
    """Claim the run directory (refused when it holds a finished or running run, see
    :mod:`segbench.engine.rundir`), then seed everything; returns the run's record, started
    now."""
    start = time.time()
    # the options of the final evaluation are checked before anything else is done
    resampling = check_bootstrap_options(
        OmegaConf.to_container(cfg.bootstrap) if cfg.get("bootstrap") else {}
    )
    if kind == "train":
        check_trainer(cfg.get("trainer"))
    else:
        check_accelerator(cfg.get("trainer"))
    claim(cfg.output_dir, kind, cfg.get("resume") if kind == "train" else None)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return RunInfo(
        kind=kind,
        output_dir=str(cfg.output_dir),
        seed=int(cfg.seed),
        start=start,
        bootstrap=resampling,
    )


def _test(trainer: pl.Trainer, task: SegmentationTask, dm: SegDataModule, split: str) -> dict:
    """Run the test loop on ``split`` (figures summed over all ranks into ``task.results``);
    returns its throughput as a leaderboard's images/s column shows it."""
    dm.eval_split = split
    task.eval_split = split
    tic = time.perf_counter()
    dm.carry_instances(split)  # Cityscapes' iIoU, where its instance files are
    task.evaluator.notes = {"instances": getattr(dm, "instance_notes", {}).get(split)}
    try:
        trainer.test(task, datamodule=dm, verbose=False)
    finally:
        dm.carry_instances(split, on=False)
    elapsed = time.perf_counter() - tic
    return {
        "images_per_s": round(len(dm.dataset(split)) / elapsed, 3),
        "measured": "the whole evaluation: loading, inference mode, metrics, per process",
        "device": str(task.device),
        "processes": trainer.world_size,
        "batch_size": dm.eval_batch_size,
    }


def _inference_record(cfg: dict | None) -> dict | None:
    """The inference settings as ``results.json`` keeps them (without ``_target_``)."""
    if not cfg:
        return None
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _intervals(counts, class_names: list[str], options: dict) -> dict:
    """The bootstrap intervals of the figures, per-class ones keyed by class name (as
    ``metrics.per_class_iou``)."""
    intervals = bootstrap(counts, **options)
    intervals["per_class_iou"] = dict(zip(class_names, intervals["per_class_iou"]))
    return intervals


def score(
    trainer: pl.Trainer, task: SegmentationTask, dm: SegDataModule, split: str, run: RunInfo
) -> dict:
    """Evaluate ``task`` on ``split``, write ``results.json`` from rank 0 and print the
    per-class table; returns the results record."""
    throughput = _test(trainer, task, dm, split)
    dataset = dm.dataset(split)
    evaluation = task.results[split]
    root = getattr(dataset, "root", None)
    ids = [image_id(name, root) for name in evaluation.names]
    size = list(dataset[0]["image"].shape[-2:])  # FLOPs at the first image's size
    model_cfg, backbone_cfg = run.config["model"], run.config.get("backbone") or {}
    facts = RunFacts(
        kind=run.kind,
        model=model_cfg.get("name", type(task.model).__name__),
        backbone=backbone_cfg.get("name", "?"),
        dataset=dm.name,
        split=split,
        ignore_index=dm.ignore_index,
        num_images=len(dataset),
        params=count_parameters(segmenter_of(task.model)),
        seed=run.seed,
        config=run.config,
        checkpoint=run.checkpoint,
        eval_mode=eval_mode(model_cfg, task.inference),
        inference=_inference_record(run.config.get("inference")),
        gflops=count_flops(task.model, tuple(size), device=task.device) / 1e9,
        flops_input_size=size,
        duration_s=time.time() - run.start,
        best_val_miou=run.best_val_miou,
        throughput=throughput,
    )
    results = build_results(
        evaluation,
        facts,
        per_image={"file": PER_IMAGE_FILE, **summarize(ids, evaluation.counts)},
        intervals=_intervals(evaluation.counts, dm.class_names, run.bootstrap),
    )
    if trainer.is_global_zero:
        write_per_image(
            Path(run.output_dir) / PER_IMAGE_FILE,
            ids,
            evaluation.counts,
            dm.class_names,
            dm.name,
            split,
            extra=evaluation.arrays,
        )
        path = write_results(run.output_dir, results)
        print(f"\n{format_table(results, evaluation)}\n\nresults written to {path}")
    return results
