"""Shared fixtures: Hydra composition of the real configs, and one small trained checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig

from segbench.config import CONF, compose

ROOT = Path(__file__).resolve().parents[1]
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on a 2-core machine: one compute thread each (and in
    # the commands they start), instead of two each fighting over the same cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
__all__ = [
    "CONF",
    "CONFIG_GROUPS",
    "ROOT",
    "compose_config",
    "make_folder_dataset",
    "options",
    "run_cli",
]
# every config group of conf/ (tests/test_every_option.py checks that this is all of them)
CONFIG_GROUPS = (
    "model",
    "backbone",
    "dataset",
    "loss",
    "optimizer",
    "scheduler",
    "inference",
    "evaluation",
    "trainer",
    "logger",
    "callbacks",
    "task",
    "experiment",
    "debug",
    "hydra/launcher",
    "hydra/sweeper",
)


def options(group: str) -> list[str]:
    """The options of config group ``group``: its YAML files' names."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(autouse=True)
def _no_network_loggers(monkeypatch, tmp_path):
    """W&B never reaches the network from tests: no key, so 'auto' resolves to offline."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "segbench-cache"))  # never ~/.cache


# the test modules that mark themselves ``pytestmark = pytest.mark.xdist_group(...)``: each
# runs on one worker, so that its expensive session-scoped fixture (a training run) is made once
GROUPED_MODULES = frozenset(
    f"tests/{p.name}"
    for p in Path(__file__).parent.glob("test_*.py")
    if "pytestmark = pytest.mark.xdist_group(" in p.read_text(encoding="utf-8")
)


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` that works with pytest 9.2: pytest-xdist 3.8 groups tests by a
    suffix it writes into ``item._nodeid``, which pytest 9.2's node ids no longer read (every
    test was scheduled alone, and a grouped module's fixture made once per worker). Here the
    controller schedules each module of :data:`GROUPED_MODULES` as one unit and every other test
    alone, as ``load`` does."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0].split("@", 1)[0]
            return module if module in GROUPED_MODULES else nodeid

    return ModuleGroups(config, log)


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<name>.yaml`` as Hydra would, with the run directory set to ``output_dir``."""
    return compose(name, overrides, output_dir)


def run_cli(script: str, *args: str, cwd: Path, env: dict | None = None, check: bool = True):
    """Run ``python <script> args...`` the way a user would; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-5000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A debug=fast training run made once through the CLI; returns its run directory."""
    workdir = tmp_path_factory.mktemp("trained")
    run_dir = workdir / "run"
    run_cli(
        "train.py",
        "debug=fast",
        "dataset.subset.test=9",
        f"hydra.run.dir={run_dir}",
        cwd=workdir,
    )
    return run_dir


def make_folder_dataset(root: Path, n: int = 6, size: int = 32, num_classes: int = 3) -> Path:
    """Write a tiny ``folder`` dataset (random images, striped masks) under ``root``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        mask = (np.arange(size)[None, :].repeat(size, 0) * num_classes // size).astype(np.uint8)
        mask[0, :] = 255  # a row of ignore labels
        Image.fromarray(image).save(root / "images" / f"img{i:02d}.jpg")
        Image.fromarray(mask).save(root / "masks" / f"img{i:02d}.png")
    # every image in train and val, so that a planted error is met by any split used
    (root / "splits").mkdir()
    for split in ("train", "val"):
        (root / "splits" / f"{split}.txt").write_text("".join(f"img{i:02d}\n" for i in range(n)))
    return root
