"""Freezing a module: fixed weights, fixed BatchNorm statistics, no dropout, whatever the
training loop does.

``requires_grad=False`` alone does not freeze a network: Lightning calls ``model.train()`` at
the start of every training epoch, which puts BatchNorm back to updating its running
statistics and switches dropout back on. :func:`freeze` therefore also pins the module in eval
mode: its ``train(mode)`` always means ``train(False)``, for the module and everything under it,
however the call reaches it (``parent.train()``, ``module.train()``, ``module.eval()``).

A frozen module's parameters get no gradient, so no optimizer changes them (torch's SGD, AdamW
and Adadelta skip a parameter whose ``grad`` is ``None``: weight decay included), even when the
optimizer was handed all of the network's parameters. Frozen modules survive ``copy.deepcopy``
and pickling (the eval-mode pin is a small picklable object, not a closure).

The engine freezes an encoder when its backbone config says ``freeze: true``
(:func:`segbench.checkpoints.loader.build_model`); ``model=linear_probe`` sets it.
"""

from __future__ import annotations

from torch import nn

__all__ = ["freeze", "is_frozen"]


class _EvalOnly:
    """Stands in for a frozen module's ``train`` method: sets eval mode, whatever ``mode`` is.

    Args:
        module: the frozen module.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        return nn.Module.train(self.module, False)  # itself and every submodule


def freeze(module: nn.Module) -> nn.Module:
    """Freeze ``module`` in place and return it.

    Every parameter gets ``requires_grad=False``; the module and its submodules go to eval mode
    and stay there (BatchNorm uses and keeps its running statistics, dropout is off) whatever
    ``train()`` is later called with. Buffers are left as they are.
    """
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    # an instance attribute shadows nn.Module.train for this module only; nn.Module.train of
    # a parent calls child.train(mode), so it reaches the pin too
    object.__setattr__(module, "train", _EvalOnly(module))
    nn.Module.train(module, False)
    return module


def is_frozen(module: nn.Module) -> bool:
    """Whether ``module`` was frozen by :func:`freeze`."""
    return isinstance(module.__dict__.get("train"), _EvalOnly)
