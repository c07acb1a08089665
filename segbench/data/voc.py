"""PASCAL VOC 2012 (``dataset=voc``) and VOC 2012 + SBD (``dataset=voc_aug``).

Both read the releases as they unpack; nothing has to be converted first.

VOC 2012 (``dataset.source.root``, default ``${data_root}/VOCdevkit/VOC2012``)::

    VOCdevkit/VOC2012/
      JPEGImages/<id>.jpg                    17,125 images; only ~2.9k of them are annotated
      SegmentationClass/<id>.png             palette PNG of class indices 0..20, 255 = void
      ImageSets/Segmentation/train.txt       1,464 ids
      ImageSets/Segmentation/val.txt         1,449 ids
      SegmentationClassAug/<id>.png          written by ``segbench convert-sbd`` (optional, voc_aug)
      ImageSets/Segmentation/train_aug.txt   written by ``segbench convert-sbd`` (optional, voc_aug)

Masks are palette PNGs: the pixel values are the class indices (the colours are only the VOC
colour map, :func:`voc_colormap`). Every object is outlined by a band of 255 ("void": object
boundaries and hard pixels), which losses and metrics ignore; segbench never maps it to
background. Images in ``JPEGImages/`` without a mask are normal (detection-only images).

SBD, the Semantic Boundaries Dataset of Hariharan et al. (``dataset.source.sbd_root``, default
``${data_root}/benchmark_RELEASE/dataset``; layout in :mod:`segbench.data.sbd`), adds
``cls/<id>.mat`` masks of classes 0..20 without the void band.

``voc_aug`` trains on ``train_aug`` = (SBD train ∪ SBD val ∪ VOC train) minus VOC val, 10,582
ids, and evaluates on VOC val (1,449). An id with a VOC ``SegmentationClass`` PNG uses it (finer
outlines, with the void band); the others use SBD's mask. Images come from VOC
``JPEGImages/`` where present, else from SBD ``img/``.

Reading the ``.mat`` files on the fly is slow; convert them once (:mod:`segbench.data.sbd`)::

    segbench convert-sbd --sbd data/benchmark_RELEASE/dataset --voc data/VOCdevkit/VOC2012

which writes ``SegmentationClassAug/<id>.png`` and ``ImageSets/Segmentation/train_aug.txt`` into
the VOC root. When both exist, ``voc_aug`` reads them instead of the ``.mat`` files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from segbench.data.base import FilePairDataset
from segbench.data.files import read_label_png
from segbench.data.labels import label_values
from segbench.data.sbd import (
    CONVERT_HINT,
    SBD_LAYOUT,
    SPLITS_DIR,
    VOC_LAYOUT,
    check_sbd_root,
    check_voc_root,
    read_ids,
    read_sbd_mat,
    train_aug_ids,
    voc_colormap,
)
from segbench.data.splits import empty_split_error, leak_partners, read_split_file, split_leaks

__all__ = ["VOC_CLASSES", "VOCAugDataset", "VOCDataset", "voc_colormap"]

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def _splits_on_disk(root: Path) -> list[str]:
    directory = root / SPLITS_DIR
    return sorted(p.stem for p in directory.glob("*.txt")) if directory.is_dir() else []


def _first(candidates: Iterable[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


class VOCDataset(FilePairDataset):
    """PASCAL VOC 2012 segmentation: the ids of ``ImageSets/Segmentation/<split>.txt``.

    Args:
        root: the ``VOCdevkit/VOC2012`` directory (layout in the module docstring).
        split: a split file of ``ImageSets/Segmentation`` (``train``, ``val``, ``trainval``).
        num_classes: 21.
        ignore_index: 255, the void label of VOC.
        transform: ``(image, mask) -> (tensor, tensor)``.
    """

    def __init__(
        self,
        root: str,
        split: str,
        num_classes: int = 21,
        ignore_index: int = 255,
        transform: Callable | None = None,
    ) -> None:
        super().__init__(num_classes, ignore_index, transform)
        self.root = Path(root).expanduser()
        self.split = split
        check_voc_root(self.root)
        self.items = self._voc_split_items(split)

    def _voc_split_items(self, split: str) -> list[tuple[Path, Path]]:
        split_file = self.root / SPLITS_DIR / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(
                f"VOC split file {str(split_file.absolute())!r} does not exist (split files "
                f"there: {_splits_on_disk(self.root)}); {VOC_LAYOUT}"
            )
        ids = read_split_file(split_file)
        if not ids:
            raise empty_split_error(split_file, split, "the file lists no id")
        self._check_leaks(split_file, ids, leak_partners(split))
        return self._pair(
            ids,
            lambda i: [self.root / "JPEGImages" / f"{i}.jpg"],
            lambda i: [self.root / "SegmentationClass" / f"{i}.png"],
            str(split_file),
        )

    def _check_leaks(self, split_file: Path, ids: list[str], partners: Iterable[str]) -> None:
        """The training split must share no id with val or test (of ``ImageSets/Segmentation``);
        trainval, the union, has no partner."""
        others = []
        for other in partners:
            path = self.root / SPLITS_DIR / f"{other}.txt"
            if path.is_file():
                others.append((str(path), read_ids(path)))
        problems, notes = split_leaks((str(split_file), ids), others)
        self.layout_problems += problems
        for note in notes:
            self.warn(note)

    def _pair(
        self,
        ids: Iterable[str],
        images: Callable[[str], Sequence[Path]],
        masks: Callable[[str], Sequence[Path]],
        where: str,
    ) -> list[tuple[Path, Path]]:
        """``(image, mask)`` of each id, the first existing file of each candidate list; ids
        that lack one go to ``layout_problems``."""
        items = []
        for image_id in sorted(ids):
            image, mask = _first(images(image_id)), _first(masks(image_id))
            if image is not None and mask is not None:
                items.append((image, mask))
                continue
            wanted_image = " or ".join(str(p) for p in images(image_id))
            wanted_mask = " or ".join(str(p) for p in masks(image_id))
            if image is not None:
                problem = f"{image_id} (image without mask: no {wanted_mask})"
            elif mask is not None:
                problem = f"{image_id} (mask without image: no {wanted_image})"
            else:
                problem = f"{image_id} (neither {wanted_image} nor {wanted_mask} exists)"
            self.layout_problems.append(f"{where}: {problem}")
        return items

    def read_raw_mask(self, path: Path) -> np.ndarray:
        if path.suffix == ".mat":
            return read_sbd_mat(path)
        return read_label_png(path)

    def diagnose(self, raw: np.ndarray, path: Path) -> list[str]:
        # only the released VOC masks carry the void band; SBD's (and masks converted from
        # them) legitimately have none
        if path.parent.name != "SegmentationClass" or raw.ndim != 2:
            return []
        values, _ = label_values(raw)
        objects = values[(values > 0) & (values < self.num_classes)]
        if objects.size and 255 not in values:
            return [
                f"{path}: object labels {objects.tolist()} but no void (255) pixel, while VOC "
                "outlines every object with a 255 band: void (255) seems to have been remapped "
                "to background (0). segbench keeps 255 as ignore; use the SegmentationClass "
                "masks as released"
            ]
        return []


class VOCAugDataset(VOCDataset):
    """VOC 2012 + SBD: ``train`` is ``train_aug`` (10,582 ids), ``val`` is VOC val.

    The training ids and masks come from ``SegmentationClassAug/`` and
    ``ImageSets/Segmentation/train_aug.txt`` in the VOC root when both exist (written by
    ``segbench convert-sbd``), otherwise from the SBD release under ``sbd_root`` (``.mat``
    files read on the fly). A VOC ``SegmentationClass`` mask is preferred over SBD's wherever
    an id has one.

    Args:
        root: the ``VOCdevkit/VOC2012`` directory.
        split: ``train`` (or ``train_aug``), or a VOC split file such as ``val``.
        sbd_root: the ``benchmark_RELEASE/dataset`` directory of SBD.
        num_classes: 21.
        ignore_index: 255.
        transform: ``(image, mask) -> (tensor, tensor)``.
    """

    def __init__(
        self,
        root: str,
        split: str,
        sbd_root: str | None = None,
        num_classes: int = 21,
        ignore_index: int = 255,
        transform: Callable | None = None,
    ) -> None:
        FilePairDataset.__init__(self, num_classes, ignore_index, transform)
        self.root = Path(root).expanduser()
        self.sbd_root = Path(sbd_root).expanduser() if sbd_root is not None else None
        check_voc_root(self.root)
        self.converted = False  # train_aug read from SegmentationClassAug/ + train_aug.txt
        if split not in ("train", "train_aug"):
            self.split = split
            self.items = self._voc_split_items(split)
            return
        self.split = "train_aug"
        voc_masks = self.root / "SegmentationClass"
        aug_masks = self.root / "SegmentationClassAug"
        aug_list = self.root / SPLITS_DIR / "train_aug.txt"
        sbd = self.sbd_root
        self.converted = aug_masks.is_dir() and aug_list.is_file()
        if self.converted:
            ids = read_split_file(aug_list)
            if not ids:
                why = f"the file lists no id; delete it and run {CONVERT_HINT}"
                raise empty_split_error(aug_list, self.split, why)
            self._check_leaks(aug_list, ids, ["test"])  # val: just below
            val_file = self.root / SPLITS_DIR / "val.txt"
            leaked = sorted(set(ids) & set(read_ids(val_file))) if val_file.is_file() else []
            if leaked:
                self.layout_problems.append(
                    f"{aug_list}: {len(leaked)} ids of VOC val are listed for training "
                    f"(e.g. {leaked[:3]}); train_aug excludes VOC val"
                )
            where = str(aug_list)
            sbd_masks = aug_masks
            suffix = ".png"
        else:
            if sbd is None or not sbd.is_dir():
                shown = str(sbd.absolute()) if sbd is not None else None
                raise FileNotFoundError(
                    f"voc_aug: SBD root {shown!r} does not exist and VOC root "
                    f"{str(self.root.absolute())!r} has no SegmentationClassAug/ + "
                    f"ImageSets/Segmentation/train_aug.txt; point dataset.source.sbd_root at "
                    f"SBD ({SBD_LAYOUT}), or convert it once: {CONVERT_HINT}"
                )
            check_sbd_root(sbd)
            ids = train_aug_ids(self.root, sbd)
            where = f"train_aug of {self.root} + {sbd}"
            if not ids:
                raise empty_split_error(
                    where,
                    self.split,
                    "SBD train.txt + val.txt and VOC train.txt list no id outside VOC val.txt",
                )
            sbd_masks = sbd / "cls"
            suffix = ".mat"

        def images(i: str) -> list[Path]:
            found = [self.root / "JPEGImages" / f"{i}.jpg"]
            return found + ([sbd / "img" / f"{i}.jpg"] if sbd is not None else [])

        def masks(i: str) -> list[Path]:
            return [voc_masks / f"{i}.png", sbd_masks / f"{i}{suffix}"]

        self.items = self._pair(ids, images, masks, where)
