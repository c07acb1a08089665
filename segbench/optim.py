"""Learning-rate schedules. Each factory takes the optimizer and the run's total number of
optimizer steps, which the LightningModule knows only once training starts."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, PolynomialLR, StepLR

__all__ = ["cosine", "poly", "step"]


def poly(optimizer: Optimizer, total_steps: int, power: float = 0.9) -> LRScheduler:
    """``lr = base_lr * (1 - step / total_steps) ** power``: the FCN/DeepLab "poly" policy."""
    return PolynomialLR(optimizer, total_iters=max(1, int(total_steps)), power=power)


def cosine(optimizer: Optimizer, total_steps: int, eta_min: float = 0.0) -> LRScheduler:
    """Cosine annealing from ``base_lr`` to ``eta_min`` over the whole run."""
    return CosineAnnealingLR(optimizer, T_max=max(1, int(total_steps)), eta_min=eta_min)


def step(
    optimizer: Optimizer, total_steps: int, step_size: int = 2000, gamma: float = 0.1
) -> LRScheduler:
    """``lr = base_lr * gamma ** (step // step_size)``: Caffe's "step" policy, DeepLab v1's
    (x0.1 every 2,000 iterations). ``total_steps`` is not used: the decay points are fixed."""
    if int(step_size) < 1 or not 0 < float(gamma) <= 1:
        raise ValueError(
            f"scheduler.step_size must be >= 1 and scheduler.gamma in (0, 1], got "
            f"step_size={step_size!r}, gamma={gamma!r}"
        )
    return StepLR(optimizer, step_size=int(step_size), gamma=float(gamma))
