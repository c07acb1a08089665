"""Per-image counts: what every figure of an evaluation is made of, kept image by image.

For each evaluated image and class, three pixel counts (ignore-index pixels left out):
``intersection`` (pixels of the class predicted as it), ``ground truth`` (pixels of the class)
and ``predicted`` (pixels predicted as the class). The figures of any set of images are
:func:`segbench.metrics.metrics_from_counts` of the counts summed over it, so the dataset-level
figures, their bootstrap intervals (:mod:`segbench.significance`) and paired comparisons of two
runs on the same images (``segbench compare``) all come from this one array.

The file, ``per_image.npz`` next to ``results.json`` (named there), holds:

* ``counts``: ``(N, 3, K)`` unsigned integers (the smallest of uint8/16/32/64 that holds
  them), ``[:, 0]`` intersection, ``[:, 1]`` ground truth, ``[:, 2]`` predicted;
* ``ids``: ``(N,)`` strings, each image's path relative to the dataset root (or its name);
* ``classes``: ``(K,)`` class names; ``split`` and ``dataset``: strings;
* each further per-image array of the evaluation's figures (:mod:`segbench.metrics.evaluator`):
  with the boundary figures (:mod:`segbench.metrics.boundary`), ``bf`` ``(N, K)`` float64, each
  class's BF F1 in each image (NaN where its ground truth lacks the class), and
  ``boundary_counts`` ``(N, 2, K)``, boundary IoU's intersection and union pixels; on Cityscapes
  with instance files, ``instance_classes`` and ``instance_categories`` (iIoU's sums).

Rows are in dataset order. Under DDP every rank records its own images and rank 0 gathers and
writes them once, so 1 and N processes write identical files.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from segbench.metrics.confusion import metrics_from_counts

__all__ = [
    "PER_IMAGE_FILE",
    "PerImage",
    "PerImageRecorder",
    "counts_digest",
    "image_counts",
    "image_id",
    "read_per_image",
    "summarize",
    "write_per_image",
]

PER_IMAGE_FILE = "per_image.npz"
_RESERVED = ("counts", "ids", "classes", "dataset", "split")


def image_counts(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None
) -> Tensor:
    """``(B, 3, K)`` int64 counts of each image of a batch: intersection, ground truth and
    predicted pixels per class, ``ignore_index`` pixels left out.

    Args:
        pred: predicted class indices ``(B, H, W)``.
        target: labels ``(B, H, W)`` in ``[0, K)`` or ``ignore_index`` (checked by
            :class:`~segbench.metrics.ConfusionMatrix` before).
    """
    batch, k = target.shape[0], num_classes
    target, pred = target.long().flatten(1), pred.long().flatten(1)
    keep = (
        target != ignore_index
        if ignore_index is not None
        else torch.ones_like(target, dtype=torch.bool)
    )
    offset = torch.arange(batch, device=target.device)[:, None] * k
    size = batch * k

    def count(values: Tensor, where: Tensor) -> Tensor:
        return torch.bincount((values + offset)[where], minlength=size).reshape(batch, k)

    hit = keep & (pred == target)
    return torch.stack([count(target, hit), count(target, keep), count(pred, keep)], dim=1)


class PerImageRecorder:
    """Collects the per-image counts of an evaluation on each process; :meth:`gather` joins
    every rank's rows in dataset order."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._index: list[int] = []
        self._names: list[str] = []
        self._counts: list[np.ndarray] = []
        self._extra: dict[str, list[np.ndarray]] = {}

    def add(
        self,
        indices: Tensor | list[int],
        names: list[str],
        counts: Tensor,
        extra: dict[str, Tensor] | None = None,
    ) -> None:
        """Record a batch: the images' dataset indices and names, their ``(B, 3, K)`` counts
        (:func:`image_counts`) and any further per-image arrays (``extra``: name -> ``(B,
        ...)``, e.g. the boundary figures of :mod:`segbench.metrics.boundary`), kept as they are."""
        indices = [int(i) for i in indices]
        if not len(indices) == len(names) == counts.shape[0]:
            raise ValueError(
                f"{len(indices)} indices, {len(names)} names and {counts.shape[0]} count rows"
            )
        extra = extra or {}
        if self._index and set(extra) != set(self._extra):
            raise ValueError(f"per-image arrays {sorted(extra)} after {sorted(self._extra)}")
        for name, value in extra.items():
            if value.shape[0] != len(indices):
                raise ValueError(f"{name}: {value.shape[0]} rows for {len(indices)} images")
            self._extra.setdefault(name, []).append(value.detach().cpu().numpy())
        self._index += indices
        self._names += [str(n) for n in names]
        self._counts.append(counts.detach().cpu().numpy().astype(np.int64))

    def gather(self, world_size: int = 1) -> tuple[list[str], np.ndarray]:
        """``(names, counts (N, 3, K))`` of every process's images, sorted by dataset index
        (:meth:`gather_all` without the further arrays)."""
        names, counts, _ = self.gather_all(world_size)
        return names, counts

    def gather_all(
        self, world_size: int = 1
    ) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
        """``(names, counts (N, 3, K), extra)`` of every process's images, sorted by dataset
        index; ``extra`` holds each further per-image array, its rows in the same order.

        With ``world_size > 1`` this is a collective: every rank must call it.

        Raises:
            RuntimeError: an image was evaluated twice (by two ranks, or twice on one).
        """
        rows = (self._index, self._names, self._counts, self._extra)
        if world_size > 1:
            parts: list = [None] * world_size
            torch.distributed.all_gather_object(parts, rows)
        else:
            parts = [rows]
        index = [i for p in parts for i in p[0]]
        names = [n for p in parts for n in p[1]]
        blocks = [c for p in parts for c in p[2]]
        if len(set(index)) != len(index):
            twice = sorted({i for i in index if index.count(i) > 1})[:5]
            raise RuntimeError(f"images {twice} were evaluated more than once")
        order = np.argsort(np.asarray(index, dtype=np.int64), kind="stable")
        counts = np.concatenate(blocks) if blocks else np.zeros((0, 3, 0), dtype=np.int64)
        keys = sorted({k for p in parts for k in p[3]})
        extra = {
            k: np.concatenate([b for p in parts for b in p[3].get(k, [])])[order] for k in keys
        }
        return [names[i] for i in order], counts[order], extra


def image_id(name: str, root: str | Path | None) -> str:
    """An image's id in the per-image file: its path relative to the dataset root when it lies
    under it (so that runs on copies of a dataset in other places compare), else ``name``."""
    if root is not None:
        try:
            return Path(name).resolve().relative_to(Path(root).resolve()).as_posix()
        except (ValueError, OSError):
            pass
    return str(name)


@dataclass(frozen=True)
class PerImage:
    """A per-image file's content.

    Args:
        ids: one id per image, in dataset order.
        counts: ``(N, 3, K)`` int64: intersection, ground truth, predicted pixels per class.
        classes: the class names.
        dataset: the dataset's name.
        split: the evaluated split.
        path: the file it was read from.
        extra: further per-image arrays (``bf (N, K)``, ``boundary_counts (N, 2, K)`` when the
            evaluation computed the boundary figures), rows in the same order.
    """

    ids: list[str]
    counts: np.ndarray
    classes: list[str]
    dataset: str
    split: str
    path: Path | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def figures(self) -> dict[str, Tensor]:
        """The dataset-level figures of all the images (:func:`metrics_from_counts`)."""
        total = torch.from_numpy(self.counts.sum(axis=0))
        return metrics_from_counts(total[0], total[1], total[2])


def _smallest_uint(counts: np.ndarray) -> np.ndarray:
    top = int(counts.max(initial=0))
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if top <= np.iinfo(dtype).max:
            return counts.astype(dtype)
    raise ValueError(f"a count of {top} pixels does not fit 64 bits")


def write_per_image(
    path: str | Path,
    ids: list[str],
    counts: np.ndarray,
    classes: list[str],
    dataset: str,
    split: str,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write the per-image file (compressed ``.npz``); refuses to overwrite one. ``extra``:
    further per-image arrays, one row per id, stored under their names."""
    path = Path(path)
    counts = np.asarray(counts)
    if counts.ndim != 3 or counts.shape[1] != 3 or counts.shape[2] != len(classes):
        raise ValueError(f"counts must be (N, 3, {len(classes)}), got {counts.shape}")
    if counts.shape[0] != len(ids):
        raise ValueError(f"{len(ids)} ids for {counts.shape[0]} rows of counts")
    if (counts < 0).any():
        raise ValueError("counts must be >= 0")
    extra = {k: np.asarray(v) for k, v in (extra or {}).items()}
    for name, value in extra.items():
        if name in _RESERVED or value.shape[:1] != (len(ids),):
            raise ValueError(f"per-image array {name!r}: a new name and {len(ids)} rows needed")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as f:  # never replaces an earlier run's file
        np.savez_compressed(
            f,
            counts=_smallest_uint(counts),
            ids=np.asarray(ids, dtype=str),
            classes=np.asarray(classes, dtype=str),
            dataset=np.asarray(dataset),
            split=np.asarray(split),
            **extra,
        )
    return path


def read_per_image(path: str | Path) -> PerImage:
    """Read a per-image file written by :func:`write_per_image`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a per-image file, or is inconsistent (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"per-image file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"counts", "ids", "classes"} - set(data.files)
            if missing:
                raise ValueError(f"lacks {', '.join(sorted(missing))}")
            counts = data["counts"].astype(np.int64)
            ids = [str(i) for i in data["ids"]]
            classes = [str(c) for c in data["classes"]]
            dataset = str(data["dataset"]) if "dataset" in data.files else "?"
            split = str(data["split"]) if "split" in data.files else "?"
            extra = {k: data[k] for k in data.files if k not in _RESERVED}
    except ValueError as err:
        raise ValueError(f"{path}: not a segbench per-image file ({err})") from err
    except (OSError, EOFError, zipfile.BadZipFile) as err:  # not a zip, or cut short
        raise ValueError(f"{path}: cannot be read as a per-image file ({err})") from err
    if counts.ndim != 3 or counts.shape[1:] != (3, len(classes)) or counts.shape[0] != len(ids):
        raise ValueError(
            f"{path}: counts {counts.shape} do not match {len(ids)} ids and {len(classes)} "
            "classes (expected (ids, 3, classes))"
        )
    for name, value in extra.items():
        if value.shape[:1] != (len(ids),):
            raise ValueError(f"{path}: {name} has {value.shape[0]} rows for {len(ids)} ids")
    return PerImage(ids, counts, classes, dataset, split, path, extra)


def counts_digest(ids: list[str], counts: np.ndarray) -> str:
    """A digest of the ordered ids and their counts (``sha256:<hex>``), which ``results.json``
    records: a per-image file whose rows were reordered, or swapped between images, no longer
    matches it (the dataset figures would not show it: they are sums)."""
    h = hashlib.sha256()
    for image_id, row in zip(ids, np.asarray(counts, dtype=np.int64)):
        h.update(str(image_id).encode("utf-8") + b"\0" + row.tobytes())
    return f"sha256:{h.hexdigest()}"


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def summarize(ids: list[str], counts: np.ndarray, worst: int = 5) -> dict:
    """Per-image figures for ``results.json``: mean and median per-image mIoU (over the images
    that have a valid pixel; each image's mIoU over the classes present in its ground truth or
    prediction) and the ``worst`` images by mIoU with their ids."""
    c = torch.from_numpy(np.asarray(counts, dtype=np.int64))
    miou = metrics_from_counts(c[:, 0], c[:, 1], c[:, 2])["mIoU"].numpy()
    defined = ~np.isnan(miou)
    values = miou[defined]
    order = np.argsort(np.where(defined, miou, np.inf), kind="stable")[: min(worst, len(values))]
    return {
        "images": int(len(ids)),
        "digest": counts_digest(ids, counts),
        "images_without_valid_pixels": int((~defined).sum()),
        "mean_mIoU": _finite(float(values.mean())) if len(values) else None,
        "median_mIoU": _finite(float(np.median(values))) if len(values) else None,
        "worst": [{"id": ids[i], "mIoU": float(miou[i])} for i in order],
    }
