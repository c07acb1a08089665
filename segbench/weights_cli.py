"""``segbench weights``: fetch the encoders' ImageNet weights into the caches the loaders read,
where there is internet, and list what the caches hold (:mod:`segbench.models.pretrained`).

::

    segbench weights fetch resnet50 resnet18.a1_in1k      # timm names (name.tag: a variant)
    segbench weights fetch vgg16_bn                       # torchvision's VGG16(-BN)
    segbench weights fetch backbone=resnet50              # a backbone config of conf/
    segbench weights fetch experiment=<name>              # what an experiment's backbone needs
    segbench weights fetch hf:nvidia/mit-b0               # a Hugging Face checkpoint repository
    segbench weights list
"""

from __future__ import annotations

import argparse

from segbench.models.hub import fetch_hf, hf_repo
from segbench.models.pretrained import (
    TORCHVISION,
    PretrainedUnavailable,
    cached_weights,
    fetch_timm,
    fetch_torchvision,
    hub_cache,
    torch_hub_file,
)

__all__ = ["main"]

NO_IMAGENET = ("unet", "segnet_basic", "tiny")  # encoders trained from scratch only


def _timm_name(item: str) -> str:
    """The timm model (``name.tag``) that ``item`` asks for: a timm name, ``backbone=X`` or
    ``experiment=X`` (composed from ``conf/``); ``hf:nvidia/mit-bN`` for a MiT backbone."""
    if "=" not in item:
        return item
    from segbench.config import compose_train_config

    cfg = compose_train_config([item])
    backbone = cfg.backbone
    if str(backbone._target_).endswith("MiTEncoder"):  # NVIDIA's ImageNet MiT on the hub
        from segbench.models.segformer_hf import mit_hub_repo

        return "hf:" + mit_hub_repo(str(backbone.name))
    if backbone.name in TORCHVISION:
        return str(backbone.name)
    if backbone.name in NO_IMAGENET or not str(backbone._target_).endswith("TimmEncoder"):
        raise PretrainedUnavailable(
            f"{item}: backbone {backbone.name!r} has no ImageNet weights to fetch (it is "
            "trained from scratch)"
        )
    tag = backbone.get("pretrained_tag")
    return f"{backbone.name}.{tag}" if tag else str(backbone.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="segbench weights",
        description="Fetch the encoders' ImageNet weights into the caches the loaders read "
        f"(timm: {hub_cache()}; VGG: {torch_hub_file('vgg16').parent}), or list them.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    fetch = sub.add_parser("fetch", help="download weights (needs internet)")
    fetch.add_argument(
        "items", nargs="+", help="timm names, vgg16(_bn), backbone=X, experiment=X, hf:owner/repo"
    )
    fetch.add_argument("--timeout", type=float, default=20.0, help="seconds per connection")
    sub.add_parser("list", help="what the cache holds, with sizes")
    args = parser.parse_args(argv)
    if args.action == "list":
        rows = cached_weights()
        if not rows:
            print(f"no weights in {hub_cache()} or {torch_hub_file('vgg16').parent}")
        for repo, filename, size in rows:
            print(f"{repo:<40} {filename:<20} {size / 1e6:9.1f} MB")
        return 0
    status = 0
    for item in args.items:
        try:
            name = item if item.startswith("hf:") else _timm_name(item)
            repo = hf_repo(name)
            if repo is not None:
                path = fetch_hf(repo, timeout=args.timeout)
            else:
                fetch = fetch_torchvision if name in TORCHVISION else fetch_timm
                path = fetch(name, timeout=args.timeout)
        except (PretrainedUnavailable, ValueError) as err:
            print(f"error: {err}")
            status = 1
            continue
        print(f"{item}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return status
