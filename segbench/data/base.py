"""The dataset contract (:class:`SegmentationDataset`: loading, checking every sample once and
remembering the scan, the in-memory cache) and datasets of image/mask file pairs
(:class:`FilePairDataset`). The checks of one sample are in :mod:`segbench.data.labels`, the
reading of files in :mod:`segbench.data.files`."""

from __future__ import annotations

import hashlib
import json
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from segbench.data.cache import cache_dir, recall, remember
from segbench.data.errors import DataError, DataWarning
from segbench.data.files import image_shape, read_image, read_label_png
from segbench.data.labels import format_problems, label_values, sample_problems, validate_sample
from segbench.data.masks import binary_encoding, smoothed_labels

__all__ = ["FilePairDataset", "SampleCheck", "SegmentationDataset"]

# part of every remembered-scan key: a scan that passed before the checks grew is run again
SCAN_VERSION = 2


def _json(text: str | None) -> dict | None:
    """A cache entry's JSON object, or ``None`` (none, or not one)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class SampleCheck(NamedTuple):
    """What :meth:`SegmentationDataset.check` found in one sample."""

    problems: list[str]  # errors, each naming the sample's file
    values: np.ndarray  # distinct label values (after conversion) ...
    counts: np.ndarray  # ... and their pixel counts
    name: str  # how messages name the sample (its mask file)
    suspicions: list[str]  # probably wrong but possibly legitimate: warnings, not errors
    encoding: str | None = None  # binary_encoding() of its labels (after conversion)


class SegmentationDataset(Dataset, ABC):
    """Base class: subclasses implement ``load(i) -> (image, mask, name)``.

    ``image`` is ``uint8 (H, W, 3)``, ``mask`` an integer ``(H, W)`` label map with values in
    ``[0, num_classes)`` or ``ignore_index``. Every sample is checked before it is used, and a
    bad one stops the run with an error naming it: nothing is skipped silently. After
    :meth:`check_all` has passed, loading no longer repeats the check. Data that is probably
    wrong but may be legitimate gets a :class:`DataWarning` instead (e.g. a mask that looks
    JPEG-compressed while its values are valid labels).

    Args:
        num_classes: number of classes of the dataset.
        ignore_index: label value that is ignored by losses and metrics.
        transform: callable ``(image, mask) -> (image_tensor, mask_tensor)``.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None,
        transform: Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]
        | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.transform = transform
        self.verified = False  # set by check_all(): every sample has passed the checks
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, str]] | None = None  # fill_cache()
        # problems of the on-disk layout found while listing the files (images without
        # masks and vice versa, split lists that leak); subclasses fill it in their constructor
        self.layout_problems: list[str] = []
        # every DataWarning this dataset emitted (warn()), and those of its last scan
        self.data_warnings: list[str] = []
        self.scan_warnings: list[str] = []

    @abstractmethod
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Read sample ``index`` as ``(image uint8 (H, W, 3), mask (H, W), name)``."""

    def check(self, index: int, full: bool = False) -> SampleCheck:
        """Problems of sample ``index``, its label histogram, and its suspicions.

        ``full`` also decodes every image completely (datasets may read only headers
        otherwise).
        """
        image, mask, name = self.load(index)
        values, counts = label_values(mask)
        problems = sample_problems(image.shape, mask, self.num_classes, self.ignore_index, name)
        return SampleCheck(problems, values, counts, name, [], binary_encoding(values))

    def dataset_problems(
        self, pixels: dict[int, int], encodings: dict[str, list[str]] | None = None
    ) -> list[str]:
        """Problems visible only over the whole split, from its label histogram ``pixels``
        and the samples of each :func:`binary_encoding` (``encodings``: kind -> names)."""
        foreground = sum(n for v, n in pixels.items() if 0 < v < self.num_classes)
        if self.ignore_index == 255 and pixels.get(255, 0) > 0 and foreground == 0:
            return [
                f"{self.describe()}: masks hold only 0 and 255, no label in [1, "
                f"{self.num_classes}): binary masks stored as 0/255? 255 is the ignore index, so "
                "the foreground would never be learned; store it as 1"
            ]
        encodings = encodings or {}
        ones, whites = encodings.get("0/1", []), encodings.get("0/255", [])
        binary = not any(1 < v < self.num_classes for v, n in pixels.items() if n)
        if self.ignore_index == 255 and binary and ones and whites and not encodings.get("1+255"):
            # no mask uses 255 next to the foreground 1: the 0/255 ones are the other encoding
            return [
                f"{self.describe()}: binary masks in two encodings: {len(ones)} hold 0/1 "
                f"({_examples(ones)}) and {len(whites)} hold 0/255 ({_examples(whites)}); 255 "
                "is the ignore index, so the foreground of the 0/255 masks would be ignored, "
                "never learned: store the foreground as 1 in every mask"
            ]
        return []

    def describe(self) -> str:
        """How errors name this dataset (its root directory where it has one)."""
        root = getattr(self, "root", None)
        split = getattr(self, "split", None)
        return f"{root or type(self).__name__}{f' [{split}]' if split else ''}"

    def warn(self, message: str) -> None:
        """Emit ``message`` as a :class:`DataWarning` and add it to :attr:`data_warnings`."""
        self.data_warnings.append(message)
        warnings.warn(message, DataWarning, stacklevel=3)

    def scan(self, full: bool = False, desc: str = "checking labels") -> list[str]:
        """Every problem of this split: layout, each sample, and split-wide (none: clean).

        Suspicious samples (:attr:`SampleCheck.suspicions`) are not problems: they are emitted
        together as one :class:`DataWarning`.
        """
        problems = list(self.layout_problems)
        pixels: dict[int, int] = {}
        encodings: dict[str, list[str]] = {}
        suspicions: list[str] = []
        for index in tqdm(range(len(self)), desc=desc, leave=False, disable=len(self) < 50):
            try:
                found = self.check(index, full=full)
            except DataError as err:  # unreadable or missing file: report it, go on
                problems.append(str(err))
                continue
            problems.extend(found.problems)
            suspicions.extend(found.suspicions)
            if found.encoding is not None:
                encodings.setdefault(found.encoding, []).append(found.name)
            for v, n in zip(found.values.tolist(), found.counts.tolist()):
                pixels[v] = pixels.get(v, 0) + n
        if len(self):
            problems.extend(self.dataset_problems(pixels, encodings))
        self.scan_warnings = []
        if suspicions:
            self.scan_warnings.append(
                format_problems(self.describe(), suspicions, limit=5, what="warning")
            )
        for message in self.scan_warnings:
            self.warn(message)
        return problems

    def scan_key(self) -> str | None:
        """A key that changes whenever the files or the label settings change, under which a
        passed scan is remembered; ``None``: never remembered (checked every time)."""
        return None

    def check_all(self, desc: str = "checking labels") -> None:
        """Scan every sample (with a progress bar) and raise :class:`DataError` listing every
        problem. A passed scan is remembered in the cache until the files change, together
        with its warnings, which are emitted again when the remembered scan stands in for it."""
        key = self.scan_key()
        stamp = cache_dir() / "checked" / f"{key}.json" if key else None
        remembered = _json(recall(stamp))
        if remembered is None:
            problems = self.scan(desc=desc)
            if problems:
                raise DataError(format_problems(self.describe(), problems))
            if stamp is not None:
                record = {
                    "dataset": self.describe(),
                    "samples": len(self),
                    "warnings": self.scan_warnings,
                }
                remember(stamp, json.dumps(record))
        else:
            self.scan_warnings = []
            for message in remembered.get("warnings", []):
                self.warn(message)
                self.scan_warnings.append(message)
        self.verified = True

    def fill_cache(self, indices: Sequence[int], workers: int = 0, desc: str = "caching") -> int:
        """Decode samples ``indices`` once and keep them in memory: later reads of them skip
        the files (and, for generated datasets, the generation). Each sample is checked as it
        is first read, as without the cache. ``workers`` processes decode in parallel. Returns
        the bytes held. Loader workers forked afterwards share the cache (copy-on-write)."""
        from torch.utils.data import DataLoader

        cache: dict[int, tuple[np.ndarray, np.ndarray, str]] = {}
        loader = DataLoader(
            _Raw(self, list(indices)),
            batch_size=None,
            num_workers=workers,
            collate_fn=_identity,
        )
        for index, sample in tqdm(loader, total=len(indices), desc=desc, leave=False):
            cache[index] = sample
        self._cache = cache
        return sum(im.nbytes + mask.nbytes for im, mask, _ in cache.values())

    def sample_bytes(self, count: int = 4) -> int:
        """The decoded size of one sample (image and mask), from the first ``count``."""
        if len(self) == 0:
            return 0
        picks = range(min(count, len(self)))
        sizes = [sum(a.nbytes for a in self.load(i)[:2]) for i in picks]
        return int(np.ceil(sum(sizes) / len(sizes)))

    def __getitem__(self, index: int) -> dict:
        cached = self._cache.get(index) if self._cache is not None else None
        if cached is not None:  # checked when it was cached (fill_cache)
            image, mask, name = cached
        else:
            image, mask, name = self.load(index)
            if not self.verified:  # a full scan already checked it: keep the hot path lean
                validate_sample(image.shape, mask, self.num_classes, self.ignore_index, name)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return {"image": image, "mask": mask, "name": name, "index": index}


class _Raw(Dataset):
    """``(index, dataset.load(index))`` of some indices, checked as ``__getitem__`` checks them
    (what :meth:`SegmentationDataset.fill_cache` reads)."""

    def __init__(self, dataset: SegmentationDataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        ds, index = self.dataset, self.indices[i]
        image, mask, name = ds.load(index)
        if not ds.verified:
            validate_sample(image.shape, mask, ds.num_classes, ds.ignore_index, name)
        return index, (image, mask, name)


def _identity(sample):
    return sample


def _examples(names: Sequence[str], shown: int = 3) -> str:
    """``e.g. a, b, c`` of the first ``shown`` of ``names``."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"e.g. {', '.join(names[:shown])}{more}" if len(names) > 1 else names[0]


class FilePairDataset(SegmentationDataset):
    """Images and label masks stored as files, listed in ``self.items`` as
    ``(image_path, mask_path)`` pairs by the subclass constructor.

    Subclasses that store labels differently override :meth:`read_raw_mask` (e.g. SBD's
    ``.mat`` files) and :meth:`convert_mask` (e.g. Cityscapes label ids → train ids), and put
    the classic mistakes of their format in :meth:`diagnose`.
    """

    items: list[tuple[Path, Path]]

    def __len__(self) -> int:
        return len(self.items)

    def read_raw_mask(self, path: Path) -> np.ndarray:
        """The label file as stored on disk."""
        return read_label_png(path)

    def convert_mask(self, raw: np.ndarray) -> np.ndarray:
        """Stored labels → training labels in ``[0, num_classes)`` or ``ignore_index``."""
        return raw

    def diagnose(self, raw: np.ndarray, path: Path) -> list[str]:
        """Format-specific mistakes visible in one stored label file (messages name ``path``)."""
        return []

    def label_settings(self) -> tuple:
        """Settings that change :meth:`convert_mask` (part of the remembered-scan key)."""
        return ()

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        image_path, mask_path = self.items[index]
        image = read_image(image_path)
        return image, self.convert_mask(self.read_raw_mask(mask_path)), str(mask_path)

    def check(self, index: int, full: bool = False) -> SampleCheck:
        """As :meth:`SegmentationDataset.check`, reading only the image's header (and end
        marker, :func:`image_shape`) unless ``full``; the stored labels are also looked at
        for smoothing (:func:`smoothed_labels`)."""
        image_path, mask_path = self.items[index]
        shape = read_image(image_path).shape if full else image_shape(image_path)
        raw = self.read_raw_mask(mask_path)
        problems = self.diagnose(raw, mask_path)
        mask = self.convert_mask(raw)
        values, counts = label_values(mask)
        smoothed = smoothed_labels(raw, str(mask_path))
        hint = " (the mask looks smoothed: see the message after this one)" if smoothed else None
        problems += sample_problems(
            shape, mask, self.num_classes, self.ignore_index, str(mask_path), hint=hint
        )
        suspicions = []
        if smoothed is not None:  # explains the errors of a file that has some
            (problems if problems else suspicions).append(smoothed)
        return SampleCheck(
            problems, values, counts, str(mask_path), suspicions, binary_encoding(values)
        )

    def scan_key(self) -> str | None:
        digest = hashlib.sha1()
        settings = (
            SCAN_VERSION,
            type(self).__qualname__,
            self.num_classes,
            self.ignore_index,
            self.label_settings(),
        )
        digest.update(repr(settings).encode())
        for pair in self.items:
            for path in pair:
                try:
                    st = Path(path).stat()
                except OSError:
                    return None  # a missing file: scan (and report it) every time
                digest.update(f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        return digest.hexdigest()
