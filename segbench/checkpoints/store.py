"""Checkpoints: safe loading (tensors and plain containers only, never arbitrary pickled
objects), and the run config of an evaluation (the checkpoint's, with what the command line
asked checked against it)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from segbench.checkpoints.errors import CheckpointError, CheckpointNotFoundError
from segbench.checkpoints.trust import check_targets
from segbench.data.cityscapes import CLASS_NAMES as CITYSCAPES_CLASSES
from segbench.models.weights import describe_file, describe_object, unreadable_save

__all__ = [
    "EXPECTED_CHECKPOINT",
    "CheckpointError",
    "CheckpointNotFoundError",
    "checkpoint_evaluation_config",
    "load_checkpoint",
    "load_weights",
    "merge_eval_config",
    "trained_config",
    "upgrade_config",
]


# what ``ckpt=`` should name, said by every message about a file that is not one
EXPECTED_CHECKPOINT = (
    "expected a Lightning checkpoint written by train.py, "
    "e.g. <run>/checkpoints/best.ckpt or <run>/checkpoints/last.ckpt"
)
# the names train.py's ModelCheckpoint gives (conf/callbacks/train.yaml), best first
RUN_CHECKPOINTS = ("best.ckpt", "last.ckpt")


def _run_checkpoints(directory: Path, others: bool = False) -> list[Path]:
    """train.py's checkpoints in run directory ``directory`` (or in its ``checkpoints/``),
    best first; with ``others``, when it has none, any other ``*.ckpt`` there."""
    places = (directory / "checkpoints", directory)
    found = [d / name for d in places for name in RUN_CHECKPOINTS if (d / name).is_file()]
    if not found and others:
        found = sorted(p for d in places if d.is_dir() for p in d.glob("*.ckpt") if p.is_file())
    return found


def _nearby_checkpoint(path: Path) -> str:
    """A hint naming the checkpoint the user probably meant ('' when none is found): the best
    checkpoint of a run directory given as ``path``, or of the run that holds ``path``."""
    try:
        if path.is_dir():
            found = _run_checkpoints(path, others=True)
            if not found:
                return ""
            what = "holds checkpoints" if found[0].parent == path else "is a run directory"
            return f"{str(path)!r} {what}: pass ckpt={found[0]}"
        for directory in (path.parent, path.parent.parent):
            found = [p for p in _run_checkpoints(directory) if p != path]
            if found:
                return f"a checkpoint nearby: ckpt={found[0]}"
    except OSError:  # an unreadable directory: no hint
        pass
    return ""


def _bad_checkpoint(path: Path, problem: str, cls: type = CheckpointError) -> CheckpointError:
    """The error for ``path``, which is not a usable checkpoint because of ``problem``."""
    message = f"checkpoint {str(path)!r} {problem}; {EXPECTED_CHECKPOINT}"
    hint = _nearby_checkpoint(path)
    return cls(f"{message}. {hint[0].upper()}{hint[1:]}" if hint else message)


def load_checkpoint(path: str | Path) -> dict:
    """Load a Lightning/segbench checkpoint with ``torch.load(weights_only=True)``.

    Every refusal names the path, says what it found there and what was expected (a checkpoint
    train.py wrote) and, when there is one nearby, the checkpoint the user probably meant (the
    best one of a run directory given as ``path``).

    Raises:
        CheckpointNotFoundError: nothing at ``path``, or a directory (a ``FileNotFoundError``).
        CheckpointError: the file is not a checkpoint (text, YAML, an empty, truncated or
            corrupted file, a zip archive or pickle that ``torch.save`` did not write), holds
            objects other than tensors and plain containers, or has no ``state_dict``.
    """
    if not str(path).strip():
        raise CheckpointNotFoundError(f"no checkpoint given (ckpt is empty); {EXPECTED_CHECKPOINT}")
    path = Path(path).expanduser()
    if path.is_dir():
        raise _bad_checkpoint(path, "is a directory, not a file", CheckpointNotFoundError)
    if not path.is_file():
        problem = "does not exist" if not path.exists() else "is not a regular file"
        raise _bad_checkpoint(path, problem, CheckpointNotFoundError)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load fails in many ways on what it cannot read
        raise _bad_checkpoint(path, describe_file(path) or unreadable_save(err)) from err
    if not isinstance(ckpt, dict):
        raise _bad_checkpoint(path, f"holds {describe_object(ckpt)}, not a checkpoint")
    if "state_dict" not in ckpt:
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            what = (
                f"holds a bare state dict ({len(ckpt)} tensor{'s' if len(ckpt) > 1 else ''}, e.g. "
                f"{next(iter(ckpt))!r}) "
                "without the run config train.py stores, so the model it fits is unknown"
            )
        else:
            keys = ", ".join(repr(k) for k in list(ckpt)[:6]) or "none"
            what = (
                f"is a PyTorch save but not a Lightning checkpoint: no 'state_dict' (keys: {keys})"
            )
        raise _bad_checkpoint(path, what)
    if not isinstance(ckpt["state_dict"], dict):
        raise _bad_checkpoint(
            path,
            f"has a 'state_dict' that is {describe_object(ckpt['state_dict'])}, "
            "not a dict of tensors",
        )
    return ckpt


# classes that moved since segbench 0.1's first layout; checkpoints name them by import path
MOVED_TARGETS = {
    "segbench.models.vgg.VGGEncoder": "segbench.models.encoders.VGGEncoder",
    "segbench.crf.DenseCRF": "segbench.inference.crf.DenseCRF",
    # callbacks and loggers: stored with a run, never built from a checkpoint, but named in it
    "segbench.callbacks.EvaluationOutputs": "segbench.engine.callbacks.EvaluationOutputs",
    "segbench.callbacks.WandbMedia": "segbench.engine.callbacks.WandbMedia",
    "segbench.callbacks.RunPlots": "segbench.engine.run_plots.RunPlots",
    "segbench.engine.callbacks.RunPlots": "segbench.engine.run_plots.RunPlots",
    "segbench.loggers.wandb_logger": "segbench.engine.loggers.wandb_logger",
    "pytorch_lightning.loggers.CSVLogger": "segbench.engine.loggers.CSVLogger",
    "segbench.sweep.LeaderboardCallback": "segbench.leaderboard.sweep.LeaderboardCallback",
    "pytorch_lightning.callbacks.ModelCheckpoint": "segbench.engine.checkpointing.ModelCheckpoint",
}
# training settings that sat among a model config's keys before the task group held them
LEGACY_TASK_KEYS = ("adversarial_weight", "d_steps", "discriminator_optimizer")
LEGACY_ADVERSARIAL_TASK = "segbench.engine.adversarial.AdversarialTask"
# the task of every other model then (conf/task/segmentation.yaml)
LEGACY_TASK = "segbench.engine.task.SegmentationTask"
# the parts of a stored run config that loading a checkpoint never builds (evaluate.py, predict,
# export and serve take their own); trained_config drops them
NEVER_LOADED = ("callbacks", "logger", "trainer", "hydra")
# the figures a run on Cityscapes' classes computed before datasets named their own
# (conf/dataset/cityscapes.yaml's figures)
LEGACY_CITYSCAPES_FIGURES = {
    "cityscapes": {"_target_": "segbench.metrics.cityscapes.CityscapesFigures", "_partial_": True}
}


def _retarget(node):
    """``node`` with every moved ``_target_`` renamed (in place for containers)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and value in MOVED_TARGETS:
                node[key] = MOVED_TARGETS[value]
            else:
                _retarget(value)
    elif isinstance(node, list):
        for item in node:
            _retarget(item)
    return node


def upgrade_config(config: dict) -> dict:
    """A run config stored by an earlier segbench, in today's form (a copy): moved classes
    renamed; GAN-seg's training settings moved from ``model`` to ``task``, and its top-level
    ``aux_weight`` dropped (the segmenter carries its own); every other model trained by the
    segmentation task; a ReSeg encoder built to stop at the
    level ReSeg reads (``until_stride``), as the saved weights were; a dataset with Cityscapes'
    classes evaluated with Cityscapes' figures, as it was before datasets named their figures
    (``dataset.figures``). Today's configs pass through unchanged."""
    config = _retarget(copy.deepcopy(config))
    model = config.get("model") or {}
    if "task" not in config and any(key in model for key in LEGACY_TASK_KEYS):
        config["task"] = {"_target_": LEGACY_ADVERSARIAL_TASK, "_partial_": True}
        for key in LEGACY_TASK_KEYS:
            if key in model:
                config["task"][key] = model.pop(key)
        model.pop("aux_weight", None)
    config.setdefault("task", {"_target_": LEGACY_TASK, "_partial_": True})
    dataset = config.get("dataset")
    if (
        isinstance(dataset, dict)
        and "figures" not in dataset
        and list(dataset.get("class_names") or []) == CITYSCAPES_CLASSES
    ):
        dataset["figures"] = copy.deepcopy(LEGACY_CITYSCAPES_FIGURES)
    reseg = model.get("segmenter") if "segmenter" in model else model
    backbone = config.get("backbone")
    if (
        isinstance(reseg, dict)
        and str(reseg.get("_target_", "")).endswith(".ReSeg")
        and "feature_stride" not in reseg
        and reseg.get("feature_index") is None
        and isinstance(backbone, dict)
        and "until_stride" not in backbone
    ):
        for encoder in (backbone, reseg.get("encoder")):
            if isinstance(encoder, dict):
                encoder["until_stride"] = 4  # the stride-4 level it read by default
    return config


def trained_config(ckpt: dict, ckpt_path: str, allow_targets=()) -> DictConfig:
    """The run config a segbench checkpoint was trained with (an earlier segbench's upgraded,
    :func:`upgrade_config`), every ``_target_`` in it checked before anything is built
    (:mod:`segbench.checkpoints.trust`; ``allow_targets``: the ones the user trusts besides)."""
    meta = ckpt.get("segbench")
    if not isinstance(meta, dict) or "config" not in meta:
        lightning = ckpt.get("pytorch-lightning_version")
        origin = (
            f"a Lightning {lightning} checkpoint of another program"
            if lightning
            else "not a Lightning checkpoint train.py wrote"
        )
        raise CheckpointError(
            f"checkpoint {ckpt_path!r} has no segbench metadata ({origin}: it has a "
            f"'state_dict' but no run config), so the model it holds is unknown; "
            f"{EXPECTED_CHECKPOINT}"
        )
    if not isinstance(meta["config"], dict):
        raise CheckpointError(
            f"checkpoint {ckpt_path!r}: its run config is {describe_object(meta['config'])}, "
            f"not a mapping; {EXPECTED_CHECKPOINT}"
        )
    try:
        config = OmegaConf.create(upgrade_config(meta["config"]))
        resolved = OmegaConf.to_container(config, resolve=True)
    except Exception as err:  # a config OmegaConf cannot read or resolve
        raise CheckpointError(f"checkpoint {ckpt_path!r}: unreadable run config ({err})") from err
    # the run's machinery (its callbacks, loggers, trainer) is never built from a checkpoint:
    # dropped here, so that nothing later can; everything else is checked
    loaded = {k: v for k, v in resolved.items() if k not in NEVER_LOADED}
    check_targets(loaded, f"checkpoint {ckpt_path!r}", allow_targets)  # old names upgraded
    return OmegaConf.create(loaded)


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


def _evaluation_overrides(cfg: DictConfig, trained: DictConfig) -> DictConfig:
    """The trained model config with the evaluation-only keys given on the command line
    (``model.mc_samples=0`` after ``model=<its name>``, or ``+model.mc_samples=0`` alone).

    Raises:
        CheckpointError: another ``model.<key>`` was given: it would change what the weights
            mean, so an evaluation cannot change it.
    """
    model = trained.model
    wanted = cfg.get("model")
    if wanted is None or model is None:
        return model
    keys = {k.split(".")[1] for k in _named_on_command_line() if k.startswith("model.")}
    other = sorted(keys - set(EVALUATION_ONLY_KEYS))
    if other and (wanted.get("name") in (None, model.get("name"))):
        raise CheckpointError(
            f"model.{other[0]} cannot change at evaluation: the checkpoint's weights were "
            f"trained with {other[0]}={model.get(other[0])!r}; only "
            f"{', '.join(f'model.{k}' for k in EVALUATION_ONLY_KEYS)} may be set"
        )
    for key in sorted(keys & set(EVALUATION_ONLY_KEYS)):
        if key in wanted:
            model = OmegaConf.merge(model, {key: wanted[key]})
    return model


def merge_eval_config(cfg: DictConfig, trained: DictConfig, ckpt_path: str) -> DictConfig:
    """The run config of an evaluation: the checkpoint's, with what the user asked checked.

    ``model=`` may name a variant of the trained model that differs only in evaluation settings
    (``EVALUATION_ONLY_KEYS``: ``deeplabv1_crf`` for a ``deeplabv1`` checkpoint): those replace
    the trained ones, the encoder stays the checkpoint's, and the weights load strictly.
    """
    model = _evaluation_overrides(cfg, trained)
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
        # resolved here, against the evaluation's config (its data_root), before its nodes
        # move into the run config
        asked = OmegaConf.create(OmegaConf.to_container(cfg.dataset, resolve=True))
        if "_target_" in asked and asked.get("name") != dataset.get("name"):
            dataset = asked  # another dataset: must share the label set (checked below)
        else:  # tweaks of the trained dataset (debug sizes, batch size, root, ...);
            # evaluate.yaml lists the usual ones as null: left as trained
            tweaks = {k: v for k, v in asked.items() if v is not None}
            dataset = OmegaConf.merge(dataset, tweaks)
    merged = OmegaConf.create(
        {
            "model": model,
            "backbone": trained.get("backbone"),
            "dataset": dataset,
            "task": trained.get("task"),  # how it was trained; evaluation is the same for all
            "loss": cfg.loss if cfg.get("loss") is not None else trained.loss,
            "inference": cfg.get("inference"),  # an evaluation choice, not the training run's
            "reference": trained.get("reference"),  # the published figures it reproduces
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


def checkpoint_evaluation_config(cfg: DictConfig) -> tuple[DictConfig, dict]:
    """The run config of evaluating checkpoint ``cfg.ckpt`` (one ``train.py`` wrote) as ``cfg``
    asks, and its weights (:func:`segbench.checkpoints.evaluation.evaluation_config` also takes
    other libraries' published checkpoints)."""
    ckpt_path = str(cfg.ckpt)
    ckpt = load_checkpoint(ckpt_path)
    trained = trained_config(ckpt, ckpt_path, list(cfg.get("allow_targets") or []))
    return merge_eval_config(cfg, trained, ckpt_path), ckpt["state_dict"]


def load_weights(module: torch.nn.Module, state_dict: dict, ckpt_path: str, model: str) -> None:
    """Load a checkpoint's weights strictly; a mismatch names the checkpoint and the model."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint {ckpt_path!r} does not fit model {model!r}: {err}"
        ) from err
