"""Training order and augmentation as pure functions of ``(seed, epoch, index)``.

Every random draw of the training data is fixed by the run seed, the epoch and the sample:

- the order of an epoch is a permutation drawn from ``(seed, epoch)`` (then split between
  the DDP ranks);
- the augmentation of a sample (albumentations' own generators) is reseeded from
  ``(seed, epoch, index)`` just before it is applied, in whichever loader worker draws it.

So the figures do not depend on ``num_workers`` nor on which worker loads which sample, and
a run resumed mid-epoch picks up the exact remaining samples, augmented exactly as they
would have been: the loader's whole state is ``(epoch, batches consumed)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["EpochSampler", "ResumableLoader", "SeededView", "derive_seed"]


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer ``keys`` (SeedSequence hashing: nearby keys give unrelated
    seeds)."""
    words = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int(words[0]) << 31 | int(words[1]) >> 1


class EpochSampler(DistributedSampler):
    """Yields ``(index, epoch)`` pairs: a seeded permutation per epoch, sharded over ranks.

    Like ``DistributedSampler`` (which it subclasses so that Lightning keeps it under DDP),
    the permutation is padded by repeating its start so that every rank gets as many
    samples. :meth:`resume` makes the next pass of an epoch skip the samples already
    consumed.

    Args:
        dataset: the training dataset.
        seed: the run seed.
        num_replicas, rank: the DDP world size and this process's rank.
        shuffle: permute each epoch (else the dataset order).
    """

    def __init__(
        self, dataset, seed: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self._skip: tuple[int, int] | None = None  # (epoch, samples of this rank to skip)

    def order(self, epoch: int) -> list[int]:
        """The sample indices this rank reads in ``epoch``."""
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            indices = torch.randperm(n, generator=g).tolist()
        else:
            indices = list(range(n))
        total = math.ceil(n / self.num_replicas) * self.num_replicas
        indices += indices[: total - n]
        return indices[self.rank : total : self.num_replicas]

    def resume(self, epoch: int, samples: int) -> None:
        """Read ``epoch`` without its first ``samples`` samples: every pass over it (Lightning
        may start one and drop it after a restore) until another epoch is set."""
        self.set_epoch(epoch)
        self._skip = (epoch, samples)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self._skip is not None and self._skip[0] != epoch:
            self._skip = None

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        start = self._skip[1] if self._skip is not None and self._skip[0] == epoch else 0
        return iter([(i, epoch) for i in self.order(epoch)[start:]])

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.num_replicas)


class SeededView(Dataset):
    """A training dataset read by ``(index, epoch)``: the sample's augmentation is reseeded
    from ``(seed, epoch, index)`` before it is loaded.

    Args:
        dataset: a dataset whose ``transform`` has ``reseed(seed)``
            (:class:`~segbench.data.transforms.SegTransform`).
        seed: the run seed.
    """

    def __init__(self, dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, epoch = key
        transform = getattr(self.dataset, "transform", None)
        if transform is not None and hasattr(transform, "reseed"):
            transform.reseed(derive_seed(self.seed, epoch, index))
        return self.dataset[index]


class ResumableLoader(DataLoader):
    """A training loader whose position Lightning saves in the checkpoint and restores.

    Its state is ``{"epoch", "batches"}``: the batches of that epoch that training has
    finished, read from ``progress()`` (the loop's count, not this loader's, which runs
    ahead by what the workers prefetch).

    Args:
        progress: returns ``(epoch, batches finished in it)`` when a checkpoint is written.
        *args, **kwargs: those of ``DataLoader``; the sampler must be an
            :class:`EpochSampler`.
    """

    def __init__(self, *args, progress: Callable[[], tuple[int, int]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochSampler):
            raise TypeError("ResumableLoader needs an EpochSampler")
        self.progress = progress

    def state_dict(self) -> dict:
        epoch, batches = self.progress()
        return {"epoch": int(epoch), "batches": int(batches)}

    def load_state_dict(self, state: dict) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # the epoch was finished: the next one starts from its start
            epoch, batches = epoch + 1, 0
        self.sampler.resume(epoch, batches * self.batch_size)
