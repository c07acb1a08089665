"""Class statistics of a dataset split and the class weights derived from them.

``median_frequency`` is median-frequency balancing (Eigen & Fergus, 2015), as SegNet weighted
its CamVid loss: ``freq(c)`` is the number of pixels of class ``c`` divided by the number of
labelled (not ignored) pixels of the images in which ``c`` appears, and
``w(c) = median_c' freq(c') / freq(c)``. A class that never appears gets weight 0.

The figures are computed once per split and remembered in the cache (see
:mod:`segbench.data.cache`) until the files change. From the command line::

    segbench stats dataset=camvid data_root=/data [--split train]

In a config: ``loss.class_weights=median_frequency`` (or ``inverse_frequency``) computes them
over the training split before training starts.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from tqdm.auto import tqdm

from segbench.data.base import SegmentationDataset
from segbench.data.cache import cache_dir, recall, remember

__all__ = ["WEIGHTINGS", "class_statistics", "class_weights", "compute_statistics"]

WEIGHTINGS = ("median_frequency", "inverse_frequency")


def compute_statistics(dataset: SegmentationDataset, desc: str = "class statistics") -> dict:
    """Pixel counts per class over ``dataset`` (its stored labels, no augmentation)."""
    k = dataset.num_classes
    pixels = np.zeros(k, dtype=np.int64)  # pixels of class c
    image_pixels = np.zeros(k, dtype=np.int64)  # labelled pixels of the images containing c
    images = np.zeros(k, dtype=np.int64)  # images containing c
    ignored = 0
    for index in tqdm(range(len(dataset)), desc=desc, leave=False, disable=len(dataset) < 50):
        _, mask, _ = dataset.load(index)
        flat = mask.ravel().astype(np.int64)
        keep = flat != dataset.ignore_index
        ignored += int(flat.size - keep.sum())
        counts = np.bincount(flat[keep], minlength=k)[:k]
        present = counts > 0
        pixels += counts
        image_pixels[present] += int(keep.sum())
        images[present] += 1
    return {
        "num_images": len(dataset),
        "pixels": pixels.tolist(),
        "image_pixels": image_pixels.tolist(),
        "images": images.tolist(),
        "ignored_pixels": ignored,
    }


def weights_from(stats: dict, method: str) -> list[float]:
    """Class weights of ``method`` (one of :data:`WEIGHTINGS`) from :func:`compute_statistics`."""
    pixels = np.asarray(stats["pixels"], dtype=np.float64)
    present = pixels > 0
    if not present.any():
        raise ValueError("no labelled pixel in the dataset: class weights are undefined")
    if method == "median_frequency":
        freq = np.zeros_like(pixels)
        freq[present] = pixels[present] / np.asarray(stats["image_pixels"])[present]
    elif method == "inverse_frequency":
        freq = pixels / pixels.sum()
    else:
        raise ValueError(f"unknown class weighting {method!r}; expected one of {list(WEIGHTINGS)}")
    weights = np.zeros_like(pixels)
    weights[present] = np.median(freq[present]) / freq[present]
    return [round(float(w), 6) for w in weights]


def class_statistics(dataset: SegmentationDataset, desc: str = "class statistics") -> dict:
    """:func:`compute_statistics` with both weightings, remembered in the cache when the
    dataset can say when its files change."""
    key = dataset.scan_key()
    path = cache_dir() / "stats" / f"{key}.json" if key else None
    text = recall(path)
    if text is not None:
        try:
            return json.loads(text)
        except ValueError:  # a damaged entry: computed again
            pass
    stats = compute_statistics(dataset, desc=desc)
    stats["weights"] = {m: weights_from(stats, m) for m in WEIGHTINGS}
    if path is not None:
        remember(path, json.dumps(stats, indent=1))
    return stats


def class_weights(dataset: SegmentationDataset, method: str) -> list[float]:
    """Weights of ``method`` for ``dataset`` (computed once, then read from the cache)."""
    if method not in WEIGHTINGS:
        raise ValueError(
            f"loss.class_weights={method!r} is not a weighting; expected a list of numbers or one "
            f"of {list(WEIGHTINGS)}"
        )
    return class_statistics(dataset)["weights"][method]


def format_statistics(stats: dict, class_names: list[str]) -> str:
    """A Markdown table: pixel share, median-frequency ``freq(c)`` and both weightings."""
    pixels = np.asarray(stats["pixels"], dtype=np.float64)
    total = max(pixels.sum(), 1.0)
    image_pixels = np.maximum(np.asarray(stats["image_pixels"], dtype=np.float64), 1.0)
    rows = [
        "| class | pixels % | images | freq | median-freq weight | inverse-freq weight |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for i, name in enumerate(class_names):
        rows.append(
            f"| {name} | {100 * pixels[i] / total:.2f} | {stats['images'][i]} | "
            f"{pixels[i] / image_pixels[i]:.4f} | {stats['weights']['median_frequency'][i]:.4f} | "
            f"{stats['weights']['inverse_frequency'][i]:.4f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    from hydra.utils import instantiate

    from segbench.config import parse_verb_args, verb_parser

    parser = verb_parser(
        "stats", "Per-class pixel statistics and class weights of a dataset split."
    )
    parser.add_argument("--split", default="train", help="split to count (default: train)")
    args, cfg = parse_verb_args(parser, argv)
    dm = instantiate(cfg.dataset)
    dataset = dm.dataset(args.split)
    stats = class_statistics(dataset, desc=f"counting {dm.name}/{args.split}")
    print(f"{dm.name}/{args.split}: {stats['num_images']} images")
    print(format_statistics(stats, dm.class_names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
