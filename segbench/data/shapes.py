"""``shapes``: a built-in, procedurally generated segmentation benchmark that needs no download.

Each scene paints a textured background and a few overlapping objects. The class of an
object is its *shape* (circle, square, triangle, star, cross, ring); colour, texture, size
and rotation are drawn independently of the class, so a model has to learn shape, not
colour. As in PASCAL VOC, a thin band of ignore-index pixels outlines every region.

Every image is a pure function of ``(seed, split, index)``: the same on any machine, with any
number of workers, and train/val/test never share a scene.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from segbench.data.base import SegmentationDataset

__all__ = ["CLASS_NAMES", "ShapesDataset", "render_scene"]

CLASS_NAMES = ("background", "circle", "square", "triangle", "star", "cross", "ring")
SPLITS = ("train", "val", "test")


def _inside(kind: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Membership of points in a unit-size shape centred at the origin (radius ~1)."""
    r = np.hypot(x, y)
    if kind == "circle":
        return r <= 1.0
    if kind == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 0.8
    if kind == "triangle":  # equilateral, circumradius 1: three half-planes at distance 0.5
        angles = np.deg2rad([270.0, 30.0, 150.0])
        return np.all([x * np.cos(a) + y * np.sin(a) <= 0.5 for a in angles], axis=0)
    if kind == "star":  # five points: radius swings between 1 and 0.45 with the angle
        phase = (np.arctan2(y, x) / (2 * np.pi / 5)) % 1.0
        return r <= 0.45 + 0.55 * np.abs(1.0 - 2.0 * phase)
    if kind == "cross":
        arm = 0.3
        return ((np.abs(x) <= arm) & (np.abs(y) <= 1.0)) | ((np.abs(y) <= arm) & (np.abs(x) <= 1.0))
    if kind == "ring":
        return (r <= 1.0) & (r >= 0.55)
    raise ValueError(f"unknown shape {kind!r}")


TEXTURES = ("solid", "stripes", "checker", "gradient", "noise")


def _texture(
    rng: np.random.Generator,
    yy: np.ndarray,
    xx: np.ndarray,
    kinds: tuple[int, ...] = (0, 1, 2, 3, 4),
) -> np.ndarray:
    """A random texture ``(H, W, 3)`` in [0, 255], one of ``TEXTURES[k] for k in kinds``."""
    c1, c2 = rng.uniform(0, 255, size=(2, 3))
    kind = kinds[rng.integers(len(kinds))]
    if kind == 0:  # solid
        t = np.zeros_like(xx)
    elif kind == 1:  # stripes, random orientation and period
        a, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
        t = (np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / period) > 0).astype(float)
    elif kind == 2:  # checker
        period = rng.uniform(4, 12)
        t = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(float)
    elif kind == 3:  # linear gradient
        a = rng.uniform(0, 2 * np.pi)
        g = xx * np.cos(a) + yy * np.sin(a)
        t = (g - g.min()) / max(np.ptp(g), 1e-6)
    else:  # blotchy noise
        t = rng.uniform(0, 1, size=xx.shape)
    return c1 + t[..., None] * (c2 - c1)


def _outline(label: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of a boundary between two different labels (both sides)."""
    edge = np.zeros(label.shape, dtype=bool)
    diff_v = label[1:, :] != label[:-1, :]
    diff_h = label[:, 1:] != label[:, :-1]
    edge[1:, :] |= diff_v
    edge[:-1, :] |= diff_v
    edge[:, 1:] |= diff_h
    edge[:, :-1] |= diff_h
    for _ in range(width - 1):  # widen by 4-neighbour dilation
        grown = edge.copy()
        grown[1:, :] |= edge[:-1, :]
        grown[:-1, :] |= edge[1:, :]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        edge = grown
    return edge


def render_scene(
    rng: np.random.Generator,
    size: int,
    num_objects: int,
    scale: tuple[float, float] = (0.1, 0.3),
    border: int = 1,
    ignore_index: int = 255,
    textured_background: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one scene; returns ``(image uint8 (S, S, 3), mask uint8 (S, S))``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    # plain (solid or gradient) background unless asked otherwise; objects take any texture
    image = _texture(rng, yy, xx, (0, 1, 2, 3, 4) if textured_background else (0, 3))
    label = np.zeros((size, size), dtype=np.uint8)
    for _ in range(num_objects):
        cls = int(rng.integers(1, len(CLASS_NAMES)))
        radius = rng.uniform(*scale) * size
        cy, cx = rng.uniform(0.1, 0.9, size=2) * size
        angle = rng.uniform(0, 2 * np.pi)
        dx, dy = (xx - cx) / radius, (yy - cy) / radius
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        inside = _inside(CLASS_NAMES[cls], u, v)
        image[inside] = _texture(rng, yy, xx)[inside]
        label[inside] = cls
    image += rng.normal(0, rng.uniform(0, 12), size=image.shape)  # sensor noise
    mask = label.copy()
    if border > 0:
        mask[_outline(label, border)] = ignore_index
    return np.clip(image, 0, 255).astype(np.uint8), mask


class ShapesDataset(SegmentationDataset):
    """Procedural scenes of overlapping textured shapes; the class is the shape.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        sizes: number of images per split, e.g. ``{"train": 1000, "val": 200, "test": 200}``.
        image_size: side of the square images, in pixels.
        seed: dataset seed; ``(seed, split, index)`` fixes every image.
        objects: inclusive range of the number of objects per scene.
        scale: range of object radius as a fraction of the image side.
        border: width in pixels of the ignore band on each side of a region boundary
            (0 disables it).
        num_classes: must equal ``len(CLASS_NAMES)``; passed by the config for checking.
        ignore_index: label of the border band.
        transform: ``(image, mask) -> (tensor, tensor)``.
    """

    def __init__(
        self,
        split: str,
        sizes: dict[str, int],
        image_size: int = 128,
        seed: int = 0,
        objects: tuple[int, int] = (2, 6),
        scale: tuple[float, float] = (0.1, 0.3),
        border: int = 1,
        num_classes: int = len(CLASS_NAMES),
        ignore_index: int = 255,
        transform: Callable | None = None,
    ) -> None:
        super().__init__(num_classes, ignore_index, transform)
        if split not in SPLITS:
            raise ValueError(f"shapes: split must be one of {SPLITS}, got {split!r}")
        if split not in sizes:
            raise ValueError(f"shapes: no size given for split {split!r} in sizes={dict(sizes)}")
        if int(sizes[split]) < 1:
            raise ValueError(
                f"shapes: sizes.{split}={sizes[split]}: the {split!r} split is empty; set "
                f"dataset.source.sizes.{split} to a number of images >= 1"
            )
        if num_classes != len(CLASS_NAMES):
            raise ValueError(
                f"shapes has {len(CLASS_NAMES)} classes {CLASS_NAMES}, "
                f"got num_classes={num_classes}"
            )
        if not 0 <= ignore_index < 256 or ignore_index < num_classes:
            raise ValueError(
                f"shapes: ignore_index must be in [{num_classes}, 255], got {ignore_index}"
            )
        self.split = split
        self.length = int(sizes[split])
        self.image_size = image_size
        self.seed = seed
        self.objects = tuple(objects)
        self.scale = tuple(scale)
        self.border = border

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        if not 0 <= index < self.length:
            raise IndexError(f"shapes/{self.split}: index {index} out of range [0, {self.length})")
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        n = int(rng.integers(self.objects[0], self.objects[1] + 1))
        image, mask = render_scene(
            rng, self.image_size, n, self.scale, self.border, self.ignore_index
        )
        return image, mask, f"shapes/{self.split}/{index:06d}"
