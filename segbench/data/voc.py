"""PASCAL VOC 2012 (``dataset=voc``) and VOC 2012 + SBD (``dataset=voc_aug``).

Both read the releases as they unpack; nothing has to be converted first.

VOC 2012 (``dataset.source.root``, default ``${data_root}/VOCdevkit/VOC2012``)::

    VOCdevkit/VOC2012/
      JPEGImages/<id>.jpg                    17,125 images; only ~2.9k of them are annotated
      SegmentationClass/<id>.png             palette PNG of class indices 0..20, 255 = void
      ImageSets/Segmentation/train.txt       1,464 ids
      ImageSets/Segmentation/val.txt         1,449 ids
      SegmentationClassAug/<id>.png          written by ``convert-sbd`` (optional, voc_aug)
      ImageSets/Segmentation/train_aug.txt   written by ``convert-sbd`` (optional, voc_aug)

Masks are palette PNGs: the pixel values are the class indices (the colours are only the VOC
colour map, :func:`voc_colormap`). Every object is outlined by a band of 255 ("void": object
boundaries and hard pixels), which losses and metrics ignore; segbench never maps it to
background. Images in ``JPEGImages/`` without a mask are normal (detection-only images).

SBD, the Semantic Boundaries Dataset of Hariharan et al. (``dataset.source.sbd_root``, default
``${data_root}/benchmark_RELEASE/dataset``)::

    benchmark_RELEASE/dataset/
      img/<id>.jpg                           11,355 images (all of them also in VOC JPEGImages)
      cls/<id>.mat                           MATLAB struct GTcls; GTcls.Segmentation is a uint8
                                             H x W map of classes 0..20 (no void band)
      train.txt  val.txt                     8,498 / 2,857 ids

``voc_aug`` trains on ``train_aug`` = (SBD train ∪ SBD val ∪ VOC train) minus VOC val, 10,582
ids, and evaluates on VOC val (1,449). An id with a VOC ``SegmentationClass`` PNG uses it (finer
outlines, with the void band); the others use SBD's mask. Images come from VOC
``JPEGImages/`` where present, else from SBD ``img/``.

Reading the ``.mat`` files on the fly is slow; convert them once::

    python -m segbench.data.voc convert-sbd --sbd data/benchmark_RELEASE/dataset \\
        --voc data/VOCdevkit/VOC2012

which writes ``SegmentationClassAug/<id>.png`` (palette PNGs, VOC colours) for every train_aug id
and ``ImageSets/Segmentation/train_aug.txt`` into the VOC root. It skips files that already hold
the same labels and refuses to overwrite different ones. When both exist, ``voc_aug`` reads them
instead of the ``.mat`` files.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from segbench.data.base import (
    DataError,
    FilePairDataset,
    dataset_root,
    label_values,
    read_label_png,
)

__all__ = [
    "VOC_CLASSES",
    "VOCAugDataset",
    "VOCDataset",
    "convert_sbd",
    "read_sbd_mat",
    "train_aug_ids",
    "voc_colormap",
]

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

SPLITS_DIR = Path("ImageSets") / "Segmentation"
VOC_LAYOUT = (
    "expected the VOC 2012 release: VOCdevkit/VOC2012/JPEGImages/<id>.jpg, "
    "SegmentationClass/<id>.png and ImageSets/Segmentation/{train,val}.txt"
)
SBD_LAYOUT = (
    "expected the SBD release: benchmark_RELEASE/dataset/img/<id>.jpg, cls/<id>.mat and "
    "{train,val}.txt"
)
CONVERT_HINT = (
    "python -m segbench.data.voc convert-sbd --sbd <benchmark_RELEASE/dataset> "
    "--voc <VOCdevkit/VOC2012>"
)


def voc_colormap(n: int = 256) -> np.ndarray:
    """The VOC devkit colour map, ``uint8 (n, 3)``: the bits of the index, read three at a
    time from the lowest, are spread over red, green and blue from their highest bit down."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        rgb = [0, 0, 0]
        value = index
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        cmap[index] = rgb
    return cmap


def read_ids(path: Path) -> list[str]:
    """The ids listed in a split file, one per line (blank lines skipped, repeats dropped)."""
    try:
        lines = path.read_text().split()
    except FileNotFoundError:
        raise FileNotFoundError(f"split file {str(path.absolute())!r} does not exist") from None
    return list(dict.fromkeys(lines))


def read_sbd_mat(path: Path) -> np.ndarray:
    """``GTcls.Segmentation`` of an SBD ``cls/<id>.mat`` file: an integer ``(H, W)`` class map."""
    from scipy.io import loadmat

    if not Path(path).is_file():
        raise DataError(f"{path}: mask file does not exist")
    try:
        data = loadmat(path, squeeze_me=True, struct_as_record=False)
    except (OSError, ValueError, TypeError, NotImplementedError) as err:
        raise DataError(f"{path}: unreadable .mat file ({err})") from None
    gt = data.get("GTcls")
    if gt is None:
        keys = sorted(k for k in data if not k.startswith("__"))
        raise DataError(
            f"{path}: no GTcls struct (it holds {keys}); SBD class masks are cls/<id>.mat with "
            "GTcls.Segmentation (inst/<id>.mat holds instances, not classes)"
        )
    seg = getattr(gt, "Segmentation", None)
    if not isinstance(seg, np.ndarray) or seg.ndim != 2 or not np.issubdtype(seg.dtype, np.integer):
        got = f"{seg.dtype} array of shape {seg.shape}" if isinstance(seg, np.ndarray) else seg
        raise DataError(
            f"{path}: GTcls.Segmentation should be an integer H x W class map, got {got!r}"
        )
    return seg


def _splits_on_disk(root: Path) -> list[str]:
    directory = root / SPLITS_DIR
    return sorted(p.stem for p in directory.glob("*.txt")) if directory.is_dir() else []


def check_voc_root(root: Path) -> None:
    """Raise ``FileNotFoundError`` naming the directory and the layout if ``root`` is not a
    VOC 2012 directory."""
    dataset_root(root, "VOC root", f"{VOC_LAYOUT} (set data_root or dataset.source.root)")
    for sub in ("JPEGImages", "SegmentationClass", str(SPLITS_DIR)):
        if not (root / sub).is_dir():
            raise FileNotFoundError(
                f"VOC root {str(root.absolute())!r} has no {sub}/ directory; {VOC_LAYOUT}"
            )


def check_sbd_root(root: Path) -> None:
    """Raise ``FileNotFoundError`` naming the directory and the layout if ``root`` is not the
    ``benchmark_RELEASE/dataset`` directory of SBD."""
    dataset_root(root, "SBD root", SBD_LAYOUT)
    for sub in ("cls", "train.txt", "val.txt"):
        if not (root / sub).exists():
            raise FileNotFoundError(f"SBD root {str(root.absolute())!r} has no {sub}; {SBD_LAYOUT}")


def train_aug_ids(voc_root: Path, sbd_root: Path) -> list[str]:
    """(SBD train ∪ SBD val ∪ VOC train) minus VOC val, sorted."""
    voc_root, sbd_root = Path(voc_root), Path(sbd_root)
    ids = set(read_ids(sbd_root / "train.txt")) | set(read_ids(sbd_root / "val.txt"))
    ids |= set(read_ids(voc_root / SPLITS_DIR / "train.txt"))
    return sorted(ids - set(read_ids(voc_root / SPLITS_DIR / "val.txt")))


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
        return self._pair(
            read_ids(split_file),
            lambda i: [self.root / "JPEGImages" / f"{i}.jpg"],
            lambda i: [self.root / "SegmentationClass" / f"{i}.png"],
            str(split_file),
        )

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
    ``python -m segbench.data.voc convert-sbd``), otherwise from the SBD release under
    ``sbd_root`` (``.mat`` files read on the fly). A VOC ``SegmentationClass`` mask is
    preferred over SBD's wherever an id has one.

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
            ids = read_ids(aug_list)
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
            sbd_masks = sbd / "cls"
            suffix = ".mat"

        def images(i: str) -> list[Path]:
            found = [self.root / "JPEGImages" / f"{i}.jpg"]
            return found + ([sbd / "img" / f"{i}.jpg"] if sbd is not None else [])

        def masks(i: str) -> list[Path]:
            return [voc_masks / f"{i}.png", sbd_masks / f"{i}{suffix}"]

        self.items = self._pair(ids, images, masks, where)


def _write_palette_png(mask: np.ndarray, path: Path) -> None:
    """Write ``mask`` (values 0..255) as a palette PNG with the VOC colours, atomically."""
    image = Image.fromarray(mask.astype(np.uint8))
    image.putpalette(voc_colormap().tobytes())  # an "L" image becomes "P"
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def convert_sbd(sbd_root: str | Path, voc_root: str | Path, progress: bool = True) -> dict:
    """Write ``SegmentationClassAug/<id>.png`` for every train_aug id and
    ``ImageSets/Segmentation/train_aug.txt`` into ``voc_root``.

    Each mask is the VOC ``SegmentationClass`` PNG where the id has one, else SBD's
    ``GTcls.Segmentation``. Existing files with the same labels (same list) are skipped; a
    different existing file is never overwritten. ``train_aug.txt`` is written last, and only
    when every mask is in place.

    Returns:
        ``{"ids", "written", "skipped", "refused", "failed", "no_voc_image", "list"}``:
        counts written/skipped, paths refused (exist, differ), failures (messages), ids whose
        image is only in SBD ``img/``, and what happened to ``train_aug.txt``
        (``"written"``, ``"identical"``, ``"refused"`` or ``"not written"``).
    """
    from tqdm.auto import tqdm

    sbd_root, voc_root = Path(sbd_root).expanduser(), Path(voc_root).expanduser()
    check_voc_root(voc_root)
    check_sbd_root(sbd_root)
    for name in ("train", "val"):
        if not (voc_root / SPLITS_DIR / f"{name}.txt").is_file():
            raise FileNotFoundError(
                f"VOC root {str(voc_root.absolute())!r} has no {SPLITS_DIR}/{name}.txt; "
                f"{VOC_LAYOUT}"
            )
    ids = train_aug_ids(voc_root, sbd_root)
    out = voc_root / "SegmentationClassAug"
    out.mkdir(exist_ok=True)
    report: dict = {"ids": len(ids), "written": 0, "skipped": 0, "refused": [], "failed": []}
    report["no_voc_image"] = []
    for image_id in tqdm(ids, desc="convert-sbd", unit="mask", disable=not progress):
        voc_mask = voc_root / "SegmentationClass" / f"{image_id}.png"
        source = voc_mask if voc_mask.is_file() else sbd_root / "cls" / f"{image_id}.mat"
        if not (voc_root / "JPEGImages" / f"{image_id}.jpg").is_file():
            report["no_voc_image"].append(image_id)
        try:
            mask = read_label_png(source) if source.suffix == ".png" else read_sbd_mat(source)
            if mask.ndim != 2 or mask.min() < 0 or mask.max() > 255:
                raise DataError(f"{source}: not an 8-bit class map (shape {mask.shape})")
        except DataError as err:
            report["failed"].append(str(err))
            continue
        target = out / f"{image_id}.png"
        if target.exists():
            try:
                same = np.array_equal(read_label_png(target), mask)
            except DataError:
                same = False
            if same:
                report["skipped"] += 1
            else:
                report["refused"].append(str(target))
            continue
        _write_palette_png(mask, target)
        report["written"] += 1
    listing = voc_root / SPLITS_DIR / "train_aug.txt"
    text = "".join(f"{i}\n" for i in ids)
    if report["refused"] or report["failed"]:
        report["list"] = "not written"
    elif listing.exists():
        report["list"] = "identical" if listing.read_text() == text else "refused"
    else:
        tmp = listing.with_name(f".{listing.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, listing)
        report["list"] = "written"
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segbench.data.voc",
        description="PASCAL VOC tools. convert-sbd: convert SBD's cls/*.mat masks once into "
        "VOC2012/SegmentationClassAug/*.png + ImageSets/Segmentation/train_aug.txt "
        "(dataset=voc_aug then reads them instead of the .mat files).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "convert-sbd", help="write SegmentationClassAug/ and train_aug.txt into the VOC root"
    )
    convert.add_argument("--sbd", required=True, help="the benchmark_RELEASE/dataset directory")
    convert.add_argument("--voc", required=True, help="the VOCdevkit/VOC2012 directory")
    convert.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        report = convert_sbd(args.sbd, args.voc, progress=not args.no_progress)
    except FileNotFoundError as err:
        print(f"convert-sbd: {err}", file=sys.stderr)
        return 2
    out = Path(args.voc) / "SegmentationClassAug"
    listing = Path(args.voc) / SPLITS_DIR / "train_aug.txt"
    print(
        f"convert-sbd: {report['ids']} train_aug ids; {out}: wrote {report['written']} masks, "
        f"skipped {report['skipped']} identical existing"
    )
    if report["no_voc_image"]:
        print(
            f"convert-sbd: {len(report['no_voc_image'])} ids have no image in "
            f"{Path(args.voc) / 'JPEGImages'} (e.g. {report['no_voc_image'][:3]}); voc_aug takes "
            "them from SBD img/ (keep dataset.source.sbd_root pointing at it)"
        )
    for path in report["refused"]:
        print(
            f"convert-sbd: refused to overwrite {path}: it exists and holds different labels "
            "(delete it to regenerate)",
            file=sys.stderr,
        )
    for message in report["failed"]:
        print(f"convert-sbd: could not convert {message}", file=sys.stderr)
    if report["list"] == "written":
        print(f"convert-sbd: wrote {listing}")
    elif report["list"] == "identical":
        print(f"convert-sbd: skipped {listing} (identical)")
    elif report["list"] == "refused":
        print(
            f"convert-sbd: refused to overwrite {listing}: it exists and lists different ids "
            "(delete it to regenerate)",
            file=sys.stderr,
        )
    else:
        print(f"convert-sbd: did not write {listing}: fix the above first", file=sys.stderr)
    return 0 if report["list"] in ("written", "identical") else 1


if __name__ == "__main__":
    sys.exit(main())
