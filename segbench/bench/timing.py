"""How ``segbench bench`` times a model (:mod:`segbench.bench.speed`): the settings it runs in
(:data:`VARIANTS`), a model with its optimizer and batch in one setting (:class:`Setup`),
timings ended by a device sync, rounds taken in turns so that the machine's drift hits every
side alike, and the peak tensor memory of a step."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from segbench.inference.fast import autocast_for

__all__ = [
    "VARIANTS",
    "Setup",
    "in_turns",
    "peak_memory",
    "pick_device",
    "quiet_stderr",
    "random_batch",
    "sync",
    "timed",
]

# name -> (precision as trainer.precision names it, channels_last, compile)
VARIANTS: dict[str, tuple[str, bool, bool]] = {
    "fp32": ("32-true", False, False),
    "bf16": ("bf16-mixed", False, False),
    "fp16": ("16-mixed", False, False),
    "channels_last": ("32-true", True, False),
    "bf16+channels_last": ("bf16-mixed", True, False),
    "compile": ("32-true", False, True),
    "bf16+channels_last+compile": ("bf16-mixed", True, True),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Setup:
    """A model, its optimizer and a batch in one variant's setting."""

    def __init__(
        self,
        make_model: Callable[[], nn.Module],
        loss: nn.Module,
        variant: str,
        images: Tensor,
        masks: Tensor,
        device: torch.device,
    ) -> None:
        precision, channels_last, compiled = VARIANTS[variant]
        torch.manual_seed(0)
        model = make_model().to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        if compiled:
            model.compile()
        self.model, self.loss = model, loss
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.images, self.masks, self.device = images, masks, device
        self.autocast = autocast_for(precision, device)

    def step(self) -> None:
        self.model.train()
        with self.autocast if self.autocast is not None else nullcontext():
            out = self.model(self.images)
            out = out["out"] if isinstance(out, dict) else out
            loss = self.loss(out, self.masks)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def predict(self, images: Tensor) -> Tensor:
        with self.autocast if self.autocast is not None else nullcontext():
            out = self.model(images)
        return out["out"] if isinstance(out, dict) else out


def timed(fn: Callable[[], None], n: int, device: torch.device) -> float:
    """Seconds for ``n`` calls of ``fn``."""
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return time.perf_counter() - start


@contextmanager
def quiet_stderr():
    """File descriptor 2 to /dev/null for the block (the profiler's C++ start/stop lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(setup: Setup) -> int | None:
    """Peak memory of tensors during one training step in ``setup``, in bytes, above what was
    allocated before it: on GPU the allocator's ``max_memory_allocated``; on CPU the running
    sum of the allocations and frees the profiler records (``profile_memory``) in time order,
    the same quantity for the CPU allocator."""
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(setup.device)
        base = torch.cuda.memory_allocated(setup.device)
        setup.step()
        sync(setup.device)
        return torch.cuda.max_memory_allocated(setup.device) - base
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        setup.step()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def random_batch(cfg: DictConfig, batch: int, size: tuple[int, int], device: torch.device):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, *size, generator=g).to(device)
    masks = torch.randint(0, cfg.dataset.num_classes, (batch, *size), generator=g).to(device)
    return images, masks


def in_turns(
    names: list[str], run_one: Callable[[str], float], repeats: int
) -> dict[str, list[float]]:
    """``run_one(name)`` for every name, ``repeats`` rounds in turn."""
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeats):
        for name in names:
            times[name].append(run_one(name))
    return times
