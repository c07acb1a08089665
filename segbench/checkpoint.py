"""Safe checkpoint loading: tensors and plain containers only, never arbitrary pickled objects."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

__all__ = ["load_checkpoint", "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for the requested run."""


def load_checkpoint(path: str | Path) -> dict:
    """Load a Lightning/segbench checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: the file is not a checkpoint, holds objects other than tensors and
            plain containers, or has no ``state_dict``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds objects that are not tensors or plain containers, "
            f"so it is not loaded (weights-only loading): {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError) as err:
        raise CheckpointError(f"{str(path)!r} is not a readable PyTorch checkpoint: {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {str(path)!r} has no 'state_dict' entry")
    return ckpt
