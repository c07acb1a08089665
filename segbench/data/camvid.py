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
reads them under ``root``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np

from segbench.data.base import FilePairDataset, dataset_root, unpaired

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
        for number, line in enumerate(split_file.read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(
                    f"{split_file}:{number}: expected '<image path> <label path>', got {line!r}"
                )
            self.items.append(
                (_under_root(self.root, fields[0]), _under_root(self.root, fields[1]))
            )
        self.layout_problems = self._layout_problems(split_file)

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
