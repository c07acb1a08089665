"""From ``ckpt=<source>:<name>`` to what an evaluation takes: the run config a segbench
checkpoint would carry (the network's model and backbone configs, the dataset with the
publisher's preprocessing, the published figures as ``reference``) and the network's weights,
converted tensor by tensor from the publisher's file.

The evaluation is then the one of any checkpoint (:func:`segbench.checkpoints.evaluation.
evaluation_config` calls :func:`zoo_evaluation_config`): ``dataset=`` may name the dataset
(its classes must be the checkpoint's), ``inference=`` another way to predict (default: the
publisher's), and the results carry the published figure beside the measured one.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from segbench.zoo.registry import ZooEntry, ZooEntryError, entries, find_entry
from segbench.zoo.spec import SOURCES, ZooSpec

__all__ = ["read_published", "zoo_evaluation_config"]

# the defaults of conf/inference/whole.yaml: an evaluation that asks for nothing else predicts
# as the publisher does
_PLAIN_INFERENCE = {"mode": "whole", "scales": [1.0], "flip": False}


def _names(source: str) -> str:
    names = [e.name for e in entries().values() if e.source == source]
    return ", ".join(names) if names else "none yet"


def _unknown(spec: ZooSpec) -> ZooEntryError:
    return ZooEntryError(
        f"ckpt={spec}: segbench knows no {spec.source} checkpoint {spec.name!r}; expected "
        f"{SOURCES[spec.source]}. Known: {_names(spec.source)} (segbench zoo list)"
    )


def _torch_file(spec: ZooSpec, entry: ZooEntry | None) -> Path:
    """The local file of a torchvision / mmseg spec: a path given, else the cached download."""
    from segbench.zoo.files import download, verify

    given = Path(spec.name).expanduser()
    if spec.name.endswith((".pth", ".pt")) or given.is_file():
        if not given.is_file():
            raise FileNotFoundError(f"ckpt={spec}: {given} does not exist")
        if entry is None:
            raise ZooEntryError(
                f"ckpt={spec}: {given.name} is not a file name segbench's {spec.source} zoo "
                "lists, so the network it holds is unknown; keep the name the publisher gave "
                f"it (the last part of its URL), or name the model: ckpt={spec.source}:<name> "
                f"after copying the file into the torch hub cache. Known: {_names(spec.source)}"
            )
        verify(given, entry.file_name)
        return given
    if entry is None:
        raise _unknown(spec)
    return download(entry.url, entry.file_name)


def read_published(spec: ZooSpec) -> tuple[ZooEntry | None, dict[str, Tensor], dict]:
    """``(entry, state dict, extra)`` of ``spec``: its zoo entry (``None`` for a hub repository
    segbench does not list), the file's tensors, and the publisher's metadata (mmseg's
    ``meta``, smp's and transformers' ``config.json``)."""
    from segbench.zoo.files import ZooFileError, read_torch_file

    entry = find_entry(spec)
    if spec.source == "mmseg":  # {"meta": plain data, "state_dict": tensors}
        from segbench.models.mmseg_convert import read_mmseg_checkpoint

        state, meta = read_mmseg_checkpoint(_torch_file(spec, entry))
        return entry, state, meta
    if spec.source == "torchvision":
        path = _torch_file(spec, entry)
        obj = read_torch_file(path, f"ckpt={spec}")
        if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
            raise ZooFileError(f"ckpt={spec}: {path} holds no state dict of tensors")
        return entry, obj, {}
    from segbench.models.hub import hf_repo, read_hf_checkpoint

    repo = entry.repo if entry is not None else hf_repo(f"hf:{spec.name}")
    state, config = read_hf_checkpoint(repo)
    return entry, state, config


def _convert(spec: ZooSpec, arch: str, state: dict, extra: dict, network) -> dict[str, Tensor]:
    """The publisher's tensors as the segbench network's state dict (every one accounted for)."""
    what = f"{spec.source} checkpoint {spec.name}"
    if spec.source == "torchvision":
        from segbench.models.torchvision_convert import convert_torchvision

        return convert_torchvision(arch, state, what, network)
    if spec.source == "mmseg":
        from segbench.models.mmseg_convert import convert_mmseg

        return convert_mmseg(arch, state, what, network, extra)
    if spec.source == "smp":
        from segbench.models.smp_convert import convert_smp

        return convert_smp(state, extra, what, network)
    from segbench.models.hf_convert import CONVERTERS

    kind = extra.get("model_type")
    if kind not in CONVERTERS:
        raise ZooEntryError(
            f"ckpt={spec}: its config.json says model_type {kind!r}; segbench converts "
            f"{', '.join(sorted(CONVERTERS))} checkpoints"
        )
    module, name = CONVERTERS[kind]
    return getattr(importlib.import_module(module), name)(state, extra, what, network)


def _network_overrides(spec: ZooSpec, entry: ZooEntry | None, extra: dict, cfg) -> list[str]:
    """The Hydra overrides of ``conf/train.yaml`` building the checkpoint's network; none for
    an ``hf:`` repository no entry lists (its network is the command line's ``model=``)."""
    if spec.source == "smp":  # the file's config.json says it (an entry's copy lists it)
        from segbench.models.smp_convert import smp_overrides

        return smp_overrides(extra)
    if entry is not None:
        return list(entry.overrides)
    if cfg.get("model") is None:
        raise ZooEntryError(
            f"ckpt={spec}: segbench's zoo does not list it, so name the network it holds: "
            "model=<family> backbone=<backbone> dataset=<dataset> (e.g. model=segformer "
            "backbone=mit_b0 dataset=ade20k)"
        )
    return []


def _dataset_name(spec: ZooSpec, entry: ZooEntry | None, cfg) -> str:
    if entry is not None:
        return entry.dataset
    asked = cfg.get("dataset")
    if asked is None or "_target_" not in asked:
        raise ZooEntryError(
            f"ckpt={spec}: segbench's zoo does not list it, so the classes it predicts are "
            "unknown; name the dataset whose classes they are: dataset=<name> (e.g. "
            "dataset=ade20k)"
        )
    return str(asked.name)


def _check_classes(entry: ZooEntry | None, dataset: DictConfig, spec: ZooSpec) -> None:
    """The publisher's class list (renamed by ``class_map``) must be the dataset's, in order."""
    if entry is None or entry.classes is None:
        return
    mapped = [entry.class_map.get(c, c) for c in entry.classes]
    if mapped != [str(c) for c in dataset.class_names]:
        raise ZooEntryError(
            f"ckpt={spec}: the publisher's classes {list(entry.classes)} (renamed by class_map "
            f"{entry.class_map}) are not dataset {dataset.name!r}'s {list(dataset.class_names)}"
        )


def _check_class_count(spec: ZooSpec, extra: dict, dataset: DictConfig) -> None:
    """A hub repository's class count (smp's ``classes``, transformers' ``num_labels``) must
    be the dataset's."""
    count = None
    if spec.source == "smp":
        from segbench.models.smp_convert import smp_num_classes

        count = smp_num_classes(extra)
    elif spec.source == "hf":
        from segbench.models.hf_convert import hf_num_labels

        count = hf_num_labels(extra)
    if count is not None and count != int(dataset.num_classes):
        raise ZooEntryError(
            f"ckpt={spec}: its config.json says {count} classes, dataset {dataset.name!r} has "
            f"{dataset.num_classes}; name the dataset it was trained on (dataset=<name>)"
        )


def _preprocess(dataset: DictConfig, entry: ZooEntry | None) -> DictConfig:
    """``dataset`` with the publisher's normalisation and resize rule."""
    if entry is None or not entry.preprocessing:
        return dataset
    pre = dict(entry.preprocessing)
    patch = {k: pre.pop(k) for k in ("mean", "std") if k in pre}
    if "resize_short" in pre:
        patch["eval_transform"] = {"resize_short": pre.pop("resize_short")}
    plain = OmegaConf.create(OmegaConf.to_container(dataset, resolve=True))  # not struct
    return OmegaConf.merge(plain, patch)


def zoo_evaluation_config(cfg: DictConfig, spec: ZooSpec) -> tuple[DictConfig, dict]:
    """``(run config, task state dict)`` of evaluating published checkpoint ``spec`` as the
    composed ``conf/evaluate.yaml`` ``cfg`` asks; the same pair
    :func:`~segbench.checkpoints.store.checkpoint_evaluation_config` returns for a segbench
    checkpoint."""
    from segbench.checkpoints.network import build_model
    from segbench.checkpoints.store import merge_eval_config
    from segbench.config import compose_train_config

    entry = find_entry(spec)
    if entry is None and spec.source in ("smp", "hf"):  # what the command must name, first
        _dataset_name(spec, entry, cfg)
        if spec.source == "hf":
            _network_overrides(spec, entry, {}, cfg)
    entry, state, extra = read_published(spec)
    dataset = _dataset_name(spec, entry, cfg)
    overrides = _network_overrides(spec, entry, extra, cfg)
    data_root = OmegaConf.select(cfg, "data_root", default=None)
    composed = compose_train_config(
        [*overrides, f"dataset={dataset}", *([f"data_root={data_root}"] if data_root else [])]
    )
    # an unlisted hf: repository: the network the command line names, as composed there
    network_cfg = composed if overrides or entry is not None else cfg
    trained = OmegaConf.create(
        {
            "model": OmegaConf.to_container(network_cfg.model, resolve=True),
            "backbone": OmegaConf.to_container(network_cfg.backbone, resolve=True),
            "dataset": OmegaConf.to_container(_preprocess(composed.dataset, entry), resolve=True),
            "task": composed.task,
            "loss": composed.loss,
            "reference": entry.reference if entry is not None else None,
        }
    )
    _check_classes(entry, trained.dataset, spec)
    _check_class_count(spec, extra, trained.dataset)
    network = build_model(trained.model)
    weights = _convert(spec, entry.arch if entry else "", state, extra, network)
    merged = merge_eval_config(cfg, trained, str(spec))
    merged.dataset = _preprocess(merged.dataset, entry)
    asked = OmegaConf.to_container(cfg.inference, resolve=True) if cfg.get("inference") else {}
    plain = {k: v for k, v in (asked or {}).items() if k != "_target_" and v is not None}
    if entry is not None and entry.inference and plain == _PLAIN_INFERENCE:
        merged.inference = OmegaConf.merge(cfg.inference, entry.inference)
    merged.zoo = {
        "source": spec.source,
        "name": spec.name,
        "url": entry.url if entry else None,
        "repo": (entry.repo if entry else spec.name) if spec.source in ("smp", "hf") else None,
    }
    return merged, {f"model.{k}": v for k, v in weights.items()}
