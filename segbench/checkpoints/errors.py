"""The errors of loading a checkpoint (:mod:`segbench.checkpoints`)."""

from __future__ import annotations

__all__ = ["CheckpointError", "CheckpointNotFoundError"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for the requested run."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint file at the path given: nothing there, or a directory."""
