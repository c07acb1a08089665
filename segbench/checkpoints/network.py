"""A network from its model config: ``conf/model/*`` instantiated (its ``encoder`` the backbone
config), then the encoders its backbone configs say ``freeze: true`` frozen. The one builder of
training, evaluation and the published checkpoints (:mod:`segbench.zoo`)."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

__all__ = ["build_model"]


def _constructor_args(cfg: dict) -> dict:
    """A model config without its ``name`` (a label, not an argument), also in the model
    configs nested in it (a wrapper's ``segmenter``); encoders keep theirs."""
    out = {k: v for k, v in cfg.items() if k != "name"}
    for key, value in out.items():
        if isinstance(value, dict) and "_target_" in value and "num_classes" in value:
            out[key] = _constructor_args(value)
    return out


def _pop_freeze(cfg: dict, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Take the backbone's ``freeze`` key out of every ``encoder`` config in ``cfg`` (the
    model's own, a wrapper's ``segmenter.encoder``): the encoders never see it. Returns the
    attribute paths of the encoders to freeze (``("encoder",)``, ``("segmenter", "encoder")``).
    Configs saved before the key existed have none: not frozen."""
    frozen = []
    for key, value in cfg.items():
        if not isinstance(value, dict):
            continue
        if key == "encoder" and "_target_" in value:
            if value.pop("freeze", False):
                frozen.append((*path, key))
        else:
            frozen += _pop_freeze(value, (*path, key))
    return frozen


def build_model(model_cfg: DictConfig | dict) -> nn.Module:
    """Instantiate ``conf/model/*`` (its ``encoder`` is the backbone config), then freeze each
    encoder whose backbone config says ``freeze: true`` (:func:`segbench.models.freeze.freeze`:
    no gradient, kept in eval mode)."""
    from segbench.models.freeze import freeze

    if not isinstance(model_cfg, DictConfig):
        model_cfg = OmegaConf.create(model_cfg)
    cfg = OmegaConf.to_container(model_cfg, resolve=True)  # resolves against the root config
    frozen = _pop_freeze(cfg)
    model = instantiate(_constructor_args(cfg))
    for path in frozen:
        module = model
        for name in path:
            module = getattr(module, name, None)
        if not isinstance(module, nn.Module):
            raise ValueError(
                f"backbone.freeze=true: model {type(model).__name__} keeps no encoder at "
                f"`{'.'.join(path)}` to freeze (its config has one there)"
            )
        freeze(module)
    return model
