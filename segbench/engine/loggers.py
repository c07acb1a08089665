"""Experiment loggers. W&B goes online when an API key is configured and offline otherwise."""

from __future__ import annotations

import csv
import netrc
import os
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger as _CSVLogger
from pytorch_lightning.loggers import WandbLogger

__all__ = ["CSVLogger", "end_wandb_run", "wandb_logger", "wandb_mode"]


def end_wandb_run(environ_before: str | None) -> None:
    """End this process's W&B run, if any, and put back ``WANDB_MODE`` as it was before the
    run (Lightning's offline logger sets it): the next run in the process (a sequential
    sweep's next job, a test) starts its own W&B run, in its own mode."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
    if environ_before is None:
        os.environ.pop("WANDB_MODE", None)
    else:
        os.environ["WANDB_MODE"] = environ_before


class CSVLogger(_CSVLogger):
    """Lightning's CSV logger that can carry on a resumed run's ``metrics.csv``.

    Lightning's deletes an existing ``metrics.csv``. With ``keep_rows`` set (by ``train()``
    from the checkpoint: the rows written when it was saved), the file is cut back to its
    first ``keep_rows`` rows, which the resumed run then extends: no row lost, none twice.
    """

    keep_rows: int | None = None

    @property
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        header, rows = None, []
        if self.keep_rows is not None and path.is_file():
            with open(path, newline="") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                rows = [row for _, row in zip(range(self.keep_rows), reader)]
        experiment = _CSVLogger.experiment.fget(self)  # removes metrics.csv
        if header:
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(header)
                writer.writerows(rows)
            experiment.metrics_keys = list(header)
        return experiment


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        hosts = netrc.netrc(path).hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


def wandb_mode(mode: str = "auto") -> str:
    """Resolve ``auto`` to ``online`` when a W&B key is present, else ``offline``.

    ``WANDB_MODE`` in the environment wins over the config, as W&B users expect.
    """
    mode = os.environ.get("WANDB_MODE", mode)
    if mode == "dryrun":  # W&B's old name for offline (Lightning's offline logger sets it)
        mode = "offline"
    if mode not in ("auto", "online", "offline", "disabled"):
        raise ValueError(
            f"logger.wandb.mode must be auto, online, offline or disabled, got {mode!r}"
        )
    if mode == "auto":
        return "online" if _has_wandb_key() else "offline"
    return mode


def wandb_logger(
    save_dir: str,
    project: str = "segbench",
    name: str | None = None,
    mode: str = "auto",
    **kwargs,
) -> WandbLogger:
    """A Lightning ``WandbLogger`` whose mode is chosen by :func:`wandb_mode`.

    Offline runs are written under ``<save_dir>/wandb``; upload them later with
    ``wandb sync <save_dir>/wandb/offline-run-*``.
    """
    resolved = wandb_mode(mode)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if resolved != "online" and "settings" not in kwargs:
        from segbench.engine.console import is_verbose

        if not is_verbose():  # W&B's banner and summary only for a run it uploads
            import wandb

            kwargs["settings"] = wandb.Settings(silent=True)
            if resolved == "offline":
                runs = f"{save_dir}/wandb/offline-run-*"
                print(f"W&B offline (no API key): upload with `wandb sync {runs}`", flush=True)
    logger = WandbLogger(
        save_dir=save_dir,
        project=project,
        name=name,
        offline=resolved == "offline",
        mode=resolved,
        **kwargs,
    )
    # Lightning passes anonymous=None, which W&B 0.31 warns has no effect: never set it
    logger._wandb_init.pop("anonymous", None)
    return logger
