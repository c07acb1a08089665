"""``folder``: any user dataset laid out as ``images/`` and ``masks/`` with matching file stems.

Layout::

    root/
      images/<stem>.{png,jpg,jpeg,bmp,tif,tiff}
      masks/<stem>.png              single-channel (or palette) PNG of class indices
      splits/{train,val,test}.txt   optional: one stem per line

Without split files the stems are shuffled with ``seed`` and cut by ``split_ratio``.

A split file that lists a stem twice, or none, is refused. The training split and the
evaluation splits (val, test) must not share a stem: a split file that shares some with
another is a layout problem (identical files only get a :class:`~segbench.data.errors.DataWarning`:
training and evaluating on the same images is often deliberate, as in an overfitting check).
A split cut by ``split_ratio`` while other splits have files is compared with those files when
it is opened, since the ratio cuts it from every image, including those the files list (a split
read from a file is not compared with ratio-cut ones: that happens when they are opened).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from segbench.data.base import FilePairDataset
from segbench.data.files import dataset_root, unpaired
from segbench.data.splits import (
    empty_split_error,
    leak_partners,
    read_split_file,
    split_file_lines,
    split_leaks,
)

__all__ = ["FolderDataset"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LAYOUT = (
    "expected root/images/<stem>.<png|jpg|...>, root/masks/<stem>.png "
    "and optionally root/splits/{train,val,test}.txt"
)


def _files_by_stem(directory: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(directory.iterdir()) if p.suffix.lower() in extensions}


class FolderDataset(FilePairDataset):
    """Images and label masks paired by file stem.

    Args:
        root: dataset directory (see the module docstring for the layout).
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_classes: number of classes; mask values must lie in ``[0, num_classes)`` or be
            ``ignore_index``.
        ignore_index: label value that is ignored.
        split_ratio: fractions per split used when ``root/splits/<split>.txt`` is absent.
        seed: shuffling seed for ratio splits.
        transform: ``(image, mask) -> (tensor, tensor)``.
    """

    def __init__(
        self,
        root: str,
        split: str,
        num_classes: int,
        ignore_index: int = 255,
        split_ratio: Mapping[str, float] | None = None,
        seed: int = 0,
        transform: Callable | None = None,
    ) -> None:
        super().__init__(num_classes, ignore_index, transform)
        self.root = dataset_root(root, "dataset root", LAYOUT)
        self.split = split
        for sub in ("images", "masks"):
            if not (self.root / sub).is_dir():
                raise FileNotFoundError(
                    f"dataset root {str(self.root)!r} has no {sub}/ directory; {LAYOUT}"
                )
        images = _files_by_stem(self.root / "images", IMAGE_EXTENSIONS)
        masks = _files_by_stem(self.root / "masks", (".png",))
        if not images and not masks:
            raise empty_split_error(
                f"{self.root / 'images'}/ and {self.root / 'masks'}/",
                split,
                f"both directories are empty (no image {'/'.join(IMAGE_EXTENSIONS)}, no .png "
                f"mask); {LAYOUT}",
            )
        self.layout_problems = unpaired(images, masks, str(self.root))
        paired = sorted(set(images) & set(masks))
        stems = self._split_stems(paired, split_ratio or {}, seed)
        self.items = [(images[s], masks[s]) for s in stems]

    def _split_file(self, split: str) -> Path:
        return self.root / "splits" / f"{split}.txt"

    def _split_stems(self, stems: list[str], ratio: Mapping[str, float], seed: int) -> list[str]:
        split_file = self._split_file(self.split)
        if split_file.is_file():
            listed = read_split_file(split_file)
            if not listed:
                raise empty_split_error(split_file, self.split, "the file lists no stem")
            have = set(stems)
            self.layout_problems += [
                f"{split_file}: {s} is listed but has no image/mask pair"
                for s in listed
                if s not in have
            ]
            self._check_leaks(str(split_file), listed, hint="")
            return [s for s in listed if s in have]
        if self.split not in ratio:
            raise ValueError(
                f"{self.root}: no splits/{self.split}.txt and no split_ratio for {self.split!r} "
                f"(split_ratio={dict(ratio)})"
            )
        cut = self._ratio_stems(stems, ratio, seed, self.split)
        where = f"split_ratio {self.split}={ratio[self.split]} of {self.root} (seed {seed})"
        if stems and not cut:
            raise empty_split_error(
                where,
                self.split,
                f"{float(ratio[self.split])} of the {len(stems)} image/mask pairs rounds to "
                f"none; raise split_ratio.{self.split} or list the split in {split_file}",
            )
        self._check_leaks(
            where,
            cut,
            hint=f" (a split without a file is cut from every image: write {split_file} too)",
        )
        return cut

    @staticmethod
    def _ratio_stems(
        stems: list[str], ratio: Mapping[str, float], seed: int, split: str
    ) -> list[str]:
        order = np.random.default_rng(seed).permutation(len(stems))
        names = list(ratio)  # cut the shuffled list in the order the splits are given
        bounds = np.cumsum([0.0] + [float(ratio[n]) for n in names])
        if bounds[-1] > 1.0 + 1e-9:
            raise ValueError(f"split_ratio fractions sum to {bounds[-1]:.3f} > 1: {dict(ratio)}")
        i = names.index(split)
        lo, hi = (int(round(b * len(stems))) for b in (bounds[i], bounds[i + 1]))
        return [stems[j] for j in sorted(order[lo:hi])]

    def _check_leaks(self, where: str, listed: list[str], hint: str) -> None:
        """Compare the split with the split files of the other side of train/evaluation
        (splits cut by the ratio never overlap each other, and are compared when opened)."""
        others = [
            (str(path), [entry for _, entry in split_file_lines(path)])
            for path in map(self._split_file, leak_partners(self.split))
            if path.is_file()
        ]
        problems, notes = split_leaks((where, listed), others)
        self.layout_problems += [p + hint for p in problems]
        for note in notes:
            self.warn(note)
