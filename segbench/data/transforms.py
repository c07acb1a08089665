"""Sample transforms: numpy ``(image, mask)`` in, normalised tensors out.

Geometric and photometric augmentation is done by albumentations, configured per dataset in
``conf/dataset/*.yaml`` (``train_transform`` / ``eval_transform``)::

    train_transform:
      scale: [0.5, 2.0]     # random rescale factor of the whole image
      crop: [512, 1024]     # random crop (H, W); smaller images are padded first
      hflip: 0.5            # horizontal-flip probability
      jitter: {brightness: 0.25, contrast: 0.25, saturation: 0.25, hue: 0.0, p: 0.5}
      resize: null          # fixed (H, W) before everything else
      resize_short: null    # the shorter side to N pixels, aspect kept (torchvision's protocol)

Masks are always resized with nearest neighbour (never interpolated) and padded with the
ignore index, so padding adds nothing to the loss or the metrics.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence

import numpy as np
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network

import albumentations as A  # noqa: E402
import cv2  # noqa: E402

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SegTransform", "ToTensorNormalize", "collate"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ToTensorNormalize:
    """``uint8 (H, W, 3)`` image → normalised ``float32 (3, H, W)``; mask → ``int64 (H, W)``.

    Args:
        mean: per-channel mean in [0, 1] units.
        std: per-channel standard deviation in [0, 1] units.
    """

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
        img = (img - self.mean) / self.std
        return img, torch.from_numpy(np.ascontiguousarray(mask)).long()


def _pair(value: Sequence[int] | int, key: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
        raise ValueError(f"{key} must be [height, width] in pixels, got {list(value)}")
    return int(value[0]), int(value[1])


class SegTransform:
    """An albumentations pipeline for an image and its label mask, then normalisation.

    The steps, each off when its argument is ``None`` (or 0): ``resize_short``, fixed
    ``resize``, random
    ``scale``, ``crop`` (padding image with 0 and mask with ``ignore_index`` where the image is
    smaller), horizontal flip, colour ``jitter``, normalisation. Masks are resized with nearest
    neighbour only.

    Args:
        ignore_index: label written into padded mask pixels.
        mean, std: normalisation in [0, 1] units.
        resize: ``[H, W]`` every image is resized to first.
        resize_short: the shorter side resized to this many pixels, the aspect ratio kept (the
            longer side truncated), image and mask alike, before every other step: torchvision's
            segmentation protocol (its weights' ``resize_size=520``), computed as torchvision
            computes it on PIL images (PIL's bilinear filter for the image, nearest for the
            mask), so that an evaluation matches its reference scripts pixel for pixel.
        scale: ``[low, high]`` range of a random rescale factor (e.g. ``[0.5, 2.0]``).
        crop: ``[H, W]`` random crop size.
        hflip: horizontal-flip probability.
        jitter: ``torchvision``-style colour jitter ``{brightness, contrast, saturation, hue,
            p}`` (any subset).
    """

    JITTER_KEYS = ("brightness", "contrast", "saturation", "hue", "p")

    def __init__(
        self,
        ignore_index: int = 255,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        resize: Sequence[int] | None = None,
        scale: Sequence[float] | None = None,
        crop: Sequence[int] | None = None,
        hflip: float = 0.0,
        jitter: Mapping[str, float] | None = None,
        resize_short: int | None = None,
    ) -> None:
        if resize_short is not None and (
            isinstance(resize_short, bool) or not isinstance(resize_short, int) or resize_short < 1
        ):
            raise ValueError(
                f"resize_short must be a positive number of pixels, got {resize_short!r}"
            )
        self.resize_short = resize_short
        steps: list[A.BasicTransform] = []
        if resize is not None:
            h, w = _pair(resize, "resize")
            steps.append(
                A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)
            )
        if scale is not None:
            low, high = (float(s) for s in scale)
            if not 0 < low <= high:
                raise ValueError(f"scale must be [low, high] with 0 < low <= high, got {scale}")
            steps.append(
                A.RandomScale(
                    scale_limit=(low - 1.0, high - 1.0),
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST,
                    p=1.0,
                )
            )
        if crop is not None:
            h, w = _pair(crop, "crop")
            steps.append(
                A.PadIfNeeded(
                    min_height=h,
                    min_width=w,
                    position="random",
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=0,
                    fill_mask=ignore_index,
                )
            )
            steps.append(A.RandomCrop(h, w))
        if hflip:
            if not 0 <= hflip <= 1:
                raise ValueError(f"hflip is a probability in [0, 1], got {hflip}")
            steps.append(A.HorizontalFlip(p=float(hflip)))
        if jitter:
            unknown = set(jitter) - set(self.JITTER_KEYS)
            if unknown:
                raise ValueError(
                    f"jitter has unknown keys {sorted(unknown)}; expected {list(self.JITTER_KEYS)}"
                )
            jitter = dict(jitter)
            p = float(jitter.pop("p", 0.5))
            # torchvision's meaning: a factor left out is not jittered (albumentations' own
            # defaults would jitter it, hue by up to half the colour wheel)
            jitter = {k: float(jitter.get(k) or 0.0) for k in self.JITTER_KEYS if k != "p"}
            steps.append(A.ColorJitter(**jitter, p=p) if any(jitter.values()) else A.NoOp())
        self.ignore_index = ignore_index
        # the sizes this pipeline produces, read by the engine's input-size check
        self.resize = _pair(resize, "resize") if resize is not None else None
        self.crop = _pair(crop, "crop") if crop is not None else None
        self.min_scale = float(scale[0]) if scale is not None else 1.0
        self.pipeline = A.Compose(steps) if steps else None
        self.to_tensor = ToTensorNormalize(mean, std)

    def smallest_output(self, height: int, width: int) -> tuple[int, int]:
        """The smallest ``(H, W)`` an image of ``height x width`` can come out as."""
        if self.resize_short is not None:
            height, width = short_side_size(height, width, self.resize_short)
        if self.resize is not None:
            height, width = self.resize
        height, width = int(height * self.min_scale), int(width * self.min_scale)
        if self.crop is not None:
            height, width = self.crop
        return height, width

    def reseed(self, seed: int) -> None:
        """Restart the random draws of every step from ``seed`` (one numpy and one Python
        generator shared by the whole pipeline, as albumentations' ``Compose`` keeps them)."""
        if self.pipeline is not None:
            self.pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def augment(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The geometric and photometric steps only: ``uint8`` image and mask out."""
        if self.resize_short is not None:
            image, mask = resize_short_side(image, mask, self.resize_short)
        if self.pipeline is None:
            return image, mask
        dtype = mask.dtype
        if dtype not in (np.uint8, np.uint16, np.int32):  # what cv2 resizes; labels fit int32
            mask = mask.astype(np.int32)
        out = self.pipeline(image=image, mask=mask)
        return out["image"], out["mask"].astype(dtype, copy=False)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.to_tensor(*self.augment(image, mask))

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, H, W)`` images back to ``uint8`` RGB."""
        t = self.to_tensor
        return (images.cpu() * t.std + t.mean).clamp(0, 255).byte()


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """``(H, W)`` with the shorter side ``size`` and the longer one scaled and truncated, as
    torchvision's ``resize(img, [size])`` computes it."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def resize_short_side(
    image: np.ndarray, mask: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (``uint8 (H, W, 3)``) and ``mask`` with their shorter side ``size``: the image
    by PIL's bilinear filter (antialiased when shrinking), the mask by PIL's nearest neighbour,
    as torchvision resizes PIL images."""
    from PIL import Image

    height, width = short_side_size(image.shape[0], image.shape[1], size)
    if (height, width) == image.shape[:2]:
        return image, mask
    resized = np.array(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    dtype = mask.dtype
    labels = mask.astype(np.int32) if dtype not in (np.uint8, np.int32) else mask
    labels = np.array(Image.fromarray(labels).resize((width, height), Image.NEAREST))
    return resized, labels.astype(dtype, copy=False)


def collate(batch: list[dict]) -> dict:
    """Stack samples; samples of different sizes raise an error naming them and the fix."""
    sizes = {tuple(s["image"].shape[-2:]) for s in batch}
    if len(sizes) > 1:
        listed = ", ".join(
            f"{s['name']} ({s['image'].shape[-1]}x{s['image'].shape[-2]})" for s in batch[:4]
        )
        raise ValueError(
            f"a batch mixes image sizes ({listed}); give the training split a crop "
            "(dataset.train_transform.crop=[H,W]) or the evaluation a fixed size "
            "(dataset.eval_transform.resize=[H,W]), or evaluate one image at a time "
            "(dataset.eval_batch_size=1)"
        )
    out = {
        "image": torch.stack([s["image"] for s in batch]),
        "mask": torch.stack([s["mask"] for s in batch]),
        "name": [s["name"] for s in batch],
        "index": torch.tensor([s["index"] for s in batch], dtype=torch.long),
    }
    if all("instance" in s for s in batch):  # Cityscapes' instance ids, for iIoU
        out["instance"] = torch.stack([s["instance"] for s in batch])
    return out
