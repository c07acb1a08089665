"""``segbench preview dataset=... [key=value ...]``: look at augmented samples.

Draws ``--num`` samples of a split through the split's own pipeline (for ``train``: random
scale, crop with ignore padding, flip, jitter), each as the augmented image next to its label
overlay in the dataset's palette, ignored pixels in white, with a legend of class names, and
saves the grid as a PNG.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from segbench.plots import default_palette, overlay

__all__ = ["main", "preview_grid"]


def preview_grid(dm, split: str, num: int, out: Path, seed: int = 0, columns: int = 4) -> Path:
    """Save ``num`` samples of ``dm``'s ``split`` after its pipeline as a grid PNG at ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    dataset = dm.dataset(split)
    transform = dm.train_transform if split == "train" else dm.eval_transform
    palette = dm.palette or default_palette(dm.num_classes)
    rng = np.random.default_rng(seed)
    np.random.seed(seed)  # albumentations draws from numpy's and python's generators
    import random

    random.seed(seed)
    picks = rng.choice(len(dataset), size=min(num, len(dataset)), replace=False)
    columns = min(columns, len(picks))
    rows = -(-len(picks) // columns)
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(4.2 * columns, 1.9 * rows + 0.8))
    axes = np.atleast_2d(axes)
    for ax in axes.ravel():
        ax.axis("off")
    seen: set[int] = set()
    for n, index in enumerate(picks):
        image, mask, name = dataset.load(int(index))
        image, mask = transform.augment(image, mask)
        seen.update(np.unique(mask).tolist())
        r, c = divmod(n, columns)
        axes[r, 2 * c].imshow(image)
        axes[r, 2 * c].set_title(Path(name).stem[:28], fontsize=7)
        axes[r, 2 * c + 1].imshow(overlay(image, mask, palette, dm.ignore_index))
        axes[r, 2 * c + 1].set_title(f"{mask.shape[1]}x{mask.shape[0]}", fontsize=7)
    handles = [
        Patch(color=np.asarray(palette[k]) / 255, label=dm.class_names[k])
        for k in range(dm.num_classes)
        if k in seen
    ]
    handles.append(Patch(facecolor="white", edgecolor="grey", label=f"ignore ({dm.ignore_index})"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=7)
    fig.suptitle(f"{dm.name}/{split}: {len(picks)} samples after the {split} pipeline", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    from hydra.utils import instantiate

    from segbench.config import parse_verb_args, verb_parser

    parser = verb_parser(
        "preview", "Save a grid of augmented samples with their label overlays as a PNG."
    )
    parser.add_argument("--split", default="train")
    parser.add_argument("--num", type=int, default=8, help="number of samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="PNG path")
    args, cfg = parse_verb_args(parser, argv)
    dm = instantiate(cfg.dataset)
    out = args.out or Path("outputs") / "preview" / f"{dm.name}-{args.split}.png"
    print(preview_grid(dm, args.split, args.num, out, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
