"""Checkpoints ``train.py`` wrote, read safely and turned back into networks.

- :mod:`~segbench.checkpoints.store`: reading one (tensors and plain containers only), the run
  config it stores (upgraded from earlier segbench versions) and an evaluation's choices
  checked against it;
- :mod:`~segbench.checkpoints.loader`: checkpoint -> network, its inference, evaluation
  transform, class names and palette, without the training runner (``segbench predict``,
  ``export``, ``serve``).
"""

from segbench.checkpoints.evaluation import evaluation_config
from segbench.checkpoints.loader import LoadedModel, load_model
from segbench.checkpoints.network import build_model
from segbench.checkpoints.store import CheckpointError, CheckpointNotFoundError, load_checkpoint

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "LoadedModel",
    "build_model",
    "evaluation_config",
    "load_checkpoint",
    "load_model",
]
