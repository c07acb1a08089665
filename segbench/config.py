"""``conf/`` composed outside a Hydra app: for tests and for the ``segbench`` verbs that take the
same ``group=option key=value`` overrides as ``train.py`` (``segbench check``, ``segbench
complexity``, ``segbench inference-bench`` ...)."""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import DictConfig

__all__ = [
    "CONF",
    "compose",
    "compose_train_config",
    "parse_verb_args",
    "register_resolvers",
    "verb_parser",
]

CONF = Path(__file__).resolve().parents[1] / "conf"


def _fast_precision(accelerator: str = "auto") -> str:
    from segbench.inference.fast import fast_precision  # torch: imported when resolved

    return fast_precision(accelerator)


def register_resolvers() -> None:
    """Register the resolvers ``conf/`` uses (once per process; ``train.py`` and ``evaluate.py``
    get them by importing :mod:`segbench.engine.run`, which calls this):

    - ``${segbench_fast_precision:<accelerator>}``: the mixed precision ``trainer=fast`` picks
      for the machine (:func:`segbench.inference.fast.fast_precision`).
    """
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("segbench_fast_precision"):
        OmegaConf.register_new_resolver("segbench_fast_precision", _fast_precision, use_cache=True)


def compose(name: str, overrides: list[str], output_dir: str | Path = ".") -> DictConfig:
    """``conf/<name>.yaml`` composed with ``overrides`` as Hydra would, the run directory set
    to ``output_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=name, overrides=[*overrides, f"output_dir={output_dir}"])


def compose_train_config(overrides: list[str]) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides`` exactly as ``train.py`` would."""
    return compose("train", overrides)


def verb_parser(
    verb: str, description: str, example: str = "dataset=camvid"
) -> argparse.ArgumentParser:
    """The argument parser of ``segbench <verb>`` for a verb that composes ``conf/train.yaml``:
    its positional arguments are ``group=option key=value`` overrides, as for ``train.py``."""
    parser = argparse.ArgumentParser(prog=f"segbench {verb}", description=description)
    parser.add_argument(
        "overrides", nargs="*", help=f"config overrides as for train.py, e.g. {example}"
    )
    return parser


def parse_verb_args(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> tuple[argparse.Namespace, DictConfig]:
    """``argv`` parsed (overrides and options in any order) and the config it composes."""
    args = parser.parse_intermixed_args(argv)
    return args, compose_train_config(args.overrides)
