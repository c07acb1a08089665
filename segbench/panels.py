"""Panels: images with their ground truth, prediction and errors side by side, in a titled
figure (matplotlib) with the class legend once, and on every row the image's id and its own
mIoU. Training draws the validation images as one figure (``val_predictions.png``,
:class:`~segbench.engine.run_plots.RunPlots`), the final evaluation one figure per image
(``panels/<image>.png``, :class:`~segbench.engine.callbacks.EvaluationOutputs`).

Columns: image | ground truth | prediction | errors (| uncertainty, for models that give one).
In the ground truth, void (the dataset's ignore index) is white; in the errors, the pixels
predicted wrong are red over the image in dim grey, and void is white (neither right nor
wrong). A row's mIoU is the mean IoU over the classes present in its ground truth or its
prediction, void pixels left out: the per-image mIoU of ``results.json``'s ``per_image``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segbench.plots import IGNORE_COLOUR, _pyplot, colorize, heatmap

__all__ = [
    "COLUMNS",
    "ERROR_COLOUR",
    "MIOU_NOTE",
    "PanelRow",
    "draw_panels",
    "errors_map",
    "image_miou",
    "save_panels",
    "spread_indices",
]

COLUMNS = ("image", "ground truth", "prediction", "errors")
ERROR_COLOUR = (230, 25, 25)
MIOU_NOTE = (
    "mIoU: over the classes in the image's ground truth or prediction; "
    "errors: share of its pixels predicted wrong; void pixels ignored"
)
TILE_IN = 2.3  # width of one tile, inches
LABEL_IN = 1.45  # left margin for the rows' ids and mIoU
GAP_IN = 0.06
ROW_GAP_IN = 0.12


@dataclass
class PanelRow:
    """One image of a panel figure: ``image`` ``uint8 (H, W, 3)``, ``gt`` and ``pred`` label maps
    ``(H, W)``, ``uncertainty`` an optional ``(H, W)`` map; ``id`` names it (a file stem or an
    index)."""

    id: str
    image: np.ndarray
    gt: np.ndarray
    pred: np.ndarray
    uncertainty: np.ndarray | None = None


def _valid(gt: np.ndarray, num_classes: int, ignore_index: int | None) -> np.ndarray:
    valid = (gt >= 0) & (gt < num_classes)
    if ignore_index is not None:
        valid &= gt != ignore_index
    return valid


def image_miou(
    gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int | None
) -> float | None:
    """The image's mIoU (a fraction): the mean IoU over the classes present in its ground truth
    or its prediction, the pixels whose ground truth is void (or no class) left out; None when
    it has no such pixel."""
    gt, pred = np.asarray(gt).astype(np.int64), np.asarray(pred).astype(np.int64)
    valid = _valid(gt, num_classes, ignore_index) & (pred >= 0) & (pred < num_classes)
    g, p = gt[valid], pred[valid]
    if not g.size:
        return None
    inter = np.bincount(g[g == p], minlength=num_classes)
    union = np.bincount(g, minlength=num_classes) + np.bincount(p, minlength=num_classes) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean())


def errors_map(
    image: np.ndarray, gt: np.ndarray, pred: np.ndarray, ignore_index: int | None
) -> np.ndarray:
    """``uint8 (H, W, 3)``: the pixels where ``pred`` differs from ``gt`` in red, the others the
    image in dim grey, void (``ignore_index``) in white."""
    grey = np.asarray(image, dtype=np.float32).mean(axis=-1, keepdims=True)
    out = np.repeat(grey * 0.45 + 20, 3, axis=-1).round().astype(np.uint8)
    wrong = np.asarray(gt) != np.asarray(pred)
    out[wrong] = ERROR_COLOUR
    if ignore_index is not None:
        out[np.asarray(gt) == ignore_index] = IGNORE_COLOUR
    return out


def spread_indices(total: int, count: int, seed: int = 0) -> list[int]:
    """``count`` of ``range(total)`` spread over it: one index drawn (seeded) from each of
    ``count`` equal stretches, so that images from the whole split are shown rather than a run
    of consecutive ones (frames of one video); all of them when ``count >= total``."""
    if count >= total:
        return list(range(total))
    if count <= 0:
        return []
    rng = np.random.default_rng(seed)
    edges = np.linspace(0, total, count + 1).round().astype(int)
    return [int(rng.integers(lo, hi)) for lo, hi in zip(edges[:-1], edges[1:])]


def _short(text: str, width: int = 22) -> str:
    """``text`` cut in the middle to ``width`` characters."""
    if len(text) <= width:
        return text
    half = (width - 1) // 2
    return text[:half] + "…" + text[-(width - 1 - half) :]


def _legend_handles(rows, class_names, palette, ignore_index):
    from matplotlib.patches import Patch

    k = len(class_names)
    seen = np.zeros(k, dtype=bool)
    void = False
    for r in rows:
        for labels in (np.asarray(r.gt), np.asarray(r.pred)):
            values = np.unique(labels)
            values = values[(values >= 0) & (values < k)]
            seen[values] = True
        void = void or (ignore_index is not None and bool((np.asarray(r.gt) == ignore_index).any()))
    handles = [
        Patch(facecolor=np.asarray(palette[i]) / 255, edgecolor="black", lw=0.5, label=name)
        for i, name in enumerate(class_names)
        if seen[i]
    ]
    if void:
        handles.append(Patch(facecolor="white", edgecolor="black", lw=0.5, label="void (ignored)"))
    red = np.asarray(ERROR_COLOUR) / 255
    handles.append(Patch(facecolor=red, edgecolor="black", lw=0.5, label="predicted wrong"))
    return handles


def draw_panels(
    rows: Sequence[PanelRow],
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    ignore_index: int | None = None,
    title: str = "",
):
    """The matplotlib figure of ``rows``: titled columns, on the left of every row its id and
    mIoU (:func:`image_miou`), and below them the legend of the classes they show (colour and
    name, once), void and the error colour. The caller saves or closes it."""
    plt = _pyplot()
    rows = list(rows)
    if not rows:
        raise ValueError("draw_panels needs at least one row")
    k = len(class_names)
    columns = list(COLUMNS)
    if any(r.uncertainty is not None for r in rows):
        columns.append("uncertainty")
    tile_w = TILE_IN
    heights = [tile_w * r.image.shape[0] / max(r.image.shape[1], 1) for r in rows]
    n_cols = len(columns)
    grid_w = n_cols * tile_w + (n_cols - 1) * GAP_IN
    fig_w = LABEL_IN + grid_w + 0.15
    handles = _legend_handles(rows, class_names, palette, ignore_index)
    legend_cols = max(1, min(len(handles), int(fig_w / 1.55)))
    legend_h = 0.25 + 0.24 * math.ceil(len(handles) / legend_cols)
    top_h = 0.85 if title else 0.6
    rows_h = sum(heights) + (len(rows) - 1) * ROW_GAP_IN
    fig_h = top_h + rows_h + legend_h + 0.1
    fig = plt.figure(figsize=(fig_w, fig_h))
    fx, fy = (lambda x: x / fig_w), (lambda y: 1 - y / fig_h)  # inches from the top left
    for r, row in enumerate(rows):
        gt = np.asarray(row.gt)
        pred = np.asarray(row.pred)
        tiles = [
            np.asarray(row.image),
            colorize(gt, palette, ignore_index),
            colorize(pred, palette, ignore_index),
            errors_map(row.image, gt, pred, ignore_index),
        ]
        if n_cols > 4:
            tiles.append(
                heatmap(row.uncertainty)
                if row.uncertainty is not None
                else np.full((*gt.shape, 3), 255, np.uint8)
            )
        tile_h = heights[r]
        y_top = top_h + sum(heights[:r]) + r * ROW_GAP_IN
        for c, tile in enumerate(tiles):
            x = LABEL_IN + c * (tile_w + GAP_IN)
            ax = fig.add_axes((fx(x), fy(y_top + tile_h), fx(tile_w), tile_h / fig_h))
            ax.imshow(tile, interpolation="nearest", aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_linewidth(0.4)
            if r == 0:
                ax.set_title(columns[c], fontsize=11, fontweight="bold", pad=4)
        miou = image_miou(gt, pred, k, ignore_index)
        valid = _valid(gt, k, ignore_index)
        wrong = float((gt != pred)[valid].mean()) if valid.any() else None
        label = "\n".join(
            [
                _short(str(row.id)),
                "mIoU n/a" if miou is None else f"mIoU {100 * miou:.1f}%",
                "" if wrong is None else f"errors {100 * wrong:.1f}%",
            ]
        ).rstrip()
        fig.text(
            fx(LABEL_IN - 0.08),
            fy(y_top + tile_h / 2),
            label,
            ha="right",
            va="center",
            fontsize=9,
            linespacing=1.4,
        )
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(fx(LABEL_IN + grid_w / 2), fy(top_h + rows_h + 0.08)),
        ncol=legend_cols,
        fontsize=9,
        frameon=False,
        handlelength=1.2,
        columnspacing=1.0,
    )
    if title:
        fig.text(fx(fig_w / 2), fy(0.08), title, ha="center", va="top", fontsize=11)
    fig.text(fx(fig_w / 2), fy(top_h - 0.42), MIOU_NOTE, ha="center", va="top", fontsize=8.5)
    return fig


def save_panels(
    rows: Sequence[PanelRow],
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    path: Path,
    ignore_index: int | None = None,
    title: str = "",
    dpi: int = 100,
) -> Path:
    """:func:`draw_panels` written to ``path`` (its folder created)."""
    fig = draw_panels(rows, class_names, palette, ignore_index, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path
