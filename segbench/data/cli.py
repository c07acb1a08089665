"""Shared plumbing of the data commands (``python -m segbench.data.check|stats|preview``): they
take the same ``dataset=... key=value`` overrides as ``train.py``, composed from ``conf/``."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

__all__ = ["CONF", "compose_train_config"]

CONF = Path(__file__).resolve().parents[2] / "conf"


def compose_train_config(overrides: list[str]) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides`` exactly as ``train.py`` would."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, "output_dir=."])
