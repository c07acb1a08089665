"""The leaderboard of a Hydra multirun, written into its sweep directory when the sweep ends.

``conf/train.yaml`` registers :class:`LeaderboardCallback` under ``hydra.callbacks``, so that::

    python train.py -m model=fcn8s,unet,pspnet backbone=resnet18,resnet50

ends with ``leaderboard_<dataset>_<split>.{md,csv,tex,html}`` beside the runs in
``multirun/<date>/<time>/``, built by ``segbench.leaderboard`` from the ``results.json`` files
of that sweep only. Hydra calls the multirun hooks in the process that started the sweep, after
the launcher (sequential, ``hydra/launcher=parallel``, ``hydra/launcher=slurm``) has collected
every job, and after an Optuna search (``hydra/sweeper=search``) too.
``~hydra.callbacks.leaderboard`` on the command line turns it off.
"""

from __future__ import annotations

import atexit
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from segbench.results import RESULTS_FILE

__all__ = ["LeaderboardCallback", "sweep_dir_of"]


def sweep_dir_of(config: DictConfig) -> Path:
    """The absolute sweep directory of a multirun config (``hydra.sweep.dir``).

    Args:
        config: the composed multirun config Hydra hands to callbacks. ``${now:...}`` in the
            directory resolves to the value the launcher used (Hydra caches it per config).
    """
    return Path(str(config.hydra.sweep.dir)).resolve()


class LeaderboardCallback(Callback):
    """Hydra callback: write the leaderboard of the finished sweep into its directory.

    Only the ``results.json`` files under this sweep's ``hydra.sweep.dir`` are read, never
    those of earlier sweeps beside it. Building the table cannot fail the sweep: the jobs'
    results are on disk by then, so an error is reported on stderr with the command that
    rebuilds the table, and the sweep keeps its exit status (a leaderboard is one command away;
    a failed exit status would make the training itself look failed). When the sweep stops with
    an error (a job failed, Ctrl-C), Hydra skips ``on_multirun_end``; the leaderboard of the
    jobs that did finish is then written as the process exits, and the message says so.

    Messages are printed (problems on stderr) rather than logged, so that they show under any
    ``hydra/hydra_logging`` setting.

    Args:
        formats: file formats (``md``, ``csv``, ``tex``, ``html``); ``None``: those of
            ``segbench.leaderboard.write_leaderboards``.
        **options: further keyword arguments of ``write_leaderboards`` (e.g. ``percent``,
            ``merge_seeds``), as ``hydra.callbacks.leaderboard.<key>=<value>``.
    """

    def __init__(self, formats: Sequence[str] | None = None, **options: Any) -> None:
        self.formats = list(formats) if formats is not None else None
        self.options = dict(options)
        self._pending: Path | None = None  # sweep started, leaderboard not written yet

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Remember the sweep directory; write whatever finished if the sweep stops early."""
        self._pending = sweep_dir_of(config)
        atexit.register(self._after_unfinished_sweep)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the leaderboard of ``config.hydra.sweep.dir`` into that directory."""
        self._forget_pending()
        self.write(sweep_dir_of(config))

    def write(self, sweep_dir: Path, *, note: str = "") -> list[Path]:
        """Write the leaderboard files of ``sweep_dir`` into it; never raises.

        Args:
            sweep_dir: the multirun directory whose runs are ranked.
            note: said after the file list (why the table may be incomplete).

        Returns:
            The files written; empty when nothing could be written (reported on stderr).
        """
        where = shlex.quote(str(sweep_dir))
        rebuild = f"segbench leaderboard {where} --out {where}"
        try:
            from segbench.leaderboard import write_leaderboards  # the package's, looked up now

            kwargs = dict(self.options)
            if self.formats is not None:
                kwargs["formats"] = tuple(self.formats)
            paths = list(write_leaderboards([sweep_dir], sweep_dir, **kwargs) or [])
        except Exception as err:  # the sweep is over and its results are safe: report, go on
            _err(
                f"[segbench] could not write the leaderboard of sweep {sweep_dir}: "
                f"{type(err).__name__}: {err}\n"
                f"[segbench] the runs' {RESULTS_FILE} files are untouched; rebuild it with:\n"
                f"  {rebuild}"
            )
            return []
        if not paths:
            _err(f"[segbench] no leaderboard for sweep {sweep_dir}: no {RESULTS_FILE} in it")
            return []
        listed = "\n".join(f"  {p}" for p in paths)
        print(f"[segbench] leaderboard of sweep {sweep_dir}:\n{listed}{note}", flush=True)
        return paths

    def _after_unfinished_sweep(self) -> None:
        """At exit, when the sweep never reached ``on_multirun_end``: rank what finished."""
        sweep_dir, self._pending = self._pending, None
        if sweep_dir is not None and sweep_dir.is_dir():
            self.write(
                sweep_dir,
                note="\n[segbench] the sweep stopped before all its jobs finished: "
                f"this leaderboard holds only the runs that wrote {RESULTS_FILE}",
            )

    def _forget_pending(self) -> None:
        self._pending = None
        atexit.unregister(self._after_unfinished_sweep)

    def __getstate__(self) -> dict:
        # copies in launcher workers (joblib, submitit) never write at exit
        return {**self.__dict__, "_pending": None}


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
