"""The picture of a training run: curves, validation predictions and mIoU against wall time,
redrawn after every validation into the run directory."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from segbench.engine.callbacks import wandb_loggers
from segbench.inference import evaluating
from segbench.metrics import class_map

__all__ = ["RunPlots"]


class RunPlots(pl.Callback):
    """The picture of a training run, redrawn after every validation into the run directory
    (and logged to W&B at the end of training):

    - ``curves.png``: loss and mIoU per epoch, train and val;
    - ``val_predictions.png``: ``num_images`` validation images spread over the split (one
      drawn from each of ``num_images`` equal stretches of it, with ``seed``: the same images
      after every validation, in every run of the dataset), each as image | ground truth |
      prediction of the current weights | errors, with its id and its own mIoU, and the class
      legend once (:func:`segbench.panels.draw_panels`);
    - ``miou_vs_time.png``: validation mIoU against the wall time of training, from
      ``timeline.json`` (epoch, step, seconds since training started, val mIoU); kept apart
      from ``history.json``, which holds figures only and is identical between repeated runs.

    The final evaluation's confusion matrix and per-class IoU chart come from
    :class:`~segbench.engine.callbacks.EvaluationOutputs`. The per-epoch figures are also kept
    in ``history.json``.

    Args:
        dirpath: the run directory.
        num_images: validation images in ``val_predictions.png``.
        seed: which ones (:func:`segbench.panels.spread_indices`).
    """

    KEYS = ("train/loss", "val/loss", "train/mIoU", "val/mIoU")

    def __init__(self, dirpath: str, num_images: int = 8, seed: int = 0) -> None:
        self.dirpath = Path(dirpath)
        self.num_images = num_images
        self.seed = seed
        self._samples: list[dict] | None = None  # the validation images drawn, once read
        self.history: list[dict] = []
        self.timeline: list[dict] = []
        self._wall_before = 0.0  # seconds of training before this process (a resumed run)
        self._fit_start: float | None = None

    def _wall(self) -> float:
        running = time.perf_counter() - self._fit_start if self._fit_start is not None else 0.0
        return self._wall_before + running

    # the history is part of the checkpoint, so that a resumed run carries it on
    def state_dict(self) -> dict:
        return {
            "history": [dict(row) for row in self.history],
            "timeline": [dict(row) for row in self.timeline],
            "wall_s": self._wall(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.history = [dict(row) for row in state.get("history", [])]
        self.timeline = [dict(row) for row in state.get("timeline", [])]
        self._wall_before = float(state.get("wall_s", 0.0))

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._record(trainer, trainer.current_epoch + 1, "val")
        miou = trainer.callback_metrics.get("val/mIoU")
        if miou is not None:
            self.timeline.append(
                {
                    "epoch": trainer.current_epoch + 1,
                    "step": trainer.global_step,
                    "wall_s": round(self._wall(), 2),
                    "val/mIoU": float(miou),
                }
            )
        self._draw(trainer)
        self._draw_predictions(trainer, pl_module)

    def _record(self, trainer, epoch: int, split: str) -> None:
        """Put the ``split`` figures now in ``trainer.callback_metrics`` under ``epoch``."""
        metrics = trainer.callback_metrics
        row = next((h for h in self.history if h["epoch"] == epoch), None)
        if row is None:
            row = {"epoch": epoch}
            self.history.append(row)
            self.history.sort(key=lambda h: h["epoch"])
        for key in self.KEYS:
            if not key.startswith(split):
                continue
            for name in (f"{key}_epoch", key):
                if name in metrics:
                    row[key] = float(metrics[name])
                    break

    # Lightning calls a callback's on_train_epoch_end before the module logs its epoch
    # figures (train/mIoU, train/loss_epoch), so an epoch's training figures are read at the
    # start of the next epoch, or at the end of fitting.
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._train_epoch = trainer.current_epoch + 1

    def _flush_train(self, trainer, pl_module) -> None:
        epoch = getattr(self, "_train_epoch", None)
        if epoch is not None and trainer.is_global_zero:
            self._record(trainer, epoch, "train")
            self._draw(trainer)
        self._train_epoch = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._flush_train(trainer, pl_module)

    def _draw(self, trainer) -> None:
        """``history.json``, ``curves.png`` and, with a timeline, ``miou_vs_time.png``."""
        from segbench.plots import plot_curves, plot_time_curve

        dm = trainer.datamodule
        self.dirpath.mkdir(parents=True, exist_ok=True)
        (self.dirpath / "history.json").write_text(json.dumps(self.history, indent=1))
        plot_curves(self.history, self.dirpath / "curves.png", title=f"{dm.name}: training curves")
        if self.timeline:
            (self.dirpath / "timeline.json").write_text(json.dumps(self.timeline, indent=1))
            plot_time_curve(
                self.timeline,
                self.dirpath / "miou_vs_time.png",
                title=f"{dm.name}: validation mIoU against wall time",
            )

    def _draw_predictions(self, trainer, pl_module) -> None:
        """``val_predictions.png``: the chosen validation images and the current predictions."""
        from segbench.panels import PanelRow, save_panels, spread_indices
        from segbench.plots import default_palette

        dm = trainer.datamodule
        ds = dm.dataset("val")
        picked = spread_indices(len(ds), self.num_images, self.seed)
        if not picked:
            return
        if self._samples is None:  # the same images every validation: read and decoded once
            self._samples = [ds[index] for index in picked]
        images = [sample["image"] for sample in self._samples]
        with evaluating(pl_module):
            if len({tuple(image.shape) for image in images}) == 1:  # one batch
                batch = torch.stack(images).to(pl_module.device)
                preds = list(class_map(pl_module(batch)).cpu().numpy())
            else:  # images of different sizes: one at a time
                preds = [
                    class_map(pl_module(image[None].to(pl_module.device)))[0].cpu().numpy()
                    for image in images
                ]
        rows = []
        for index, sample, pred in zip(picked, self._samples, preds):
            rgb = dm.eval_transform.denormalize(sample["image"][None])[0].permute(1, 2, 0).numpy()
            name = sample.get("name")
            rows.append(
                PanelRow(
                    Path(str(name)).stem if name else f"#{index}",
                    rgb,
                    sample["mask"].numpy(),
                    pred,
                )
            )
        spread = (
            f"all {len(ds)} images"
            if len(picked) == len(ds)
            else f"{len(picked)} of {len(ds)} images, spread over the split (seed {self.seed})"
        )
        save_panels(
            rows,
            list(dm.class_names),
            dm.palette or default_palette(dm.num_classes),
            self.dirpath / "val_predictions.png",
            ignore_index=dm.ignore_index,
            title=f"{dm.name}/val, {spread}: predictions after epoch {trainer.current_epoch + 1}",
        )

    def on_fit_end(self, trainer, pl_module) -> None:
        self._flush_train(trainer, pl_module)
        loggers = wandb_loggers(trainer)
        if not loggers or not trainer.is_global_zero:
            return
        import wandb

        payload = {
            f"run/{p.stem}": wandb.Image(str(p))
            for p in (self.dirpath / "curves.png", self.dirpath / "val_predictions.png")
            if p.is_file()
        }
        for lg in loggers:
            lg.experiment.log(payload)
