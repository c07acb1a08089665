"""Leaderboards and W&B: records from a W&B project's runs instead of local ``results.json``
files (``segbench leaderboard --wandb-project ENTITY/PROJECT``; online only), and the tables
logged as ``wandb.Table`` s (``--wandb``). ``wandb`` itself is imported only when used."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segbench.inference import Inference, eval_mode
from segbench.leaderboard.records import SCORES, accept, is_number
from segbench.leaderboard.render import table_rows
from segbench.leaderboard.table import Leaderboard

__all__ = ["log_to_wandb", "record_from_wandb_run", "records_from_wandb"]


def _eval_mode_of(config: dict) -> str:
    """``eval_mode`` as the engine names it, from a run's config."""
    settings = {k: v for k, v in (config.get("inference") or {}).items() if k[0] != "_"}
    return eval_mode(config.get("model") or {}, Inference(**settings) if settings else None)


def record_from_wandb_run(run: Any, source: str) -> dict:
    """A ``results.json``-like record from a W&B run's config and summary (``<split>/mIoU``,
    ``<split>/iou/<class>`` ... as segbench logs them; ``params``, ``gflops`` and
    ``throughput`` when the summary has them).

    Args:
        run: a ``wandb.apis.public.Run`` (``config``, ``summary_metrics``, ``created_at``).
        source: how warnings and tables name the run.

    Raises:
        ValueError: the run lacks the config or summary keys a record needs.
    """
    config = dict(run.config)
    summary = dict(run.summary_metrics)
    dataset = config.get("dataset") or {}
    split = config.get("split") or dataset.get("eval_split")
    names = dataset.get("class_names")
    if f"{split}/mIoU" not in summary or not isinstance(names, list):
        raise ValueError(f"no {split}/mIoU in its summary or no dataset.class_names in its config")

    def figure(key: str) -> float | None:
        value = summary.get(f"{split}/{key}")
        return float(value) if is_number(value) else None

    return {
        "kind": "evaluate" if config.get("ckpt") else "train",
        "model": (config.get("model") or {}).get("name"),
        "backbone": (config.get("backbone") or {}).get("name"),
        "dataset": dataset.get("name"),
        "split": split,
        "eval_mode": _eval_mode_of(config),
        "classes": names,
        "metrics": {
            **{key: figure(key) for key in SCORES},
            "per_class_iou": {name: figure(f"iou/{name}") for name in names},
        },
        **{key: summary.get(key) for key in ("params", "gflops", "throughput")},
        "seed": config.get("seed"),
        "created": getattr(run, "created_at", None),
        "checkpoint": config.get("ckpt"),
        "config": config,
        "_source": source,
    }


def records_from_wandb(project: str, *, api: Any = None) -> tuple[list[dict], list[str]]:
    """Records from the finished runs of a W&B project instead of local files (online only).

    Args:
        project: ``ENTITY/PROJECT``.
        api: a ``wandb.Api``; made here when None, which needs a W&B key.

    Returns:
        ``(records, problems)`` as :func:`collect`; unfinished or unusable runs are reported.
    """
    if api is None:
        from segbench.engine.loggers import wandb_mode

        if wandb_mode("auto") != "online":
            raise RuntimeError(
                f"--wandb-project {project} reads runs from the W&B server: it needs a W&B key "
                "(WANDB_API_KEY or ~/.netrc) and WANDB_MODE unset or online"
            )
        import wandb

        api = wandb.Api()
    records, problems = [], []
    for run in api.runs(project):
        source = f"wandb:{project}/{run.id}"
        try:
            if run.state != "finished":
                raise ValueError(f"the run is {run.state}, not finished")
            record = record_from_wandb_run(run, source)
        except (ValueError, TypeError, AttributeError) as err:
            problems.append(f"{source}: skipped: {err}")
            continue
        accept(record, source, records, problems)
    return records, problems


# ---------------------------------------------------------------------------------- W&B table


def log_to_wandb(
    boards: Sequence[Leaderboard], project: str = "segbench", out_dir: str | Path = "."
) -> str:
    """Log each table as a ``wandb.Table`` (the CSV's columns) under ``leaderboard/<name>`` in
    one W&B run with ``job_type=leaderboard``: online with a W&B key, else offline under
    ``<out_dir>/wandb`` (``WANDB_MODE`` wins). Returns the run's files directory.

    Args:
        boards: the tables.
        project: ``ENTITY/PROJECT`` or ``PROJECT``.
        out_dir: where W&B keeps its files.
    """
    import wandb

    from segbench.engine.loggers import wandb_mode

    entity, _, name = project.rpartition("/")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=name,
        entity=entity or None,
        mode=wandb_mode("auto"),
        dir=str(out_dir),
        job_type="leaderboard",
        name="leaderboard",
    )
    try:
        for board in boards:
            columns, data = table_rows(board)
            run.log({f"leaderboard/{board.name}": wandb.Table(columns=columns, data=data)})
        return str(run.dir)
    finally:
        run.finish()
