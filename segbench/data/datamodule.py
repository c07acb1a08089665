"""One LightningDataModule for every dataset: splits, loaders, and exact distributed evaluation."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader, DistributedSampler

from segbench.data.base import DataError, SegmentationDataset, format_problems
from segbench.data.transforms import IMAGENET_MEAN, IMAGENET_STD, SegTransform, collate

__all__ = ["SegDataModule", "ShardSampler"]


class ShardSampler(DistributedSampler):
    """Evaluation sampler: rank ``r`` of ``W`` reads indices ``r, r + W, ...``, each exactly once.

    ``DistributedSampler`` pads the index list so that all ranks see the same number of
    samples, which counts some images twice; metrics summed over ranks would then differ
    from a single-process run. This sampler never pads. (It subclasses DistributedSampler
    so that Lightning leaves it in place.)
    """

    def __init__(self, dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class SegDataModule(pl.LightningDataModule):
    """Builds the dataset splits and their loaders.

    Args:
        name: dataset name as it appears in results and tables.
        source: factory ``(split=..., transform=...) -> SegmentationDataset``.
        num_classes: number of classes (the single source of truth for the whole run).
        ignore_index: label ignored by losses and metrics.
        class_names: one name per class.
        palette: one RGB triple per class, for overlays.
        splits: the splits this dataset has.
        eval_split: the split a training run is finally evaluated on.
        batch_size: training batch size per process.
        eval_batch_size: evaluation batch size per process.
        num_workers: loader worker processes.
        mean, std: normalisation, in [0, 1] units.
        train_transform: augmentation of the training split, the keyword arguments of
            :class:`~segbench.data.transforms.SegTransform` (scale, crop, hflip, jitter, resize).
        eval_transform: the same for validation and test; by default nothing (the original
            resolution).
        pin_memory: pin host memory when training on a GPU.
        check_on_setup: validate every sample of a split (sizes, label values) when it is
            first opened, so that bad data stops the run before training starts.
    """

    def __init__(
        self,
        name: str,
        source: Callable[..., SegmentationDataset],
        num_classes: int,
        ignore_index: int,
        class_names: Sequence[str],
        palette: Sequence[Sequence[int]] | None = None,
        splits: Sequence[str] = ("train", "val", "test"),
        eval_split: str = "val",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        train_transform: Mapping[str, Any] | None = None,
        eval_transform: Mapping[str, Any] | None = None,
        pin_memory: bool = True,
        check_on_setup: bool = False,
    ) -> None:
        super().__init__()
        if len(class_names) != num_classes:
            raise ValueError(
                f"dataset {name!r}: {len(class_names)} class_names given for "
                f"num_classes={num_classes}"
            )
        if palette is not None and len(palette) != num_classes:
            raise ValueError(
                f"dataset {name!r}: palette has {len(palette)} colours, "
                f"expected num_classes={num_classes}"
            )
        for split in ("train", "val", eval_split):
            if split not in splits:
                raise ValueError(f"dataset {name!r} has no {split!r} split (it has {list(splits)})")
        self.name = name
        self.source = source
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names)
        self.palette = [list(c) for c in palette] if palette is not None else None
        self.splits = list(splits)
        self.eval_split = eval_split
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.train_transform = SegTransform(ignore_index, mean, std, **(train_transform or {}))
        self.eval_transform = SegTransform(ignore_index, mean, std, **(eval_transform or {}))
        self.pin_memory = pin_memory
        self.check_on_setup = check_on_setup
        self._datasets: dict[str, SegmentationDataset] = {}

    def dataset(self, split: str) -> SegmentationDataset:
        """The dataset of ``split`` (built once)."""
        if split not in self.splits:
            raise ValueError(f"dataset {self.name!r} has no {split!r} split (it has {self.splits})")
        if split not in self._datasets:
            transform = self.train_transform if split == "train" else self.eval_transform
            ds = self.source(split=split, transform=transform)
            if ds.num_classes != self.num_classes:
                raise ValueError(
                    f"dataset {self.name!r}/{split} has {ds.num_classes} classes, "
                    f"config says num_classes={self.num_classes}"
                )
            if ds.layout_problems:  # images without masks and vice versa: never skipped
                raise DataError(format_problems(ds.describe(), ds.layout_problems))
            if self.check_on_setup:
                ds.check_all(desc=f"checking {self.name}/{split}")
            self._datasets[split] = ds
        return self._datasets[split]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.dataset("train")
            self.dataset("val")

    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = self.dataset(split)
        sampler = None
        trainer = self.trainer
        if not train and trainer is not None and trainer.world_size > 1:
            sampler = ShardSampler(ds, trainer.world_size, trainer.global_rank)
        return DataLoader(
            ds,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            sampler=sampler,
            drop_last=train and len(ds) > self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory
            and trainer is not None
            and trainer.strategy.root_device.type == "cuda",
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_split, train=False)
