"""Learning-rate schedules. Each factory takes the optimizer and the run's total number of
optimizer steps, which the LightningModule knows only once training starts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LambdaLR,
    LRScheduler,
    PolynomialLR,
    StepLR,
)

__all__ = ["GroupedOptimizer", "cosine", "poly", "step"]


def poly(
    optimizer: Optimizer,
    total_steps: int,
    power: float = 0.9,
    warmup_steps: int = 0,
    warmup_ratio: float = 1e-6,
) -> LRScheduler:
    """``lr = base_lr * (1 - step / total_steps) ** power``: the FCN/DeepLab "poly" policy.

    With ``warmup_steps`` (the transformer recipes': SegFormer, UPerNet on ConvNeXt/Swin, 1,500)
    the learning rate first rises linearly from ``warmup_ratio * base_lr`` to ``base_lr``, then
    decays as ``(1 - (step - warmup) / (total - warmup)) ** power`` (mmsegmentation's LinearLR
    then PolyLR). A run shorter than its warm-up (a few steps of a recipe, to try it) warms up
    for its whole length.
    """
    total, warmup = max(1, int(total_steps)), int(warmup_steps)
    if warmup < 0:
        raise ValueError(f"scheduler.warmup_steps={warmup_steps} must be 0 or more")
    if warmup == 0:
        return PolynomialLR(optimizer, total_iters=total, power=power)

    def factor(step: int) -> float:
        if step < warmup:
            return warmup_ratio + (1.0 - warmup_ratio) * step / warmup
        return max(0.0, 1.0 - (step - warmup) / (total - warmup)) ** power

    return LambdaLR(optimizer, factor)


class GroupedOptimizer:
    """An optimizer factory with a learning-rate multiplier per part of the network:
    ``optimizer.lr_mult={encoder: 0.1}`` (Mask2Former's backbone), ``{decoder: 10, head: 10}``
    (SegFormer's decoder).

    A key names a module by its attribute path inside the task (``encoder`` matches
    ``model.encoder.*`` and GAN-seg's ``model.segmenter.encoder.*``); the first key that matches
    a parameter gives it its multiplier, others keep the base rate. Frozen parameters
    (``requires_grad=False``, ``backbone.freeze``) are left out. A key that matches no parameter
    is refused, naming it.
    """

    wants_names = True  # the task hands it named parameters

    def __init__(self, factory: Callable[..., Optimizer], lr_mult: Mapping[str, float]) -> None:
        self.factory = factory
        self.lr_mult = {str(k): float(v) for k, v in lr_mult.items()}

    def __call__(self, named: Iterable[tuple[str, nn.Parameter]]) -> Optimizer:
        base = float(self.factory.keywords.get("lr", 1e-3))
        groups: dict[str, list[nn.Parameter]] = {key: [] for key in [*self.lr_mult, ""]}
        for name, param in named:
            if not param.requires_grad:
                continue
            key = next((k for k in self.lr_mult if f".{k}." in f".{name}"), "")
            groups[key].append(param)
        unused = [k for k in self.lr_mult if not groups[k]]
        if unused:
            raise ValueError(
                f"optimizer.lr_mult.{unused[0]}: no trainable parameter of the network lies "
                f"under a module named {unused[0]!r}; the network's parts are e.g. encoder, "
                "decoder, head, aux_head"
            )
        params = [
            {"params": ps, "lr": base * self.lr_mult.get(key, 1.0)}
            for key, ps in groups.items()
            if ps
        ]
        return self.factory(params)


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
