"""Speed options of a run (``fast.*`` in ``conf/train.yaml``; all on with ``trainer=fast``).

- ``fast.channels_last``: the model's weights and every input batch in NHWC memory order
  (``torch.channels_last``). Convolutions on CPUs with oneDNN, and tensor cores on GPUs, run
  faster on it. It changes the memory layout only: outputs agree with NCHW to rounding, and
  the losses and metrics, which index by label and class, are unaffected.
- ``fast.compile``: ``nn.Module.compile()`` of the model in place (``torch.compile``; the
  parameter names, and so checkpoints, stay those of the plain model).

Mixed precision is Lightning's: ``trainer.precision=bf16-mixed`` (CPUs and GPUs) or
``16-mixed`` (GPUs), an autocast around every step. ``trainer=fast`` chooses it for the machine
(:func:`fast_precision`, the ``${segbench_fast_precision:...}`` resolver): on a GPU bf16 where
it has bf16 units, else fp16; on a CPU bf16 only where it has AMX tile units, the only CPUs on
which ``segbench bench`` measured bf16 faster than fp32 for every family (with avx512-bf16 alone,
FCN-8s and U-Net ran slower in bf16). The resolved precision is what the run records.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from functools import cache

import torch
from torch import Tensor, nn

__all__ = [
    "FAST_KEYS",
    "autocast_for",
    "check_fast",
    "cpu_flags",
    "fast_precision",
    "prepare_batch",
    "prepare_model",
]

FAST_KEYS = ("channels_last", "compile")


def check_fast(fast: Mapping | None) -> dict[str, bool]:
    """``fast`` as ``{key: bool}``; an unknown key or a non-boolean value is refused by name."""
    fast = dict(fast or {})
    unknown = sorted(set(fast) - set(FAST_KEYS))
    if unknown:
        raise ValueError(
            f"fast.{unknown[0]}: unknown speed option; the options are "
            f"{', '.join(f'fast.{k}' for k in FAST_KEYS)}"
        )
    for key, value in fast.items():
        if not isinstance(value, bool):
            raise ValueError(f"fast.{key}={value!r}: expected true or false")
    return {key: bool(fast.get(key, False)) for key in FAST_KEYS}


def prepare_model(model: nn.Module, fast: Mapping | None) -> nn.Module:
    """``model`` with the options of ``fast`` applied in place (and returned)."""
    fast = check_fast(fast)
    if fast["channels_last"]:
        model.to(memory_format=torch.channels_last)
    if fast["compile"]:
        model.compile()
    return model


def prepare_batch(images: Tensor, fast: Mapping | None) -> Tensor:
    """The input batch ``(B, 3, H, W)`` in the memory order the model expects."""
    if check_fast(fast)["channels_last"] and images.ndim == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images


def autocast_for(precision: str, device: torch.device) -> AbstractContextManager | None:
    """The autocast context Lightning opens for ``trainer.precision=precision`` on ``device``
    (``None`` for full precision), for loops that run outside Lightning (``segbench bench``)."""
    precision = str(precision)
    if precision.startswith("bf16") and "true" not in precision:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16") and "true" not in precision:
        return torch.autocast(device.type, dtype=torch.float16)
    return None


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it is not readable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def fast_precision(accelerator: str = "auto") -> str:
    """The fastest ``trainer.precision`` for ``accelerator`` on this machine (see the module
    docstring): ``bf16-mixed``, ``16-mixed`` or ``32-true``."""
    accelerator = str(accelerator)
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if cuda:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if "amx_bf16" in cpu_flags() else "32-true"
