"""``segbench check dataset=... [key=value ...]``: scan a dataset for bad data.

Reports, per split, every problem it finds and exits with status 1 if there is any (a split
that cannot be opened, e.g. a missing root, counts as one):

- images without masks and masks without images;
- split files that list a sample twice or none, and a training split that shares samples with
  val or test (a leak of the evaluation images into training);
- empty splits;
- unreadable or truncated image or mask files (every image is decoded in full, not only its
  header), and masks stored as JPEG;
- image/mask size mismatches;
- label values outside ``[0, num_classes)`` that are not the ignore index;
- the classic mistakes: binary masks stored as 0/255 (in every mask, or in some while others
  hold 0/1), VOC's void band remapped to background, Cityscapes label ids not converted to
  train ids, and each format's own (see the datasets' ``diagnose`` methods).

It also prints warnings (:class:`~segbench.data.errors.DataWarning`), which do not change the exit
status, for data that is probably wrong but may be legitimate: masks that look smoothed (JPEG
compressed, or resized with interpolation) while their values are valid labels, and a training
split file identical to an evaluation one.

Training and evaluation refuse the same problems before they start (``check_on_setup``).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from segbench.data.errors import DataWarning
from segbench.data.labels import format_problems

__all__ = ["check_dataset", "main"]


def check_dataset(
    dataset_cfg,
    splits: list[str] | None = None,
    warnings_out: dict[str, list[str]] | None = None,
) -> dict[str, list[str]]:
    """Every problem of each split of ``dataset_cfg`` (a ``conf/dataset`` config), by split.

    A split that cannot be opened (missing root or split file) reports that error as its one
    problem, except a split that training does not use (not train, val or ``eval_split``) and
    whose files are simply absent from an existing root, as when a release comes without its
    test split: that one is left out of the result and announced on stderr.

    ``warnings_out`` receives each split's :class:`DataWarning` messages (which are then not
    printed as Python warnings); without it they are emitted as usual.
    """
    from hydra.utils import instantiate

    dm = instantiate(dataset_cfg)
    root = getattr(dm.source, "keywords", {}).get("root")
    used = {"train", "val", dm.eval_split}
    found: dict[str, list[str]] = {}
    for split in splits or dm.splits:
        with warnings.catch_warnings():
            if warnings_out is not None:  # collected from the dataset below instead
                warnings.simplefilter("ignore", DataWarning)
            try:
                ds = dm.source(split=split, transform=None)
            except (OSError, ValueError) as err:
                absent = isinstance(err, FileNotFoundError) and root and Path(root).is_dir()
                if absent and split not in used and not splits:
                    # what is missing, without the hint to evaluate on another split (this run
                    # already evaluates on dataset.eval_split, not on this one)
                    reason = str(err).split("; ")[0]
                    print(
                        f"{dm.name}/{split}: absent, not checked ({reason}; training does not "
                        f"use it with dataset.eval_split={dm.eval_split})",
                        file=sys.stderr,
                    )
                else:
                    found[split] = [str(err)]
                continue
            found[split] = ds.scan(full=True, desc=f"checking {dm.name}/{split}")
        if warnings_out is not None and ds.data_warnings:
            warnings_out[split] = list(ds.data_warnings)
    return found


def main(argv: list[str] | None = None) -> int:
    from segbench.config import parse_verb_args, verb_parser

    parser = verb_parser(
        "check",
        "Scan a dataset for missing pairs, unreadable files, size mismatches and "
        "invalid labels. Exit status 1 when anything is wrong.",
    )
    parser.add_argument("--split", action="append", help="only this split (repeatable)")
    parser.add_argument("--limit", type=int, default=50, help="problems listed per split")
    args, cfg = parse_verb_args(parser, argv)
    notes: dict[str, list[str]] = {}
    found = check_dataset(cfg.dataset, args.split, warnings_out=notes)
    bad = 0
    for split, problems in found.items():
        if problems:
            bad += len(problems)
            print(format_problems(f"{cfg.dataset.name}/{split}", problems, args.limit))
        else:
            print(f"{cfg.dataset.name}/{split}: ok")
        for note in notes.get(split, []):
            print(f"{cfg.dataset.name}/{split}: warning: {note}")
    warned = sum(len(n) for n in notes.values())
    if warned:
        print(
            f"\n{warned} warning{'s' if warned != 1 else ''} (not failures): look at the files "
            "named above",
            file=sys.stderr,
        )
    if bad:
        print(f"\n{bad} problem{'s' if bad != 1 else ''} found", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
