"""Per-class IoU leaderboards from ``results.json`` files, laid out like the PASCAL VOC table.

``segbench leaderboard PATHS...`` (:func:`segbench.leaderboard.cli.main`) reads every
``results.json`` beneath PATHS (run directories, multirun directories, files, or quoted globs,
``**`` allowed), prints the tables as Markdown and writes them as Markdown, CSV, LaTeX (booktabs)
and self-contained HTML (:mod:`segbench.leaderboard.render`). The rules:

* Tables: one per (dataset, class list, split); a table never mixes datasets, label sets or
  splits (val and test figures are not comparable). Train and evaluate records are rows alike.
* Merging: records with the same model, backbone and ``eval_mode`` whose ``config`` is equal
  once run-identity keys are removed (:data:`RUN_IDENTITY_KEYS`, and any string holding the
  run's own directory or checkpoint path) are runs of one configuration that differ only by
  seed: one row, mean ± sample standard deviation (ddof=1) over its ``n`` runs.
* Method: ``model / backbone``; rows that would share it (and the eval mode) also get the
  config keys that tell them apart, e.g. ``fcn8s / resnet18 (optimizer.lr=0.05)``.
  An evaluation's identity is its checkpoint, not its seed: evaluations of the checkpoints of
  a seed sweep merge the same way. ``--no-merge``: one row per record.
* A class absent from a run (IoU ``null``) shows ``–`` and is left out of that class's mean;
  ``(k/n)`` after a figure: k of the row's n runs have it.
* Noise: ``†`` after the mIoU of a row not significantly below the best row's (a paired
  sign-flip test over the images, Holm-corrected over the rows; ``--alpha``,
  ``--no-significance``); ``--spread ci`` shows each figure's bootstrap interval over images
  instead of ± std. Both need the runs' per-image counts (``per_image.npz``); rows without them
  are named in the notes. ``segbench compare A B`` tests two configurations in full.
* Sorted by mIoU; the best value of each score column in bold. Broken or partial files are
  reported by path and skipped. Output files ``leaderboard_<dataset>_<split>.<ext>`` are
  derived artefacts and are overwritten.

The modules, each importing only those above it:

* ``records``: finding, reading and checking ``results.json`` files.
* ``table``: the table model (:class:`Leaderboard`, :class:`Column`, :class:`Row`,
  :class:`Stat`).
* ``build``: tables from records (:func:`build_tables`): grouping, merging seeds, labels.
* ``paired``: the per-image counts behind rows, checked (same images, same classes).
* ``uncertainty``: intervals and the test against the best row, added to a built table.
* ``render``: Markdown, CSV, LaTeX and HTML.
* ``wandb_io``: records from a W&B project, tables as ``wandb.Table`` s (imported on use).
* ``pipeline``: collect, filter, build, warn, write (:func:`publish`,
  :func:`write_leaderboards`).
* ``cli``: the ``segbench leaderboard`` command; ``compare``: the ``segbench compare``
  command; ``sweep``: the Hydra callback that writes a
  sweep's leaderboard into its directory (imported on use: Hydra).
"""

from segbench.leaderboard.build import (
    DEFAULT_METRICS,
    METRIC_CHOICES,
    RUN_IDENTITY_KEYS,
    LeaderboardWarning,
    build_tables,
)
from segbench.leaderboard.pipeline import Outcome, publish, write_leaderboards, write_tables
from segbench.leaderboard.records import check_record, collect
from segbench.leaderboard.render import FORMATS
from segbench.leaderboard.table import Column, Leaderboard, Row, Stat

__all__ = [
    "DEFAULT_METRICS",
    "FORMATS",
    "METRIC_CHOICES",
    "RUN_IDENTITY_KEYS",
    "Column",
    "Leaderboard",
    "LeaderboardWarning",
    "Outcome",
    "Row",
    "Stat",
    "build_tables",
    "check_record",
    "collect",
    "publish",
    "write_leaderboards",
    "write_tables",
]
