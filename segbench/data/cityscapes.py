"""``cityscapes``: the Cityscapes fine annotations, 19 training classes.

Layout (as the official ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``
unpack)::

    root/
      leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
      gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
                                     <city>_<seq>_<frame>_gtFine_labelTrainIds.png   (optional)
                                     <city>_<seq>_<frame>_gtFine_instanceIds.png     (iIoU)

The ``*_gtFine_labelIds.png`` files hold the 34 Cityscapes label ids (0-33); they are mapped to
the 19 train ids (255 for the rest) while loading, by the official table. With
``label_files="labelTrainIds"`` the ``*_gtFine_labelTrainIds.png`` files made by
cityscapesscripts' ``createTrainIdLabelImgs`` are read instead and used as stored. The test
split has no public labels, so only ``train`` and ``val`` are offered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import Cityscapes

from segbench.data.base import FilePairDataset
from segbench.data.errors import DataError
from segbench.data.files import dataset_root, read_image
from segbench.data.labels import label_values
from segbench.data.splits import empty_split_error

__all__ = [
    "CLASS_NAMES",
    "LABEL_FILES",
    "NUM_LABEL_IDS",
    "PALETTE",
    "TRAIN_ID_LUT",
    "CityscapesDataset",
    "train_id_lut",
]

IMAGE_SUFFIX = "_leftImg8bit.png"
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
LABEL_FILES = ("labelIds", "labelTrainIds")
NUM_LABEL_IDS = 34  # label ids 0..33; "license plate" (-1) never appears in the label files
LAYOUT = (
    "expected root/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png and "
    "root/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png (unzip "
    "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from cityscapes-dataset.com "
    "into root)"
)


def train_id_lut(ignore_index: int = 255) -> np.ndarray:
    """256-entry ``uint8`` table: Cityscapes label id → train id, ``ignore_index`` for the rest.

    Built from the official table as torchvision ships it (``Cityscapes.classes``); train ids
    255 and -1 (void classes) become ``ignore_index``, and so does every value that is not a
    label id (such values are reported by :meth:`CityscapesDataset.diagnose`, never trusted).
    """
    lut = np.full(256, ignore_index, dtype=np.uint8)
    for cls in Cityscapes.classes:
        if 0 <= cls.id < NUM_LABEL_IDS and cls.train_id not in (255, -1):
            lut[cls.id] = cls.train_id
    return lut


TRAIN_ID_LUT = train_id_lut()
_TRAIN_CLASSES = sorted(
    (c for c in Cityscapes.classes if c.train_id not in (255, -1)), key=lambda c: c.train_id
)
CLASS_NAMES = [c.name for c in _TRAIN_CLASSES]  # 19, in train-id order
PALETTE = [list(c.color) for c in _TRAIN_CLASSES]


class CityscapesDataset(FilePairDataset):
    """Cityscapes ``gtFine`` images and labels, paired by ``<city>_<seq>_<frame>``.

    Args:
        root: dataset directory holding ``leftImg8bit/`` and ``gtFine/`` (see the module
            docstring).
        split: ``"train"`` or ``"val"``.
        num_classes: 19.
        ignore_index: label of the void classes (255).
        label_files: ``"labelIds"`` (read ``*_gtFine_labelIds.png`` and map the label ids to
            train ids) or ``"labelTrainIds"`` (read ``*_gtFine_labelTrainIds.png`` as stored).
        transform: ``(image, mask) -> (tensor, tensor)``.
    """

    def __init__(
        self,
        root: str,
        split: str,
        num_classes: int = 19,
        ignore_index: int = 255,
        label_files: str = "labelIds",
        transform: Callable | None = None,
    ) -> None:
        super().__init__(num_classes, ignore_index, transform)
        if label_files not in LABEL_FILES:
            raise ValueError(f"label_files must be one of {list(LABEL_FILES)}, got {label_files!r}")
        if split not in ("train", "val"):
            raise ValueError(
                f"Cityscapes split must be 'train' or 'val', got {split!r} (the test split has "
                "no public labels)"
            )
        self.root = dataset_root(root, "Cityscapes root", LAYOUT)
        self.split = split
        self.label_files = label_files
        self.lut = train_id_lut(ignore_index if ignore_index is not None else 255)
        for sub in ("leftImg8bit", "gtFine"):
            if not (self.root / sub / split).is_dir():
                raise FileNotFoundError(
                    f"Cityscapes root {str(self.root.absolute())!r} has no {sub}/{split}/ "
                    f"directory; {LAYOUT}"
                )
        mask_suffix = f"_gtFine_{label_files}.png"
        images = self._files(self.root / "leftImg8bit" / split, IMAGE_SUFFIX)
        masks = self._files(self.root / "gtFine" / split, mask_suffix)
        if not images and not masks:
            raise empty_split_error(
                f"{self.root / 'leftImg8bit' / split}/ and {self.root / 'gtFine' / split}/",
                split,
                f"no <city>/*{IMAGE_SUFFIX} image and no <city>/*{mask_suffix} label file; "
                f"{LAYOUT}",
            )
        self.layout_problems = self._pairing_problems(images, masks, mask_suffix)
        self.items = [(images[k], masks[k]) for k in sorted(set(images) & set(masks))]
        # whether samples carry their instance ids (``instance``): the data module turns it on
        # for the final evaluation when every sample has its *_gtFine_instanceIds.png
        self.with_instances = False

    @staticmethod
    def _files(directory: Path, suffix: str) -> dict[str, Path]:
        """``{"<city>/<city>_<seq>_<frame>": path}`` of the files named ``*<suffix>``."""
        return {
            f"{p.parent.name}/{p.name[: -len(suffix)]}": p
            for p in sorted(directory.glob(f"*/*{suffix}"))
        }

    def _pairing_problems(
        self, images: dict[str, Path], masks: dict[str, Path], mask_suffix: str
    ) -> list[str]:
        gt_dir = self.root / "gtFine" / self.split
        img_dir = self.root / "leftImg8bit" / self.split
        problems = []
        if not images:
            problems.append(f"{img_dir}: no <city>/*{IMAGE_SUFFIX} files; {LAYOUT}")
        elif not masks:
            if self.label_files == "labelTrainIds":
                hint = (
                    " (make them with cityscapesscripts' createTrainIdLabelImgs, or read the "
                    "label ids: label_files=labelIds)"
                )
            elif any(gt_dir.glob("*/*_gtFine_labelTrainIds.png")):
                hint = " (it holds *_gtFine_labelTrainIds.png files: label_files=labelTrainIds?)"
            else:
                hint = f"; {LAYOUT}"
            problems.append(f"{gt_dir}: no *{mask_suffix} files{hint}")
        problems += [
            f"{path}: image without label file {gt_dir / key}{mask_suffix}"
            for key, path in sorted(images.items())
            if key not in masks
        ]
        problems += [
            f"{path}: label file without image {img_dir / key}{IMAGE_SUFFIX}"
            for key, path in sorted(masks.items())
            if key not in images
        ]
        return problems

    def convert_mask(self, raw: np.ndarray) -> np.ndarray:
        if self.label_files == "labelTrainIds":
            return raw
        if raw.dtype == np.uint8:
            return self.lut[raw]
        # a 16-bit file: values past the table are not label ids (diagnose reports them)
        inside = (raw >= 0) & (raw < 256)
        out = np.full(raw.shape, self.lut[255], dtype=np.uint8)
        out[inside] = self.lut[raw[inside]]
        return out

    def diagnose(self, raw: np.ndarray, path: Path) -> list[str]:
        """The two ways the label files get mixed up: train ids read as label ids, and label
        ids read as train ids."""
        values, _ = label_values(raw)
        present = values.tolist()
        if self.label_files == "labelTrainIds":
            raw_ids = [v for v in present if self.num_classes <= v < NUM_LABEL_IDS]
            if raw_ids:
                return [
                    f"{path}: Cityscapes label ids not converted to train ids: the file holds "
                    f"values {raw_ids}, raw label ids (train ids are 0-{self.num_classes - 1} "
                    "and 255); use label_files=labelIds (dataset.source.label_files=labelIds) "
                    "to read the *_gtFine_labelIds.png files and map them, or regenerate the "
                    "labelTrainIds files with cityscapesscripts' createTrainIdLabelImgs"
                ]
            return []
        invalid = [v for v in present if not 0 <= v < NUM_LABEL_IDS]
        if not invalid:
            return []
        if 255 in invalid and all(v < self.num_classes or v == 255 for v in present):
            return [
                f"{path}: holds 255, which label id files never do, and otherwise only values "
                f"below {self.num_classes}: it looks like train ids already (a "
                "*_gtFine_labelTrainIds.png under the labelIds name?); if the files hold train "
                "ids, use label_files=labelTrainIds (dataset.source.label_files=labelTrainIds)"
            ]
        return [
            f"{path}: values {invalid} are not Cityscapes label ids (0-33): not a labelIds file "
            "(a train-id, colour or instance file?); if the files hold train ids, use "
            "label_files=labelTrainIds (dataset.source.label_files=labelTrainIds)"
        ]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """As :meth:`FilePairDataset.load`; until a full scan has passed, a label file that is
        not what ``label_files`` says raises :class:`DataError` (the table would otherwise map
        invalid values to the ignore index without a word)."""
        image_path, mask_path = self.items[index]
        raw = self.read_raw_mask(mask_path)
        if not self.verified:
            problems = self.diagnose(raw, mask_path)
            if problems:
                raise DataError(problems[0])
        return read_image(image_path), self.convert_mask(raw), str(mask_path)

    def label_settings(self) -> tuple:
        return (self.label_files, self.lut.tobytes())

    # ------------------------------------------------------------------ instances (iIoU)

    def instance_path(self, index: int) -> Path:
        """The ``*_gtFine_instanceIds.png`` beside sample ``index``'s label file."""
        mask_path = self.items[index][1]
        stem = mask_path.name[: -len(f"_gtFine_{self.label_files}.png")]
        return mask_path.with_name(f"{stem}{INSTANCE_SUFFIX}")

    def instances_missing(self) -> str | None:
        """Why the instance-weighted IoU cannot be computed on this split (the first missing
        ``*_gtFine_instanceIds.png``), or ``None`` when every sample has its file."""
        missing = [self.instance_path(i) for i in range(len(self.items))]
        missing = [p for p in missing if not p.is_file()]
        if not missing:
            return None
        return (
            f"{len(missing)} of {len(self.items)} samples lack their instance file, e.g. "
            f"{missing[0]} (gtFine_trainvaltest.zip holds them)"
        )

    def read_instances(self, index: int) -> np.ndarray:
        """Sample ``index``'s instance ids ``(H, W)`` int32 (label id x 1000 + n on instances)."""
        path = self.instance_path(index)
        try:
            with Image.open(path) as im:
                ids = np.asarray(im, dtype=np.int32)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: unreadable instance file ({err})") from err
        if ids.ndim != 2:
            raise DataError(f"{path}: an instance file holds one channel, got shape {ids.shape}")
        return ids

    def __getitem__(self, index: int) -> dict:
        sample = super().__getitem__(index)
        if self.with_instances:
            ids = self.read_instances(index)
            if ids.shape != tuple(sample["mask"].shape[-2:]):
                raise DataError(
                    f"{self.instance_path(index)}: instance ids {ids.shape} but the labels are "
                    f"{tuple(sample['mask'].shape[-2:])} after the evaluation's transform; iIoU "
                    "needs the labels at their own size (dataset.eval_transform.resize=null)"
                )
            sample["instance"] = torch.from_numpy(ids)
        return sample
