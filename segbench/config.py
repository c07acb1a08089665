"""``conf/train.yaml`` composed outside a Hydra app, for the commands that take the same
``group=option key=value`` overrides as ``train.py`` (``python -m segbench.data.check``,
``segbench.complexity``, ``segbench.inference_bench`` ...)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

__all__ = ["CONF", "compose_train_config"]

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_train_config(overrides: list[str]) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides`` exactly as ``train.py`` would."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, "output_dir=."])
