"""Sample transforms: numpy ``(image, mask)`` in, normalised tensors out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["ToTensorNormalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ToTensorNormalize:
    """``uint8 (H, W, 3)`` image → normalised ``float32 (3, H, W)``; mask → ``int64 (H, W)``.

    Args:
        mean: per-channel mean in [0, 1] units.
        std: per-channel standard deviation in [0, 1] units.
        hflip: probability of a horizontal flip (applied to image and mask together).
    """

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        hflip: float = 0.0,
    ) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255
        self.hflip = hflip

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.hflip > 0 and np.random.random() < self.hflip:
            image, mask = image[:, ::-1], mask[:, ::-1]
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
        img = (img - self.mean) / self.std
        return img, torch.from_numpy(np.ascontiguousarray(mask)).long()
