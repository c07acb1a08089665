"""``segbench throughput dataset=... [model=...] [key=value ...]``: does the data
loader keep up with training?

Measures, in one run on this machine, three rates in images per second:

1. ``loader``: the training loader alone (reading, decoding, the training pipeline, collation)
   with ``dataset.num_workers`` worker processes;
2. ``step``: the training step alone (forward, loss, backward, optimizer step of the
   configured model) on a batch already in memory;
3. ``end-to-end``: training steps fed by the loader, as in a real run.

``loader / step`` above 1 means the loader produces images faster than a step consumes them;
``end-to-end / step`` is the share of the step rate that real training reaches.
"""

from __future__ import annotations

import sys
import time

import torch
from hydra.utils import instantiate

from segbench.config import parse_verb_args, verb_parser
from segbench.engine.build import build_model, resolve_class_weights

__all__ = ["main", "measure"]


def _rate(images: int, seconds: float) -> float:
    return images / max(seconds, 1e-9)


def _endless(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def measure(cfg, batches: int = 20, warmup: int = 3) -> dict:
    """The three rates of ``cfg`` (a composed ``conf/train.yaml``)."""
    dm = instantiate(cfg.dataset)
    dm.setup("fit")
    loader = dm.train_dataloader()
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
    for _ in range(warmup + loader.num_workers * (loader.prefetch_factor or 0)):
        batch = next(batches_in)
    start = time.perf_counter()
    n = sum(len(next(batches_in)["image"]) for _ in range(batches))
    loader_rate = _rate(n, time.perf_counter() - start)
    batches_in.close()  # its workers stop prefetching

    # 2. the step alone, on one batch in memory
    for _ in range(warmup):
        step(batch)
    start = time.perf_counter()
    for _ in range(batches):
        step(batch)
    step_rate = _rate(batches * len(batch["image"]), time.perf_counter() - start)

    # 3. steps fed by the loader
    batches_in = _endless(loader)
    step(next(batches_in))
    n, start = 0, time.perf_counter()
    for _ in range(batches):
        b = next(batches_in)
        step(b)
        n += len(b["image"])
    end_to_end = _rate(n, time.perf_counter() - start)
    batches_in.close()
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
    }


def main(argv: list[str] | None = None) -> int:
    parser = verb_parser(
        "throughput", "Images/s of the training loader against the training step's consumption."
    )
    parser.add_argument("--batches", type=int, default=20, help="batches timed per rate")
    args, cfg = parse_verb_args(parser, argv)
    r = measure(cfg, batches=args.batches)
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
        f"end-to-end / step = {r['end_to_end_over_step']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
