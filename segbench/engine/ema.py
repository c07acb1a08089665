"""An exponential moving average of the network's weights (Polyak & Juditsky, 1992), the
averaged weights being the ones a run validates, chooses and saves.

After every optimizer step each floating-point tensor of the network's state (weights and
BatchNorm statistics) moves towards the trained one::

    d_t = min(decay, (1 + t) / (10 + t))        # t: optimizer steps so far
    ema = d_t * ema + (1 - d_t) * weights

(the warm-up of ``d_t`` keeps the first steps' average from leaning on the random start, as
TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` and timm's ``ModelEmaV3`` do); integer
tensors (BatchNorm's batch counters) are copied. ``decay`` 0.99 averages over roughly the last
100 steps.

Validation runs on the average, so ``val/mIoU`` and the best checkpoint are the average's. Every
checkpoint holds the average as its ``state_dict`` (what ``evaluate.py``, ``segbench predict``
and ``export`` load, as Lightning's ``WeightAveraging`` does) and the trained weights under
``ema.weights``, from which a resumed run carries on exactly. Only the network (``task.model``)
is averaged: the metrics' states and a GAN's optimizers are not weights.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

__all__ = ["EMA", "ema_decay"]

PREFIX = "model."  # the network's keys in the task's state_dict


def ema_decay(decay: float, step: int) -> float:
    """The weight of the old average after optimizer step ``step`` (1-based)."""
    return min(decay, (1.0 + step) / (10.0 + step))


class EMA(pl.Callback):
    """Keeps the moving average of ``pl_module.model``'s state and swaps it in for validation.

    Args:
        decay: the largest weight of the old average per optimizer step, in ``[0, 1)``.
    """

    def __init__(self, decay: float) -> None:
        decay = float(decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1) (e.g. 0.99) or null (off), got {decay}")
        self.decay = decay
        self.average: dict[str, Tensor] | None = None
        self._updated_at = 0  # global_step of the last update
        self._trained: dict[str, Tensor] | None = None  # the weights while validating

    @staticmethod
    def _network(pl_module: pl.LightningModule) -> nn.Module:
        return pl_module.model

    def _start(self, pl_module: pl.LightningModule) -> None:
        if self.average is None:
            state = self._network(pl_module).state_dict()
            self.average = {k: v.detach().clone() for k, v in state.items()}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(pl_module)  # a resumed run has it from its checkpoint already

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step <= self._updated_at:  # no optimizer step in this batch (accumulation)
            return
        self._start(pl_module)
        d = ema_decay(self.decay, step)
        for key, value in self._network(pl_module).state_dict().items():
            avg = self.average[key]
            if avg.device != value.device:
                avg = self.average[key] = avg.to(value.device)
            if avg.is_floating_point():
                avg.lerp_(value.detach().to(avg.dtype), 1.0 - d)
            else:
                avg.copy_(value)
        self._updated_at = step

    # validation during fit sees the average; the trained weights come back afterwards
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.state.fn != "fit" or self.average is None:
            return
        net = self._network(pl_module)
        self._trained = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net.load_state_dict(self.average)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._trained is not None:
            self._network(pl_module).load_state_dict(self._trained)
            self._trained = None

    def on_train_end(self, trainer, pl_module) -> None:
        """The task leaves training holding the average (what its checkpoints hold)."""
        if self.average is not None:
            self._network(pl_module).load_state_dict(self.average)

    # checkpoints: the average as the state_dict, the trained weights beside it
    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updated_at": self._updated_at}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._updated_at = int(state_dict.get("updated_at", 0))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self.average is None:
            return
        state = checkpoint["state_dict"]
        trained = self._trained  # saved while validating: the trained weights are aside
        weights = {}
        for key, avg in self.average.items():
            weights[key] = trained[key] if trained is not None else state[PREFIX + key]
            state[PREFIX + key] = avg.detach().clone()
        checkpoint["ema"] = {"decay": self.decay, "weights": weights}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        """Resume: the average from the checkpoint's ``state_dict``, and the trained weights
        back into the network (Lightning has just loaded the average there)."""
        saved = checkpoint.get("ema")
        if saved is None:
            raise ValueError(
                "ema.decay is set but the checkpoint being resumed was trained without it "
                "(no 'ema' entry); resume with ema.decay=null or start a new run"
            )
        state = checkpoint["state_dict"]
        self.average = {
            k[len(PREFIX) :]: v.detach().clone() for k, v in state.items() if k.startswith(PREFIX)
        }
        self._network(pl_module).load_state_dict(saved["weights"])
