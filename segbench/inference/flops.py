"""FLOPs of a forward pass, counted by ``torch.utils.flop_counter`` (a multiply-add is 2)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from segbench.inference.modes import evaluating

__all__ = ["count_flops"]


def count_flops(
    model: nn.Module,
    input_size: tuple[int, int],
    batch: int = 1,
    device: torch.device | str = "cpu",
) -> int:
    """FLOPs of one forward pass in eval mode on a ``(batch, 3, H, W)`` input (a model that
    samples at test time, like Bayesian SegNet, counts all its passes)."""
    x = torch.zeros(batch, 3, *input_size, device=device)
    with evaluating(model), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())
