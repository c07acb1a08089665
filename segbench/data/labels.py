"""The label checks of one sample, shared by loading, training and ``segbench check``: image
and mask sizes agree, every label is a class or the ignore index (with the likely cause of a
wrong one), and the messages that list what was found."""

from __future__ import annotations

import numpy as np

from segbench.data.errors import DataError

__all__ = [
    "LabelProblem",
    "format_problems",
    "ignore_suggestion",
    "label_values",
    "sample_problems",
    "validate_sample",
]


class LabelProblem(str):
    """The message of a sample whose labels lie outside ``[0, num_classes)``, which also
    carries those values (``outside``) and whether the mask looks binary (0 and one value), so
    that a list of problems can say which ``dataset.ignore_index`` would explain them all
    (:func:`ignore_suggestion`)."""

    outside: tuple[int, ...] = ()
    binary: bool = False
    num_classes: int = 0

    def __new__(
        cls, text: str, outside: tuple[int, ...], binary: bool, num_classes: int
    ) -> LabelProblem:
        problem = super().__new__(cls, text)
        problem.outside, problem.binary, problem.num_classes = outside, binary, num_classes
        return problem

    def __reduce__(self):  # crosses process boundaries (loader workers) with its values
        return (LabelProblem, (str(self), self.outside, self.binary, self.num_classes))


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
        text = (
            f"{source}: label values {_values_text(bad.tolist())} lie outside "
            f"[0, {num_classes}) and are not the ignore index "
            f"({ignore_index}){_label_hint(values, num_classes) if hint is None else hint}"
        )
        # a two-class mask of 0 and one other value: a foreground stored as 255, not a void
        binary = num_classes <= 2 and len(values) == 2 and int(values[0]) == 0
        problems.append(
            LabelProblem(text, tuple(int(v) for v in bad.tolist()), binary, num_classes)
        )
    return problems


def ignore_suggestion(problems: list[str]) -> str | None:
    """The override that explains every out-of-range label of ``problems`` when ONE value
    accounts for all of them (CamVid's void 11 with ``num_classes=11`` and the default ignore
    index 255): ``dataset.ignore_index=<value>``, in a sentence; ``None`` when several values
    are out of range, none is, or two-class masks hold 0 and that value only (a foreground
    stored as 255, not a void label)."""
    labelled = [p for p in problems if isinstance(p, LabelProblem)]
    outside = {v for p in labelled for v in p.outside}
    if len(outside) != 1 or any(p.binary for p in labelled):
        return None
    value = outside.pop()
    files = f"{len(labelled)} file{'s' if len(labelled) != 1 else ''}"
    return (
        f"every label outside [0, {labelled[0].num_classes}) is {value} ({files}): if {value} "
        "marks pixels to ignore "
        f"(void, unlabelled), run with dataset.ignore_index={value}; they are then left out of "
        "the loss and of every figure"
    )


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
        hint = ignore_suggestion(problems[:1])
        raise DataError(problems[0] + (f"\n  {hint}" if hint else ""))


def format_problems(where: str, problems: list[str], limit: int = 20, what: str = "problem") -> str:
    """One message listing (the first ``limit`` of) ``problems`` found in ``where``
    (``what``: ``"warning"`` for :class:`DataWarning` texts)."""
    head = f"{where}: {len(problems)} {what}{'s' if len(problems) != 1 else ''} in the data"
    lines = [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    hint = ignore_suggestion(problems)
    if hint:
        lines.append(f"  {hint[0].upper()}{hint[1:]}")
    return "\n".join([head, *lines])
