"""The run config and weights of an evaluation, whatever ``ckpt=`` names: a checkpoint
``train.py`` wrote (:func:`segbench.checkpoints.store.checkpoint_evaluation_config`) or another
library's published checkpoint, ``ckpt=<source>:<name>`` (``torchvision:``, ``mmseg:``,
``smp:``, ``hf:``; :func:`segbench.zoo.load.zoo_evaluation_config`). ``evaluate.py``,
``segbench predict``, ``export`` and ``serve`` all come through here."""

from __future__ import annotations

from omegaconf import DictConfig

from segbench.checkpoints.store import checkpoint_evaluation_config

__all__ = ["evaluation_config"]


def evaluation_config(cfg: DictConfig) -> tuple[DictConfig, dict]:
    """``(run config, the task's state dict)`` of evaluating ``cfg.ckpt`` as the composed
    ``conf/evaluate.yaml`` ``cfg`` asks."""
    from segbench.zoo.spec import parse_spec

    spec = parse_spec(cfg.ckpt)
    if spec is None:
        return checkpoint_evaluation_config(cfg)
    from segbench.zoo.load import zoo_evaluation_config

    return zoo_evaluation_config(cfg, spec)
