"""From a checkpoint to a network that predicts, without the training runner: the one path of
``segbench predict``, ``export`` and ``serve`` (as mmsegmentation's ``init_model`` and smp's
``predict``).

:func:`load_model` reads a checkpoint ``train.py`` wrote (tensors and plain containers only,
:func:`~segbench.checkpoints.store.load_checkpoint`), merges its run config with an evaluation's
choices exactly as ``evaluate.py`` does (``inference=...``, ``fast.*``, ``model.mc_samples``,
``model.crf``, ``trainer.precision``; :func:`~segbench.checkpoints.evaluation.evaluation_config`),
builds the network, loads its weights strictly, and returns a :class:`LoadedModel`: the network,
its :class:`~segbench.inference.Inference`, the dataset's evaluation transform, class names and
palette. No data split is opened and no label read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from segbench.checkpoints.evaluation import evaluation_config
from segbench.checkpoints.network import build_model
from segbench.checkpoints.store import EVALUATION_ONLY_KEYS, CheckpointError, load_weights
from segbench.data.transforms import SegTransform
from segbench.inference import Inference, eval_mode
from segbench.inference.fast import autocast_for, check_fast, prepare_batch, prepare_model

__all__ = ["LoadedModel", "build_model", "device_for", "load_model", "network_weights"]


# the attribute the training task keeps its network under: its state-dict keys' prefix
NETWORK_PREFIX = "model."


def network_weights(state_dict: dict, ckpt_path: str) -> dict:
    """The network's tensors of a task's state dict (``model.*``, the prefix taken off); the
    rest are the loss's buffers (class weights), which predicting does not use."""
    weights = {
        k[len(NETWORK_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(NETWORK_PREFIX)
    }
    if not weights:
        keys = ", ".join(repr(k) for k in list(state_dict)[:4]) or "none"
        raise CheckpointError(
            f"checkpoint {ckpt_path!r} holds no network weights (no '{NETWORK_PREFIX}*' key in "
            f"its state_dict; keys: {keys})"
        )
    return weights


def _model_overrides(overrides: Sequence[str]) -> tuple[dict, list[str]]:
    """``model.<key>=value`` overrides of the evaluation-only keys (``mc_samples``, ``crf``)
    taken out of ``overrides``, as evaluate.py applies them to the trained model config; any
    other ``model.<key>`` would change what the weights mean and is refused."""
    keys, rest = {}, []
    for token in overrides:
        key, _, value = token.partition("=")
        name = key.lstrip("+~")
        if name.startswith("model."):
            field = name.split(".", 1)[1]
            if field.split(".")[0] not in EVALUATION_ONLY_KEYS:
                raise CheckpointError(
                    f"{token}: model.{field} cannot change at prediction: only "
                    f"{', '.join(f'model.{k}' for k in EVALUATION_ONLY_KEYS)} may be set"
                )
            keys = OmegaConf.to_container(
                OmegaConf.merge(keys, OmegaConf.from_dotlist([f"{field}={value}"]))
            )
        else:
            rest.append(token)
    return keys, rest


def device_for(cfg: DictConfig, device: str | None = None) -> torch.device:
    """``device`` if given, else a GPU when ``trainer.accelerator`` allows one and there is one,
    else the CPU."""
    if device is not None:
        return torch.device(device)
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass
class LoadedModel:
    """A checkpoint ready to predict.

    Args:
        ckpt: the checkpoint's path.
        cfg: the composed ``conf/evaluate.yaml`` the choices came from.
        run_cfg: the checkpoint's run config merged with those choices.
        network: the network, its weights loaded, ``fast.*`` applied, in eval mode on ``device``.
        inference: how it predicts (whole image, sliding window, multi-scale + flip).
        transform: the dataset's evaluation transform (normalisation, any resize).
        dataset: the dataset's name.
        class_names: one name per class.
        palette: one RGB triple per class (the dataset's, else segbench's default).
        ignore_index: the dataset's void label.
        fast: the speed options in force.
        precision: Lightning's precision name (``32-true``, ``bf16-mixed`` ...).
        device: where the network is.
    """

    ckpt: str
    cfg: DictConfig
    run_cfg: DictConfig
    network: nn.Module
    inference: Inference
    transform: SegTransform
    dataset: str
    class_names: list[str]
    palette: list[list[int]]
    ignore_index: int
    fast: dict
    precision: str
    device: torch.device

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def eval_mode(self) -> str:
        """How results name the way it predicts (``single-scale``, ``ms+flip``, ``+CRF`` ...)."""
        return eval_mode(self.run_cfg.model, self.inference)

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """The scores ``out (B, K, h, w)`` (and ``uncertainty (B, h, w)`` when the model gives
        one) of a transformed batch ``(B, 3, h, w)``, at its size."""
        batch = prepare_batch(batch.to(self.device), self.fast)
        autocast = autocast_for(self.precision, self.device)
        if autocast is None:
            return self.inference(self.network, batch)
        with autocast:
            return self.inference(self.network, batch)


def load_model(
    ckpt: str | Path, overrides: Sequence[str] = (), device: str | None = None
) -> LoadedModel:
    """Checkpoint ``ckpt`` as ``evaluate.py ckpt=<ckpt> <overrides>`` would evaluate it.

    Args:
        ckpt: a checkpoint ``train.py`` wrote.
        overrides: ``conf/evaluate.yaml`` overrides: ``inference=slide``,
            ``fast.channels_last=true``, ``model.mc_samples=8``, ``trainer.precision=bf16-mixed``.
        device: ``cpu``, ``cuda`` ... (default: a GPU when ``trainer.accelerator`` allows one).

    Raises:
        CheckpointError: the file is not a usable checkpoint, an override would change what the
            weights mean, or the weights do not fit the model its config names.
    """
    from segbench.config import compose

    ckpt = str(ckpt)
    model_keys, overrides = _model_overrides(overrides)
    cfg = compose("evaluate", [f"ckpt={ckpt}", *overrides])
    run_cfg, state_dict = evaluation_config(cfg)
    if model_keys:  # model.mc_samples=0, model.crf=null: how the trained model predicts
        run_cfg.model = OmegaConf.merge(run_cfg.model, model_keys)
    dm = instantiate(run_cfg.dataset)  # no split opened: no labels read
    network = build_model(run_cfg.model)
    load_weights(network, network_weights(state_dict, ckpt), ckpt, run_cfg.model.get("name"))
    fast = check_fast(OmegaConf.to_container(cfg.fast) if cfg.get("fast") is not None else None)
    target = device_for(cfg, device)
    network = prepare_model(network.to(target).eval(), fast)
    inference = instantiate(run_cfg.inference) if run_cfg.get("inference") else Inference()
    palette = dm.palette
    if palette is None:
        from segbench.plots import default_palette

        palette = default_palette(dm.num_classes)
    return LoadedModel(
        ckpt=ckpt,
        cfg=cfg,
        run_cfg=run_cfg,
        network=network,
        inference=inference,
        transform=dm.eval_transform,
        dataset=dm.name,
        class_names=[str(n) for n in dm.class_names],
        palette=[list(map(int, c)) for c in palette],
        ignore_index=int(dm.ignore_index),
        fast=fast,
        precision=str(OmegaConf.select(cfg, "trainer.precision", default="32-true")),
        device=target,
    )
