"""``train(cfg)`` and ``evaluate(cfg)``: the whole pipeline behind ``train.py`` and ``evaluate.py``.

Both take a composed Hydra config and return the ``results.json`` record, so tests call them
without a shell. All checks that can fail run before any training starts.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_info

from segbench.adversarial import AdversarialTask, task_kwargs_from_model_config
from segbench.checkpoint import CheckpointError, load_checkpoint
from segbench.complexity import count_flops, segmenter_of
from segbench.data.datamodule import SegDataModule
from segbench.data.stats import class_weights
from segbench.inference import eval_mode
from segbench.models.base import count_parameters
from segbench.models.ganseg import GANSeg
from segbench.results import RESULTS_FILE, build_results, format_table, write_results
from segbench.task import SegmentationTask

__all__ = ["build_model", "evaluate", "resolve_class_weights", "train"]

# keys of a model config that describe it or configure its training rather than go to its
# constructor (a GAN-seg config also holds a whole segmenter model config)
MODEL_META_KEYS = (
    "name",
    "aux_weight",
    "adversarial_weight",
    "discriminator_optimizer",
    "d_steps",
)


def _strip_meta(cfg: dict) -> dict:
    """``cfg`` without meta keys, also in nested model configs (GAN-seg's ``segmenter``)."""
    out = {k: v for k, v in cfg.items() if k not in MODEL_META_KEYS}
    for key, value in out.items():
        if isinstance(value, dict) and "_target_" in value and "num_classes" in value:
            out[key] = _strip_meta(value)
    return out


def build_model(model_cfg: DictConfig | dict) -> torch.nn.Module:
    """Instantiate ``conf/model/*`` (its ``encoder`` is the backbone config)."""
    if not isinstance(model_cfg, DictConfig):
        model_cfg = OmegaConf.create(model_cfg)
    cfg = OmegaConf.to_container(model_cfg, resolve=True)  # resolves against the root config
    return instantiate(_strip_meta(cfg))


def _check_output_dir(output_dir: Path) -> None:
    if (output_dir / RESULTS_FILE).exists():
        raise FileExistsError(
            f"{output_dir / RESULTS_FILE} already exists: this run directory holds an earlier "
            "run's results, which segbench never overwrites. Choose another hydra.run.dir."
        )


def _build_datamodule(dataset_cfg: DictConfig, splits: list[str]) -> SegDataModule:
    dm = instantiate(dataset_cfg)
    for split in splits:  # open every split now: a missing root or split fails before training
        dm.dataset(split)
    return dm


def resolve_class_weights(loss_cfg: DictConfig, dm: SegDataModule) -> None:
    """Replace every ``class_weights: <weighting name>`` in ``loss_cfg`` by the weights computed
    over the training split, so that the run's config and checkpoint record the numbers."""
    for key in list(loss_cfg.keys()):
        value = loss_cfg[key]
        if isinstance(value, ListConfig):
            for item in value:
                if isinstance(item, DictConfig):
                    resolve_class_weights(item, dm)
        elif isinstance(value, DictConfig):
            resolve_class_weights(value, dm)
        elif key == "class_weights" and isinstance(value, str):
            weights = class_weights(dm.dataset("train"), value)
            with open_dict(loss_cfg):
                loss_cfg[key] = weights
            names = ", ".join(f"{n} {w:.3f}" for n, w in zip(dm.class_names, weights))
            rank_zero_info(f"loss class weights ({value} over {dm.name}/train): {names}")


def _build_task(
    cfg: DictConfig, dm: SegDataModule, model: torch.nn.Module, run_config: dict | None = None
) -> SegmentationTask:
    model_classes = getattr(model, "num_classes", None)
    if model_classes != dm.num_classes:
        raise ValueError(
            f"model.num_classes={model_classes} but dataset {dm.name!r} has "
            f"{dm.num_classes} classes; leave model.num_classes as ${{dataset.num_classes}}"
        )
    loss = instantiate(cfg.loss)
    if getattr(loss, "num_classes", dm.num_classes) != dm.num_classes:
        raise ValueError(
            f"loss.num_classes={loss.num_classes} but dataset {dm.name!r} has {dm.num_classes}"
        )
    if getattr(loss, "ignore_index", dm.ignore_index) != dm.ignore_index:
        raise ValueError(
            f"loss.ignore_index={loss.ignore_index} but dataset {dm.name!r} ignores "
            f"{dm.ignore_index}; leave it as ${{dataset.ignore_index}}"
        )
    task_cls, extra = SegmentationTask, {}
    if isinstance(model, GANSeg):  # adversarial training: its own step logic, same evaluation
        task_cls, extra = AdversarialTask, task_kwargs_from_model_config(cfg.model)
    return task_cls(
        model=model,
        loss=loss,
        optimizer=instantiate(cfg.optimizer) if cfg.get("optimizer") else None,
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        num_classes=dm.num_classes,
        ignore_index=dm.ignore_index,
        class_names=dm.class_names,
        aux_weight=float(cfg.model.get("aux_weight", 0.0) or 0.0),
        run_config=run_config,
        inference=instantiate(cfg.inference) if cfg.get("inference") else None,
        **extra,
    )


def _build_trainer(cfg: DictConfig, model: torch.nn.Module | None = None) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` with the loggers of ``cfg.logger`` and ``cfg.callbacks``."""
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    extra = {}
    if isinstance(model, GANSeg) and cfg.trainer.get("strategy") == "ddp":
        # each of the alternating updates leaves the other network's parameters unused
        extra["strategy"] = "ddp_find_unused_parameters_true"
        rank_zero_info("GAN-seg under DDP: strategy ddp_find_unused_parameters_true")
    return instantiate(
        cfg.trainer,
        **extra,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=cfg.output_dir,
    )


def _inference_record(cfg: dict | None) -> dict | None:
    """The inference settings as ``results.json`` keeps them (without ``_target_``)."""
    if not cfg:
        return None
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _evaluate_and_write(
    cfg: DictConfig,
    task: SegmentationTask,
    dm: SegDataModule,
    trainer: pl.Trainer,
    *,
    kind: str,
    split: str,
    checkpoint: str | None,
    config: dict,
    start: float,
    best_val_miou: float | None = None,
) -> dict:
    """Evaluate ``task`` on ``split`` (figures summed over all ranks), write ``results.json``
    from rank 0 and print the per-class table; returns the results record."""
    dm.eval_split = split
    task.eval_split = split
    tic = time.perf_counter()
    trainer.test(task, datamodule=dm, verbose=False)
    elapsed = time.perf_counter() - tic
    num_images = len(dm.dataset(split))
    throughput = {  # what a leaderboard's images/s column shows
        "images_per_s": round(num_images / elapsed, 3),
        "measured": "the whole evaluation: loading, inference mode, metrics, per process",
        "device": str(task.device),
        "processes": trainer.world_size,
        "batch_size": dm.eval_batch_size,
    }
    model_cfg, backbone_cfg = config["model"], config.get("backbone") or {}
    size = list(dm.dataset(split)[0]["image"].shape[-2:])  # FLOPs at the first image's size
    flops = count_flops(task.model, tuple(size), device=task.device)
    results = build_results(
        kind=kind,
        model=model_cfg.get("name", type(task.model).__name__),
        backbone=backbone_cfg.get("name", "?"),
        dataset=dm.name,
        split=split,
        class_names=dm.class_names,
        ignore_index=dm.ignore_index,
        figures=task.results[split],
        params=count_parameters(segmenter_of(task.model)),
        eval_mode=eval_mode(model_cfg, task.inference),
        inference=_inference_record(config.get("inference")),
        gflops=flops / 1e9,
        flops_input_size=size,
        seed=int(cfg.seed),
        config=config,
        checkpoint=checkpoint,
        num_images=num_images,
        duration_s=time.time() - start,
        throughput=throughput,
        best_val_miou=best_val_miou,
    )
    if trainer.is_global_zero:
        path = write_results(cfg.output_dir, results)
        print(f"\n{format_table(results)}\n\nresults written to {path}")
    return results


def train(cfg: DictConfig) -> dict:
    """Train, evaluate the best checkpoint on the dataset's evaluation split, write results."""
    start = time.time()
    output_dir = Path(cfg.output_dir)
    _check_output_dir(output_dir)
    pl.seed_everything(cfg.seed, workers=True)

    dm = _build_datamodule(cfg.dataset, ["train", "val", cfg.dataset.eval_split])
    resolve_class_weights(cfg.loss, dm)
    config = OmegaConf.to_container(cfg, resolve=True)
    task = _build_task(cfg, dm, build_model(cfg.model), run_config=config)
    trainer = _build_trainer(cfg, task.model)
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
    return _evaluate_and_write(
        cfg,
        task,
        dm,
        trainer,
        kind="train",
        split=cfg.dataset.eval_split,
        checkpoint=best,
        config=config,
        start=start,
        best_val_miou=best_val,
    )


def _named_on_command_line() -> set[str]:
    """Config groups the user named on the command line (all groups outside a Hydra app)."""
    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:
        return {"model", "backbone"}
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides}


# model settings that change how a model predicts at evaluation, not its weights
EVALUATION_ONLY_KEYS = ("crf", "mc_samples")


def _is_evaluation_variant(wanted: DictConfig, trained: DictConfig) -> bool:
    """Whether model config ``wanted`` is ``trained`` with other evaluation-only settings."""
    if wanted.get("_target_") != trained.get("_target_"):
        return False
    for key in set(wanted) | set(trained):
        if key in ("name", "encoder", "num_classes", *EVALUATION_ONLY_KEYS):
            continue
        try:
            same = OmegaConf.select(wanted, key) == trained.get(key)
        except Exception:  # an interpolation that needs the training config: not comparable
            same = False
        if not same:
            return False
    return True


def _merge_eval_config(cfg: DictConfig, trained: DictConfig, ckpt_path: str) -> DictConfig:
    """The run config of an evaluation: the checkpoint's, with what the user asked checked.

    ``model=`` may name a variant of the trained model that differs only in evaluation settings
    (``EVALUATION_ONLY_KEYS``: ``deeplabv1_crf`` for a ``deeplabv1`` checkpoint): those replace
    the trained ones, the encoder stays the checkpoint's, and the weights load strictly.
    """
    model = trained.model
    for group in ("model", "backbone"):
        wanted = cfg.get(group)
        if group not in _named_on_command_line():
            continue  # chosen by a model's defaults (its paper's backbone), not by the user
        if wanted is None or trained.get(group) is None:
            continue
        have, want = trained[group].get("name"), wanted.get("name")
        if have == want:
            continue
        if group == "model" and _is_evaluation_variant(wanted, trained.model):
            variant = OmegaConf.to_container(wanted, resolve=False)
            for key in ("encoder", "num_classes"):
                variant.pop(key, None)
            model = OmegaConf.merge(trained.model, variant)
            continue
        raise CheckpointError(
            f"checkpoint {ckpt_path!r} was trained with {group} {have!r} "
            f"(model {trained.model.get('name')!r}, backbone {trained.backbone.get('name')!r}) "
            f"but {group}={want} was requested; drop the {group} override or pick the "
            "matching checkpoint"
        )
    dataset = trained.dataset
    if cfg.get("dataset") is not None:
        asked = cfg.dataset
        if "_target_" in asked and asked.get("name") != dataset.get("name"):
            dataset = asked  # another dataset: must share the label set (checked below)
        else:  # tweaks of the trained dataset (debug sizes, batch size, root, ...)
            dataset = OmegaConf.merge(dataset, asked)
    merged = OmegaConf.create(
        {
            "model": model,
            "backbone": trained.get("backbone"),
            "dataset": dataset,
            "loss": cfg.loss if cfg.get("loss") is not None else trained.loss,
            "inference": cfg.get("inference"),  # an evaluation choice, not the training run's
        }
    )
    merged.dataset = OmegaConf.to_container(merged.dataset, resolve=True)
    if list(merged.dataset.class_names) != list(trained.dataset.class_names):
        raise CheckpointError(
            f"checkpoint {ckpt_path!r} predicts the {trained.dataset.num_classes} classes of "
            f"{trained.dataset.name!r} {list(trained.dataset.class_names)}, but dataset "
            f"{merged.dataset.name!r} has {list(merged.dataset.class_names)}"
        )
    return merged


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate a checkpoint on a split and write ``results.json``."""
    start = time.time()
    output_dir = Path(cfg.output_dir)
    _check_output_dir(output_dir)
    pl.seed_everything(cfg.seed, workers=True)

    ckpt_path = str(cfg.ckpt)
    ckpt = load_checkpoint(ckpt_path)
    meta = ckpt.get("segbench")
    if not isinstance(meta, dict) or "config" not in meta:
        raise CheckpointError(
            f"checkpoint {ckpt_path!r} has no segbench metadata (it was not written by "
            "segbench's train.py), so the model it holds is unknown"
        )
    trained = OmegaConf.create(meta["config"])
    run = _merge_eval_config(cfg, trained, ckpt_path)
    split = cfg.get("split") or run.dataset.eval_split

    dm = _build_datamodule(run.dataset, [split])
    task_cfg = OmegaConf.merge(run, {"optimizer": None, "scheduler": None})
    task = _build_task(task_cfg, dm, build_model(run.model))
    try:
        task.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint {ckpt_path!r} does not fit model {run.model.get('name')!r}: {err}"
        ) from err

    trainer = _build_trainer(cfg)
    config = OmegaConf.to_container(
        OmegaConf.merge(run, {"ckpt": ckpt_path, "split": split, "trainer": cfg.trainer}),
        resolve=True,
    )
    for lg in trainer.loggers:
        lg.log_hyperparams(config)
    return _evaluate_and_write(
        cfg,
        task,
        dm,
        trainer,
        kind="evaluate",
        split=split,
        checkpoint=ckpt_path,
        config=config,
        start=start,
    )
