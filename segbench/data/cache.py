"""Where segbench remembers derived facts about datasets (passed label scans, class
statistics): ``$SEGBENCH_CACHE`` or ``~/.cache/segbench``. Never inside a dataset root, which
may be read-only or shared.

The cache is optional: when it cannot be written (an unwritable or absent home, a full disk),
runs go on without it, after one warning that names the place and ``SEGBENCH_CACHE``; an
unreadable entry is computed again.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

__all__ = ["CacheWarning", "cache_dir", "recall", "remember"]

_warned: set[str] = set()


class CacheWarning(UserWarning):
    """The cache could not be written: the run goes on without it."""


def cache_dir() -> Path:
    """The cache directory (created on first write by its users)."""
    env = os.environ.get("SEGBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "segbench"


def remember(path: Path, text: str) -> bool:
    """Write ``text`` to cache entry ``path`` (atomically); ``False``, with one warning per
    process, when the cache cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{os.getpid()}.part")
        part.write_text(text)
        os.replace(part, path)
        return True
    except OSError as err:
        root = str(cache_dir())
        if root not in _warned:
            _warned.add(root)
            warnings.warn(
                f"segbench's cache {root} cannot be written ({err.strerror or err}); going on "
                "without it (scans and class statistics are computed again each run). Point "
                "SEGBENCH_CACHE at a writable folder to keep them, e.g. "
                "export SEGBENCH_CACHE=/tmp/segbench-cache",
                CacheWarning,
                stacklevel=2,
            )
        return False


def recall(path: Path | None) -> str | None:
    """The text of cache entry ``path``, or ``None`` (no entry, or one that cannot be read)."""
    if path is None:
        return None
    try:
        return path.read_text() if path.is_file() else None
    except OSError:
        return None
