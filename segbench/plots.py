"""Pictures of labels and results: colour-coded masks, overlays (a mask blended over its image)
and tiles side by side (numpy and PIL, cheap enough for every image), and the run-level figures
(matplotlib): the confusion-matrix heatmap and the per-class IoU bar chart. The titled panels of
predictions (image | ground truth | prediction | errors) are drawn by :mod:`segbench.panels`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "colorize",
    "default_palette",
    "heatmap",
    "overlay",
    "panel",
    "plot_confusion_matrix",
    "plot_curves",
    "plot_per_class_iou",
    "plot_reliability",
    "save_palette_png",
]

IGNORE_COLOUR = (255, 255, 255)
UNKNOWN_COLOUR = (255, 0, 255)


def default_palette(num_classes: int) -> list[list[int]]:
    """A fixed, distinct palette for datasets that bring none."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(num_classes, 3)).tolist()


def _lut(palette: Sequence[Sequence[int]], ignore_index: int | None, size: int) -> np.ndarray:
    lut = np.empty((max(256, size), 3), dtype=np.uint8)
    lut[:] = UNKNOWN_COLOUR
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    if ignore_index is not None and 0 <= ignore_index < len(lut):
        lut[ignore_index] = IGNORE_COLOUR
    return lut


def colorize(
    mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int | None = None
) -> np.ndarray:
    """Label map ``(H, W)`` → ``uint8 (H, W, 3)`` in ``palette``; ignored pixels white, any
    other value outside the palette magenta."""
    mask = np.asarray(mask).astype(np.int64)
    return _lut(palette, ignore_index, int(mask.max(initial=0)) + 1)[mask]


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    palette: Sequence[Sequence[int]],
    ignore_index: int | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """``image`` with the coloured ``mask`` blended over it (ignored pixels whitened)."""
    colours = colorize(mask, palette, ignore_index).astype(np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * colours
    return out.round().astype(np.uint8)


def heatmap(values: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """A ``(H, W)`` map of non-negative values → ``uint8 (H, W, 3)`` in matplotlib's magma
    colour map, 0 black; scaled to ``vmax`` (default: the map's maximum)."""
    from matplotlib import colormaps

    values = np.asarray(values, dtype=np.float64)
    top = vmax if vmax is not None else float(values.max(initial=0.0))
    scaled = values / top if top > 0 else np.zeros_like(values)
    rgba = colormaps["magma"](np.clip(scaled, 0.0, 1.0))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def panel(tiles: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """RGB tiles of one height side by side, separated by white gaps."""
    h = tiles[0].shape[0]
    spacer = np.full((h, gap, 3), 255, dtype=np.uint8)
    parts = []
    for i, tile in enumerate(tiles):
        if tile.shape[0] != h:
            raise ValueError(f"panel tiles must share a height, got {[t.shape for t in tiles]}")
        parts += [spacer, tile] if i else [tile]
    return np.concatenate(parts, axis=1)


def save_palette_png(mask: np.ndarray, palette: Sequence[Sequence[int]], path: Path) -> Path:
    """Write a label map as a palette PNG (pixel values = class indices, as VOC stores
    its masks), so it reads back as indices and shows in colour."""
    mask = np.asarray(mask)
    if mask.min(initial=0) < 0 or mask.max(initial=0) > 255:
        raise ValueError(
            f"{path}: a palette PNG holds values 0-255, got {mask.min()}..{mask.max()}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    palette_image(mask, palette).save(path)
    return path


def palette_image(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """A label map (values 0-255) as a PIL palette image in ``palette``'s colours."""
    image = Image.fromarray(np.asarray(mask).astype(np.uint8), mode="L").convert("P")
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    image.putpalette(flat.ravel().tolist())
    return image


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` (creating its directory) and free it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


def plot_confusion_matrix(
    confmat: np.ndarray, class_names: Sequence[str], path: Path, title: str = ""
) -> Path:
    """Heatmap of the row-normalised confusion matrix (rows: ground truth, columns:
    prediction; each row sums to 1 over the pixels of that class), with the values written in
    the cells when there are few classes."""
    plt = _pyplot()

    cm = np.asarray(confmat, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(class_names)
    side = min(max(4.0, 0.45 * k + 2.0), 30.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), class_names, rotation=90, fontsize=8 if k <= 40 else 5)
    ax.set_yticks(range(k), class_names, fontsize=8 if k <= 40 else 5)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if k <= 25:
        for i in range(k):
            for j in range(k):
                if norm[i, j] >= 0.005:
                    colour = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color=colour,
                    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the row's pixels")
    ax.set_title(title or "confusion matrix (row-normalised)", fontsize=10)
    return _save(fig, path)


def plot_per_class_iou(
    iou: Sequence[float],
    class_names: Sequence[str],
    path: Path,
    palette: Sequence[Sequence[int]] | None = None,
    title: str = "",
) -> Path:
    """Horizontal bars of per-class IoU (%) in the dataset's colours, with the mean as a line;
    classes without a value (absent from ground truth and prediction) are marked n/a."""
    plt = _pyplot()

    values = np.array([np.nan if v is None else float(v) for v in iou], dtype=np.float64) * 100
    k = len(class_names)
    palette = palette or default_palette(k)
    colours = [np.asarray(palette[i]) / 255 for i in range(k)]
    fig, ax = plt.subplots(figsize=(7.0, max(2.5, 0.28 * k + 1.2)))
    y = np.arange(k)
    ax.barh(y, np.nan_to_num(values), color=colours, edgecolor="black", linewidth=0.4)
    for i, v in enumerate(values):
        ax.text(
            (0 if np.isnan(v) else v) + 1,
            i,
            "n/a" if np.isnan(v) else f"{v:.1f}",
            va="center",
            fontsize=7,
        )
    mean = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    if np.isfinite(mean):
        ax.axvline(mean, color="black", linestyle="--", linewidth=1)
        ax.text(mean, -0.9, f"mIoU {mean:.1f}", ha="center", fontsize=8)
    ax.set_yticks(y, class_names, fontsize=8 if k <= 40 else 5)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("IoU (%)")
    ax.set_title(title or "per-class IoU", fontsize=10)
    return _save(fig, path)


def plot_curves(history: list[dict], path: Path, title: str = "") -> Path:
    """Loss and mIoU per epoch, train and val, from ``history`` (one dict per epoch with any of
    ``epoch``, ``train/loss``, ``val/loss``, ``train/mIoU``, ``val/mIoU``)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, scale in ((ax_loss, "loss", 1.0), (ax_iou, "mIoU", 100.0)):
        for split, style in (("train", "-o"), ("val", "-s")):
            key = f"{split}/{metric}"
            points = [(h["epoch"], h[key] * scale) for h in history if h.get(key) is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, style, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("mIoU (%)" if metric == "mIoU" else "loss")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title or "training curves", fontsize=10)
    return _save(fig, path, dpi=110)


def plot_time_curve(timeline: list[dict], path: Path, title: str = "") -> Path:
    """Validation mIoU against the training run's wall time (``timeline``: dicts with
    ``wall_s`` and ``val/mIoU``, from :class:`~segbench.engine.run_plots.RunPlots`)."""
    plt = _pyplot()
    points = [(r["wall_s"] / 60, 100 * r["val/mIoU"]) for r in timeline if "val/mIoU" in r]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, "-s", markersize=3)
        best = max(range(len(ys)), key=ys.__getitem__)
        ax.annotate(
            f"{ys[best]:.1f}",
            (xs[best], ys[best]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
        )
    ax.set_xlabel("wall time (minutes, from the start of training)")
    ax.set_ylabel("val mIoU (%)")
    ax.grid(alpha=0.3)
    ax.set_title(title or "validation mIoU against wall time", fontsize=10)
    return _save(fig, path, dpi=110)


def plot_reliability(record: dict, path: Path, title: str = "") -> Path:
    """Reliability diagram from :func:`segbench.metrics.calibration.calibration_record`'s output:
    the accuracy of each confidence bin as bars against the bin centres, the diagonal of perfect
    calibration, the gap to each bin's mean confidence shaded, and below it the share of the
    valid pixels in each bin; ECE, NLL and Brier score in the legend."""
    plt = _pyplot()

    path = Path(path)
    rel = record["reliability"]
    edges = np.asarray(rel["edges"], dtype=np.float64)
    as_array = lambda xs: np.array([np.nan if v is None else v for v in xs], np.float64)  # noqa: E731
    accuracy, confidence = as_array(rel["accuracy"]), as_array(rel["confidence"])
    count = np.asarray(rel["count"], dtype=np.float64)
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    total = count.sum()
    share = count / total * 100 if total > 0 else np.zeros_like(count)
    filled = np.isfinite(accuracy) & np.isfinite(confidence)

    fig, (ax, ax_share) = plt.subplots(
        2, 1, figsize=(5.2, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
    ax.bar(
        centres[filled],
        accuracy[filled],
        width[filled],
        color="#4c72b0",
        edgecolor="black",
        linewidth=0.5,
        label="accuracy",
    )
    gap = confidence - accuracy
    ax.bar(
        centres[filled],
        gap[filled],
        width[filled],
        bottom=accuracy[filled],
        color="#dd5555",
        alpha=0.35,
        edgecolor="#aa2222",
        hatch="//",
        linewidth=0.5,
        label="gap to mean confidence",
    )
    ax.plot(
        confidence[filled],
        accuracy[filled],
        "o",
        color="black",
        markersize=3,
        label="(confidence, accuracy)",
    )

    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    ece = record.get("ece")
    scores = (
        f"ECE {'n/a' if ece is None else format(100 * ece, '.2f') + '%'}\n"
        f"NLL {fmt(record.get('nll'), '.3f')}\n"
        f"Brier {fmt(record.get('brier'), '.3f')}"
    )
    if filled.any():
        ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    ax.text(
        0.97,
        0.04,
        scores,
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=9,
        family="monospace",
        bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "grey", "alpha": 0.9},
    )
    if not filled.any():
        ax.text(0.5, 0.5, "no valid pixels", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.set_title(title or "reliability diagram", fontsize=10)

    ax_share.bar(centres, share, width, color="#888888", edgecolor="black", linewidth=0.5)
    top = float(share.max(initial=0.0))
    for x, s in zip(centres, share):
        if s > 0:
            ax_share.text(
                x,
                s + top * 0.03,
                f"{s:.0f}" if s >= 1 else "<1",
                ha="center",
                va="bottom",
                fontsize=6,
            )
    ax_share.set_ylim(0, max(top * 1.25, 1.0))
    ax_share.set_xlabel(f"top-label confidence ({len(count)} bins)")
    ax_share.set_ylabel("pixels (%)")
    ax_share.grid(alpha=0.3, axis="y")
    pixels = record.get("pixels")
    if pixels:
        ax_share.set_title(f"share of the {int(pixels):,} valid pixels per bin", fontsize=8)
    return _save(fig, path)
