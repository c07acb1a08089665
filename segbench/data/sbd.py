"""SBD, the Semantic Boundaries Dataset of Hariharan et al., and its one-off conversion into the
VOC 2012 tree for ``dataset=voc_aug`` (:class:`segbench.data.voc.VOCAugDataset`).

SBD (``dataset.source.sbd_root``, default ``${data_root}/benchmark_RELEASE/dataset``)::

    benchmark_RELEASE/dataset/
      img/<id>.jpg                           11,355 images (all of them also in VOC JPEGImages)
      cls/<id>.mat                           MATLAB struct GTcls; GTcls.Segmentation is a uint8
                                             H x W map of classes 0..20 (no void band)
      train.txt  val.txt                     8,498 / 2,857 ids

``voc_aug`` trains on ``train_aug`` (:func:`train_aug_ids`) = (SBD train ∪ SBD val ∪ VOC train)
minus VOC val, 10,582 ids. Reading the ``.mat`` files on the fly is slow; convert them once::

    segbench convert-sbd --sbd data/benchmark_RELEASE/dataset --voc data/VOCdevkit/VOC2012

(:func:`main`; ``python -m segbench.data.sbd`` takes the same options), which writes
``SegmentationClassAug/<id>.png`` (palette PNGs, VOC colours) for every train_aug id and
``ImageSets/Segmentation/train_aug.txt`` into the VOC root. It skips files that already hold
the same labels and refuses to overwrite different ones. When both exist, ``voc_aug`` reads them
instead of the ``.mat`` files.

The conversion writes into the VOC 2012 tree, so what it knows of that layout (the split
directory and its files, the root check, the VOC colour map) is defined here too;
:mod:`segbench.data.voc` imports it from this module, never the reverse.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from segbench.data.errors import DataError
from segbench.data.files import dataset_root, read_label_png

__all__ = [
    "check_sbd_root",
    "check_voc_root",
    "convert_sbd",
    "main",
    "read_ids",
    "read_sbd_mat",
    "train_aug_ids",
    "voc_colormap",
]

SPLITS_DIR = Path("ImageSets") / "Segmentation"
VOC_LAYOUT = (
    "expected the VOC 2012 release: VOCdevkit/VOC2012/JPEGImages/<id>.jpg, "
    "SegmentationClass/<id>.png and ImageSets/Segmentation/{train,val}.txt"
)
SBD_LAYOUT = (
    "expected the SBD release: benchmark_RELEASE/dataset/img/<id>.jpg, cls/<id>.mat and "
    "{train,val}.txt"
)
CONVERT_HINT = "segbench convert-sbd --sbd <benchmark_RELEASE/dataset> --voc <VOCdevkit/VOC2012>"


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


def main(argv: list[str] | None = None) -> int:
    """``segbench convert-sbd --sbd <SBD> --voc <VOC> [--no-progress]``: run
    :func:`convert_sbd` and report what it did. Returns the exit status: 0 when every mask and
    ``train_aug.txt`` are in place, 1 when a file was refused or could not be converted, 2 when
    a root or split file is missing (a usage error exits with 2 from argparse)."""
    parser = argparse.ArgumentParser(
        prog="segbench convert-sbd",
        description="Convert SBD's cls/*.mat masks once into "
        "VOC2012/SegmentationClassAug/*.png + ImageSets/Segmentation/train_aug.txt "
        "(dataset=voc_aug then reads them instead of the .mat files).",
    )
    parser.add_argument("--sbd", required=True, help="the benchmark_RELEASE/dataset directory")
    parser.add_argument("--voc", required=True, help="the VOCdevkit/VOC2012 directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    raise SystemExit(main())
