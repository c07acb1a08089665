"""``ade20k``: the ADE20K SceneParsing benchmark (ADEChallengeData2016), 150 classes.

Layout (as the official ``ADEChallengeData2016.zip`` unpacks)::

    root/                                   (the ADEChallengeData2016 directory)
      images/{training,validation}/ADE_<train|val>_<8 digits>.jpg
      annotations/{training,validation}/ADE_<train|val>_<8 digits>.png

Splits ``train`` and ``val`` read ``training`` and ``validation``. The annotations are
single-channel PNGs holding 0 ("other", not one of the 150 classes) and 1..150; with
``reduce_zero_label`` (the standard protocol) 0 becomes the ignore index and ``v`` becomes
``v - 1``, so the classes are 0..149.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from segbench.data.base import FilePairDataset
from segbench.data.files import dataset_root
from segbench.data.labels import label_values
from segbench.data.splits import empty_split_error

__all__ = ["SPLIT_DIRS", "ADE20KDataset", "reduce_zero_label_lut"]

SPLIT_DIRS = {"train": "training", "val": "validation"}
NUM_RAW_CLASSES = 150  # raw values 1..150 are classes, 0 is "other"
LAYOUT = (
    "expected root/images/{training,validation}/ADE_*.jpg and "
    "root/annotations/{training,validation}/ADE_*.png, root being the ADEChallengeData2016 "
    "directory of ADEChallengeData2016.zip (sceneparsing.csail.mit.edu)"
)


def reduce_zero_label_lut(ignore_index: int = 255) -> np.ndarray:
    """256-entry table of reduce-zero-label: 0 → ``ignore_index``, ``v`` → ``v - 1``.

    Raw values above 150 become 150 and more, outside the classes, so the label check reports
    them (they are not ADEChallengeData2016 annotations).
    """
    lut = np.arange(-1, 255, dtype=np.int64)
    lut[0] = ignore_index
    return lut.astype(np.uint8)


class ADE20KDataset(FilePairDataset):
    """ADEChallengeData2016 images and annotations, paired by file stem.

    Args:
        root: the ``ADEChallengeData2016`` directory (see the module docstring).
        split: ``"train"`` (``training/``) or ``"val"`` (``validation/``).
        num_classes: 150 (151 with ``reduce_zero_label=False``, "other" being class 0).
        ignore_index: label that raw 0 ("other") becomes.
        reduce_zero_label: map raw 0 → ``ignore_index`` and ``v`` → ``v - 1``; off, the
            annotations are used as stored.
        transform: ``(image, mask) -> (tensor, tensor)``.
    """

    def __init__(
        self,
        root: str,
        split: str,
        num_classes: int = 150,
        ignore_index: int = 255,
        reduce_zero_label: bool = True,
        transform: Callable | None = None,
    ) -> None:
        super().__init__(num_classes, ignore_index, transform)
        if split not in SPLIT_DIRS:
            raise ValueError(
                f"ADE20K split must be one of {list(SPLIT_DIRS)}, got {split!r} (the test "
                "images of the challenge have no public annotations)"
            )
        if reduce_zero_label and ignore_index is None:
            raise ValueError("reduce_zero_label needs an ignore_index for raw label 0")
        self.root = dataset_root(root, "ADE20K root", LAYOUT)
        self.split = split
        self.reduce_zero_label = bool(reduce_zero_label)
        self.lut = reduce_zero_label_lut(ignore_index) if self.reduce_zero_label else None
        sub = SPLIT_DIRS[split]
        image_dir, mask_dir = self.root / "images" / sub, self.root / "annotations" / sub
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                raise FileNotFoundError(
                    f"ADE20K root {str(self.root.absolute())!r} has no "
                    f"{d.relative_to(self.root)}/ directory; {LAYOUT}"
                )
        images = {p.stem: p for p in sorted(image_dir.glob("*.jpg"))}
        masks = {p.stem: p for p in sorted(mask_dir.glob("*.png"))}
        if not images and not masks:
            raise empty_split_error(
                f"{image_dir}/ and {mask_dir}/",
                split,
                f"no *.jpg image and no *.png annotation; {LAYOUT}",
            )
        self.layout_problems = [f"{image_dir}: no *.jpg images; {LAYOUT}"] if not images else []
        self.layout_problems += [
            f"{path}: image without annotation {mask_dir / stem}.png"
            for stem, path in sorted(images.items())
            if stem not in masks
        ] + [
            f"{path}: annotation without image {image_dir / stem}.jpg"
            for stem, path in sorted(masks.items())
            if stem not in images
        ]
        self.items = [(images[s], masks[s]) for s in sorted(set(images) & set(masks))]

    def convert_mask(self, raw: np.ndarray) -> np.ndarray:
        if self.lut is None:
            return raw
        if raw.dtype == np.uint8:
            return self.lut[raw]
        out = raw.astype(np.int64) - 1  # a 16-bit file: same rule, without the table
        out[raw == 0] = self.ignore_index
        return out

    def diagnose(self, raw: np.ndarray, path: Path) -> list[str]:
        """Raw values past 150 are not SceneParsing annotations; report them as stored."""
        if not self.reduce_zero_label:
            return []
        values, _ = label_values(raw)
        high = [v for v in values.tolist() if v > NUM_RAW_CLASSES]
        if not high:
            return []
        classes = [v for v in values.tolist() if v != 255]
        if high == [255] and max(classes, default=0) < NUM_RAW_CLASSES:
            why = (
                "255 with classes up to 149: annotations already reduced (0-149, 255 ignored)? "
                "then use reduce_zero_label=false (dataset.source.reduce_zero_label=false)"
            )
        else:
            why = (
                "ADEChallengeData2016 annotations hold 0 (other) and 1-150 only; the full "
                "ADE20K release's *_seg.png files encode classes differently"
            )
        return [f"{path}: raw annotation values {high} exceed 150: {why}"]

    def label_settings(self) -> tuple:
        return (self.reduce_zero_label,)
