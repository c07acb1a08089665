"""The dataset contract, datasets of image/mask file pairs, and the label checks shared by
loading, training and ``segbench check``."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from segbench.data.cache import cache_dir

__all__ = [
    "DataError",
    "FilePairDataset",
    "SegmentationDataset",
    "format_problems",
    "label_values",
    "sample_problems",
    "validate_sample",
]


class DataError(ValueError):
    """Bad data on disk; the message names the file(s) and says what was expected."""


def label_values(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of ``mask`` and their pixel counts (a histogram for 8-bit masks)."""
    if mask.dtype == np.uint8:  # runs for every loaded sample: O(n), unique() sorts
        counts = np.bincount(mask.ravel(), minlength=256)
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(mask, return_counts=True)


def _label_hint(values: np.ndarray, num_classes: int) -> str:
    """A likely cause of out-of-range labels, from the values seen."""
    present = set(values.tolist())
    if present <= {0, 255} and 255 in present:
        return " (a binary mask stored as 0/255? foreground must be stored as 1)"
    if num_classes == 19 and max(present) <= 33:
        return (
            " (Cityscapes label ids 0-33 not converted to the 19 train ids? dataset=cityscapes "
            "reads *_gtFine_labelIds.png and maps them)"
        )
    if num_classes <= 64 and (max(present) >= 2 * num_classes or present & {128, 192}):
        return " (an RGB colour mask converted to grey? masks must hold class indices)"
    return ""


def sample_problems(
    image_shape: tuple[int, ...],
    mask: np.ndarray,
    num_classes: int,
    ignore_index: int | None,
    source: str,
) -> list[str]:
    """What is wrong with one sample (empty if nothing); each message starts with ``source``.

    ``image_shape`` is the ``(H, W, 3)`` shape of the image (its pixels are not needed).
    """
    if len(image_shape) != 3 or image_shape[2] != 3:
        return [f"{source}: expected an RGB image of shape (H, W, 3), got {image_shape}"]
    if mask.ndim != 2:
        return [f"{source}: expected a single-channel label mask (H, W), got shape {mask.shape}"]
    problems = []
    if tuple(image_shape[:2]) != mask.shape:
        problems.append(
            f"{source}: image size {image_shape[1]}x{image_shape[0]} does not match "
            f"mask size {mask.shape[1]}x{mask.shape[0]} (W x H)"
        )
    values, _ = label_values(mask)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_index)]
    if bad.size:
        problems.append(
            f"{source}: label values {bad.tolist()} lie outside [0, {num_classes}) and are not "
            f"the ignore index ({ignore_index}){_label_hint(values, num_classes)}"
        )
    return problems


def validate_sample(
    image_shape: tuple[int, ...],
    mask: np.ndarray,
    num_classes: int,
    ignore_index: int | None,
    source: str,
) -> None:
    """Raise :class:`DataError` naming ``source`` if image and mask disagree or a label is
    invalid."""
    problems = sample_problems(image_shape, mask, num_classes, ignore_index, source)
    if problems:
        raise DataError(problems[0])


def format_problems(where: str, problems: list[str], limit: int = 20) -> str:
    """One error message listing (the first ``limit`` of) ``problems`` found in ``where``."""
    head = f"{where}: {len(problems)} problem{'s' if len(problems) != 1 else ''} in the data"
    lines = [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join([head, *lines])


class SegmentationDataset(Dataset, ABC):
    """Base class: subclasses implement ``load(i) -> (image, mask, name)``.

    ``image`` is ``uint8 (H, W, 3)``, ``mask`` an integer ``(H, W)`` label map with values in
    ``[0, num_classes)`` or ``ignore_index``. Every sample is checked before it is used, and a
    bad one stops the run with an error naming it: nothing is skipped silently. After
    :meth:`check_all` has passed, loading no longer repeats the check.

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
        # problems of the on-disk layout found while listing the files (images without
        # masks and vice versa); subclasses fill it in their constructor
        self.layout_problems: list[str] = []

    @abstractmethod
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Read sample ``index`` as ``(image uint8 (H, W, 3), mask (H, W), name)``."""

    def check(self, index: int, full: bool = False) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Problems of sample ``index`` and its label histogram ``(values, counts)``.

        ``full`` also decodes every image completely (datasets may read only headers
        otherwise).
        """
        image, mask, name = self.load(index)
        values, counts = label_values(mask)
        problems = sample_problems(image.shape, mask, self.num_classes, self.ignore_index, name)
        return problems, values, counts

    def dataset_problems(self, pixels: dict[int, int]) -> list[str]:
        """Problems visible only over the whole split, from its label histogram ``pixels``."""
        foreground = sum(n for v, n in pixels.items() if 0 < v < self.num_classes)
        if self.ignore_index == 255 and pixels.get(255, 0) > 0 and foreground == 0:
            return [
                f"{self.describe()}: masks hold only 0 and 255, no label in [1, "
                f"{self.num_classes}): binary masks stored as 0/255? 255 is the ignore index, so "
                "the foreground would never be learned; store it as 1"
            ]
        return []

    def describe(self) -> str:
        """How errors name this dataset (its root directory where it has one)."""
        root = getattr(self, "root", None)
        split = getattr(self, "split", None)
        return f"{root or type(self).__name__}{f' [{split}]' if split else ''}"

    def scan(self, full: bool = False, desc: str = "checking labels") -> list[str]:
        """Every problem of this split: layout, each sample, and split-wide (none: clean)."""
        problems = list(self.layout_problems)
        pixels: dict[int, int] = {}
        for index in tqdm(range(len(self)), desc=desc, leave=False, disable=len(self) < 50):
            try:
                found, values, counts = self.check(index, full=full)
            except DataError as err:  # unreadable or missing file: report it, go on
                problems.append(str(err))
                continue
            problems.extend(found)
            for v, n in zip(values.tolist(), counts.tolist()):
                pixels[v] = pixels.get(v, 0) + n
        if len(self):
            problems.extend(self.dataset_problems(pixels))
        return problems

    def scan_key(self) -> str | None:
        """A key that changes whenever the files or the label settings change, under which a
        passed scan is remembered; ``None``: never remembered (checked every time)."""
        return None

    def check_all(self, desc: str = "checking labels") -> None:
        """Scan every sample (with a progress bar) and raise :class:`DataError` listing every
        problem. A passed scan is remembered in the cache until the files change."""
        key = self.scan_key()
        stamp = cache_dir() / "checked" / f"{key}.json" if key else None
        if stamp is None or not stamp.is_file():
            problems = self.scan(desc=desc)
            if problems:
                raise DataError(format_problems(self.describe(), problems))
            if stamp is not None:
                stamp.parent.mkdir(parents=True, exist_ok=True)
                stamp.write_text(json.dumps({"dataset": self.describe(), "samples": len(self)}))
        self.verified = True

    def __getitem__(self, index: int) -> dict:
        image, mask, name = self.load(index)
        if not self.verified:  # a full scan already checked it: keep the loader's hot path lean
            validate_sample(image.shape, mask, self.num_classes, self.ignore_index, name)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return {"image": image, "mask": mask, "name": name}


def dataset_root(root: str | Path, what: str, layout: str) -> Path:
    """``root`` as a path, or ``FileNotFoundError`` naming the absolute directory that was
    expected (``what``, e.g. ``"CamVid root"``) and the official ``layout``."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {str(path.absolute())!r} does not exist; {layout}")
    return path


def read_image(path: Path) -> np.ndarray:
    """Decode ``path`` as ``uint8 (H, W, 3)`` RGB; a missing or broken file raises
    :class:`DataError` naming it."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: image file does not exist") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: unreadable image ({err})") from None


def image_shape(path: Path) -> tuple[int, int, int]:
    """``(H, W, 3)`` of the image at ``path`` from its header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.height, im.width, 3
    except FileNotFoundError:
        raise DataError(f"{path}: image file does not exist") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: unreadable image ({err})") from None


def read_label_png(path: Path) -> np.ndarray:
    """A single-channel or palette PNG of class indices as an integer array."""
    try:
        with Image.open(path) as m:
            if m.mode not in ("L", "P", "I", "I;16"):
                raise DataError(
                    f"{path}: mask has mode {m.mode}; expected a single-channel or palette PNG "
                    "of class indices (a colour-coded RGB mask must be converted to indices)"
                )
            return np.array(m)
    except FileNotFoundError:
        raise DataError(f"{path}: mask file does not exist") from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}: unreadable mask ({err})") from None


def unpaired(images: Iterable[str], masks: Iterable[str], where: str) -> list[str]:
    """Layout problems for keys found on one side only (e.g. file stems)."""
    images, masks = set(images), set(masks)
    problems = [f"{where}: {k} (image without mask)" for k in sorted(images - masks)]
    problems += [f"{where}: {k} (mask without image)" for k in sorted(masks - images)]
    return problems


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

    def check(self, index: int, full: bool = False) -> tuple[list[str], np.ndarray, np.ndarray]:
        image_path, mask_path = self.items[index]
        shape = read_image(image_path).shape if full else image_shape(image_path)
        raw = self.read_raw_mask(mask_path)
        problems = self.diagnose(raw, mask_path)
        mask = self.convert_mask(raw)
        values, counts = label_values(mask)
        problems += sample_problems(
            shape, mask, self.num_classes, self.ignore_index, str(mask_path)
        )
        return problems, values, counts

    def scan_key(self) -> str | None:
        digest = hashlib.sha1()
        settings = (
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
