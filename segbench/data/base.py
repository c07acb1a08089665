"""The dataset contract every segbench dataset follows, and the checks applied to each sample."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

__all__ = ["SegmentationDataset", "validate_sample"]


def validate_sample(
    image_shape: tuple[int, ...],
    mask: np.ndarray,
    num_classes: int,
    ignore_index: int | None,
    source: str,
) -> None:
    """Raise ``ValueError`` naming ``source`` if image and mask disagree or a label is invalid.

    ``image_shape`` is the ``(H, W, 3)`` shape of the image (its pixels are not needed).
    """
    if len(image_shape) != 3 or image_shape[2] != 3:
        raise ValueError(f"{source}: expected an RGB image of shape (H, W, 3), got {image_shape}")
    if mask.ndim != 2:
        raise ValueError(
            f"{source}: expected a single-channel label mask (H, W), got shape {mask.shape}"
        )
    if tuple(image_shape[:2]) != mask.shape:
        raise ValueError(
            f"{source}: image size {image_shape[1]}x{image_shape[0]} does not match "
            f"mask size {mask.shape[1]}x{mask.shape[0]} (W x H)"
        )
    # runs for every loaded sample: a histogram is O(n) for 8-bit masks, unique() sorts
    if mask.dtype == np.uint8:
        values = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    else:
        values = np.unique(mask)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_index)]
    if bad.size:
        raise ValueError(
            f"{source}: label values {bad.tolist()} lie outside [0, {num_classes}) and are not "
            f"the ignore index ({ignore_index})"
        )


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
        self.verified = False  # set by check_all(): every sample has passed validate_sample

    @abstractmethod
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Read sample ``index`` as ``(image uint8 (H, W, 3), mask (H, W), name)``."""

    def check(self, index: int) -> None:
        """Validate sample ``index`` without transforming it (datasets may do this cheaper)."""
        image, mask, name = self.load(index)
        validate_sample(image.shape, mask, self.num_classes, self.ignore_index, name)

    def check_all(self, desc: str = "checking labels") -> None:
        """Validate every sample, with a progress bar; the first bad one raises."""
        for index in tqdm(range(len(self)), desc=desc, leave=False, disable=len(self) < 50):
            self.check(index)
        self.verified = True

    def __getitem__(self, index: int) -> dict:
        image, mask, name = self.load(index)
        if not self.verified:  # a full scan already checked it: keep the loader's hot path lean
            validate_sample(image.shape, mask, self.num_classes, self.ignore_index, name)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return {"image": image, "mask": mask, "name": name}
