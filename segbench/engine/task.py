"""The LightningModule: model, loss, metrics per split, optimizer and schedule from config."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric

from segbench import __version__
from segbench.inference import Inference
from segbench.inference.fast import check_fast, prepare_batch, prepare_model
from segbench.metrics import ConfusionMatrix, EvaluationRecord, Evaluator
from segbench.models.base import segmenter_of

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

    The test step, as the final evaluation runs it (``trainer.test``)::

        test_step(batch)
          _eval_step(batch, test=True, prefix=<split>)
            inference(model, batch.image)       # whole / slide / multi-scale + flip
            loss(out, batch.mask)               # logged as <split>/loss
            evaluator.update(scores, mask, batch)
              confusion matrix, per-image counts
              each figure of evaluation.figures (+ dataset.figures): boundary, calibration, ...
          -> {"pred", "uncertainty"?}           # for the callbacks that save predictions
        on_test_epoch_end
          evaluator.compute(world_size)         # summed / gathered over every rank
            -> EvaluationRecord                 # results[<split>]; logged; results.json

    Training and validation keep a confusion matrix each (``train/*``, ``val/*`` figures).

    Args:
        model: returns ``{"out": logits (B, K, H, W), "aux"?: logits}``.
        loss: ``(logits, target) -> scalar``; also applied to ``aux`` with the weight the
            model's auxiliary head carries (``model.aux_weight``; PSPNet: 0.4).
        optimizer: factory taking the parameters (a ``functools.partial``).
        scheduler: factory ``(optimizer, total_steps=N)``, stepped every optimizer step,
            or ``None`` for a constant learning rate.
        evaluator: the figures of the final evaluation (:class:`~segbench.metrics.Evaluator`,
            built from ``evaluation.figures`` and the dataset's ``figures``); it also gives the
            number of classes, the ignore index and the class names.
        run_config: the resolved run configuration (plain containers), stored in checkpoints
            so that ``evaluate.py`` can rebuild the model.
        inference: how the test step predicts (:class:`~segbench.inference.Inference`: whole
            image, sliding window, multi-scale/flip); default one plain forward pass.
        val_inference: how the validation step predicts (the checkpoint choice); default one
            plain pass. The engine gives it the single-scale part of ``inference`` unless
            ``val_inference.*`` says otherwise.
        fast: the speed options of :mod:`segbench.inference.fast` (``channels_last``,
            ``compile``); they change no figure beyond floating-point rounding.
    """

    # whether each backward pass leaves some parameters without a gradient (DDP must then look
    # for unused parameters; the engine's trainer switches its ``ddp`` strategy accordingly)
    ddp_find_unused_parameters: bool = False
    # read the finite-loss check every log_every_n_steps steps instead of every step (see
    # _check_finite); None: on accelerators only, where reading it costs a host sync
    defer_finite_checks: bool | None = None
    # where the weights started (``init_from=``: path, sha256, re-initialised tensors), set by
    # the engine; stored in checkpoints as ``segbench.init_from``
    init_from: dict | None = None

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory | None,
        scheduler: SchedulerFactory | None,
        evaluator: Evaluator,
        run_config: dict | None = None,
        inference: Inference | None = None,
        val_inference: Inference | None = None,
        fast: Mapping[str, bool] | None = None,
    ) -> None:
        super().__init__()
        self.fast = check_fast(fast)
        self.inference = inference if inference is not None else Inference()
        self.val_inference = val_inference if val_inference is not None else Inference()
        # the first non-finite step of each checked loss, kept on the device (_check_finite)
        self._nonfinite: dict[str, tuple[Tensor, Tensor, str]] = {}
        self._loss_terms: dict[str, Tensor] = {}
        self.model = prepare_model(model, self.fast)
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.evaluator = evaluator
        self.num_classes = evaluator.num_classes
        self.ignore_index = evaluator.ignore_index
        self.class_names = list(evaluator.class_names)
        self.run_config = run_config or {}
        self.eval_split = "test"
        self.metrics = nn.ModuleDict(
            {name: ConfusionMatrix(self.num_classes, self.ignore_index) for name in ("fit", "val")}
        )
        # the epoch means of the training losses (``<key>_epoch``), kept as metrics so that
        # a checkpoint written mid-epoch carries them (see on_save_checkpoint)
        self.epoch_means = nn.ModuleDict()
        # the last figures computed for each prefix (read by the engine and the callbacks):
        # the evaluation split's hold the evaluator's every figure and per-image rows
        self.results: dict[str, EvaluationRecord] = {}

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

    def _predict_with_loss(
        self, images: Tensor, mask: Tensor, inference: Inference
    ) -> tuple[dict[str, Tensor], Tensor]:
        """The evaluation's outputs (``inference`` of the model on ``images``) and its loss;
        a task whose loss needs more than ``out`` (Mask2Former's) overrides it."""
        out = inference(self.model, images)
        return out, self._loss(out, mask)

    def _eval_step(self, batch: dict, test: bool, prefix: str) -> dict[str, Tensor]:
        inference = self.inference if test else self.val_inference
        out, loss = self._predict_with_loss(batch["image"], batch["mask"], inference)
        self.log(
            f"{prefix}/loss",
            loss,
            on_epoch=True,
            sync_dist=True,
            prog_bar=prefix == "val",
            batch_size=batch["image"].shape[0],
        )
        if not test:
            self.metrics["val"].update(out["out"], batch["mask"])
            return out
        pred = self.evaluator.update(out["out"], batch["mask"], batch)
        return {**out, "pred": pred}  # for test_step: the class map is made once

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, test=False, prefix="val")

    def test_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        """Returns the predictions ``pred (B, H, W)`` (and ``uncertainty (B, H, W)`` when the
        model gives one) for callbacks that save them."""
        out = self._eval_step(batch, test=True, prefix=self.eval_split)
        result = {"pred": out["pred"]}
        if "uncertainty" in out:
            result["uncertainty"] = out["uncertainty"]
        return result

    def _log_record(self, record: EvaluationRecord, prefix: str) -> None:
        """Log every scalar of ``record`` under ``prefix`` and keep it in ``results``."""
        logged = {f"{prefix}/{k}": v for k, v in record.logged().items()}
        miou_key = f"{prefix}/mIoU"
        self.log(miou_key, logged.pop(miou_key), prog_bar=prefix == "val")
        self.log_dict(logged)
        self.results[prefix] = record

    def _log_metrics(self, metric: str, prefix: str) -> None:
        values = self.metrics[metric].compute()  # summed over all ranks
        self.metrics[metric].reset()
        self._log_record(EvaluationRecord.from_confusion(values, self.class_names), prefix)

    def on_train_epoch_end(self) -> None:
        self._raise_nonfinite()
        self._log_metrics("fit", "train")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.metrics["val"].reset()
            return
        self._log_metrics("val", "val")

    def on_test_epoch_start(self) -> None:
        self.evaluator.reset()

    def on_test_epoch_end(self) -> None:
        world = self.trainer.world_size if self._trainer is not None else 1
        record = self.evaluator.compute(world)  # every rank gets the same record
        self.evaluator.reset()
        self._log_record(record, self.eval_split)

    def configure_optimizers(self):
        if getattr(self.optimizer_factory, "wants_names", False):  # optimizer.lr_mult
            optimizer = self.optimizer_factory(self.named_parameters())
        else:
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
            "init_from": self.init_from,
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
