"""Predictions in the form each evaluation server takes: ``evaluate.py ... split=test
format_only=true``. No ground truth is read.

* ``voc`` / ``voc_aug`` (PASCAL VOC 2012 evaluation server): ``results/VOC2012/Segmentation/
  comp6_test_cls/<id>.png``, palette PNGs of class indices 0-20 (the VOC colour map), packed
  as ``results.tar.gz`` (comp6: trained with data beyond VOC's own, as ``voc_aug`` is; the
  directory name is what the server reads, whatever the training data).
* ``cityscapes`` (cityscapes-dataset.com): ``<city>_<seq>_<frame>_leftImg8bit.png`` holding
  **label ids** (the train ids mapped back through the official table), zipped as
  ``results.zip``.
* ``ade20k`` (the MIT SceneParsing benchmark): ``<id>.png`` holding the raw class values
  1-150, the reduce-zero-label shift undone (class index + 1), zipped as ``results.zip``.

Test images are listed from the release's own layout (:func:`split_images`). The files are
written into a new directory, checked one to one against the ids (a missing or extra file is
refused before anything is packed), and the archive holds exactly those files.
"""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segbench.plots import save_palette_png

__all__ = [
    "FORMATS",
    "SubmissionFormat",
    "check_complete",
    "pack",
    "split_images",
    "submission_format",
]


@dataclass(frozen=True)
class SubmissionFormat:
    """How one server wants a prediction: ``path(id)`` relative to the submission directory,
    ``encode(class indices (H, W)) -> uint8 (H, W)`` pixel values, ``palette`` for palette
    PNGs, and the archive's name."""

    name: str
    path: Callable[[str], str]
    encode: Callable[[np.ndarray], np.ndarray]
    archive: str
    palette: list | None = None

    def write(self, directory: Path, image_id: str, pred: np.ndarray) -> Path:
        path = directory / self.path(image_id)
        values = self.encode(np.asarray(pred))
        if self.palette is not None:
            return save_palette_png(values, self.palette, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(values.astype(np.uint8), mode="L").save(path)
        return path


def _voc() -> SubmissionFormat:
    from segbench.data.voc import voc_colormap

    return SubmissionFormat(
        name="PASCAL VOC 2012",
        path=lambda i: f"results/VOC2012/Segmentation/comp6_test_cls/{i}.png",
        encode=lambda p: p.astype(np.uint8),
        archive="results.tar.gz",
        palette=[list(c) for c in voc_colormap(256)[:21]],
    )


def _cityscapes() -> SubmissionFormat:
    from segbench.data.cityscapes import TRAIN_ID_LUT

    to_label = np.zeros(256, dtype=np.uint8)
    for label_id in range(34):
        train_id = int(TRAIN_ID_LUT[label_id])
        if train_id != 255:
            to_label[train_id] = label_id
    return SubmissionFormat(
        name="Cityscapes",
        path=lambda i: f"{i}_leftImg8bit.png",
        encode=lambda p: to_label[p.astype(np.int64)],
        archive="results.zip",
    )


def _ade20k() -> SubmissionFormat:
    return SubmissionFormat(
        name="ADE20K SceneParsing",
        path=lambda i: f"{i}.png",
        encode=lambda p: (p.astype(np.int64) + 1).astype(np.uint8),
        archive="results.zip",
    )


FORMATS: dict[str, Callable[[], SubmissionFormat]] = {
    "voc": _voc,
    "voc_aug": _voc,
    "cityscapes": _cityscapes,
    "ade20k": _ade20k,
}


def submission_format(dataset: str) -> SubmissionFormat:
    if dataset not in FORMATS:
        raise ValueError(
            f"format_only=true: no evaluation server format for dataset {dataset!r}; the "
            f"formats are those of {', '.join(sorted(FORMATS))}"
        )
    return FORMATS[dataset]()


def split_images(dataset: str, root: str | Path, split: str = "test") -> list[tuple[str, Path]]:
    """``(id, image path)`` of a split of ``dataset`` under its ``root`` (the config's
    ``dataset.source.root``), sorted by id, images only; a missing layout raises
    ``FileNotFoundError`` naming what was expected. The servers score ``test``; ``val`` gives
    files the official tools score locally."""
    root = Path(root)
    if dataset in ("voc", "voc_aug"):
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise FileNotFoundError(
                f"{listing} does not exist: the VOC 2012 test images come in VOC2012test.tar "
                "(unpacked into the same VOCdevkit/VOC2012: ImageSets/Segmentation/test.txt "
                "and JPEGImages/<id>.jpg)"
            )
        ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        items = [(i, root / "JPEGImages" / f"{i}.jpg") for i in ids]
    elif dataset == "cityscapes":
        folder = root / "leftImg8bit" / split
        suffix = "_leftImg8bit.png"
        files = sorted(folder.glob(f"*/*{suffix}"))
        if not files:
            raise FileNotFoundError(
                f"{folder} holds no <city>/*{suffix}: unzip leftImg8bit_trainvaltest.zip into "
                f"{root}"
            )
        items = [(p.name[: -len(suffix)], p) for p in files]
    elif dataset == "ade20k":
        folder = root / "images" / {"train": "training", "val": "validation"}.get(split, "testing")
        files = sorted(folder.glob("*.jpg"))
        if not files:
            raise FileNotFoundError(
                f"{folder} holds no *.jpg: put the SceneParsing test images (release_test.zip, "
                f"its testing/ folder) there as {folder}/ADE_test_*.jpg"
            )
        items = [(p.stem, p) for p in files]
    else:
        submission_format(dataset)  # raises, naming the formats there are
        raise AssertionError("unreachable")
    missing = [str(p) for _, p in items if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} test images listed but absent, e.g. {missing[0]}")
    ids = [i for i, _ in items]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise ValueError(f"{dataset} {split} split: ids {twice} name more than one image")
    return sorted(items)


def check_complete(directory: Path, fmt: SubmissionFormat, ids: list[str]) -> list[Path]:
    """The submission's files, when they are exactly one per id; otherwise ``RuntimeError``
    naming the first missing and the first extra file."""
    expected = {(directory / fmt.path(i)).resolve() for i in ids}
    present = {p.resolve() for p in directory.rglob("*") if p.is_file()}
    missing, extra = sorted(expected - present), sorted(present - expected)
    if missing or extra:
        raise RuntimeError(
            f"{directory}: the submission does not match the {len(ids)} test ids"
            + (f"; missing {len(missing)}, e.g. {missing[0]}" if missing else "")
            + (f"; extra {len(extra)}, e.g. {extra[0]}" if extra else "")
        )
    return sorted(expected)


def pack(directory: Path, fmt: SubmissionFormat, ids: list[str], out: Path) -> Path:
    """Archive the checked files of ``directory`` (paths relative to it) as ``out``; refuses
    to replace an existing archive."""
    files = check_complete(directory, fmt, ids)
    base = directory.resolve()
    mode = "x:gz" if out.name.endswith(".tar.gz") else None
    if mode:
        with tarfile.open(out, mode) as tar:
            for path in files:
                tar.add(path, arcname=path.relative_to(base).as_posix())
    else:
        with zipfile.ZipFile(out, "x", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, arcname=path.relative_to(base).as_posix())
    return out
