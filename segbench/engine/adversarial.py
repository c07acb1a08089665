"""Adversarial training of a segmentor (Luc, Couprie, Chintala, Verbeek, "Semantic Segmentation
using Adversarial Networks", NIPS Workshop on Adversarial Training, 2016).

The paper's hybrid objective is

    sum_n  l_mce(s(x_n), y_n)  -  lambda * [ l_bce(a(x_n, y_n), 1) + l_bce(a(x_n, s(x_n)), 0) ]

minimised over the segmentor ``s`` and maximised over the adversary ``a``. As in the paper
(and Goodfellow et al., 2014), the segmentor does not minimise ``-l_bce(a(x, s(x)), 0)``,
which saturates once the adversary wins, but the "flipped" ``+lambda * l_bce(a(x, s(x)), 1)``.

:class:`AdversarialTask` trains a :class:`segbench.models.ganseg.GANSeg` this way with manual
optimisation; validation and testing are :class:`SegmentationTask`'s, on the segmentor alone.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from pytorch_lightning.strategies import DDPStrategy
from torch import Tensor, nn

from segbench.engine.task import OptimizerFactory, SegmentationTask

__all__ = ["AdversarialTask"]

DEFAULT_ADVERSARIAL_WEIGHT = 0.1
_HINT = "lower the learning rate (or the adversarial weight) or check the data"


class AdversarialTask(SegmentationTask):
    """Trains a GAN-seg model: alternating discriminator and segmentor updates on each batch.

    Every training batch runs (manual optimisation, ``automatic_optimization = False``):

    1. ``d_steps`` discriminator updates (1 by default, Goodfellow et al.'s k = 1) with its own
       optimizer on ``lambda * [BCE(a(x, y), 1) + BCE(a(x, softmax(s(x)).detach()), 0)]``,
       where ``y`` is the ground truth as label maps (one-hot; ignored pixels take the
       segmentor's detached probabilities, see ``Discriminator.real_maps``);
    2. one segmentor update with the task's optimizer on
       ``loss(s(x), y) [+ aux_weight * aux] + lambda * BCE(a(x, softmax(s(x))), 1)``,
       the gradient of the adversarial term flowing through the (fixed) discriminator into
       the segmentor's probabilities; then the segmentor's scheduler steps.

    Only segmentor updates count as optimizer steps (``trainer.global_step`` advances once per
    batch, as for every other model), so ``max_steps`` and the schedule's length keep their
    meaning. The Trainer's gradient clipping does not apply under manual optimisation. Under
    DDP each update leaves the other network's parameters unused
    (``ddp_find_unused_parameters``): ``trainer.strategy=ddp`` becomes
    ``ddp_find_unused_parameters_true`` when the engine builds the Trainer, and ``setup``
    refuses a DDP strategy without it.

    Logs ``train/loss`` (the segmentor's total), ``train/loss_seg``, ``train/loss_adv`` (the
    unweighted flipped BCE), ``train/loss_d`` (the discriminator's weighted loss) and the fit
    metrics of :class:`SegmentationTask`.

    Args:
        model: a ``GANSeg`` (``segmenter``, ``discriminator``, ``discriminate``).
        **task_kwargs: ``loss``, ``optimizer``, ``scheduler``, ``evaluator``, ``run_config``,
            ``inference`` ... as for :class:`SegmentationTask`;
            ``optimizer`` and ``scheduler`` act on the segmentor only.
        adversarial_weight: lambda. The paper chooses it per dataset and adversary; 0.1 is
            segbench's default.
        discriminator_optimizer: factory for the discriminator's optimizer (a
            ``functools.partial``); ``None`` gives Adam with lr 1e-4.
        d_steps: discriminator updates per batch before the segmentor's update.
    """

    ddp_find_unused_parameters = True

    def __init__(
        self,
        model: nn.Module,
        *,
        adversarial_weight: float = DEFAULT_ADVERSARIAL_WEIGHT,
        discriminator_optimizer: OptimizerFactory | None = None,
        d_steps: int = 1,
        **task_kwargs,
    ) -> None:
        missing = [
            a for a in ("segmenter", "discriminator", "discriminate") if not hasattr(model, a)
        ]
        if missing:
            raise TypeError(
                f"AdversarialTask trains a GANSeg model (segbench.models.ganseg); "
                f"{type(model).__name__} has no {', '.join(missing)}"
            )
        if adversarial_weight < 0:
            raise ValueError(f"adversarial_weight must be >= 0, got {adversarial_weight}")
        if d_steps < 1:
            raise ValueError(f"d_steps must be >= 1, got {d_steps}")
        super().__init__(model=model, **task_kwargs)
        self.automatic_optimization = False
        self.adversarial_weight = float(adversarial_weight)
        self.discriminator_optimizer_factory = discriminator_optimizer or functools.partial(
            torch.optim.Adam, lr=1e-4
        )
        self.d_steps = int(d_steps)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        strategy = self.trainer.strategy
        ddp_kwargs = getattr(strategy, "_ddp_kwargs", None)
        if (
            stage == "fit"
            and isinstance(strategy, DDPStrategy)
            and ddp_kwargs is not None
            and not ddp_kwargs.get("find_unused_parameters", False)
        ):
            raise ValueError(
                "GAN-seg under DDP updates the discriminator and the segmentor in separate "
                "backward passes, each leaving the other network's parameters unused; train "
                "with trainer.strategy=ddp_find_unused_parameters_true"
            )

    def _step_discriminator(self, optimizer) -> None:
        """Step the discriminator's optimizer through the strategy (precision plugin
        included) without counting it as a training step: ``global_step`` counts batches."""
        raw = getattr(optimizer, "optimizer", optimizer)
        self.trainer.strategy.optimizer_step(raw, closure=lambda: None, model=self)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        opt_g, opt_d = self.optimizers()
        image, mask = batch["image"], batch["mask"]
        size = image.shape[0]
        lam = self.adversarial_weight

        out = self.model(image)  # the segmentor: {"out": (B, K, H, W), "aux"?}
        probs = out["out"].softmax(dim=1)  # (B, K, H, W)
        fake = probs.detach()
        real = self.model.discriminator.real_maps(mask, fake, self.ignore_index)

        # (a) discriminator: real maps → 1, the segmentor's maps → 0
        for _ in range(self.d_steps):
            d_real = self.model.discriminate(image, real)  # (B,)
            d_fake = self.model.discriminate(image, fake)
            loss_d = lam * (
                F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
            )
            self._check_finite("train/loss_d", loss_d, _HINT)
            opt_d.zero_grad()
            self.manual_backward(loss_d)
            self._step_discriminator(opt_d)

        # (b) segmentor: task loss + lambda * flipped adversarial loss; the discriminator's
        # parameters are frozen here, its input (the probabilities) is not
        with self.toggled_optimizer(opt_g):
            loss_seg = self._loss(out, mask)
            d_gen = self.model.discriminate(image, probs)
            loss_adv = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
            loss = loss_seg + lam * loss_adv
            self._check_finite("train/loss", loss, _HINT)
            opt_g.zero_grad()
            self.manual_backward(loss)
            opt_g.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

        self.log_train("train/loss", loss, size, prog_bar=True)
        for key, value in (
            ("train/loss_seg", loss_seg),
            ("train/loss_adv", loss_adv),
            ("train/loss_d", loss_d),
        ):
            self.log_train(key, value, size)
        self.metrics["fit"].update(out["out"].detach(), mask)
        return loss.detach()

    def configure_optimizers(self):
        seg_params = list(self.model.segmenter.parameters()) + list(self.loss.parameters())
        optimizer = self.optimizer_factory(seg_params)
        disc_optimizer = self.discriminator_optimizer_factory(self.model.discriminator.parameters())
        if self.scheduler_factory is None:
            return [optimizer, disc_optimizer]
        total = self.trainer.estimated_stepping_batches
        scheduler = self.scheduler_factory(optimizer, total_steps=total)
        return [optimizer, disc_optimizer], [{"scheduler": scheduler, "interval": "step"}]
