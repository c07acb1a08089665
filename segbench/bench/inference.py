"""What each evaluation mode costs in time against ``whole``, on the same model and images.

``segbench inference-bench [hydra overrides...] [--images N] [--size H W] [--repeat R]``
composes ``conf/train.yaml`` with the overrides (``model=deeplabv3plus backbone=resnet18``),
builds the model in eval mode (random weights: speed does not depend on them), makes ``N``
seeded random normalised images and times, one image at a time under ``torch.inference_mode``:

- ``whole``: one pass; the reference of every ratio.
- ``slide``: windows of half the image on each side, stride 2/3 of the window (3×3 windows).
- ``flip``, ``ms`` (scales 0.75/1.0/1.25), ``ms+flip`` (the 6 scales 0.5-1.75 and flip).
- ``CRF``: ``whole`` followed by the dense CRF (the model's own, else a ``DenseCRF`` with
  ``model=deeplabv1_crf``'s settings: symmetric normalisation).
- Bayesian SegNet only: ``MC dropout xN``, its eval forward of N passes; every other row then
  runs it with ``mc_samples=1``, so that ``whole`` is one deterministic-cost pass.

Each mode runs once on the first image before it is timed (warm-up). Prints a Markdown table.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from segbench.config import parse_verb_args, verb_parser
from segbench.engine.build import build_model
from segbench.inference import Inference, evaluating, sliding_windows
from segbench.inference.crf import DenseCRF
from segbench.models.base import segmenter_of

__all__ = ["bench_modes", "format_markdown", "main", "run_benchmark"]

MS_SCALES = (0.75, 1.0, 1.25)
MS_FLIP_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def bench_modes(size: tuple[int, int]) -> list[tuple[str, Inference, str]]:
    """``(name, inference, details)`` of every timed mode for images of ``size``."""
    crop = (max(1, size[0] // 2), max(1, size[1] // 2))
    stride = (max(1, round(crop[0] * 2 / 3)), max(1, round(crop[1] * 2 / 3)))
    windows = len(sliding_windows(size, crop, stride))
    return [
        ("whole", Inference(), "1 pass"),
        (
            "slide",
            Inference("slide", crop, stride),
            f"crop {crop[0]}×{crop[1]}, stride {stride[0]}×{stride[1]}: {windows} windows",
        ),
        ("flip", Inference(flip=True), "2 passes"),
        ("ms", Inference(scales=MS_SCALES), "scales 0.75/1.0/1.25: 3 passes"),
        ("ms+flip", Inference(scales=MS_FLIP_SCALES, flip=True), "scales 0.5-1.75 × flip: 12"),
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_image(fn, images: Tensor, repeat: int) -> float:
    """Mean wall time of ``fn`` on single images, after one warm-up call."""
    fn(images[:1])
    _sync(images.device)
    start = time.perf_counter()
    for _ in range(repeat):
        for i in range(images.shape[0]):
            fn(images[i : i + 1])
    _sync(images.device)
    return (time.perf_counter() - start) / (repeat * images.shape[0])


def run_benchmark(
    model: nn.Module, images: Tensor, repeat: int = 1, crf: nn.Module | None = None
) -> list[dict]:
    """Time every mode on ``model`` and ``images (N, 3, H, W)``; one row per mode with
    ``mode``, ``details``, ``seconds`` (per image) and ``ratio`` (to ``whole``, same run).

    ``crf`` is used for the CRF row when the model has none (default: a symmetric
    ``DenseCRF``).
    """
    if repeat < 1 or images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(
            f"run_benchmark needs repeat >= 1 and images (N, 3, H, W), N >= 1; got "
            f"repeat={repeat}, images {tuple(images.shape)}"
        )
    owner = segmenter_of(model)  # the network that holds the CRF
    own_crf = getattr(owner, "crf", None)
    if crf is None:
        crf = DenseCRF(normalization="symmetric")  # what model=deeplabv1_crf sets
    crf = own_crf if own_crf is not None else crf
    crf = crf.to(images.device)
    mc_samples = getattr(model, "mc_samples", None)
    rows: list[dict] = []
    try:
        if own_crf is not None:
            owner.crf = None  # the plain rows run without it; the CRF row adds it
        if mc_samples is not None:
            model.mc_samples = 1
        with evaluating(model), torch.inference_mode():
            for name, inference, details in bench_modes(tuple(images.shape[-2:])):
                seconds = _seconds_per_image(lambda x, f=inference: f(model, x), images, repeat)
                rows.append({"mode": name, "details": details, "seconds": seconds})
            whole = Inference()

            def whole_crf(x: Tensor) -> Tensor:
                return crf(whole(model, x)["out"], x)

            seconds = _seconds_per_image(whole_crf, images, repeat)
            rows.append(
                {"mode": "CRF", "details": f"whole + {type(crf).__name__}", "seconds": seconds}
            )
            if mc_samples is not None:
                model.mc_samples = mc_samples
                seconds = _seconds_per_image(lambda x: whole(model, x), images, repeat)
                rows.append(
                    {
                        "mode": f"MC dropout x{mc_samples}",
                        "details": f"whole, {mc_samples} stochastic passes (rows above: 1)",
                        "seconds": seconds,
                    }
                )
    finally:
        if own_crf is not None:
            owner.crf = own_crf
        if mc_samples is not None:
            model.mc_samples = mc_samples
    for row in rows:
        row["ratio"] = row["seconds"] / rows[0]["seconds"]
    return rows


def format_markdown(rows: list[dict]) -> str:
    lines = ["| mode | details | s / image | × whole |", "|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['details']} | {r['seconds']:.4f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = verb_parser(
        "inference-bench",
        "Seconds per image of each evaluation mode against whole-image inference.",
        example="model=pspnet",
    )
    parser.add_argument("--images", type=int, default=2, help="images timed (default 2)")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 512], metavar=("H", "W"))
    parser.add_argument("--repeat", type=int, default=1, help="timed rounds over the images")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--seed", type=int, default=0)
    args, cfg = parse_verb_args(parser, argv)
    if args.images < 1 or min(args.size) < 1:
        parser.error(f"--images and --size must be positive, got {args.images} and {args.size}")
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    torch.manual_seed(args.seed)
    model = build_model(cfg.model).to(device).eval()
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.images, 3, *args.size, generator=generator).to(device)
    rows = run_benchmark(model, images, args.repeat)
    h, w = args.size
    print(
        f"model {cfg.model.name}, backbone {cfg.backbone.name}, {cfg.dataset.num_classes} classes,"
        f" {args.images} images {h}×{w}, {args.repeat} round(s), {device}"
    )
    print()
    print(format_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
