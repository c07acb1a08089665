"""``camvid``: the CamVid road scenes as released with SegNet (Badrinarayanan et al., 2017).

Layout of the release (``root`` is its ``CamVid/`` directory)::

    root/
      train/<name>.png       trainannot/<name>.png     train.txt
      val/<name>.png         valannot/<name>.png       val.txt
      test/<name>.png        testannot/<name>.png      test.txt

360x480 RGB images; the label PNGs are single-channel with 11 classes (0 Sky ... 10
Bicyclist) and 11 = void, which is ignored. Each line of a split file names an image and its
label as ``/SegNet/CamVid/train/<name>.png /SegNet/CamVid/trainannot/<name>.png`` (paths on
the SegNet authors' machine): segbench keeps their last two parts (``train/<name>.png``) and
reads them under ``root``. A split file that lists an image twice, or nothing, is refused, and so
is a training split that shares images (by file name) with val or test; identical split files
only get a warning (see :func:`~segbench.data.splits.split_leaks`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np

from segbench.data.base import FilePairDataset
from segbench.data.files import dataset_root, unpaired
from segbench.data.splits import (
    empty_split_error,
    leak_partners,
    refuse_duplicates,
    split_file_lines,
    split_leaks,
)

__all__ = ["CamVidDataset"]

LAYOUT = (
    "expected the SegNet CamVid release: root/{train,val,test}/*.png images, "
    "root/{train,val,test}annot/*.png label masks (values 0-10, 11 = void) and "
    "root/{train,val,test}.txt split files listing '<image path> <label path>' per line"
)


def _under_root(root: Path, listed: str) -> Path:
    """A path from a split file, read under ``root`` by its last two parts (folder/file)."""
    parts = PurePosixPath(listed.replace("\\", "/")).parts
    return root.joinpath(*parts[-2:])


class CamVidDataset(FilePairDataset):
    """CamVid (SegNet release), read through its split files.

    Args:
        root: the release's ``CamVid/`` directory.
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_classes: 11.
        ignore_index: 11 (void).
        transform: ``(image, mask) -> (tensor, tensor)``.
    """

    def __init__(
        self,
        root: str,
        split: str,
        num_classes: int = 11,
        ignore_index: int = 11,
        transform: Callable | None = None,
    ) -> None:
        super().__init__(num_classes, ignore_index, transform)
        self.root = dataset_root(root, "CamVid root", LAYOUT)
        self.split = split
        split_file = self.root / f"{split}.txt"
        if not split_file.is_file():
            present = sorted(p.stem for p in self.root.glob("*.txt"))
            raise FileNotFoundError(
                f"{split_file} does not exist, so CamVid has no {split!r} split here (split "
                f"files found: {present}); {LAYOUT}. To evaluate on another split, set e.g. "
                "dataset.eval_split=val"
            )
        self.items = []
        listed = []  # (line number, image path under root) of each line
        for number, line in split_file_lines(split_file):
            fields = line.split()
            if len(fields) != 2:
                raise ValueError(
                    f"{split_file}:{number}: expected '<image path> <label path>', got {line!r}"
                )
            image, label = (_under_root(self.root, f) for f in fields)
            self.items.append((image, label))
            listed.append((number, image.relative_to(self.root).as_posix()))
        if not self.items:
            raise empty_split_error(
                split_file, split, "the file lists no sample ('<image path> <label path>' lines)"
            )
        refuse_duplicates(split_file, listed)
        self.layout_problems = self._layout_problems(split_file)
        self._check_leaks(split_file)

    def _check_leaks(self, split_file: Path) -> None:
        """The training split must share no image (by file name) with val or test."""
        others = []
        for other in leak_partners(self.split):
            path = self.root / f"{other}.txt"
            if path.is_file():
                lines = (line.split() for _, line in split_file_lines(path))
                others.append((str(path), [_under_root(self.root, f[0]).name for f in lines]))
        mine = (str(split_file), [image.name for image, _ in self.items])
        problems, notes = split_leaks(mine, others)
        self.layout_problems += problems
        for note in notes:
            self.warn(note)

    def _layout_problems(self, split_file: Path) -> list[str]:
        problems = [
            f"{split_file}: {path.relative_to(self.root)} is listed but does not exist"
            for pair in self.items
            for path in pair
            if not path.is_file()
        ]
        # the image and label folders of the split must pair up file by file
        image_dir, label_dir = self.root / self.split, self.root / f"{self.split}annot"
        if image_dir.is_dir() and label_dir.is_dir():
            problems += unpaired(
                (p.name for p in image_dir.glob("*.png")),
                (p.name for p in label_dir.glob("*.png")),
                f"{image_dir} vs {label_dir.name}/",
            )
        return problems

    def diagnose(self, raw: np.ndarray, path: Path) -> list[str]:
        top = int(raw.max()) if raw.size else 0
        if self.num_classes < top <= 31:
            return [
                f"{path}: label values reach {top}: the 32-class CamVid labelling? segbench's "
                "camvid reads SegNet's 11-class release (0-10, 11 = void)"
            ]
        return []
