"""The label checks of one sample, shared by loading, training and ``segbench check``: image
and mask sizes agree, every label is a class or the ignore index (with the likely cause of a
wrong one), and the messages that list what was found."""

from __future__ import annotations

import numpy as np

from segbench.data.errors import DataError

__all__ = ["format_problems", "label_values", "sample_problems", "validate_sample"]


def label_values(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of ``mask`` and their pixel counts (a histogram for 8-bit masks)."""
    if mask.dtype == np.uint8:  # runs for every loaded sample: O(n), unique() sorts
        counts = np.bincount(mask.ravel(), minlength=256)
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(mask, return_counts=True)


def _label_hint(values: np.ndarray, num_classes: int) -> str:
    """A likely cause of out-of-range labels, from the values seen."""
    present = set(values.tolist())
    if present <= {0, 255} and 255 in present:
        return " (a binary mask stored as 0/255? foreground must be stored as 1)"
    if num_classes == 19 and max(present) <= 33:
        return (
            " (Cityscapes label ids 0-33 not converted to the 19 train ids? dataset=cityscapes "
            "reads *_gtFine_labelIds.png and maps them)"
        )
    if num_classes <= 64 and (max(present) >= 2 * num_classes or present & {128, 192}):
        return " (an RGB colour mask converted to grey? masks must hold class indices)"
    return ""


def sample_problems(
    image_shape: tuple[int, ...],
    mask: np.ndarray,
    num_classes: int,
    ignore_index: int | None,
    source: str,
    hint: str | None = None,
) -> list[str]:
    """What is wrong with one sample (empty if nothing); each message starts with ``source``.

    ``image_shape`` is the ``(H, W, 3)`` shape of the image (its pixels are not needed).
    ``hint`` replaces the guessed cause of out-of-range labels (``" (...)"``).
    """
    if len(image_shape) != 3 or image_shape[2] != 3:
        return [f"{source}: expected an RGB image of shape (H, W, 3), got {image_shape}"]
    if mask.ndim != 2:
        return [f"{source}: expected a single-channel label mask (H, W), got shape {mask.shape}"]
    problems = []
    if tuple(image_shape[:2]) != mask.shape:
        problems.append(
            f"{source}: image size {image_shape[1]}x{image_shape[0]} does not match "
            f"mask size {mask.shape[1]}x{mask.shape[0]} (W x H)"
        )
    values, _ = label_values(mask)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_index)]
    if bad.size:
        problems.append(
            f"{source}: label values {_values_text(bad.tolist())} lie outside "
            f"[0, {num_classes}) and are not the ignore index "
            f"({ignore_index}){_label_hint(values, num_classes) if hint is None else hint}"
        )
    return problems


def _values_text(values: list[int], shown: int = 12) -> str:
    """``values`` as a list, shortened to its ends when long (a JPEG-compressed 0/255 mask
    holds some 250 values)."""
    if len(values) <= shown:
        return str(values)
    head = ", ".join(str(v) for v in values[: shown - 2])
    return f"[{head}, ..., {values[-2]}, {values[-1]}] ({len(values)} values)"


# smoothed_labels: a mask made of regions has few label changes; most of a smoothed one's lie
# on gradual transitions. Measured on the 468 CamVid masks of the SegNet release: 0-2.9% of
# their label changes are gradual; saved as JPEG (quality 30-95) or resized bilinearly, 23-62%.
def validate_sample(
    image_shape: tuple[int, ...],
    mask: np.ndarray,
    num_classes: int,
    ignore_index: int | None,
    source: str,
) -> None:
    """Raise :class:`DataError` naming ``source`` if image and mask disagree or a label is
    invalid."""
    problems = sample_problems(image_shape, mask, num_classes, ignore_index, source)
    if problems:
        raise DataError(problems[0])


def format_problems(where: str, problems: list[str], limit: int = 20, what: str = "problem") -> str:
    """One message listing (the first ``limit`` of) ``problems`` found in ``where``
    (``what``: ``"warning"`` for :class:`DataWarning` texts)."""
    head = f"{where}: {len(problems)} {what}{'s' if len(problems) != 1 else ''} in the data"
    lines = [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join([head, *lines])
