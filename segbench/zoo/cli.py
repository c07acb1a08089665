"""``segbench zoo``: the published checkpoints segbench evaluates (``ckpt=<source>:<name>``),
and their files fetched into the caches the loaders read, where there is internet.

::

    segbench zoo list                          # every entry: params, GMACs, figure, cached
    segbench zoo list --source mmseg --measure # params and FLOPs counted on the segbench network
    segbench zoo list --markdown               # the manual's table of commands and figures
    segbench zoo fetch torchvision:fcn_resnet50 mmseg:pspnet_r50-d8_4xb2-40k_cityscapes-512x1024
    segbench zoo fetch smp:smp-hub/segformer-b0-512x512-ade-160k   # any hub repository
"""

from __future__ import annotations

import argparse
import sys

from segbench.models.pretrained import PretrainedUnavailable
from segbench.zoo.registry import ZooEntry, entries
from segbench.zoo.spec import SOURCES, parse_spec

__all__ = ["cached_file", "main", "markdown_table", "zoo_rows"]


def cached_file(entry: ZooEntry):
    """The entry's file in its cache (a ``Path``), or ``None``."""
    if entry.url:
        from segbench.zoo.files import cache_path

        path = cache_path(entry.file_name)
        return path if path.is_file() else None
    from segbench.models.hub import cached_files

    found = cached_files(entry.repo)
    return found[0] if found else None


# the input of --measure's FLOP count when the publisher states none
MEASURE_SIZE = (512, 512)


def _measure_size(entry: ZooEntry) -> tuple[int, int]:
    given = entry.published.get("gmacs_input")
    return tuple(int(v) for v in str(given).split("x")) if given else MEASURE_SIZE


def _network(entry: ZooEntry):
    """The segbench network the entry becomes, in eval mode on the meta device (no memory, no
    weights)."""
    import torch

    from segbench.checkpoints.network import build_model
    from segbench.config import compose_train_config

    cfg = compose_train_config([*entry.overrides, f"dataset={entry.dataset}"])
    with torch.device("meta"):
        return build_model(cfg.model).eval()


def _measured(entry: ZooEntry) -> tuple[int, float]:
    """``(parameters, GFLOPs)`` of the entry's segbench network: the FLOPs of one eval-mode
    forward pass of a 1x3xHxW input (the publisher's ``gmacs_input``, else 512x512) counted by
    ``torch.utils.flop_counter`` (a multiply-add counts 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from segbench.models.base import count_parameters

    net = _network(entry)
    with torch.device("meta"), torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, *_measure_size(entry)))
    return count_parameters(net), counter.get_total_flops() / 1e9


def _measured_params(entry: ZooEntry) -> int:
    """Parameters of the segbench network the entry becomes."""
    from segbench.models.base import count_parameters

    return count_parameters(_network(entry))


def _figure(entry: ZooEntry) -> str:
    if not entry.reference:
        return "—"
    result = entry.reference["results"][0]
    metric, value = next(iter(result["metrics"].items()))
    return f"{metric} {value:g} ({result.get('dataset', entry.dataset)} {result['split']})"


def zoo_rows(source: str | None = None, measure: bool = False) -> list[dict]:
    """One row per entry (of ``source``): name, params, GMACs, published figure, cached, MB."""
    rows = []
    for entry in entries().values():
        if source and entry.source != source:
            continue
        path = cached_file(entry)
        published = entry.published
        params, gflops = _measured(entry) if measure else (published.get("params"), None)
        rows.append(
            {
                "name": str(entry.spec),
                "params_m": params / 1e6 if params is not None else None,
                "gflops": gflops,
                "gflops_input": "x".join(map(str, _measure_size(entry))) if measure else None,
                "gmacs": published.get("gmacs"),
                "gmacs_input": published.get("gmacs_input"),
                "published": _figure(entry),
                "cached": path is not None,
                "size_mb": (path.stat().st_size / 1e6) if path else published.get("size_mb"),
            }
        )
    return rows


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _list(source: str | None, measure: bool) -> int:
    rows = zoo_rows(source, measure)
    if not rows:
        print(f"no entries{f' of source {source}' if source else ''} in conf/zoo")
        return 0
    width = max(len(r["name"]) for r in rows)
    params = "params (M, measured)" if measure else "params (M)"
    flops = f"  {'GFLOPs (measured)':>26}" if measure else ""
    print(
        f"{'name':<{width}}  {params:>20}  {'GMACs':>8}{flops}  {'published':<34}  cached"
        f"  {'MB':>7}"
    )
    for r in rows:
        measured = (
            f"  {_fmt(r['gflops'], '.1f') + ' at ' + r['gflops_input']:>26}" if measure else ""
        )
        print(
            f"{r['name']:<{width}}  {_fmt(r['params_m'], '.2f'):>20}  "
            f"{_fmt(r['gmacs'], '.1f'):>8}{measured}  {r['published']:<34}  "
            f"{'yes' if r['cached'] else 'no':<6}  {_fmt(r['size_mb'], '.1f'):>7}"
        )
    print(
        "params: the publisher's count (--measure: counted on the segbench network); GMACs: "
        "the publisher's multiply-adds of one forward pass (torchvision's GFLOPS, at 520x520); "
        "GFLOPs (measured): torch.utils.flop_counter on the segbench network in eval mode (a "
        "multiply-add counts 2); MB: the cached file's size, else the publisher's"
    )
    return 0


def _inference_words(inference: dict) -> str:
    """An entry's inference settings in words (``rescaled to fit 2048x512, whole image``)."""
    words = []
    if inference.get("rescale"):
        long, short = max(inference["rescale"]), min(inference["rescale"])
        words.append(f"the image rescaled to fit {long}x{short}")
        if inference.get("rescale_divisor"):
            words[-1] += f" (sides rounded up to multiples of {inference['rescale_divisor']})"
    if inference.get("mode") == "slide":
        crop, stride = inference["crop"], inference["stride"]
        words.append(f"{crop[0]}x{crop[1]} windows every {stride[0]}x{stride[1]} pixels")
    else:
        words.append("the whole image")
    return ", ".join(words)


def markdown_table(source: str | None = None) -> str:
    """The published-checkpoints table of the manual: per entry the command that evaluates it,
    the published figures with their dataset and protocol, and a measured column left empty
    (segbench does not make figures up; a measured one is added by hand with its command)."""
    lines = [
        "| checkpoint | command | published (dataset, split) | protocol | measured |",
        "|---|---|---|---|---|",
    ]
    for entry in entries().values():
        if source and entry.source != source:
            continue
        command = (
            f"`uv run python evaluate.py ckpt={entry.spec} dataset={entry.dataset} data_root=/data`"
        )
        published = "none stated"
        protocol = f"{entry.notes}; segbench predicts with {_inference_words(entry.inference)}"
        if entry.reference:
            result = entry.reference["results"][0]
            figures = ", ".join(f"{k} {v:g}" for k, v in result["metrics"].items())
            published = f"{figures} ({result.get('dataset', entry.dataset)}, {result['split']})"
            protocol = result["protocol"]
        lines.append(f"| `{entry.spec}` | {command} | {published} | {protocol} | |")
    return "\n".join(lines)


def _fetch(items: list[str], timeout: float) -> int:
    from segbench.models.hub import fetch_hf, hf_repo
    from segbench.zoo.files import ZooFileError, download
    from segbench.zoo.registry import find_entry

    status = 0
    for item in items:
        try:
            spec = parse_spec(item)
            if spec is None:
                raise ValueError(
                    f"{item!r}: expected <source>:<name> with a source of {', '.join(SOURCES)} "
                    "(segbench zoo list)"
                )
            entry = find_entry(spec)
            if entry is not None and entry.url:
                path = download(entry.url, entry.file_name, timeout, check_cached=True)
            elif spec.source in ("smp", "hf"):
                repo = entry.repo if entry is not None else hf_repo(f"hf:{spec.name}")
                path = fetch_hf(repo, timeout)
            else:
                raise ValueError(f"{item}: segbench's zoo lists no such {spec.source} checkpoint")
        except (PretrainedUnavailable, ValueError, ZooFileError) as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
            continue
        print(f"{item}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="segbench zoo",
        description="Published checkpoints of torchvision, mmsegmentation, smp and Hugging Face "
        "that segbench evaluates as ckpt=<source>:<name> (conf/zoo/*.yaml).",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="the entries, with published figures and cache state")
    listing.add_argument("--source", choices=list(SOURCES), default=None)
    listing.add_argument(
        "--measure",
        action="store_true",
        help="count parameters and FLOPs on the segbench networks",
    )
    listing.add_argument(
        "--markdown", action="store_true", help="the manual's table: commands and figures"
    )
    fetch = sub.add_parser("fetch", help="download checkpoints into the caches (needs internet)")
    fetch.add_argument("items", nargs="+", help="source:name, as ckpt= takes them")
    fetch.add_argument("--timeout", type=float, default=20.0, help="seconds per connection")
    args = parser.parse_args(argv)
    if args.action == "list" and args.markdown:
        print(markdown_table(args.source))
        return 0
    if args.action == "list":
        return _list(args.source, args.measure)
    return _fetch(args.items, args.timeout)
