"""Training by mask classification (Mask2Former: Cheng et al., "Masked-attention Mask Transformer
for Universal Image Segmentation", CVPR 2022): the set loss of
:class:`segbench.losses.set_criterion.SetCriterion` on the model's per-query predictions.

:class:`MaskClassificationTask` is :class:`SegmentationTask` with another loss: the model's
``class_logits`` and ``mask_logits`` (every decoder layer's, :class:`~segbench.models.
mask2former.Mask2Former`) are matched to the classes present in each label map and supervised
there. Everything else (the running figures of ``out``, validation, the final evaluation through
the evaluator and the inference modes, checkpoints) is :class:`SegmentationTask`'s.
"""

from __future__ import annotations

from torch import Tensor, nn

from segbench.engine.task import SegmentationTask
from segbench.inference import Inference
from segbench.losses.set_criterion import SetCriterion

__all__ = ["MaskClassificationTask"]


class MaskClassificationTask(SegmentationTask):
    """Trains a mask-classification model with the set loss; selected by
    ``conf/model/mask2former.yaml`` (``conf/task/mask_classification.yaml``).

    The loss is Mask2Former's: Hungarian matching, then ``class_weight * CE + mask_weight *
    BCE + dice_weight * Dice`` on every decoder layer. ``train/loss`` is the total and
    ``train/loss/class``, ``train/loss/mask``, ``train/loss/dice`` its parts (each summed over
    the layers, so that they add up to the total); ``val/loss`` is the same loss on the
    validation batches (and ``<split>/loss`` on the final evaluation's). The config's ``loss``
    group (per-pixel losses on ``out``) is not used.

    Validation and testing compute the loss from one plain forward pass of each batch; when the
    evaluation's inference is plain too (``inference=whole``, one scale, no flip) that pass also
    gives the scores, otherwise the inference runs as configured for them (so that a sliding
    window or multi-scale evaluation costs one extra pass per batch, for the loss).

    Args:
        model: returns ``{"out", "class_logits" (L+1, B, Q, K+1), "mask_logits" (L+1, B, Q,
            h, w)}``.
        class_weight: weight of the class cross-entropy and of its matching cost (2.0).
        mask_weight: weight of the mask BCE and of its matching cost (5.0).
        dice_weight: weight of the Dice loss and of its matching cost (5.0).
        no_object_weight: cross-entropy weight of the "no object" class (0.1).
        num_points: points per mask for the matching and the mask losses (12544).
        oversample_ratio: uniform candidates per point of the mask losses (3).
        importance_sample_ratio: share of those points chosen among the most uncertain (0.75).
        deep_supervision: supervise every decoder layer's prediction (true), or the last only.
        **task_kwargs: ``loss`` (unused), ``optimizer``, ``scheduler``, ``evaluator``,
            ``run_config``, ``inference`` ... as for :class:`SegmentationTask`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
        **task_kwargs,
    ) -> None:
        super().__init__(model=model, **task_kwargs)
        self.criterion = SetCriterion(
            self.num_classes,
            self.ignore_index,
            class_weight=class_weight,
            mask_weight=mask_weight,
            dice_weight=dice_weight,
            no_object_weight=no_object_weight,
            num_points=num_points,
            oversample_ratio=oversample_ratio,
            importance_sample_ratio=importance_sample_ratio,
            deep_supervision=deep_supervision,
        )

    def _loss(self, out: dict[str, Tensor], target: Tensor) -> Tensor:
        if "class_logits" not in out or "mask_logits" not in out:
            raise TypeError(
                "the mask-classification task (task=mask_classification) trains a model that "
                "returns per-query class_logits and mask_logits, such as model=mask2former; "
                f"this one returns {sorted(out)}"
            )
        loss, parts = self.criterion(out["class_logits"], out["mask_logits"], target)
        self._loss_terms = {name: value.detach() for name, value in parts.items()}
        return loss

    def _predict_with_loss(
        self, images: Tensor, mask: Tensor, inference: Inference
    ) -> tuple[dict[str, Tensor], Tensor]:
        raw = self.model(images)  # one plain pass: the loss's, and the scores when plain
        out = {"out": raw["out"]} if inference.plain else inference(self.model, images)
        return out, self._loss(raw, mask)
