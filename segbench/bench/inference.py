"""What each evaluation mode costs in time against ``whole``, on the same model and images.

``segbench inference-bench [hydra overrides...] [--images N] [--size H W] [--repeats R]``
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

Every mode first runs once on every image, untimed (warm-up); then ``--repeats`` rounds (5)
time every mode in turn, in an order rotated each round, and a mode's figure is its median
round (its fastest and slowest rounds shown beside it). With one round, a mode timed while the
machine paid a first-call cost or a transient (another process, clocks ramping up) came out
faster than ``whole`` with three times its passes; with fewer than 3 rounds the table says its
order is no ranking. Prints a Markdown table.

The random images and weights come from the config's ``seed`` (``seed=1``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from segbench.config import parse_verb_args, verb_parser
from segbench.engine.build import build_model
from segbench.inference import Inference, evaluating, sliding_windows
from segbench.inference.crf import DenseCRF
from segbench.models.base import segmenter_of

__all__ = ["bench_modes", "format_markdown", "main", "run_benchmark"]

MS_SCALES = (0.75, 1.0, 1.25)
DEFAULT_ROUNDS = 5
MIN_RANKED_ROUNDS = 3  # fewer rounds: the table is printed, its order is not a ranking
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


def _seconds_per_image(fn, images: Tensor) -> float:
    """Mean wall time of ``fn`` on the single images of ``images``."""
    _sync(images.device)
    start = time.perf_counter()
    for i in range(images.shape[0]):
        fn(images[i : i + 1])
    _sync(images.device)
    return (time.perf_counter() - start) / images.shape[0]


def _timed_modes(
    modes: list[tuple[str, str, Callable[[Tensor], object]]], images: Tensor, repeat: int
) -> list[dict]:
    """``modes`` (name, details, fn) warmed up, then timed in ``repeat`` interleaved rounds.

    Every mode first runs once on every image, untimed: the first calls of a mode pay costs its
    later ones do not (allocator growth, cuDNN/oneDNN kernel selection for its input shapes,
    lazy CUDA module loading), and a mode timed while they are paid looks slower than one with
    more passes timed after. Then each round times every mode on every image, the modes in an
    order rotated each round, so that a transient of the machine (another process, clocks
    ramping up) falls on a different mode each time; a mode's figure is its median round.
    """
    for _, _, fn in modes:  # warm-up: every mode, every image, before anything is timed
        for i in range(images.shape[0]):
            fn(images[i : i + 1])
    _sync(images.device)
    rounds: dict[str, list[float]] = {name: [] for name, _, _ in modes}
    for r in range(repeat):
        shift = r % len(modes)
        for name, _, fn in modes[shift:] + modes[:shift]:
            rounds[name].append(_seconds_per_image(fn, images))
    return [
        {
            "mode": name,
            "details": details,
            "seconds": statistics.median(rounds[name]),
            "min": min(rounds[name]),
            "max": max(rounds[name]),
            "rounds": rounds[name],
        }
        for name, details, _ in modes
    ]


def run_benchmark(
    model: nn.Module, images: Tensor, repeat: int = DEFAULT_ROUNDS, crf: nn.Module | None = None
) -> list[dict]:
    """Time every mode on ``model`` and ``images (N, 3, H, W)`` (:func:`_timed_modes`: all
    warmed up, then ``repeat`` interleaved rounds); one row per mode with ``mode``,
    ``details``, ``seconds`` (per image, the median round), ``min``/``max`` (over rounds),
    ``rounds`` and ``ratio`` (to ``whole``, same run).

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
    whole = Inference()
    modes = [
        (name, details, lambda x, f=inference: f(model, x))
        for name, inference, details in bench_modes(tuple(images.shape[-2:]))
    ]
    modes.append(("CRF", f"whole + {type(crf).__name__}", lambda x: crf(whole(model, x)["out"], x)))
    if mc_samples is not None:

        def mc_dropout(x: Tensor):
            model.mc_samples = mc_samples  # the other rows run with 1
            try:
                return whole(model, x)
            finally:
                model.mc_samples = 1

        details = f"whole, {mc_samples} stochastic passes (rows above: 1)"
        modes.append((f"MC dropout x{mc_samples}", details, mc_dropout))
    try:
        if own_crf is not None:
            owner.crf = None  # the plain rows run without it; the CRF row adds it
        if mc_samples is not None:
            model.mc_samples = 1
        with evaluating(model), torch.inference_mode():
            rows = _timed_modes(modes, images, repeat)
    finally:
        if own_crf is not None:
            owner.crf = own_crf
        if mc_samples is not None:
            model.mc_samples = mc_samples
    for row in rows:
        row["ratio"] = row["seconds"] / rows[0]["seconds"]
    return rows


def format_markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table; with fewer than ``MIN_RANKED_ROUNDS`` rounds, a note
    under it that its order is not a ranking."""
    lines = [
        "| mode | details | s / image | min–max over rounds | × whole |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        spread = f"{r.get('min', r['seconds']):.4f}–{r.get('max', r['seconds']):.4f}"
        lines.append(
            f"| {r['mode']} | {r['details']} | {r['seconds']:.4f} | {spread} | {r['ratio']:.2f} |"
        )
    rounds = min((len(r.get("rounds", [])) for r in rows), default=0)
    if rounds < MIN_RANKED_ROUNDS:
        lines += [
            "",
            f"note: {rounds} round(s): machine transients are not averaged out, so the order of "
            f"the rows is not a ranking; use --repeats {DEFAULT_ROUNDS}",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = verb_parser(
        "inference-bench",
        "Seconds per image of each evaluation mode against whole-image inference.",
        example="model=pspnet",
    )
    parser.add_argument("--images", type=int, default=2, help="images timed (default 2)")
    parser.add_argument("--size", type=int, nargs=2, default=[256, 512], metavar=("H", "W"))
    parser.add_argument(
        "--repeats",
        "--repeat",
        type=int,
        default=DEFAULT_ROUNDS,
        help="timed rounds, modes in turn (default %(default)s; under "
        f"{MIN_RANKED_ROUNDS}: no ranking)",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    args, cfg = parse_verb_args(parser, argv)
    if args.images < 1 or min(args.size) < 1 or args.repeats < 1:
        parser.error(
            f"--images, --size and --repeats must be positive, got {args.images}, {args.size} "
            f"and {args.repeats}"
        )
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device).eval()
    generator = torch.Generator().manual_seed(cfg.seed)
    images = torch.randn(args.images, 3, *args.size, generator=generator).to(device)
    rows = run_benchmark(model, images, args.repeats)
    h, w = args.size
    print(
        f"model {cfg.model.name}, backbone {cfg.backbone.name}, {cfg.dataset.num_classes} classes,"
        f" {args.images} images {h}×{w}, {args.repeats} round(s), {device}"
    )
    print()
    print(format_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
