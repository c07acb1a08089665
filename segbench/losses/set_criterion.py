"""The set loss of mask classification (Mask2Former: Cheng et al., "Masked-attention Mask
Transformer for Universal Image Segmentation", CVPR 2022; after MaskFormer and DETR).

A semantic label map becomes a *set* of targets, one binary mask per class present
(:func:`semantic_targets`). Each image's queries are matched one-to-one to its targets by the
Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the cost
``2 * (-p(class)) + 5 * BCE(mask) + 5 * Dice(mask)``, the mask terms on 12544 points drawn
uniformly, the same points for every query and target (:class:`HungarianMatcher`). The loss
(:class:`SetCriterion`) is then

- cross-entropy of every query's class logits against its matched class, or "no object" for
  the unmatched queries, whose term is weighted 0.1;
- binary cross-entropy and Dice loss of each matched query's mask against its target, on 12544
  points chosen by importance sampling: ``3 x 12544`` uniform candidates, the 75 % whose mask
  logits are closest to 0 (most uncertain), plus 25 % uniform points;

the mask terms summed over the matched pairs and divided by the number of targets in the batch
(averaged over the processes under DDP). Every decoder layer's prediction is matched and
supervised the same way (deep supervision) and the weighted terms are summed.

Points are ``(x, y)`` in ``[0, 1]`` of the whole map and read by bilinear interpolation
(``grid_sample``, ``align_corners=False``), so predictions at stride 4 and targets at the input
size are compared at the same places.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

__all__ = [
    "HungarianMatcher",
    "SetCriterion",
    "match_cost",
    "point_sample",
    "semantic_targets",
    "uncertain_points",
]

Target = tuple[Tensor, Tensor]  # (classes (n,) int64, masks (n, H, W) float)


def semantic_targets(target: Tensor, num_classes: int, ignore_index: int) -> list[Target]:
    """One ``(classes (n,), masks (n, H, W))`` per image of ``target (B, H, W)``: a binary mask
    per class present, in increasing class order. ``ignore_index`` is no class: its pixels
    belong to no target mask (they are background to every mask, as in the reference
    implementation)."""
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes))
    if bad.any():
        labels = target[bad].unique()[:10].tolist()
        raise ValueError(
            f"target has labels {labels} outside 0..{num_classes - 1} that are not the "
            f"ignore index {ignore_index}"
        )
    out = []
    for t in target:
        classes = t[t != ignore_index].unique()  # sorted
        masks = (t[None] == classes[:, None, None]).float()  # (n, H, W)
        out.append((classes.long(), masks))
    return out


def point_sample(maps: Tensor, points: Tensor) -> Tensor:
    """``maps (N, H, W)`` read at ``points (N, P, 2)`` (``(x, y)`` in ``[0, 1]``) by bilinear
    interpolation -> ``(N, P)``."""
    grid = 2 * points[:, :, None, :] - 1  # (N, P, 1, 2)
    return F.grid_sample(maps[:, None], grid, align_corners=False)[:, 0, :, 0]


def uncertain_points(
    logits: Tensor, num_points: int, oversample_ratio: float, importance_ratio: float
) -> Tensor:
    """Points ``(N, P, 2)`` for the mask loss of ``logits (N, h, w)``: of ``oversample_ratio * P``
    uniform candidates, the ``importance_ratio * P`` whose logits are nearest 0, then uniform
    points for the rest. Draws ``torch.rand`` twice, candidates first."""
    n = logits.shape[0]
    candidates = torch.rand(n, int(num_points * oversample_ratio), 2, device=logits.device)
    uncertainty = -point_sample(logits, candidates).abs()  # (N, P * ratio)
    k = int(importance_ratio * num_points)
    top = uncertainty.topk(k, dim=1).indices  # (N, k)
    chosen = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))  # (N, k, 2)
    rest = num_points - k
    if rest > 0:
        chosen = torch.cat([chosen, torch.rand(n, rest, 2, device=logits.device)], dim=1)
    return chosen


def _pairwise_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy over the points of every (query, target) pair: ``(Q, T)``."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    p = logits.shape[1]
    return (pos / p) @ targets.T + (neg / p) @ (1 - targets).T


def _pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss ``1 - (2|x y| + 1) / (|x| + |y| + 1)`` of every (query, target) pair:
    ``(Q, T)``."""
    probs = logits.sigmoid()
    inter = 2 * probs @ targets.T
    total = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (inter + 1) / (total + 1)


def match_cost(
    class_logits: Tensor,
    mask_logits: Tensor,
    target: Target,
    points: Tensor,
    weights: tuple[float, float, float] = (2.0, 5.0, 5.0),
) -> Tensor:
    """The matching cost ``(Q, T)`` of one image: ``class_logits (Q, K+1)``, ``mask_logits
    (Q, h, w)``, its targets, ``points (P, 2)`` shared by all pairs; ``weights`` of the class,
    mask-BCE and Dice terms. NaN and inf become the largest float (matched last)."""
    classes, masks = target
    w_class, w_mask, w_dice = weights
    cost_class = -class_logits.softmax(-1)[:, classes]  # (Q, T)
    pred = point_sample(mask_logits, points[None].expand(mask_logits.shape[0], -1, -1))
    gt = point_sample(masks.to(pred.dtype), points[None].expand(masks.shape[0], -1, -1))
    cost = (
        w_mask * _pairwise_bce(pred, gt) + w_class * cost_class + w_dice * _pairwise_dice(pred, gt)
    )
    big = torch.finfo(cost.dtype).max
    return torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)


class HungarianMatcher:
    """One-to-one matching of queries to targets, image by image, at least cost
    (:func:`match_cost` on ``num_points`` uniform points, ``torch.rand`` drawn once per image).

    Args:
        class_weight: weight of ``-p(class)`` (2.0).
        mask_weight: weight of the mask BCE (5.0).
        dice_weight: weight of the Dice loss (5.0).
        num_points: points drawn per image (12544 = 112 x 112).
    """

    def __init__(
        self,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        num_points: int = 12544,
    ) -> None:
        self.weights = (float(class_weight), float(mask_weight), float(dice_weight))
        self.num_points = int(num_points)

    @torch.no_grad()
    def __call__(
        self, class_logits: Tensor, mask_logits: Tensor, targets: list[Target]
    ) -> list[tuple[Tensor, Tensor]]:
        """``(query indices, target indices)`` per image, ``min(Q, T)`` pairs each, for
        ``class_logits (B, Q, K+1)`` and ``mask_logits (B, Q, h, w)``."""
        matches = []
        for logits, masks, target in zip(class_logits, mask_logits, targets):
            points = torch.rand(self.num_points, 2, device=masks.device)
            if target[0].numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                matches.append((empty, empty))
                continue
            cost = match_cost(logits, masks, target, points, self.weights)
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            matches.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols)))
        return matches


class SetCriterion(nn.Module):
    """Mask2Former's loss on a semantic label map: matching, then class cross-entropy, mask BCE
    and Dice on importance-sampled points, over every decoder layer's prediction.

    Args:
        num_classes: ``K`` (the class logits have ``K + 1``, the last "no object").
        ignore_index: label of pixels no target mask covers.
        class_weight: weight of the cross-entropy (2.0), also in the matching cost.
        mask_weight: weight of the mask BCE (5.0), also in the matching cost.
        dice_weight: weight of the Dice loss (5.0), also in the matching cost.
        no_object_weight: cross-entropy weight of the "no object" class (0.1).
        num_points: points per mask, for the matching and the loss (12544).
        oversample_ratio: candidates drawn per point of the loss (3).
        importance_sample_ratio: share of the loss's points chosen by uncertainty (0.75).
        deep_supervision: supervise every layer's prediction, not only the last.

    Returns (from ``forward``):
        ``(loss, parts)``: the total, and ``parts`` ``{"class", "mask", "dice"}``, each the
        weighted term summed over the supervised layers (they add up to the total).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        if not 0 <= importance_sample_ratio <= 1 or oversample_ratio < 1:
            raise ValueError(
                f"importance_sample_ratio must be in [0, 1] (got {importance_sample_ratio}) and "
                f"oversample_ratio >= 1 (got {oversample_ratio})"
            )
        if num_points < 1:
            raise ValueError(f"num_points must be positive, got {num_points}")
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.weights = {"class": class_weight, "mask": mask_weight, "dice": dice_weight}
        self.matcher = HungarianMatcher(class_weight, mask_weight, dice_weight, num_points)
        self.num_points = int(num_points)
        self.oversample_ratio = float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)
        self.deep_supervision = deep_supervision
        empty = torch.ones(num_classes + 1)
        empty[-1] = no_object_weight
        self.register_buffer("class_weights", empty, persistent=False)

    def _num_masks(self, targets: list[Target], device: torch.device) -> Tensor:
        """The number of target masks per process (the batch's; in training averaged over the
        DDP processes, as the reference implementation does), at least 1."""
        count = torch.tensor(float(sum(len(c) for c, _ in targets)), device=device)
        # in training only: evaluation batches need not come in the same number on every rank
        if self.training and dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return count.clamp_min(1)

    def layer_losses(
        self, class_logits: Tensor, mask_logits: Tensor, targets: list[Target], num_masks: Tensor
    ) -> dict[str, Tensor]:
        """Unweighted ``{"class", "mask", "dice"}`` of one layer: ``class_logits (B, Q, K+1)``,
        ``mask_logits (B, Q, h, w)``."""
        matches = self.matcher(class_logits, mask_logits, targets)
        batch = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(matches)])
        query = torch.cat([q for q, _ in matches])
        # masks: the matched pairs at importance-sampled points
        pred = mask_logits[batch, query]  # (N, h, w)
        gt = torch.cat([masks[t] for (_, masks), (_, t) in zip(targets, matches)])  # (N, H, W)
        if pred.shape[0] == 0:  # no target in the batch: zero, with a graph
            zero = mask_logits.sum() * 0
            mask_loss = dice_loss = zero
        else:
            with torch.no_grad():
                points = uncertain_points(
                    pred, self.num_points, self.oversample_ratio, self.importance_sample_ratio
                )
                labels = point_sample(gt.to(pred.dtype), points)  # (N, P)
            logits = point_sample(pred, points)  # (N, P)
            bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
            mask_loss = bce.mean(1).sum() / num_masks
            probs = logits.sigmoid()
            dice = 1 - (2 * (probs * labels).sum(-1) + 1) / (probs.sum(-1) + labels.sum(-1) + 1)
            dice_loss = dice.sum() / num_masks
        # classes: matched queries their target's class, the others "no object" (K)
        wanted = torch.full(class_logits.shape[:2], self.num_classes, dtype=torch.int64)
        wanted = wanted.to(class_logits.device)
        matched = [classes[t] for (classes, _), (_, t) in zip(targets, matches)]
        wanted[batch.to(wanted.device), query.to(wanted.device)] = torch.cat(matched).to(wanted)
        class_loss = F.cross_entropy(class_logits.transpose(1, 2), wanted, self.class_weights)
        return {"class": class_loss, "mask": mask_loss, "dice": dice_loss}

    def forward(
        self, class_logits: Tensor, mask_logits: Tensor, target: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``class_logits (L+1, B, Q, K+1)`` and ``mask_logits (L+1, B, Q, h, w)`` of every
        layer (the last the final prediction), ``target (B, H, W)`` label maps."""
        class_logits, mask_logits = class_logits.float(), mask_logits.float()
        targets = semantic_targets(target, self.num_classes, self.ignore_index)
        num_masks = self._num_masks(targets, mask_logits.device)
        # the final layer first, then the others in order (the reference's order of draws)
        layers = [len(class_logits) - 1]
        if self.deep_supervision:
            layers += list(range(len(class_logits) - 1))
        parts = {name: class_logits.new_zeros(()) for name in self.weights}
        for i in layers:
            losses = self.layer_losses(class_logits[i], mask_logits[i], targets, num_masks)
            for name, value in losses.items():
                parts[name] = parts[name] + self.weights[name] * value
        return sum(parts.values()), parts
