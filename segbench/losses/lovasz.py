"""The Lovász-softmax loss (Berman, Rannen Triki & Blaschko, CVPR 2018) and the gradient of the
Lovász extension of the Jaccard loss it is built on."""

from __future__ import annotations

import torch
from torch import Tensor

from segbench.losses._common import CLASS_SELECTIONS, SegLoss, check_choice, safe_div, valid_pixels

__all__ = ["LovaszSoftmaxLoss", "lovasz_grad"]


def lovasz_grad(truth_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss, for errors sorted in decreasing
    order: entry ``i`` is ``J(first i+1 pixels wrong) - J(first i wrong)``, where ``J`` is
    ``1 - |truth ∩ predicted| / |truth ∪ predicted|``. ``truth_sorted (..., N)`` is 0/1.

    Computed in float64: over millions of pixels the steps are ~1/N, below float32's resolution
    near 1.
    """
    truth = truth_sorted.long()
    total = truth.sum(-1, keepdim=True)
    intersection = total - truth.cumsum(-1)  # (..., N)
    union = total + (1 - truth).cumsum(-1)  # (..., N), >= 1
    jaccard = 1.0 - intersection.double() / union.double()
    return torch.diff(jaccard, dim=-1, prepend=torch.zeros_like(jaccard[..., :1]))


class LovaszSoftmaxLoss(SegLoss):
    """Lovász-softmax loss (Berman, Rannen Triki & Blaschko, CVPR 2018): per class, the Lovász
    extension of the Jaccard loss evaluated on the errors ``|[y = c] - p_c|``, averaged over
    classes.

    With hard (0/1) predictions it equals ``1 - IoU`` per class. ``classes="present"`` (the
    paper's code default) averages only the classes in the labels; ``per_image`` computes the
    loss per image and averages over the images that have a valid pixel (the paper's batch-wide
    default is ``per_image=False``).

    Args:
        num_classes: number of classes.
        ignore_index: label excluded from the loss.
        classes: ``"present"`` or ``"all"``.
        per_image: one loss per image, averaged, instead of one over the batch.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        classes: str = "present",
        per_image: bool = False,
    ) -> None:
        super().__init__(num_classes, ignore_index, None)
        check_choice("classes", classes, CLASS_SELECTIONS)
        self.classes = classes
        self.per_image = per_image

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        valid = valid_pixels(logits, target, self.num_classes, self.ignore_index)  # (B, H, W)
        groups = logits.shape[0] if self.per_image else 1
        k = self.num_classes
        probs = logits.float().softmax(1).transpose(0, 1).reshape(k, groups, -1)  # (K, G, N)
        labels = torch.where(valid, target.long(), -1).reshape(groups, -1)  # (G, N)
        valid = valid.reshape(groups, -1)  # (G, N)
        group_index = torch.arange(groups, device=labels.device)[:, None]
        counts = torch.bincount(  # label counts per group; -1 (ignored) lands in column 0
            (labels + 1 + group_index * (k + 1)).flatten(), minlength=groups * (k + 1)
        ).view(groups, k + 1)[:, 1:]  # (G, K)
        if self.classes == "present":
            todo = (counts.sum(0) > 0).nonzero().flatten().tolist()
        else:
            todo = list(range(k)) if bool(valid.any()) else []
        if not todo:
            return logits.sum() * 0.0
        per_class = []
        for c in todo:
            truth = labels == c  # (G, N)
            errors = torch.where(valid, (truth.float() - probs[c]).abs(), -1.0)  # ignored last
            errors_sorted, order = errors.sort(-1, descending=True)  # (G, N)
            grad = lovasz_grad(truth.gather(-1, order)).to(errors.dtype)  # (G, N)
            per_class.append((errors_sorted.clamp_min(0.0) * grad).sum(-1))  # (G,)
        loss = torch.stack(per_class, 1)  # (G, C)
        if self.classes == "present":
            counted = (counts[:, todo] > 0).float()  # (G, C)
        else:
            counted = valid.any(-1, keepdim=True).float().expand_as(loss)  # (G, C)
        per_group = safe_div((counted * loss).sum(1), counted.sum(1))  # (G,)
        has_pixels = valid.any(-1).float()  # (G,)
        return safe_div((has_pixels * per_group).sum(), has_pixels.sum())
