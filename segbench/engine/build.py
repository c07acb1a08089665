"""From a composed config to the parts of a run: model, data module, task and trainer.

Every check that can fail on a config runs here, before any training starts.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.utilities import rank_zero_info

from segbench.checkpoints.loader import network_weights
from segbench.checkpoints.network import build_model
from segbench.checkpoints.store import CheckpointError, load_checkpoint, load_weights
from segbench.data.datamodule import SegDataModule
from segbench.data.stats import class_weights
from segbench.engine.checkpointing import AtomicCheckpointIO
from segbench.engine.ema import EMA
from segbench.engine.resume import LAST, RunState, resolve_resume
from segbench.engine.task import SegmentationTask
from segbench.inference import Inference
from segbench.metrics import Evaluator
from segbench.zoo.files import sha256

VAL_INFERENCE_KEYS = ("mode", "crop", "stride", "scales", "flip")

__all__ = [
    "build_datamodule",
    "build_evaluator",
    "build_model",
    "build_task",
    "build_trainer",
    "evaluation_task",
    "init_from_checkpoint",
    "resolve_class_weights",
    "validation_inference",
]


def build_datamodule(dataset_cfg: DictConfig, splits: list[str], seed: int = 0) -> SegDataModule:
    """The data module of ``conf/dataset/*`` with every split in ``splits`` opened now, so that a
    missing root or split fails before training. ``seed`` (the run's) fixes the training order
    and augmentation."""
    dm = instantiate(dataset_cfg)
    dm.seed = int(seed)
    for split in splits:
        dm.dataset(split)
    return dm


def _image_sizes(ds) -> list[tuple[tuple[int, int], str]]:
    """``((H, W), name)`` of every image of a split, from file headers where the dataset lists
    its files (a fraction of a millisecond each), else from its first sample."""
    from segbench.data.files import image_shape

    items = getattr(ds, "items", None)
    if items:
        return [(image_shape(Path(img))[:2], str(img)) for img, _ in items[: len(ds)]]
    if len(ds) == 0:
        return []
    size = getattr(ds, "image_size", None)
    if isinstance(size, int):
        return [((size, size), f"{type(ds).__name__} image_size={size}")]
    image, _, name = ds.load(0)
    return [(tuple(image.shape[:2]), name)]


def check_input_sizes(model: torch.nn.Module, dm: SegDataModule, splits: list[str]) -> None:
    """Refuse, before training, images the network cannot take: smaller (after the split's
    transform) than its total stride, the factor by which its encoder downsamples."""
    from segbench.models.base import segmenter_of

    strides = getattr(getattr(segmenter_of(model), "encoder", None), "strides", None)
    if not strides:
        return
    stride = int(max(strides))
    for split in dict.fromkeys(splits):
        ds = dm.dataset(split)
        transform = dm.train_transform if split == "train" else dm.eval_transform
        for (h, w), name in _image_sizes(ds):
            oh, ow = transform.smallest_output(h, w)
            if min(oh, ow) < stride:
                key = "train_transform" if split == "train" else "eval_transform"
                raise ValueError(
                    f"{name}: {dm.name}/{split} gives the network {ow}x{oh} (W x H) images, "
                    f"smaller than its total stride {stride}: every side must be at least "
                    f"{stride} pixels. Resize the split (dataset.{key}.resize=[H,W]) or use "
                    "another backbone."
                )


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


def build_task(
    cfg: DictConfig, dm: SegDataModule, model: torch.nn.Module, run_config: dict | None = None
) -> SegmentationTask:
    """The LightningModule of ``cfg.task`` (``conf/task/*``, chosen by the model's config)
    around ``model``, with the loss, optimizer, schedule and inference of ``cfg``."""
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
    init = None
    if run_config is not None and cfg.get("init_from") and not _resuming(cfg):  # training
        init = init_from_checkpoint(model, str(cfg.init_from), dm.num_classes)
    task = instantiate(cfg.task)
    inference = instantiate(cfg.inference) if cfg.get("inference") else Inference()
    built = task(
        model=model,
        loss=loss,
        optimizer=build_optimizer(cfg.optimizer) if cfg.get("optimizer") else None,
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        evaluator=build_evaluator(cfg, dm),
        run_config=run_config,
        inference=inference,
        val_inference=validation_inference(inference, cfg.get("val_inference")),
        fast=OmegaConf.to_container(cfg.fast) if cfg.get("fast") is not None else None,
    )
    built.init_from = init  # stored in its checkpoints (segbench.init_from)
    return built


def build_optimizer(optimizer_cfg: DictConfig):
    """The optimizer factory of ``conf/optimizer/*`` (a ``functools.partial``); with
    ``optimizer.lr_mult`` a :class:`~segbench.optim.GroupedOptimizer` around it."""
    from segbench.optim import GroupedOptimizer

    lr_mult = optimizer_cfg.get("lr_mult")
    rest = OmegaConf.masked_copy(optimizer_cfg, [k for k in optimizer_cfg if k != "lr_mult"])
    factory = instantiate(rest)
    if not lr_mult:
        return factory
    return GroupedOptimizer(factory, OmegaConf.to_container(lr_mult))


def _resuming(cfg: DictConfig) -> bool:
    """Whether this training run resumes (``resume=``): its weights then come from the
    checkpoint it resumes, and ``init_from`` is not applied (nor read)."""
    resume = cfg.get("resume")
    if resume in (None, ""):
        return False
    if resume == "auto":  # without the notice resolve_resume prints (the engine's call does)
        return (Path(cfg.output_dir) / LAST).is_file()
    return resolve_resume(resume, cfg.output_dir) is not None


def _class_dependent(old: tuple, new: tuple, old_k: int | None, new_k: int) -> bool:
    """Whether a tensor of shape ``old`` (a network for ``old_k`` classes) becomes ``new`` for
    ``new_k`` classes: every dimension that differs is ``a * K + b`` in both (the classifier's
    ``K`` outputs, FCN's ``K -> K`` upsampling, GAN-seg's ``3 + K`` or ``3K`` inputs)."""
    if old_k is None or old_k == new_k or len(old) != len(new):
        return False
    for o, n in zip(old, new):
        if o == n:
            continue
        a, rest = divmod(o - n, old_k - new_k)
        if rest or a < 1 or o - a * old_k < 0:
            return False
    return True


def init_from_checkpoint(model: torch.nn.Module, path: str, num_classes: int) -> dict:
    """Load the network weights of ``path`` into ``model`` (a new training's network for
    ``num_classes`` classes): ``init_from=<ckpt>``.

    ``path`` is a segbench checkpoint, read weights-only
    (:func:`~segbench.checkpoints.store.load_checkpoint`: tensors and plain containers, no code
    run), or ``hf:<owner>/<repo>``, a published Hugging Face checkpoint of a family segbench
    converts (SegFormer, UPerNet, Mask2Former: :mod:`segbench.models.hf_convert`), read from
    the hub cache and mapped tensor by tensor onto segbench's names.

    Every tensor of the same name and shape is loaded. When the class count differs, the
    tensors whose shape depends on it (the classifier: the head's, FCN's score layers, ...) keep
    ``model``'s fresh initialisation, and are listed. Anything else is refused with its name: a
    tensor the checkpoint lacks or has in excess, or of another shape for another reason.
    Returns what ``results.json`` and the checkpoints record: ``path``, ``sha256`` (of the
    weights file), the checkpoint's ``num_classes`` and the ``reinitialised`` tensors.
    """
    from segbench.models.hub import hf_repo

    repo = hf_repo(path)
    if repo is not None:
        from segbench.models.hf_convert import convert_hf
        from segbench.models.hub import cached_files

        weights, old_k, config = convert_hf(repo)
        trained = {"name": f"{config.get('model_type')} (hf:{repo})"}
        file = str(cached_files(repo)[0])
    else:
        ckpt = load_checkpoint(path)
        weights = network_weights(ckpt["state_dict"], path)
        meta = ckpt.get("segbench") or {}
        old_k = meta.get("num_classes")
        trained = (meta.get("config") or {}).get("model") or {}
        file = path
    own = model.state_dict()
    missing = [k for k in own if k not in weights and not k.endswith("num_batches_tracked")]
    extra = [k for k in weights if k not in own]
    differ = {k: (tuple(weights[k].shape), tuple(v.shape)) for k, v in own.items() if k in weights}
    differ = {k: shapes for k, shapes in differ.items() if shapes[0] != shapes[1]}
    head = [k for k, (o, n) in differ.items() if _class_dependent(o, n, old_k, num_classes)]
    wrong = [f"{k}: {list(o)} in the checkpoint, {list(n)} here" for k, (o, n) in differ.items()]
    wrong = [w for k, w in zip(differ, wrong) if k not in head]
    if missing or extra or wrong:
        lines = [f"  missing from the checkpoint: {k}" for k in missing[:10]]
        lines += [f"  not in this model: {k}" for k in extra[:10]]
        lines += [f"  another shape: {w}" for w in wrong[:10]]
        count = len(missing) + len(extra) + len(wrong)
        raise CheckpointError(
            f"init_from={path}: the checkpoint's network ({trained.get('name', '?')}, "
            f"{old_k} classes) does not fit this run's ({type(model).__name__}, {num_classes} "
            f"classes) outside its class-dependent layers; {count} tensor(s) differ:\n"
            + "\n".join(lines)
            + "\nTrain the same model and backbone as the checkpoint (model=..., backbone=...)."
        )
    model.load_state_dict({k: v for k, v in weights.items() if k not in head}, strict=False)
    record = {
        "path": path if repo is not None else str(Path(path).resolve()),
        "sha256": sha256(Path(file)),
        "num_classes": old_k,
        "reinitialised": head,
    }
    rank_zero_info(
        f"init_from {record['path']} (sha256 {record['sha256'][:12]}): "
        f"{len(weights) - len(head)} of {len(own)} tensors loaded"
    )
    if head:
        rank_zero_info(
            f"init_from: {len(head)} class-dependent tensor(s) re-initialised for {num_classes} "
            f"classes (the checkpoint has {old_k}), not loaded: "
            + ", ".join(f"{k} {list(differ[k][0])}->{list(differ[k][1])}" for k in head)
        )
    return record


def build_evaluator(cfg: DictConfig, dm: SegDataModule) -> Evaluator:
    """The final evaluation's :class:`~segbench.metrics.Evaluator`: the figures of
    ``evaluation.figures`` (``conf/evaluation/``), then those the dataset adds
    (``dataset.figures``), each built now, so that a bad option is refused before training."""
    figures = dict(instantiate((cfg.get("evaluation") or {}).get("figures") or {}))
    for name, factory in dm.figures.items():
        if name in figures:
            raise ValueError(
                f"dataset.figures.{name}: evaluation.figures has a figure of that name already"
            )
        figures[name] = factory
    figures = {name: f for name, f in figures.items() if f is not None}  # ~ or null: left out
    return Evaluator(dm.num_classes, dm.ignore_index, dm.class_names, figures)


def validation_inference(inference: Inference, keys: DictConfig | dict | None) -> Inference:
    """How validation predicts: the single-scale part of ``inference`` with the non-null
    ``val_inference.*`` keys applied."""
    base = inference.single_scale()
    given = {k: v for k, v in dict(keys or {}).items() if v is not None}
    unknown = sorted(set(given) - set(VAL_INFERENCE_KEYS))
    if unknown:
        raise ValueError(
            f"val_inference.{unknown[0]}: unknown key; the keys are "
            f"{', '.join(f'val_inference.{k}' for k in VAL_INFERENCE_KEYS)}"
        )
    if not given:
        return base
    settings = {
        "mode": base.mode,
        "crop": base.crop,
        "stride": base.stride,
        "scales": base.scales,
        "flip": base.flip,
        "rescale": base.rescale,
        "rescale_divisor": base.rescale_divisor,
    }
    if given.get("mode", base.mode) != base.mode:  # another mode: its own windows
        settings.update(crop=None, stride=None)
    settings.update({k: list(v) if isinstance(v, ListConfig) else v for k, v in given.items()})
    try:
        val = Inference(**settings)
    except ValueError as err:
        raise ValueError(str(err).replace("inference.", "val_inference.")) from None
    return val


def build_trainer(cfg: DictConfig, task: SegmentationTask | None = None) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` with the loggers of ``cfg.logger`` and ``cfg.callbacks``.

    A task whose backward passes leave some parameters unused
    (``task.ddp_find_unused_parameters``) gets DDP's unused-parameter search under ``ddp``.
    """
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    # the run state first: it seeds each batch and saves at its start, before any other
    # callback draws random numbers or logs for that batch
    callbacks.sort(key=lambda c: not isinstance(c, RunState))
    ema = (cfg.get("ema") or {}).get("decay")
    if ema is not None and task is not None:  # training only: evaluation loads the average
        callbacks.append(EMA(ema))
    if not loggers:  # nothing to log the learning rate to (Lightning would refuse the monitor)
        dropped = [c for c in callbacks if isinstance(c, LearningRateMonitor)]
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        if dropped:
            rank_zero_info("no logger: the learning-rate monitor is left out")
    extra = {}
    if getattr(task, "ddp_find_unused_parameters", False) and cfg.trainer.get("strategy") == "ddp":
        extra["strategy"] = "ddp_find_unused_parameters_true"
        rank_zero_info(f"{type(task).__name__} under DDP: strategy ddp_find_unused_parameters_true")
    return instantiate(
        cfg.trainer,
        **extra,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=cfg.output_dir,
        plugins=[AtomicCheckpointIO()],
    )


def evaluation_task(
    cfg: DictConfig, run_cfg: DictConfig, state_dict: dict, dm: SegDataModule
) -> tuple[SegmentationTask, dict]:
    """The task that evaluates checkpoint ``cfg.ckpt`` (its run config ``run_cfg``, its
    weights loaded), with the evaluation's own speed options (``fast.*``) and figures
    (``evaluation.figures``, ``boundary.*``), not the training's; returns it and those
    options."""
    speed = {"fast": OmegaConf.to_container(cfg.fast) if cfg.get("fast") is not None else None}
    for key in ("evaluation", "boundary"):
        if cfg.get(key) is not None:
            speed[key] = OmegaConf.to_container(cfg[key])
    task_cfg = OmegaConf.merge(run_cfg, {"optimizer": None, "scheduler": None}, speed)
    task = build_task(task_cfg, dm, build_model(run_cfg.model))
    load_weights(task, state_dict, str(cfg.ckpt), run_cfg.model.get("name"))
    return task, speed
