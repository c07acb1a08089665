"""Learning-rate schedules. Each factory takes the optimizer and the run's total number of
optimizer steps, which the LightningModule knows only once training starts."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, PolynomialLR

__all__ = ["cosine", "poly"]


def poly(optimizer: Optimizer, total_steps: int, power: float = 0.9) -> LRScheduler:
    """``lr = base_lr * (1 - step / total_steps) ** power``: the FCN/DeepLab "poly" policy."""
    return PolynomialLR(optimizer, total_iters=max(1, int(total_steps)), power=power)


def cosine(optimizer: Optimizer, total_steps: int, eta_min: float = 0.0) -> LRScheduler:
    """Cosine annealing from ``base_lr`` to ``eta_min`` over the whole run."""
    return CosineAnnealingLR(optimizer, T_max=max(1, int(total_steps)), eta_min=eta_min)
