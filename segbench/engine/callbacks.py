"""Callbacks: what a W&B run shows besides the curves (:class:`WandbMedia`), and what the final
evaluation leaves on disk (:class:`EvaluationOutputs`). The picture of a training run is drawn
by :class:`~segbench.engine.run_plots.RunPlots`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from PIL import Image
from pytorch_lightning.loggers import WandbLogger

from segbench.inference import evaluating
from segbench.metrics import class_map

__all__ = ["EvaluationOutputs", "WandbMedia", "wandb_loggers"]


def wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    """The trainer's W&B loggers."""
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
        if batch_idx == 0 and trainer.is_global_zero and wandb_loggers(trainer):
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
        loggers = wandb_loggers(trainer)
        results = pl_module.results.get(prefix)
        if not loggers or results is None:
            return
        import wandb

        names = pl_module.class_names
        table = wandb.Table(
            columns=["class", "IoU", "Dice", "accuracy"],
            data=[
                [name, *(results.per_class[k][i] for k in ("iou", "dice", "acc"))]
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
    - ``panels/<image>.png``: image | ground truth | prediction | errors (| uncertainty) side
      by side under titled columns, with the image's id, its own mIoU and the legend of the
      classes it shows (:func:`segbench.panels.draw_panels`), for the first ``panels`` images
      of each process (``-1``: all);
    - ``confusion_matrix.png``, ``per_class_iou.png`` and ``reliability.png`` (the
      calibration of the predicted probabilities: accuracy against confidence) for the split,
      when ``plots`` is on.

    The images and plots are also logged to W&B when a W&B logger is attached.

    Args:
        dirpath: the run directory.
        predictions: save every prediction (and uncertainty) as a PNG.
        panels: how many side-by-side panels to save per process.
        plots: save the confusion-matrix heatmap and the per-class IoU bar chart.
        overlays: the old name of ``panels``; taken for it, with a warning.
    """

    def __init__(
        self,
        dirpath: str,
        predictions: bool = False,
        panels: int = 16,
        plots: bool = True,
        overlays: int | None = None,
    ) -> None:
        if overlays is not None:
            warnings.warn(
                f"callbacks.eval_outputs.overlays={overlays}: the key is now "
                f"callbacks.eval_outputs.panels (the pictures go to panels/); taken as "
                f"panels={overlays}",
                FutureWarning,
                stacklevel=2,
            )
            panels = overlays
        self.dirpath = Path(dirpath)
        self.predictions = predictions
        self.panels = panels
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

    def _want_panel(self) -> bool:
        return self.panels < 0 or len(self._panels) < self.panels

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not (self.predictions or self._want_panel()) or not isinstance(outputs, dict):
            return
        from segbench.panels import PanelRow, save_panels
        from segbench.plots import default_palette, heatmap, save_palette_png

        dm = trainer.datamodule
        palette = dm.palette or default_palette(dm.num_classes)
        preds = outputs["pred"].cpu().numpy()
        uncertainty = outputs.get("uncertainty")
        uncertainty = None if uncertainty is None else uncertainty.float().cpu().numpy()
        split = getattr(pl_module, "eval_split", None) or "test"
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
            if self._want_panel():
                if rgb is None:
                    rgb = dm.eval_transform.denormalize(batch["image"]).permute(0, 2, 3, 1).numpy()
                row = PanelRow(stem, rgb[i], batch["mask"][i].cpu().numpy(), preds[i], unc)
                path = save_panels(
                    [row],
                    list(dm.class_names),
                    palette,
                    self.dirpath / "panels" / f"{stem}.png",
                    ignore_index=dm.ignore_index,
                    title=f"{dm.name}/{split}: {stem}",
                )
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
                    np.asarray(results.confusion_matrix),
                    pl_module.class_names,
                    self.dirpath / "confusion_matrix.png",
                    title=f"{title}: confusion matrix (row-normalised)",
                )
            )
            media["per_class_iou"] = str(
                plot_per_class_iou(
                    results.per_class["iou"],
                    pl_module.class_names,
                    self.dirpath / "per_class_iou.png",
                    palette=dm.palette,
                    title=f"{title}: per-class IoU",
                )
            )
            calibration = results.figure_record("calibration")
            if calibration and calibration["pixels"]:
                media["reliability"] = str(
                    plot_reliability(
                        calibration,
                        self.dirpath / "reliability.png",
                        title=f"{title}: reliability of the predicted probabilities",
                    )
                )
        loggers = wandb_loggers(trainer)
        if loggers and (media or self._panels):
            import wandb

            payload = {f"{split}/{k}": wandb.Image(v) for k, v in media.items()}
            if self._panels:
                payload[f"{split}/panels"] = [
                    wandb.Image(p, caption=Path(p).stem) for p in self._panels[:32]
                ]
            for lg in loggers:
                lg.experiment.log(payload)
