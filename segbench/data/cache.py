"""Where segbench remembers derived facts about datasets (passed label scans, class
statistics): ``$SEGBENCH_CACHE`` or ``~/.cache/segbench``. Never inside a dataset root, which
may be read-only or shared."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """The cache directory (created on first write by its users)."""
    env = os.environ.get("SEGBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "segbench"
