"""Callbacks: what a W&B run shows besides the curves."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import WandbLogger

from segbench.inference import evaluating
from segbench.metrics import class_map

__all__ = ["EvaluationOutputs", "RunPlots", "WandbMedia"]


def _wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


class WandbMedia(pl.Callback):
    """Logs per-class IoU as a ``wandb.Table`` and a few validation predictions as images with
    W&B segmentation-mask overlays (ground truth and prediction), after every validation and
    after the final evaluation. Does nothing when no W&B logger is attached.

    Args:
        num_images: how many images of the first validation batch to show.
    """

    def __init__(self, num_images: int = 4) -> None:
        self.num_images = num_images
        self._batch: dict | None = None

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if batch_idx == 0 and trainer.is_global_zero and _wandb_loggers(trainer):
            n = self.num_images
            self._batch = {"image": batch["image"][:n].detach(), "mask": batch["mask"][:n].detach()}

    on_test_batch_end = on_validation_batch_end

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "val")

    def on_test_end(self, trainer, pl_module) -> None:
        self._log(trainer, pl_module, pl_module.eval_split)

    def _log(self, trainer: pl.Trainer, pl_module, prefix: str) -> None:
        if not trainer.is_global_zero:
            return
        loggers = _wandb_loggers(trainer)
        results = pl_module.results.get(prefix)
        if not loggers or results is None:
            return
        import wandb

        names = pl_module.class_names
        table = wandb.Table(
            columns=["class", "IoU", "Dice", "accuracy"],
            data=[
                [name, results["iou"][i], results["dice"][i], results["acc"][i]]
                for i, name in enumerate(names)
            ],
        )
        payload = {f"{prefix}/per_class_iou": table}
        if self._batch is not None:
            payload[f"{prefix}/predictions"] = self._images(trainer, pl_module)
        for lg in loggers:
            lg.experiment.log({**payload, "trainer/global_step": trainer.global_step})

    def _images(self, trainer, pl_module) -> list:
        import wandb

        images, masks = self._batch["image"], self._batch["mask"]
        with evaluating(pl_module):
            preds = class_map(pl_module(images.to(pl_module.device))).cpu()
        rgb = trainer.datamodule.eval_transform.denormalize(images)
        labels = {i: name for i, name in enumerate(pl_module.class_names)}
        ignore = trainer.datamodule.ignore_index
        labels[ignore] = "ignore"
        out = []
        for img, gt, pred in zip(rgb, masks.cpu(), preds):
            out.append(
                wandb.Image(
                    img.permute(1, 2, 0).numpy(),
                    masks={
                        "prediction": {
                            "mask_data": pred.numpy().astype(np.int64),
                            "class_labels": labels,
                        },
                        "ground_truth": {
                            "mask_data": gt.numpy().astype(np.int64),
                            "class_labels": labels,
                        },
                    },
                )
            )
        return out


class EvaluationOutputs(pl.Callback):
    """What the final evaluation leaves in the run directory besides ``results.json``:

    - ``predictions/<image>.png``: each prediction as a palette PNG (pixel values = class
      indices, shown in the dataset's colours), when ``predictions`` is on;
    - ``uncertainty/<image>.png``: for models that give a per-pixel uncertainty (Bayesian
      SegNet's MC dropout), a heatmap of it next to each saved prediction (scaled to the
      image's maximum, which is written in ``uncertainty/scale.json``);
    - ``overlays/<image>.png``: image | ground truth | prediction (| uncertainty) side by
      side, for the first ``overlays`` images of each process (``-1``: all);
    - ``confusion_matrix.png``, ``per_class_iou.png`` and ``reliability.png`` (the
      calibration of the predicted probabilities: accuracy against confidence) for the split,
      when ``plots`` is on.

    The images and plots are also logged to W&B when a W&B logger is attached.

    Args:
        dirpath: the run directory.
        predictions: save every prediction (and uncertainty) as a PNG.
        overlays: how many side-by-side panels to save per process.
        plots: save the confusion-matrix heatmap and the per-class IoU bar chart.
    """

    def __init__(
        self, dirpath: str, predictions: bool = False, overlays: int = 16, plots: bool = True
    ) -> None:
        self.dirpath = Path(dirpath)
        self.predictions = predictions
        self.overlays = overlays
        self.plots = plots
        self._used: set[str] = set()
        self._panels: list[str] = []
        self._scales: dict[str, float] = {}

    def on_test_start(self, trainer, pl_module) -> None:
        self._used.clear()
        self._panels.clear()
        self._scales.clear()

    def _stem(self, name: str) -> str:
        stem = Path(str(name)).stem or "image"
        unique, n = stem, 1
        while unique in self._used:
            n += 1
            unique = f"{stem}_{n}"
        self._used.add(unique)
        return unique

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        want_panels = self.overlays < 0 or len(self._panels) < self.overlays
        if not (self.predictions or want_panels) or not isinstance(outputs, dict):
            return
        from segbench.plots import colorize, default_palette, heatmap, panel, save_palette_png

        dm = trainer.datamodule
        palette = dm.palette or default_palette(dm.num_classes)
        preds = outputs["pred"].cpu().numpy()
        uncertainty = outputs.get("uncertainty")
        uncertainty = None if uncertainty is None else uncertainty.float().cpu().numpy()
        rgb = None
        for i, name in enumerate(batch["name"]):
            stem = self._stem(name)
            unc = None if uncertainty is None else uncertainty[i]
            if unc is not None:
                self._scales[stem] = float(unc.max(initial=0.0))
            if self.predictions:
                save_palette_png(preds[i], palette, self.dirpath / "predictions" / f"{stem}.png")
                if unc is not None:
                    path = self.dirpath / "uncertainty" / f"{stem}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(heatmap(unc)).save(path)
            if self.overlays < 0 or len(self._panels) < self.overlays:
                if rgb is None:
                    rgb = dm.eval_transform.denormalize(batch["image"]).permute(0, 2, 3, 1).numpy()
                gt = batch["mask"][i].cpu().numpy()
                tiles = [
                    rgb[i],
                    colorize(gt, palette, dm.ignore_index),
                    colorize(preds[i], palette, dm.ignore_index),
                ]
                if unc is not None:
                    tiles.append(heatmap(unc))
                path = self.dirpath / "overlays" / f"{stem}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(panel(tiles)).save(path)
                self._panels.append(str(path))

    def on_test_end(self, trainer, pl_module) -> None:
        if self._scales and self.predictions:
            path = self.dirpath / "uncertainty" / f"scale.rank{trainer.global_rank}.json"
            path.write_text(json.dumps(self._scales, indent=1))
        if not trainer.is_global_zero:
            return
        from segbench.plots import plot_confusion_matrix, plot_per_class_iou, plot_reliability

        split = pl_module.eval_split
        results = pl_module.results.get(split)
        media: dict[str, str] = {}
        if self.plots and results is not None:
            dm = trainer.datamodule
            title = f"{dm.name}/{split}"
            media["confusion_matrix"] = str(
                plot_confusion_matrix(
                    np.asarray(results["confusion_matrix"]),
                    pl_module.class_names,
                    self.dirpath / "confusion_matrix.png",
                    title=f"{title}: confusion matrix (row-normalised)",
                )
            )
            media["per_class_iou"] = str(
                plot_per_class_iou(
                    results["iou"],
                    pl_module.class_names,
                    self.dirpath / "per_class_iou.png",
                    palette=dm.palette,
                    title=f"{title}: per-class IoU",
                )
            )
            if results.get("calibration") and results["calibration"]["pixels"]:
                media["reliability"] = str(
                    plot_reliability(
                        results["calibration"],
                        self.dirpath / "reliability.png",
                        title=f"{title}: reliability of the predicted probabilities",
                    )
                )
        loggers = _wandb_loggers(trainer)
        if loggers and (media or self._panels):
            import wandb

            payload = {f"{split}/{k}": wandb.Image(v) for k, v in media.items()}
            if self._panels:
                payload[f"{split}/overlays"] = [
                    wandb.Image(p, caption=Path(p).stem) for p in self._panels[:32]
                ]
            for lg in loggers:
                lg.experiment.log(payload)


class RunPlots(pl.Callback):
    """The picture of a training run, redrawn after every validation into the run directory
    (and logged to W&B at the end of training):

    - ``curves.png``: loss and mIoU per epoch, train and val;
    - ``val_predictions.png``: the first ``num_images`` validation images, each as image |
      ground truth | prediction of the current weights;
    - ``miou_vs_time.png``: validation mIoU against the wall time of training, from
      ``timeline.json`` (epoch, step, seconds since training started, val mIoU); kept apart
      from ``history.json``, which holds figures only and is identical between repeated runs.

    The final evaluation's confusion matrix and per-class IoU chart come from
    :class:`EvaluationOutputs`. The per-epoch figures are also kept in ``history.json``.

    Args:
        dirpath: the run directory.
        num_images: validation images in the prediction grid.
    """

    KEYS = ("train/loss", "val/loss", "train/mIoU", "val/mIoU")

    def __init__(self, dirpath: str, num_images: int = 8) -> None:
        self.dirpath = Path(dirpath)
        self.num_images = num_images
        self.history: list[dict] = []
        self.timeline: list[dict] = []
        self._batch: dict | None = None
        self._collecting = True  # during the first validation of this process
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
        self._collecting = False
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
        self._draw(trainer, pl_module)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        have = 0 if self._batch is None else len(self._batch["image"])
        if self._collecting and have < self.num_images:  # the same images every epoch
            take = {k: batch[k][: self.num_images - have].detach().cpu() for k in ("image", "mask")}
            if self._batch is None:
                self._batch = take
            else:
                self._batch = {k: torch.cat([self._batch[k], take[k]]) for k in take}

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
            self._draw(trainer, pl_module)
        self._train_epoch = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._flush_train(trainer, pl_module)

    def _draw(self, trainer, pl_module) -> None:
        from segbench.plots import (
            colorize,
            default_palette,
            plot_curves,
            plot_time_curve,
            prediction_grid,
        )

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
        if self._batch is None:
            return
        palette = dm.palette or default_palette(dm.num_classes)
        with evaluating(pl_module):
            preds = class_map(pl_module(self._batch["image"].to(pl_module.device))).cpu().numpy()
        rgb = dm.eval_transform.denormalize(self._batch["image"]).permute(0, 2, 3, 1).numpy()
        rows = [
            [rgb[i], colorize(gt, palette, dm.ignore_index), colorize(preds[i], palette)]
            for i, gt in enumerate(self._batch["mask"].numpy())
        ]
        Image.fromarray(prediction_grid(rows)).save(self.dirpath / "val_predictions.png")

    def on_fit_end(self, trainer, pl_module) -> None:
        self._flush_train(trainer, pl_module)
        loggers = _wandb_loggers(trainer)
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
