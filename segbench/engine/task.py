"""The LightningModule: model, loss, metrics per split, optimizer and schedule from config."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric

from segbench import __version__
from segbench.boundary import BoundaryOptions, boundary_figures, boundary_stats
from segbench.calibration import Calibration, calibration_record
from segbench.cityscapes_metrics import category_iou, instance_iou, instance_sums
from segbench.data.cityscapes import CLASS_NAMES as CITYSCAPES_CLASSES
from segbench.engine.fast import check_fast, prepare_batch, prepare_model
from segbench.metrics import ConfusionMatrix, class_map
from segbench.models.base import segmenter_of
from segbench.per_image import PerImageRecorder, image_counts

__all__ = ["SegmentationTask"]

# the task converts batches for fast.channels_last in on_after_batch_transfer; the data module
# defines no such hook, so Lightning's notice that the task's is the one used says nothing
warnings.filterwarnings("ignore", message=r"You have overridden `on_after_batch_transfer`")

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class SegmentationTask(pl.LightningModule):
    """Trains and evaluates a segmentation model.

    Logs ``train/loss``, ``val/loss`` and, per split, ``<split>/mIoU``, ``pixel_acc``,
    ``mean_acc``, ``fwIoU``, ``mDice`` and ``<split>/iou/<class>``. The evaluation split's
    prefix is ``eval_split`` (``test`` or ``val``), so keys always say which data they
    describe.

    Args:
        model: returns ``{"out": logits (B, K, H, W), "aux"?: logits}``.
        loss: ``(logits, target) -> scalar``; also applied to ``aux`` with the weight the
            model's auxiliary head carries (``model.aux_weight``; PSPNet: 0.4).
        optimizer: factory taking the parameters (a ``functools.partial``).
        scheduler: factory ``(optimizer, total_steps=N)``, stepped every optimizer step,
            or ``None`` for a constant learning rate.
        num_classes: number of classes.
        ignore_index: label excluded from the metrics.
        class_names: one name per class, used in metric keys.
        run_config: the resolved run configuration (plain containers), stored in checkpoints
            so that ``evaluate.py`` can rebuild the model.
        inference: how the test step predicts (:class:`~segbench.inference.Inference`: whole
            image, sliding window, multi-scale/flip); ``None``: one plain forward pass.
        val_inference: how the validation step predicts (the checkpoint choice);
            ``None``: one plain pass. The engine gives it the single-scale part of
            ``inference`` unless ``val_inference.*`` says otherwise.
        fast: the speed options of :mod:`segbench.engine.fast` (``channels_last``,
            ``compile``); they change no figure beyond floating-point rounding.
        boundary: whether and how the test loop computes the boundary figures (BF score,
            boundary IoU; :class:`~segbench.boundary.BoundaryOptions`, the ``boundary.*``
            keys); ``None``: the defaults, on.
    """

    # whether each backward pass leaves some parameters without a gradient (DDP must then look
    # for unused parameters; the engine's trainer switches its ``ddp`` strategy accordingly)
    ddp_find_unused_parameters: bool = False
    # read the finite-loss check every log_every_n_steps steps instead of every step (see
    # _check_finite); None: on accelerators only, where reading it costs a host sync
    defer_finite_checks: bool | None = None

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None,
        num_classes: int,
        ignore_index: int,
        class_names: Sequence[str],
        run_config: dict | None = None,
        inference: Callable[[nn.Module, Tensor], dict[str, Tensor]] | None = None,
        fast: Mapping[str, bool] | None = None,
        val_inference: Callable[[nn.Module, Tensor], dict[str, Tensor]] | None = None,
        boundary: BoundaryOptions | Mapping | None = None,
    ) -> None:
        super().__init__()
        self.fast = check_fast(fast)
        if not isinstance(boundary, BoundaryOptions):
            boundary = BoundaryOptions.from_config(boundary)
        self.boundary = boundary
        self.inference = inference
        self.val_inference = val_inference
        # the first non-finite step of each checked loss, kept on the device (_check_finite)
        self._nonfinite: dict[str, tuple[Tensor, Tensor, str]] = {}
        self._loss_terms: dict[str, Tensor] = {}
        self.model = prepare_model(model, self.fast)
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.run_config = run_config or {}
        self.eval_split = "test"
        self.metrics = nn.ModuleDict(
            {name: ConfusionMatrix(num_classes, ignore_index) for name in ("fit", "val", "test")}
        )
        # the epoch means of the training losses (``<key>_epoch``), kept as metrics so that
        # a checkpoint written mid-epoch carries them (see on_save_checkpoint)
        self.epoch_means = nn.ModuleDict()
        # the test loop's counts image by image (segbench.per_image), gathered from every rank,
        # and the calibration of its probabilities (softmax of the scores), summed over ranks
        self.per_image = PerImageRecorder()
        self.calibration = Calibration(num_classes, ignore_index)
        self.ignore_index = ignore_index
        # the last figures computed for each prefix, as Python numbers (read by the engine);
        # the test loop's also hold ``per_image``: (names, counts (N, 3, K)) in dataset order
        self.results: dict[str, dict] = {}

    @property
    def aux_weight(self) -> float:
        """The weight of the auxiliary loss: the model's head carries it (0 without one)."""
        return float(getattr(segmenter_of(self.model), "aux_weight", 0.0) or 0.0)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, K, H, W)`` at input resolution."""
        return self.model(x)["out"]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, dict) and "image" in batch:
            batch["image"] = prepare_batch(batch["image"], self.fast)
        return batch

    def _loss(self, out: dict[str, Tensor], target: Tensor) -> Tensor:
        loss = self.loss(out["out"], target)
        # a weighted sum's parts on the main head (read before the aux call overwrites them)
        self._loss_terms = dict(getattr(self.loss, "last_terms", None) or {})
        if "aux" in out and self.aux_weight > 0:
            loss = loss + self.aux_weight * self.loss(out["aux"], target)
        return loss

    def _check_finite(
        self, name: str, value: Tensor, hint: str = "lower the learning rate or check the data"
    ) -> None:
        """Stop on a NaN/inf loss, naming the key, its value and the step it first appeared at.

        On the CPU the check is free and runs every step. On an accelerator reading the flag
        is a host sync that stalls the queue of kernels, so the first non-finite step is
        recorded on the device and read every ``log_every_n_steps`` steps (when Lightning
        syncs anyway to log) and at the end of every epoch: training stops there, with the
        message of the step where it went wrong.
        """
        defer = self.defer_finite_checks
        if not (value.device.type != "cpu" if defer is None else defer):
            if not torch.isfinite(value):
                raise FloatingPointError(
                    f"{name} is {value.item()} at step {self.global_step}; {hint}"
                )
            return
        bad = ~torch.isfinite(value.detach())
        pending = self._nonfinite.get(name)
        if pending is None:
            step = torch.full((), -1, dtype=torch.long, device=value.device)
            pending = self._nonfinite[name] = (step, value.detach().float().clone(), hint)
        step, first, _ = pending
        new = bad & (step < 0)
        step.copy_(torch.where(new, torch.full_like(step, self.global_step), step))
        first.copy_(torch.where(new, value.detach().float(), first))
        every = max(int(getattr(self.trainer, "log_every_n_steps", 1) or 1), 1)
        if (self.global_step + 1) % every == 0:
            self._raise_nonfinite()

    def _raise_nonfinite(self) -> None:
        """Raise for the first non-finite loss recorded on the device, if any."""
        for name, (step, first, hint) in self._nonfinite.items():
            if int(step) >= 0:
                raise FloatingPointError(f"{name} is {first.item()} at step {int(step)}; {hint}")

    def _epoch_mean(self, key: str) -> MeanMetric:
        name = key.replace(".", "_")
        if name not in self.epoch_means:
            # this process's mean, as Lightning's own epoch means: rank 0 reads the epoch
            # figures alone (callback_metrics), so computing one must not be a collective
            self.epoch_means[name] = MeanMetric(sync_on_compute=False).to(self.device)
        return self.epoch_means[name]

    def log_train(self, key: str, value: Tensor, batch_size: int, prog_bar: bool = False) -> None:
        """Log a training figure as ``<key>_step`` every step and ``<key>_epoch``, its mean
        over the epoch weighted by batch size (this process's batches, as Lightning's own
        epoch means without ``sync_dist``)."""
        value = value.detach()
        self.log(f"{key}_step", value, on_step=True, on_epoch=False, prog_bar=prog_bar)
        mean = self._epoch_mean(key)
        mean.update(value, weight=batch_size)
        attribute = f"epoch_means.{key.replace('.', '_')}"
        self.log(f"{key}_epoch", mean, on_step=False, on_epoch=True, metric_attribute=attribute)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out = self.model(batch["image"])
        loss = self._loss(out, batch["mask"])
        self._check_finite("train/loss", loss)
        size = batch["image"].shape[0]
        for name, value in self._loss_terms.items():
            self.log_train(f"train/loss/{name}", value, size)
        self.log_train("train/loss", loss, size, prog_bar=True)
        self.metrics["fit"].update(out["out"].detach(), batch["mask"])
        return loss

    def _eval_step(self, batch: dict, metric: str, prefix: str) -> dict[str, Tensor]:
        if metric == "test" and self.inference is not None:
            out = self.inference(self.model, batch["image"])
        elif metric == "val" and self.val_inference is not None:
            out = self.val_inference(self.model, batch["image"])
        else:
            out = self.model(batch["image"])
        loss = self._loss(out, batch["mask"])
        self.log(
            f"{prefix}/loss",
            loss,
            on_epoch=True,
            sync_dist=True,
            prog_bar=prefix == "val",
            batch_size=batch["image"].shape[0],
        )
        self.metrics[metric].update(out["out"], batch["mask"])
        if metric == "test":
            self.calibration.update(out["out"], batch["mask"])
            pred = class_map(out["out"])
            counts = image_counts(pred, batch["mask"], self.num_classes, self.ignore_index)
            extra = {}
            if self.boundary.enabled:
                bf, boundary_counts = boundary_stats(
                    pred, batch["mask"], self.num_classes, self.ignore_index, self.boundary
                )
                extra = {"bf": bf, "boundary_counts": boundary_counts}
            if "instance" in batch:  # Cityscapes' instance ids: the sums of its iIoU
                classes, categories = instance_sums(pred, batch["instance"], self.num_classes)
                extra["instance_classes"], extra["instance_categories"] = classes, categories
            self.per_image.add(batch["index"], batch["name"], counts, extra)
            out = {**out, "pred": pred}  # for test_step: the class map is made once
        return out

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val", "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        """Returns the predictions ``pred (B, H, W)`` (and ``uncertainty (B, H, W)`` when the
        model gives one) for callbacks that save them."""
        out = self._eval_step(batch, "test", self.eval_split)
        result = {"pred": out["pred"]}
        if "uncertainty" in out:
            result["uncertainty"] = out["uncertainty"]
        return result

    def _log_metrics(self, metric: str, prefix: str) -> None:
        values = self.metrics[metric].compute()  # summed over all ranks
        self.metrics[metric].reset()
        summary = {k: float(values[k]) for k in ("mIoU", "pixel_acc", "mean_acc", "fwIoU", "mDice")}
        per_class = {k: values[k].tolist() for k in ("iou", "dice", "acc")}
        logged = {f"{prefix}/{k}": v for k, v in summary.items()}
        logged.update(
            {
                f"{prefix}/iou/{name}": v
                for name, v in zip(self.class_names, per_class["iou"])
                if not math.isnan(v)
            }
        )
        miou_key = f"{prefix}/mIoU"
        self.log(miou_key, logged.pop(miou_key), prog_bar=prefix == "val")
        self.log_dict(logged)
        self.results[prefix] = {
            **summary,
            **per_class,
            "confusion_matrix": values["confmat"].tolist(),
        }

    def on_train_epoch_end(self) -> None:
        self._raise_nonfinite()
        self._log_metrics("fit", "train")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.metrics["val"].reset()
            return
        self._log_metrics("val", "val")

    def on_test_epoch_start(self) -> None:
        self.per_image.reset()
        self.calibration.reset()

    def on_test_epoch_end(self) -> None:
        prefix = self.eval_split
        self._log_metrics("test", prefix)
        world = self.trainer.world_size if self._trainer is not None else 1
        names, counts, extra = self.per_image.gather_all(world)
        self.results[prefix]["per_image"] = (names, counts)
        self.results[prefix]["per_image_extra"] = extra
        self.per_image.reset()
        if "bf" in extra:  # every rank holds every image's rows: the same figures everywhere
            record = boundary_figures(extra["bf"], extra["boundary_counts"])
            record["bf_tolerance"] = self.boundary.bf_tolerance
            record["iou_dilation"] = self.boundary.iou_dilation
            self.results[prefix]["boundary"] = record
            self.log_dict(
                {
                    f"{prefix}/{k}": record[k]
                    for k in ("bf", "boundary_iou")
                    if record[k] is not None
                }
            )
        if self.class_names == CITYSCAPES_CLASSES:
            self._cityscapes_figures(prefix, extra)
        calibration = calibration_record(self.calibration.compute())  # summed over ranks
        self.calibration.reset()
        self.results[prefix]["calibration"] = calibration
        logged = {k: calibration[k] for k in ("ece", "nll", "brier")}
        self.log_dict({f"{prefix}/{k}": v for k, v in logged.items() if v is not None})

    def _cityscapes_figures(self, prefix: str, extra: dict) -> None:
        """Category IoU, and iIoU when the samples carried instance ids, as cityscapesScripts
        computes them (:mod:`segbench.cityscapes_metrics`); logged and kept in ``results``."""
        confusion = np.asarray(self.results[prefix]["confusion_matrix"])
        record = {"category_iou": category_iou(confusion)}
        logged = {f"{prefix}/category_mIoU": record["category_iou"]["mean"]}
        if "instance_classes" in extra:
            iiou = instance_iou(
                confusion,
                extra["instance_classes"],
                extra["instance_categories"],
                self.class_names,
            )
            record["iiou"] = iiou
            logged[f"{prefix}/iIoU"] = iiou["mean"]
            logged[f"{prefix}/category_iIoU"] = iiou["category_mean"]
        self.results[prefix]["cityscapes"] = record
        self.log_dict({k: v for k, v in logged.items() if v is not None})

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        total = self.trainer.estimated_stepping_batches
        scheduler = self.scheduler_factory(optimizer, total_steps=total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _epoch_metrics(self) -> dict[str, nn.Module]:
        return {"fit": self.metrics["fit"], **{f"mean:{k}": m for k, m in self.epoch_means.items()}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["segbench"] = {
            "version": __version__,
            "config": self.run_config,
            "class_names": self.class_names,
            "num_classes": self.num_classes,
        }
        # what the epoch has accumulated so far (a checkpoint may be written mid-epoch), one
        # entry per DDP rank: each rank carries on with its own part
        world = self.trainer.world_size if self._trainer is not None else 1
        epoch = {}
        for name, metric in self._epoch_metrics().items():
            state = {}
            for key in metric._defaults:
                value = getattr(metric, key).detach()
                state[key] = (self.all_gather(value) if world > 1 else value[None]).cpu()
            epoch[name] = {"state": state, "update_count": metric._update_count}
        checkpoint["segbench_epoch"] = epoch

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        rank = self.trainer.global_rank if self._trainer is not None else 0
        for name, record in (checkpoint.get("segbench_epoch") or {}).items():
            if name == "fit":
                metric = self.metrics["fit"]
            else:
                metric = self.epoch_means[name[5:]] = MeanMetric(sync_on_compute=False)
            for key, value in record["state"].items():
                setattr(metric, key, value[rank].to(self.device))
            metric._update_count = record["update_count"]
            metric._computed = None
