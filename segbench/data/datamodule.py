"""One LightningDataModule for every dataset: splits, loaders, and exact distributed evaluation."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, DistributedSampler, Subset

from segbench.data.base import SegmentationDataset
from segbench.data.errors import DataError
from segbench.data.labels import format_problems
from segbench.data.sampling import EpochSampler, ResumableLoader, SeededView, derive_seed
from segbench.data.transforms import IMAGENET_MEAN, IMAGENET_STD, SegTransform, collate

__all__ = ["CACHE_MODES", "SegDataModule", "ShardSampler", "auto_workers", "available_memory"]

CACHE_MODES = ("auto", "ram", "none")
AUTO_CACHE_SHARE = 0.25  # dataset.cache=auto: cache a split when it fits in this share


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
        num_workers: loader worker processes; ``None``: chosen from the usable cores
            (:func:`auto_workers`).
        mean, std: normalisation, in [0, 1] units.
        train_transform: augmentation of the training split, the keyword arguments of
            :class:`~segbench.data.transforms.SegTransform` (scale, crop, hflip, jitter, resize).
        eval_transform: the same for validation and test; by default nothing (the original
            resolution).
        pin_memory: pin host memory when training on a GPU.
        check_on_setup: validate every sample of a split (sizes, label values) when it is
            first opened, so that bad data stops the run before training starts.
        subset: ``{split: n}``: keep only the first ``n`` samples of those splits (quick runs,
            ``debug=fast``); ``None``: every sample.
        seed: the run seed, which fixes the training order and every augmentation
            (:mod:`segbench.data.sampling`); the engine sets it from the run's ``seed``.
        cache: ``ram``: decode every sample of the splits read at every epoch (train, val)
            once, when the split is first opened, and keep them in memory (the loader then only
            augments; a split read once, such as test, gains nothing and is not cached);
            ``none``: read the files at every epoch; ``auto``: ``ram`` for each split whose
            decoded size fits in a quarter of the memory available then (CamVid: 0.19 GB for
            its 468 images), else ``none``. Generated datasets (shapes) cache their scenes.
            Figures do not depend on it: the cache holds exactly what the files decode to.
        figures: the evaluation figures this dataset's protocol adds to ``evaluation.figures``
            (factories of :class:`segbench.metrics.Figure` by name; Cityscapes: category IoU and
            iIoU), computed by every evaluation on it.
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
        subset: Mapping[str, int] | None = None,
        seed: int = 0,
        cache: str = "none",
        figures: Mapping[str, Callable] | None = None,
    ) -> None:
        super().__init__()
        if cache not in CACHE_MODES:
            raise ValueError(
                f"dataset {name!r}: cache={cache!r}; expected one of {', '.join(CACHE_MODES)}"
            )
        if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 0):
            raise ValueError(
                f"dataset {name!r}: num_workers={num_workers!r}; expected an integer >= 0, or "
                "null to choose from the cores"
            )
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
        self.num_workers = auto_workers() if num_workers is None else num_workers
        self.cache = cache
        self.cached_bytes: dict[str, int] = {}  # split -> bytes held in memory
        # evaluated split -> why its samples carry no instance ids (Cityscapes' iIoU), None
        # when they do; absent for datasets without instances
        self.instance_notes: dict[str, str | None] = {}
        self.train_transform = SegTransform(ignore_index, mean, std, **(train_transform or {}))
        self.eval_transform = SegTransform(ignore_index, mean, std, **(eval_transform or {}))
        self.pin_memory = pin_memory
        self.check_on_setup = check_on_setup
        self.subset = dict(subset or {})
        for split, n in self.subset.items():
            # train/val/test may be named for a dataset without that split (debug=fast)
            known = split in self.splits or split in ("train", "val", "test")
            if not known or not isinstance(n, int) or n < 1:
                raise ValueError(
                    f"dataset {name!r}: subset.{split}={n!r}; expected a split of {self.splits} "
                    "and a number of samples >= 1"
                )
        self.seed = seed
        self.figures = dict(figures or {})
        self.resume_position: dict | None = None  # the training loader's, from a checkpoint
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
            if split in self.subset and self.subset[split] < len(ds):
                ds = _First(ds, self.subset[split])
            if self.check_on_setup:
                ds.check_all(desc=f"checking {self.name}/{split}")
            self._cache_split(split, ds)
            self._instances(split, ds)
            self._datasets[split] = ds
        return self._datasets[split]

    def _instances(self, split: str, ds) -> None:
        """Whether the samples of an evaluated split of a dataset with instance files
        (Cityscapes) can carry their instance ids: every sample has its file and the labels
        keep their size (``instance_notes``: why not)."""
        base = ds.dataset if isinstance(ds, _First) else ds
        if split == "train" or not hasattr(base, "instances_missing"):
            return
        why = base.instances_missing()
        if why is None and getattr(self.eval_transform, "resize", None) is not None:
            why = "dataset.eval_transform.resize changes the labels' size"
        self.instance_notes[split] = why

    def carry_instances(self, split: str, on: bool = True) -> bool:
        """Let ``split``'s samples carry their instance ids (for the final evaluation only:
        validation reads no instance file), where they can; returns whether they do."""
        ds = self.dataset(split)
        base = ds.dataset if isinstance(ds, _First) else ds
        able = split in self.instance_notes and self.instance_notes[split] is None
        if hasattr(base, "with_instances"):
            base.with_instances = bool(on and able)
        return bool(on and able)

    def _cache_split(self, split: str, ds) -> None:
        """Fill the in-memory cache of ``split`` as ``cache`` says."""
        if self.cache == "none" or len(ds) == 0 or split not in ("train", "val"):
            return  # only the splits read at every epoch
        base = ds.dataset if isinstance(ds, _First) else ds
        indices = range(len(ds))
        if self.cache == "auto":
            need = base.sample_bytes() * len(ds)
            budget = AUTO_CACHE_SHARE * available_memory()
            if need > budget:
                rank_zero_info(
                    f"{self.name}/{split}: not cached in memory (dataset.cache=auto): about "
                    f"{need / 1e9:.2f} GB decoded, over a quarter of the available memory "
                    f"({budget / 1e9:.2f} GB)"
                )
                return
        held = base.fill_cache(indices, self.num_workers, desc=f"caching {self.name}/{split}")
        self.cached_bytes[split] = held
        rank_zero_info(
            f"{self.name}/{split}: {len(ds)} samples cached in memory ({held / 1e9:.2f} GB)"
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.dataset("train")
            self.dataset("val")

    def _loader_args(self) -> dict:
        trainer = self.trainer
        return {
            "num_workers": self.num_workers,
            "collate_fn": collate,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": self.pin_memory
            and trainer is not None
            and trainer.strategy.root_device.type == "cuda",
            # the workers' base seed comes from here, not from the global torch generator, so
            # that creating a loader never shifts the draws of training (dropout, ...)
            "generator": torch.Generator().manual_seed(derive_seed(self.seed, 1)),
        }

    def train_dataloader(self) -> DataLoader:
        """The training loader: order and augmentation fixed by ``(seed, epoch, index)``, and
        its position saved in checkpoints (:mod:`segbench.data.sampling`)."""
        ds = self.dataset("train")
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        sampler = EpochSampler(ds, self.seed, num_replicas=world, rank=rank)
        loader = ResumableLoader(
            SeededView(ds, self.seed),
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=len(sampler) > self.batch_size,
            progress=self._progress,
            **self._loader_args(),
        )
        if self.resume_position is not None:
            # set by the engine from the checkpoint: Lightning restores a loader's state only
            # if the loader is built after the restore, and the schedule's step count
            # (``estimated_stepping_batches``) builds it before
            loader.load_state_dict(self.resume_position)
            self.resume_position = None
        return loader

    def _progress(self) -> tuple[int, int]:
        """``(epoch, batches of it finished)`` of the training loop, for checkpoints."""
        loop = self.trainer.fit_loop
        batches = loop.epoch_loop.batch_progress.current.completed
        return loop.epoch_progress.current.processed, batches

    def _eval_loader(self, split: str) -> DataLoader:
        ds = self.dataset(split)
        sampler = None
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            sampler = ShardSampler(ds, trainer.world_size, trainer.global_rank)
        return DataLoader(
            ds, batch_size=self.eval_batch_size, sampler=sampler, **self._loader_args()
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.eval_split)


def available_memory() -> int:
    """Bytes of memory available to new allocations now (``MemAvailable``)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def auto_workers() -> int:
    """Loader workers for ``num_workers: null``: half the cores this process may use (the
    other half runs the step's threads), at least 1 and at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores // 2))


class _First(Subset):
    """The first ``n`` samples of a dataset, which still answers like it (``describe()``,
    ``num_classes``, ``check_all()``, ...)."""

    def __init__(self, dataset: SegmentationDataset, n: int) -> None:
        super().__init__(dataset, range(n))

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (unpickling in a loader worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)
