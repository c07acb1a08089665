"""Cityscapes' own figures, as cityscapesScripts' ``evalPixelLevelSemanticLabeling`` computes
them: the IoU of the 7 categories and the instance-weighted IoU (iIoU) of classes and categories.

Categories. The 19 train classes fall into ``flat``, ``construction``, ``object``, ``nature``,
``sky``, ``human`` and ``vehicle`` (the official table's ``category`` column, as torchvision
ships it). A category's IoU is computed from the same confusion matrix as the classes': a pixel
predicted as another class of its own category counts as right. The category average is over the
categories with a defined IoU.

iIoU. IoU favours large objects: a missed pedestrian far away costs a few pixels. For the 8 classes
with instances (person, rider, car, truck, bus, train, motorcycle, bicycle) the official tool
weights each ground-truth instance's true-positive and false-negative pixels by ``w =
avgClassSize[class] / instance size`` (a table of average instance sizes over the training set,
shipped with the tool) and computes ``iIoU = TP_w / (TP_w + FP + FN_w)`` with the plain,
unweighted false positives. The category iIoU does the same for ``human`` and ``vehicle`` (the
categories whose classes all have instances), an instance's true positives being its pixels
predicted as any class of its category. Instances come from ``gtFine/*_instanceIds.png`` (``label
id x 1000 + n`` on instance pixels, the label id elsewhere; crowd regions carry no instance id and
count for no instance). Without those files iIoU is not computed, and ``results.json`` says why.

The per-image sums ``TP_w`` and ``FN_w`` are kept per image (``per_image.npz``), so the figures are
the same on one process and on N.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import Cityscapes

from segbench.metrics.evaluator import EvalBatch, Figure, FigureResult, Totals

__all__ = [
    "CityscapesFigures",
    "AVG_CLASS_SIZE",
    "CATEGORIES",
    "INSTANCE_CATEGORIES",
    "category_iou",
    "instance_iou",
    "instance_sums",
]

# cityscapesScripts' evalPixelLevelSemanticLabeling.py, args.avgClassSize (pixels at 1024x2048)
AVG_CLASS_SIZE = {
    "bicycle": 4672.3249222261,
    "caravan": 36771.8241758242,
    "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518,
    "bus": 35732.1511111111,
    "train": 67583.7075812274,
    "car": 12794.0202738185,
    "person": 3462.4756337644,
    "truck": 27855.1264367816,
    "trailer": 16926.9763313609,
}

_TRAIN = sorted(
    (c for c in Cityscapes.classes if c.train_id not in (255, -1)), key=lambda c: c.train_id
)
# category -> train ids, in the official table's category order (void has no train class)
CATEGORIES: dict[str, list[int]] = {}
for _c in sorted(_TRAIN, key=lambda c: (c.category_id, c.train_id)):
    CATEGORIES.setdefault(_c.category, []).append(_c.train_id)
# the categories whose every label (ignored ones included, as the official tool checks) has
# instances: human, vehicle
INSTANCE_CATEGORIES = [
    name
    for name in CATEGORIES
    if all(c.has_instances for c in Cityscapes.classes if c.category == name and c.id >= 0)
]
_INSTANCE_CLASSES = [c for c in _TRAIN if c.has_instances and not c.ignore_in_eval]
# label id -> (train id, weight numerator) of the evaluated instance classes
_BY_LABEL_ID = {c.id: (c.train_id, AVG_CLASS_SIZE[c.name]) for c in _INSTANCE_CLASSES}
_CATEGORY_OF = {c.train_id: c.category for c in _TRAIN}


def category_iou(confusion: np.ndarray) -> dict:
    """``{"categories": {name: IoU or None}, "mean": ...}`` from the 19-class confusion matrix
    (rows ground truth, columns prediction, ignored pixels already left out)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    scores = {}
    for name, ids in CATEGORIES.items():
        tp = confusion[np.ix_(ids, ids)].sum()
        fn = confusion[ids, :].sum() - tp
        others = [i for i in range(confusion.shape[0]) if i not in ids]
        fp = confusion[np.ix_(others, ids)].sum()
        denom = tp + fp + fn
        scores[name] = float(tp / denom) if denom > 0 else None
    defined = [v for v in scores.values() if v is not None]
    return {"categories": scores, "mean": float(np.mean(defined)) if defined else None}


def instance_sums(pred: Tensor, instances: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """One batch's weighted instance sums.

    Args:
        pred: predicted train ids ``(B, H, W)``.
        instances: ``gtFine`` instance ids ``(B, H, W)`` (label id x 1000 + n on instances).

    Returns:
        ``classes (B, 2, K)`` and ``categories (B, 2, len(INSTANCE_CATEGORIES))`` float64:
        ``[:, 0]`` the weighted true positives, ``[:, 1]`` the weighted false negatives.
    """
    b = pred.shape[0]
    classes = torch.zeros(b, 2, num_classes, dtype=torch.float64)
    cats = torch.zeros(b, 2, len(INSTANCE_CATEGORIES), dtype=torch.float64)
    cat_index = {name: i for i, name in enumerate(INSTANCE_CATEGORIES)}
    for i in range(b):
        inst, p = instances[i].long().flatten(), pred[i].long().flatten()
        keep = inst >= 1000
        if not keep.any():
            continue
        ids, where = torch.unique(inst[keep], return_inverse=True)
        size = torch.bincount(where, minlength=ids.numel()).double()
        on_instances = p[keep]
        label_ids = (ids // 1000).tolist()
        for j, label_id in enumerate(label_ids):
            if label_id not in _BY_LABEL_ID:  # an ignored class (caravan, trailer)
                continue
            train_id, numerator = _BY_LABEL_ID[label_id]
            weight = numerator / float(size[j])
            mine = on_instances[where == j]
            tp = float((mine == train_id).sum())
            classes[i, 0, train_id] += tp * weight
            classes[i, 1, train_id] += (float(size[j]) - tp) * weight
            category = _CATEGORY_OF[train_id]
            if category in cat_index:
                members = torch.tensor(CATEGORIES[category], device=mine.device)
                cat_tp = float(torch.isin(mine, members).sum())
                cats[i, 0, cat_index[category]] += cat_tp * weight
                cats[i, 1, cat_index[category]] += (float(size[j]) - cat_tp) * weight
    return classes, cats


def instance_iou(
    confusion: np.ndarray, classes: np.ndarray, categories: np.ndarray, class_names: list[str]
) -> dict:
    """iIoU of the instance classes and categories from the confusion matrix and the per-image
    weighted sums of :func:`instance_sums` (``(N, 2, K)`` and ``(N, 2, C)``)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp_fn = np.asarray(classes, dtype=np.float64).sum(axis=0)
    cat_tp_fn = np.asarray(categories, dtype=np.float64).sum(axis=0)
    k = confusion.shape[0]
    per_class = {}
    for c in _INSTANCE_CLASSES:
        others = [i for i in range(k) if i != c.train_id]
        fp = confusion[others, c.train_id].sum()
        denom = tp_fn[0, c.train_id] + fp + tp_fn[1, c.train_id]
        per_class[class_names[c.train_id]] = float(tp_fn[0, c.train_id] / denom) if denom else None
    per_category = {}
    for j, name in enumerate(INSTANCE_CATEGORIES):
        ids = CATEGORIES[name]
        others = [i for i in range(k) if i not in ids]
        fp = confusion[np.ix_(others, ids)].sum()
        denom = cat_tp_fn[0, j] + fp + cat_tp_fn[1, j]
        per_category[name] = float(cat_tp_fn[0, j] / denom) if denom else None

    def mean(values: dict) -> float | None:
        defined = [v for v in values.values() if v is not None and not math.isnan(v)]
        return float(np.mean(defined)) if defined else None

    return {
        "classes": per_class,
        "mean": mean(per_class),
        "categories": per_category,
        "category_mean": mean(per_category),
    }


class CityscapesFigures(Figure):
    """Cityscapes' own figures (``conf/dataset/cityscapes.yaml`` adds them): the category IoU,
    and the iIoU of classes and categories when the samples carry instance ids (kept per image
    as ``instance_classes (N, 2, K)`` and ``instance_categories (N, 2, C)``)."""

    name = "cityscapes"

    def update(self, batch: EvalBatch) -> dict[str, Tensor]:
        if "instance" not in batch.batch:
            return {}
        classes, categories = instance_sums(batch.pred, batch.batch["instance"], self.num_classes)
        return {"instance_classes": classes, "instance_categories": categories}

    def compute(self, totals: Totals) -> FigureResult:
        categories = category_iou(totals.confusion)
        record = {"category_iou": categories}
        entry = {
            "category_iou": categories["categories"],
            "category_mIoU": categories["mean"],
        }
        logged = {"category_mIoU": categories["mean"]}
        rows = [("category mIoU", categories["mean"])]
        notes = []
        if "instance_classes" in totals.arrays:
            iiou = instance_iou(
                totals.confusion,
                totals.arrays["instance_classes"],
                totals.arrays["instance_categories"],
                self.class_names,
            )
            record["iiou"] = iiou
            entry["iiou"] = {"computed": True, **iiou}
            logged.update(iIoU=iiou["mean"], category_iIoU=iiou["category_mean"])
            rows += [("iIoU", iiou["mean"]), ("category iIoU", iiou["category_mean"])]
        else:
            why = totals.notes.get("instances") or "the evaluated samples carried no instance ids"
            entry["iiou"] = {"computed": False, "why": f"iIoU not computed: {why}"}
            notes.append(entry["iiou"]["why"])
        iiou = record.get("iiou") or {}
        return FigureResult(
            record=record,
            metrics={
                "category_mIoU": categories["mean"],
                "iIoU": iiou.get("mean"),
                "category_iIoU": iiou.get("category_mean"),
            },
            entries={"cityscapes": entry},
            logged=logged,
            rows=rows,
            notes=notes,
        )
