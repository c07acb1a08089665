"""``segbench throughput dataset=... [model=...] [key=value ...]``: does the data
loader keep up with training?

Measures, in one run on this machine, three rates in images per second:

1. ``loader``: the training loader alone (reading, decoding, the training pipeline, collation)
   with ``dataset.num_workers`` worker processes;
2. ``step``: the training step alone (forward, loss, backward, optimizer step of the
   configured model) on a batch already in memory;
3. ``end-to-end``: training steps fed by the loader, as in a real run.

``loader / step`` above 1 means the loader produces images faster than a step consumes them;
``end-to-end / step`` is the share of the step rate that real training reaches. The step alone
and end to end are measured in turns (``--rounds``), so that the machine's drift hits both.

Each stage (opening and caching the split, building the model, the warm-up, each timed rate)
prints a line to stderr when it starts and when it ends, with its time, and the timed ones a
progress bar: on a CPU the whole takes minutes.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from hydra.utils import instantiate
from tqdm.auto import tqdm

from segbench.config import parse_verb_args, verb_parser
from segbench.engine.build import build_model, resolve_class_weights

__all__ = ["main", "measure"]


def _rate(images: int, seconds: float) -> float:
    return images / max(seconds, 1e-9)


@contextmanager
def _stage(text: str) -> Iterator[None]:
    """``throughput: <text> ...`` on stderr now, and ``done in <s>`` when the block ends."""
    print(f"throughput: {text} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    print(
        f"throughput: {text}: done in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
        flush=True,
    )


def _bar(total: int, desc: str) -> tqdm:
    """``range(total)`` with a progress bar on stderr."""
    return tqdm(range(total), desc=desc, unit="batch", leave=False, file=sys.stderr)


def _endless(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def measure(cfg, batches: int = 20, warmup: int = 3, rounds: int = 1) -> dict:
    """The three rates of ``cfg`` (a composed ``conf/train.yaml``): the step alone and end to
    end measured in turns, ``rounds`` times of ``batches`` batches each, and their medians."""
    with _stage(f"opening {cfg.dataset.name}/train (file checks, cache)"):
        dm = instantiate(cfg.dataset)
        dm.setup("fit")
        loader = dm.train_dataloader()
    with _stage(f"building {cfg.model.name}/{cfg.backbone.name} and the loss"):
        model = build_model(cfg.model)
        resolve_class_weights(cfg.loss, dm)  # e.g. median_frequency: computed once, then cached
        loss_fn = instantiate(cfg.loss)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()

    def step(batch: dict) -> None:
        out = model(batch["image"])
        loss = loss_fn(out["out"], batch["mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # 1. the loader alone; the warm-up also drains the batches the workers prefetched while
    # starting, so that the timed ones are produced while we wait
    batches_in = _endless(loader)
    drained = warmup + loader.num_workers * (loader.prefetch_factor or 0)
    with _stage(f"starting {loader.num_workers} loader worker(s), {drained} batches untimed"):
        for _ in _bar(drained, "loader warm-up"):
            batch = next(batches_in)
    with _stage(f"1/3 loader alone, {batches} batches"):
        n, start = 0, time.perf_counter()
        for _ in _bar(batches, "loader alone"):
            n += len(next(batches_in)["image"])
        loader_rate = _rate(n, time.perf_counter() - start)
    batches_in.close()  # its workers stop prefetching

    # 2 and 3 in turns, ``rounds`` times, so that the machine's drift hits both; the medians
    batches_in = _endless(loader)
    with _stage(f"training step warm-up, {warmup + 1} steps"):
        step(next(batches_in))
        for _ in range(warmup):
            step(batch)
    step_rates, fed_rates = [], []
    for r in range(rounds):
        with _stage(f"round {r + 1}/{rounds}: 2/3 step alone, 3/3 end to end, {batches} each"):
            # 2. the step alone, on one batch in memory
            start = time.perf_counter()
            for _ in _bar(batches, "step alone"):
                step(batch)
            step_rates.append(_rate(batches * len(batch["image"]), time.perf_counter() - start))
            # 3. steps fed by the loader
            n, start = 0, time.perf_counter()
            for _ in _bar(batches, "end to end"):
                b = next(batches_in)
                step(b)
                n += len(b["image"])
            fed_rates.append(_rate(n, time.perf_counter() - start))
    batches_in.close()
    step_rate, end_to_end = statistics.median(step_rates), statistics.median(fed_rates)
    return {
        "dataset": dm.name,
        "batch_size": dm.batch_size,
        "num_workers": dm.num_workers,
        "image_size": list(batch["image"].shape[-2:]),
        "torch_threads": torch.get_num_threads(),
        "loader_images_per_s": loader_rate,
        "step_images_per_s": step_rate,
        "end_to_end_images_per_s": end_to_end,
        "loader_over_step": loader_rate / step_rate,
        "end_to_end_over_step": end_to_end / step_rate,
        "rounds": {"step": step_rates, "end_to_end": fed_rates},
    }


def main(argv: list[str] | None = None) -> int:
    parser = verb_parser(
        "throughput", "Images/s of the training loader against the training step's consumption."
    )
    parser.add_argument("--batches", type=int, default=20, help="batches timed per rate")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="the step alone and end to end measured in turns this many times (medians)",
    )
    args, cfg = parse_verb_args(parser, argv)
    for name in ("batches", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    r = measure(cfg, batches=args.batches, rounds=args.rounds)
    h, w = r["image_size"]
    print(
        f"{r['dataset']}: batch {r['batch_size']} of {h}x{w}, {r['num_workers']} loader workers, "
        f"{r['torch_threads']} torch threads, model {cfg.model.name}/{cfg.backbone.name}"
    )
    print(f"loader alone      {r['loader_images_per_s']:8.1f} images/s")
    print(f"training step     {r['step_images_per_s']:8.1f} images/s")
    print(f"end to end        {r['end_to_end_images_per_s']:8.1f} images/s")
    print(
        f"loader / step = {r['loader_over_step']:.2f}   "
        f"end-to-end / step = {r['end_to_end_over_step']:.2f}   (medians of {args.rounds} "
        "rounds in turns)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
