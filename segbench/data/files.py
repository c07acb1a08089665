"""Reading the files of a dataset: images and label PNGs decoded or measured with the file
named in every error (a truncated file called so), dataset roots, and image/mask pairing."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from segbench.data.errors import DataError

__all__ = ["dataset_root", "image_shape", "read_image", "read_label_png", "unpaired"]


def dataset_root(root: str | Path, what: str, layout: str) -> Path:
    """``root`` as a path, or ``FileNotFoundError`` naming the absolute directory that was
    expected (``what``, e.g. ``"CamVid root"``) and the official ``layout``."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {str(path.absolute())!r} does not exist; {layout}")
    return path


# the last bytes of a complete file: JPEG's end-of-image marker, PNG's IEND chunk (type + CRC)
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


def _file_size(path: Path) -> str:
    try:
        return f"{Path(path).stat().st_size} bytes"
    except OSError:
        return "size unknown"


def _unreadable(path: Path, what: str, err: Exception) -> DataError:
    """The error of a file PIL cannot read; a truncated one is called so."""
    text = str(err)
    if "truncated" in text or "broken data stream" in text:
        return DataError(
            f"{path}: unreadable {what}: the file is truncated ({_file_size(path)}; {text}): "
            "an interrupted copy, download or extraction? copy it again"
        )
    return DataError(f"{path}: unreadable {what} ({text})")


def read_image(path: Path) -> np.ndarray:
    """Decode ``path`` as ``uint8 (H, W, 3)`` RGB; a missing, broken or truncated file raises
    :class:`DataError` naming it."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: image file does not exist") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise _unreadable(path, "image", err) from None


def image_shape(path: Path, check_end: bool = True) -> tuple[int, int, int]:
    """``(H, W, 3)`` of the image at ``path`` from its header, without decoding the pixels.

    ``check_end`` also finds a truncated JPEG or PNG file, which the header alone does not
    show: the file must end with its format's end marker (JPEG's ``FF D9``, PNG's ``IEND``
    chunk). Cost: one seek and one read of 8 bytes in the file already open for the header,
    a few microseconds. A file that lacks the marker is decoded in full before it is reported,
    since bytes after the marker are legal (some cameras append data); only a file that then
    fails to decode is an error.
    """
    marker, intact, size, fmt = None, True, 0, None
    try:
        with open(path, "rb") as f:
            with Image.open(f) as im:
                shape, fmt = (im.height, im.width, 3), im.format
            marker = END_MARKERS.get(fmt) if check_end else None
            if marker is not None:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(size - len(marker), 0))
                intact = f.read(len(marker)) == marker
    except FileNotFoundError:
        raise DataError(f"{path}: image file does not exist") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise _unreadable(path, "image", err) from None
    if not intact:
        try:
            with Image.open(path) as im:
                im.load()
        except (OSError, SyntaxError, ValueError) as err:
            expected = " ".join(f"{b:02X}" for b in marker) if fmt == "JPEG" else "IEND chunk"
            raise DataError(
                f"{path}: unreadable image: the file is truncated ({size} bytes, without the "
                f"{fmt} end marker ({expected}) at its end, and decoding it fails: {err}): an "
                "interrupted copy, download or extraction? copy it again"
            ) from None
    return shape


def read_label_png(path: Path) -> np.ndarray:
    """A single-channel or palette PNG of class indices as an integer array; a JPEG file
    (lossy, whatever its name) is refused."""
    try:
        with Image.open(path) as m:
            if m.format == "JPEG":
                named = f" named {path.suffix}" if path.suffix.lower() != ".jpg" else ""
                raise DataError(
                    f"{path}: mask is a JPEG file{named}: JPEG compression is lossy and alters "
                    "the labels along every boundary; masks must be stored losslessly as PNG "
                    "(export them again from the original labels, not from this file)"
                )
            if m.mode not in ("L", "P", "I", "I;16"):
                raise DataError(
                    f"{path}: mask has mode {m.mode}; expected a single-channel or palette PNG "
                    "of class indices (a colour-coded RGB mask must be converted to indices)"
                )
            return np.array(m)
    except FileNotFoundError:
        raise DataError(f"{path}: mask file does not exist") from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise _unreadable(path, "mask", err) from None


def unpaired(images: Iterable[str], masks: Iterable[str], where: str) -> list[str]:
    """Layout problems for keys found on one side only (e.g. file stems)."""
    images, masks = set(images), set(masks)
    problems = [f"{where}: {k} (image without mask)" for k in sorted(images - masks)]
    problems += [f"{where}: {k} (mask without image)" for k in sorted(masks - images)]
    return problems
