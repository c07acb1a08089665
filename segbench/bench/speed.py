"""``segbench bench [model=... backbone=... ...]``: how fast a model trains and predicts on this
machine, in ratios measured in one process.

Sections (``--sections``; the first four by default):

1. ``step``: the training step (forward, the configured loss, backward, SGD step) on a random
   batch in memory, in each ``--variants`` setting: ``fp32``, ``bf16`` (autocast, as
   ``trainer.precision=bf16-mixed``), ``fp16`` (GPU), ``channels_last``, ``bf16+channels_last``
   (``trainer=fast``), ``compile`` (``torch.compile``). Variants are timed in turns, ``--repeats``
   rounds of ``--steps`` steps each, so that drift of the machine (heat, other processes) hits
   every variant alike; the median round counts. Ratios are against ``fp32`` of the same run.
   With each, the peak tensor memory of a step (:func:`segbench.bench.timing.peak_memory`).
2. ``loop``: ``train.py``'s loop (Lightning, the callbacks and loggers of the config) against
   a bare PyTorch loop over the same loader, model, loss and optimizer, in turns
   (:mod:`segbench.bench.loop`), on the dataset of the config (``loop_steps`` batches each).
3. ``peers``: the same architecture built by segmentation_models_pytorch or torchvision (the
   ``bench`` dependency group: ``uv sync --group bench``), training step and batch-1 inference
   in turns with segbench's; left out, with a note, when none exists or the library is absent.
4. ``latency``: batch-1 inference under ``torch.inference_mode`` in eval mode, as
   mmsegmentation's benchmark measures it: ``--warmup`` untimed passes, then ``--iters`` timed
   ones, each ended by ``torch.cuda.synchronize()`` on a GPU; p50 and p95 per variant.

5. ``crf`` (only when asked): the dense CRF against Krähenbühl's C++ implementation
   (``pydensecrf2``) on one thread at ``--crf-size`` (:mod:`segbench.bench.crf`).
6. ``boundary`` (only when asked): seconds per image of the BF score and boundary IoU at
   360x480 and 1024x2048, against the pixel counts (:mod:`segbench.bench.boundary`).

Prints one Markdown table per section and writes everything to ``--out`` (JSON).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from segbench.bench.peers import peer_model
from segbench.bench.report import report
from segbench.bench.timing import (
    VARIANTS,
    Setup,
    in_turns,
    peak_memory,
    pick_device,
    random_batch,
    sync,
    timed,
)
from segbench.checkpoints.network import build_model
from segbench.config import parse_verb_args, verb_parser

__all__ = ["VARIANTS", "main", "peer_model", "run"]

SECTIONS = ("step", "loop", "peers", "latency", "crf", "boundary")
DEFAULT_SECTIONS = ("step", "loop", "peers", "latency")


def bench_steps(cfg, variants, batch, size, steps, repeats, device, memory=True) -> list[dict]:
    """Section 1: the training step in each variant (images/s, ratio to fp32, peak memory)."""
    images, masks = random_batch(cfg, batch, size, device)
    loss = instantiate(cfg.loss).to(device)
    setups = {
        v: Setup(lambda: build_model(cfg.model), loss, v, images, masks, device) for v in variants
    }
    for v, s in setups.items():  # warm-up: oneDNN primitive caches, compilation
        for _ in range(5 if VARIANTS[v][2] else 3):
            s.step()
    times = in_turns(variants, lambda v: timed(setups[v].step, steps, device), repeats)
    rows = []
    for v in variants:
        seconds = statistics.median(times[v]) / steps
        rows.append(
            {
                "variant": v,
                "images_per_s": batch / seconds,
                "ms_per_step": 1e3 * seconds,
                "peak_memory_mb": (lambda m: m / 2**20 if m is not None else None)(
                    peak_memory(setups[v]) if memory else None
                ),
            }
        )
    reference = next((r for r in rows if r["variant"] == "fp32"), rows[0])
    for r in rows:
        r["ratio"] = r["images_per_s"] / reference["images_per_s"]
        r["reference"] = reference["variant"]
    return rows


def bench_latency(cfg, variants, size, warmup, iters, device) -> list[dict]:
    """Section 4: batch-1 inference latency per variant (p50 / p95 ms)."""
    images, masks = random_batch(cfg, 1, size, device)
    loss = instantiate(cfg.loss).to(device)
    rows = []
    for v in variants:
        setup = Setup(lambda: build_model(cfg.model), loss, v, images, masks, device)
        setup.model.eval()
        x = setup.images
        samples = []
        with torch.inference_mode():
            for _ in range(warmup):
                setup.predict(x)
            sync(device)
            for _ in range(iters):
                start = time.perf_counter()
                setup.predict(x)
                sync(device)
                samples.append(time.perf_counter() - start)
        samples.sort()
        p95 = samples[min(len(samples) - 1, max(0, round(0.95 * len(samples)) - 1))]
        rows.append(
            {
                "variant": v,
                "p50_ms": 1e3 * statistics.median(samples),
                "p95_ms": 1e3 * p95,
                "images_per_s": 1.0 / statistics.median(samples),
            }
        )
    reference = next((r for r in rows if r["variant"] == "fp32"), rows[0])
    for r in rows:
        r["ratio"] = reference["p50_ms"] / r["p50_ms"]
        r["reference"] = reference["variant"]
    return rows


def bench_peers(cfg, variants, batch, size, steps, repeats, warmup, iters, device) -> dict:
    """Section 3: segbench ÷ peer for the training step and batch-1 inference, per variant."""
    try:
        found = peer_model(cfg)
    except ImportError as err:
        return {"note": f"no peer measured: {err.name} is not installed (uv sync --group bench)"}
    if found is None:
        return {
            "note": f"no peer measured: no same-architecture model of {cfg.model.name}/"
            f"{cfg.backbone.name} in segmentation_models_pytorch or torchvision is known here"
        }
    label, make_peer = found
    images, masks = random_batch(cfg, batch, size, device)
    one = images[:1]
    loss = instantiate(cfg.loss).to(device)
    rows = []
    for v in variants:
        sides = {
            "segbench": Setup(lambda: build_model(cfg.model), loss, v, images, masks, device),
            "peer": Setup(make_peer, loss, v, images, masks, device),
        }
        for s in sides.values():
            for _ in range(3):
                s.step()
        train = in_turns(
            list(sides), lambda n, sides=sides: timed(sides[n].step, steps, device), repeats
        )

        def infer(n: str, sides=sides, channels_last=VARIANTS[v][1]) -> float:
            s = sides[n]
            s.model.eval()
            x = one.contiguous(memory_format=torch.channels_last) if channels_last else one
            with torch.inference_mode():
                for _ in range(warmup):
                    s.predict(x)
                return timed(lambda: s.predict(x), iters, device)

        inference = in_turns(list(sides), infer, repeats)
        params = {n: sum(p.numel() for p in s.model.parameters()) for n, s in sides.items()}
        rows.append(
            {
                "variant": v,
                "train_ratio": statistics.median(train["peer"])
                / statistics.median(train["segbench"]),
                "inference_ratio": statistics.median(inference["peer"])
                / statistics.median(inference["segbench"]),
                "segbench_params": params["segbench"],
                "peer_params": params["peer"],
            }
        )
    return {"peer": label, "rows": rows}


def bench_loop(cfg: DictConfig, steps: int, repeats: int) -> dict:
    """Section 2: train.py's loop against the bare loop (images/s, in turns)."""
    from segbench.bench.loop import bare_loop, lightning_loop

    runs = {"bare": bare_loop, "train.py": lightning_loop}
    rates: dict[str, list[float]] = {n: [] for n in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            rates[name].append(fn(cfg, steps))
    bare, lightning = (statistics.median(rates[n]) for n in ("bare", "train.py"))
    return {
        "bare_images_per_s": bare,
        "train_py_images_per_s": lightning,
        "ratio": lightning / bare,
        "rounds": rates,
    }


def run(
    cfg: DictConfig,
    sections=DEFAULT_SECTIONS,
    variants=("fp32", "bf16", "channels_last", "bf16+channels_last"),
    batch: int = 4,
    size: tuple[int, int] = (256, 320),
    steps: int = 5,
    repeats: int = 3,
    warmup: int = 5,
    iters: int = 20,
    device: str = "auto",
    loop_steps: int = 40,
    crf_size: tuple[int, int] = (360, 480),
    boundary_labels: str | None = None,
    boundary_classes: int = 0,
    boundary_size: tuple[int, int] | None = None,
    boundary_limit: int | None = None,
) -> dict:
    """Every section of ``sections`` on ``cfg`` (a composed ``conf/train.yaml``)."""
    dev = pick_device(device)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: unknown {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    if dev.type == "cpu":
        variants = [v for v in variants if VARIANTS[v][0] != "16-mixed"] or ["fp32"]
    variants = list(dict.fromkeys(["fp32", *variants]))  # the reference first
    result: dict = {
        "model": cfg.model.name,
        "backbone": cfg.backbone.name,
        "num_classes": int(cfg.dataset.num_classes),
        "batch": batch,
        "size": list(size),
        "variants": variants,
        "protocol": {
            "steps_per_round": steps,
            "rounds": repeats,
            "statistic": "median round",
            "latency_warmup": warmup,
            "latency_iters": iters,
            "cuda_sync": dev.type == "cuda",
        },
        "machine": {
            "device": torch.cuda.get_device_name(dev)
            if dev.type == "cuda"
            else platform.processor() or "cpu",
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
        },
    }
    if "step" in sections:
        result["step"] = bench_steps(cfg, variants, batch, size, steps, repeats, dev)
    if "peers" in sections:
        result["peers"] = bench_peers(
            cfg, variants, batch, size, steps, repeats, warmup, iters, dev
        )
    if "latency" in sections:
        result["latency"] = bench_latency(cfg, variants, size, warmup, iters, dev)
    if "crf" in sections:
        from segbench.bench.crf import bench_crf

        result["crf"] = bench_crf(crf_size, repeats=repeats)
    if "boundary" in sections:
        from segbench.bench.boundary import bench_boundary

        result["boundary"] = bench_boundary(repeats=repeats)
        if boundary_labels:
            from segbench.bench.boundary import bench_boundary_labels

            result["boundary"]["labels"] = bench_boundary_labels(
                boundary_labels, boundary_classes, boundary_size, boundary_limit
            )
    if "loop" in sections:
        result["loop_config"] = (
            f"{cfg.model.name}/{cfg.backbone.name} on {cfg.dataset.name}, batch "
            f"{cfg.dataset.batch_size}, trainer.precision={cfg.trainer.precision}"
        )
        result["loop"] = bench_loop(cfg, loop_steps, repeats)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = verb_parser(
        "bench",
        "Training-step, loop, peer and latency speed of a model, as ratios measured in one run.",
        example="model=deeplabv3plus backbone=resnet18",
    )
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(DEFAULT_SECTIONS))
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["fp32", "bf16", "channels_last", "bf16+channels_last"],
        help=f"settings of the step, peer and latency sections, from: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, nargs=2, default=[256, 320], metavar=("H", "W"))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, variants in turn")
    parser.add_argument("--warmup", type=int, default=5, help="untimed inference passes")
    parser.add_argument("--iters", type=int, default=20, help="timed inference passes")
    parser.add_argument("--loop-steps", type=int, default=40, help="timed batches per loop")
    parser.add_argument("--crf-size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    parser.add_argument(
        "--boundary-labels",
        metavar="DIR",
        help="boundary section: also time real label maps (the PNGs of DIR, each against the "
        "next one shifted 3 px); needs --boundary-classes",
    )
    parser.add_argument("--boundary-classes", type=int, default=0, metavar="K")
    parser.add_argument("--boundary-size", type=int, nargs=2, metavar=("H", "W"))
    parser.add_argument("--boundary-limit", type=int, metavar="N", help="the first N maps")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--out", help="the JSON file written (default: outputs/bench/<model>_<backbone>.json)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args, cfg = parse_verb_args(parser, argv)
    for name in ("batch", "steps", "repeats", "iters", "loop_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.boundary_labels and args.boundary_classes < 1:
        parser.error("--boundary-labels needs --boundary-classes K (labels >= K are void)")
    if args.boundary_labels and not Path(args.boundary_labels).is_dir():
        parser.error(f"--boundary-labels {args.boundary_labels}: no such folder")
    out = Path(args.out or f"outputs/bench/{cfg.model.name}_{cfg.backbone.name}.json")
    if out.exists() and not args.overwrite:
        parser.error(f"{out} exists; pass --overwrite to replace it, or --out FILE")
    result = run(
        cfg,
        sections=args.sections,
        variants=args.variants,
        batch=args.batch,
        size=(args.size[0], args.size[1]),
        steps=args.steps,
        repeats=args.repeats,
        warmup=args.warmup,
        iters=args.iters,
        device=args.device,
        loop_steps=args.loop_steps,
        crf_size=(args.crf_size[0], args.crf_size[1]),
        boundary_labels=args.boundary_labels,
        boundary_classes=args.boundary_classes,
        boundary_size=tuple(args.boundary_size) if args.boundary_size else None,
        boundary_limit=args.boundary_limit,
    )
    result["command"] = "segbench bench " + " ".join(argv if argv is not None else [])
    print(report(result))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten: {out}")
    return 0
