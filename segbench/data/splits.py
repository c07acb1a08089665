"""Split lists: reading them, refusing an entry listed twice, and finding training images that
leak into an evaluation split. Used by the datasets that read split files (CamVid, VOC,
folder)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from segbench.data.errors import DataError

__all__ = [
    "EVALUATION_SPLITS",
    "TRAINING_SPLITS",
    "empty_split_error",
    "leak_partners",
    "read_split_file",
    "refuse_duplicates",
    "split_file_lines",
    "split_leaks",
]


def split_file_lines(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of a split file, stripped, with their line numbers (from 1)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        shown = str(Path(path).absolute())
        raise FileNotFoundError(f"split file {shown!r} does not exist") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _numbers(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:-1])) + f" and {numbers[-1]}"


def refuse_duplicates(path: Path, keyed: Iterable[tuple[int, str]], limit: int = 10) -> None:
    """Raise :class:`DataError` naming ``path``, the entries and their line numbers if an entry
    of the split file is listed more than once (``keyed``: ``(line number, entry)`` pairs)."""
    lines: dict[str, list[int]] = {}
    for number, key in keyed:
        lines.setdefault(key, []).append(number)
    repeated = [(key, numbers) for key, numbers in lines.items() if len(numbers) > 1]
    if not repeated:
        return
    shown = [f"  {key} on lines {_numbers(numbers)}" for key, numbers in repeated[:limit]]
    if len(repeated) > limit:
        shown.append(f"  ... and {len(repeated) - limit} more")
    several = len(repeated) != 1
    raise DataError(
        f"{path}: {len(repeated)} {'entries are' if several else 'entry is'} listed more than "
        "once (each sample must be listed once: a repeat counts it twice in training or "
        "evaluation):\n" + "\n".join(shown)
    )


def read_split_file(path: Path) -> list[str]:
    """The entries of a split file (one per non-blank line, stripped), in order;
    :class:`DataError` if one is listed twice, ``FileNotFoundError`` if it does not exist."""
    numbered = split_file_lines(path)
    refuse_duplicates(path, numbered)
    return [entry for _, entry in numbered]


def empty_split_error(listed_in: str | Path, split: str, why: str) -> DataError:
    """The error of a split without a single sample: ``listed_in`` names the file or
    directories the samples were looked for in, ``why`` says what was found there."""
    return DataError(f"{listed_in}: the {split!r} split is empty: {why}")


TRAINING_SPLITS = ("train", "train_aug")
EVALUATION_SPLITS = ("val", "test")


def leak_partners(split: str) -> tuple[str, ...]:
    """The splits that must share no sample with ``split``: a training split and the
    evaluation splits (val, test); other splits (e.g. VOC's trainval) have none."""
    if split in TRAINING_SPLITS:
        return EVALUATION_SPLITS
    if split in EVALUATION_SPLITS:
        return ("train",)
    return ()


def split_leaks(
    listed: tuple[str, Iterable[str]],
    others: Iterable[tuple[str, Iterable[str]]],
    shown: int = 3,
) -> tuple[list[str], list[str]]:
    """``(problems, warnings)`` for samples that ``listed`` = ``(where, entries)`` shares
    with each of ``others`` (a training split against the evaluation splits, or the reverse).

    Partly overlapping lists leak evaluation images into training: a problem naming both
    places and a few shared entries. Identical lists are a warning: training and evaluating
    on the same images is deliberate more often than not (an overfitting check).
    """
    where, mine = listed[0], set(listed[1])
    problems, notes = [], []
    for other_where, other_entries in others:
        theirs = set(other_entries)
        shared = sorted(mine & theirs)
        if not shared:
            continue
        if mine == theirs:  # the same text from either side: Python shows it once
            first, second = sorted([where, other_where])
            notes.append(
                f"{first} and {second} list the same {len(shared)} samples: the model is "
                "evaluated on its training images (deliberate, e.g. an overfitting check? "
                "the scores are not held-out scores)"
            )
            continue
        problems.append(
            f"{where} and {other_where} share {len(shared)} samples "
            f"({', '.join(shared[:shown])}{', ...' if len(shared) > shown else ''}): images "
            "listed for training leak into evaluation, which inflates the scores; list each "
            "image in one of them only"
        )
    return problems, notes
