"""``segbench check dataset=... [key=value ...]``: scan a dataset for bad data.

Reports, per split, every problem it finds and exits with status 1 if there is any (a split
that cannot be opened, e.g. a missing root, counts as one):

- images without masks and masks without images;
- unreadable image or mask files (every image is decoded in full, not only its header);
- image/mask size mismatches;
- label values outside ``[0, num_classes)`` that are not the ignore index;
- the classic mistakes: binary masks stored as 0/255, VOC's void band remapped to background,
  Cityscapes label ids not converted to train ids, and each format's own (see the datasets'
  ``diagnose`` methods).

Training and evaluation refuse the same problems before they start (``check_on_setup``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from segbench.data.base import format_problems

__all__ = ["check_dataset", "main"]


def check_dataset(dataset_cfg, splits: list[str] | None = None) -> dict[str, list[str]]:
    """Every problem of each split of ``dataset_cfg`` (a ``conf/dataset`` config), by split.

    A split that cannot be opened (missing root or split file) reports that error as its one
    problem, except a split that training does not use (not train, val or ``eval_split``) and
    whose files are simply absent from an existing root, as when a release comes without its
    test split: that one is left out of the result and announced on stderr.
    """
    from hydra.utils import instantiate

    dm = instantiate(dataset_cfg)
    root = getattr(dm.source, "keywords", {}).get("root")
    used = {"train", "val", dm.eval_split}
    found: dict[str, list[str]] = {}
    for split in splits or dm.splits:
        try:
            ds = dm.source(split=split, transform=None)
        except (OSError, ValueError) as err:
            absent = isinstance(err, FileNotFoundError) and root and Path(root).is_dir()
            if absent and split not in used and not splits:
                print(f"{dm.name}/{split}: absent, not checked ({err})", file=sys.stderr)
            else:
                found[split] = [str(err)]
            continue
        found[split] = ds.scan(full=True, desc=f"checking {dm.name}/{split}")
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
    found = check_dataset(cfg.dataset, args.split)
    bad = 0
    for split, problems in found.items():
        if problems:
            bad += len(problems)
            print(format_problems(f"{cfg.dataset.name}/{split}", problems, args.limit))
        else:
            print(f"{cfg.dataset.name}/{split}: ok")
    if bad:
        print(f"\n{bad} problem{'s' if bad != 1 else ''} found", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
