"""Callbacks: what a W&B run shows besides the curves."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

__all__ = ["WandbMedia"]


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
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            preds = pl_module(images.to(pl_module.device)).argmax(1).cpu()
        pl_module.train(was_training)
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
