"""Images in and out of a prediction, with NumPy and Pillow only (no torch: the ONNX path
uses them too): reading files and uploads upright as RGB, class pixel shares, and the overlay
with its legend."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from segbench.plots import colorize, palette_image

__all__ = [
    "MAX_PIXELS",
    "ImageError",
    "ImageTooLarge",
    "class_shares",
    "decode_image",
    "legend",
    "load_image",
    "overlay_with_legend",
    "palette_png_bytes",
    "png_bytes",
]


class ImageError(ValueError):
    """An input that is not a readable image; the message names it."""


class ImageTooLarge(ImageError):
    """An image with more pixels than the limit, refused from its header before decoding."""


# the largest image decoded by default (40 megapixels: a 100-megapixel image is refused before
# it is decoded; decoding takes some 25 bytes per pixel at its peak, and Pillow allows 178 MP)
MAX_PIXELS = 40_000_000


def _open(source, name: str, max_pixels: int | None) -> Image.Image:
    """``Image.open`` of ``source``, refused as :class:`ImageTooLarge` when its header says it
    has more than ``max_pixels`` pixels (nothing decoded yet)."""
    try:
        image = Image.open(source)
    except Image.DecompressionBombError as err:  # Pillow's own ceiling, above ours
        raise ImageTooLarge(
            f"{name}: {err} (the limit here: max_pixels={max_pixels}); resize it"
        ) from None
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ImageTooLarge(
            f"{name}: {width}x{height} is {width * height / 1e6:.1f} megapixels, more than the "
            f"limit of {max_pixels / 1e6:g} (max_pixels={max_pixels}); resize it, or raise "
            "max_pixels if the machine has the memory"
        )
    return image


def _as_rgb(image: Image.Image) -> np.ndarray:
    """``image`` upright (its EXIF orientation applied) as ``uint8 (H, W, 3)`` RGB: grayscale,
    palette, 16-bit and RGBA images converted (an alpha channel composited on white)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = values.max(initial=0.0)
        image = Image.fromarray((values / top * 255 if top > 0 else values).astype(np.uint8))
    return np.array(image.convert("RGB"))


def load_image(path: str | Path, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """The image file at ``path`` as ``uint8 (H, W, 3)`` RGB, upright.

    Raises:
        ImageError: the file is missing or is not an image PIL can decode, naming it
            (:class:`ImageTooLarge`: more than ``max_pixels`` pixels, from its header).
    """
    path = Path(path)
    try:
        with _open(path, str(path), max_pixels) as im:
            return _as_rgb(im)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: not a readable image ({err})") from None


def decode_image(
    data: bytes, name: str = "upload", max_pixels: int | None = MAX_PIXELS
) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, ...) as ``uint8 (H, W, 3)`` RGB, upright.

    Raises:
        ImageError: the bytes are not an image PIL can decode, naming ``name``
            (:class:`ImageTooLarge`: more than ``max_pixels`` pixels, from its header).
    """
    try:
        with _open(io.BytesIO(data), name, max_pixels) as im:
            return _as_rgb(im)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image (no image format recognised)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{name}: not a readable image ({err})") from None


def class_shares(classes: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """The fraction of the pixels of ``classes`` predicted as each class (all classes listed,
    summing to 1)."""
    counts = np.bincount(np.asarray(classes).ravel().astype(np.int64), minlength=len(class_names))
    total = max(int(counts.sum()), 1)
    return {name: float(counts[i]) / total for i, name in enumerate(class_names)}


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def legend(
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    shares: dict[str, float] | None = None,
    height: int | None = None,
    min_share: float = 0.0,
) -> np.ndarray:
    """A white ``uint8 (H, W, 3)`` column with a colour swatch, name (and share, in %) per class,
    most frequent first when ``shares`` are given; classes under ``min_share`` left out.
    ``height`` pads (never crops) the column to that height."""
    rows = list(range(len(class_names)))
    if shares is not None:
        rows = [i for i in rows if shares.get(class_names[i], 0.0) > min_share] or rows[:1]
        rows.sort(key=lambda i: -shares.get(class_names[i], 0.0))
    line, size = 18, 13
    font = _font(size)
    labels = [
        class_names[i] + (f"  {100 * shares[class_names[i]]:.1f}%" if shares is not None else "")
        for i in rows
    ]
    width = 28 + max(int(font.getlength(t)) for t in labels) + 8
    h = max(height or 0, 8 + line * len(rows))
    canvas = Image.new("RGB", (width, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for n, (i, text) in enumerate(zip(rows, labels)):
        y = 4 + n * line
        draw.rectangle([6, y + 2, 20, y + 14], fill=tuple(int(c) for c in palette[i]), outline=0)
        draw.text((26, y), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def overlay_with_legend(
    image: np.ndarray,
    classes: np.ndarray,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    alpha: float = 0.5,
) -> np.ndarray:
    """``image`` with ``classes`` blended over it in ``palette``, and beside it a legend of the
    classes it shows with their pixel shares."""
    colours = colorize(classes, palette).astype(np.float32)
    blended = ((1 - alpha) * image.astype(np.float32) + alpha * colours).round().astype(np.uint8)
    key = legend(class_names, palette, class_shares(classes, class_names), height=image.shape[0])
    if key.shape[0] > blended.shape[0]:  # more classes than rows of the image: pad the image
        pad = np.full((key.shape[0] - blended.shape[0], *blended.shape[1:]), 255, np.uint8)
        blended = np.concatenate([blended, pad], axis=0)
    return np.concatenate([blended, key], axis=1)


def png_bytes(image: np.ndarray) -> bytes:
    """An RGB (or grayscale) ``uint8`` array encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def palette_png_bytes(classes: np.ndarray, palette: Sequence[Sequence[int]]) -> bytes:
    """A class map as palette PNG bytes (pixel values = class indices), as
    ``segbench.plots.save_palette_png`` writes it to a file."""
    buffer = io.BytesIO()
    palette_image(classes, palette).save(buffer, format="PNG")
    return buffer.getvalue()
