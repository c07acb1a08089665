"""Parameter counts and FLOPs of the models, and the table of the papers' configurations.

``segbench complexity`` builds every paper configuration from ``conf/`` (Hydra
overrides, exactly what ``train.py`` would be given), counts its parameters, measures FLOPs of
one forward pass with ``torch.utils.flop_counter`` and prints a Markdown table against the
published counts. FLOPs count a multiply-add as 2.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from segbench.config import compose_train_config
from segbench.engine.build import build_model
from segbench.inference.flops import count_flops
from segbench.models.base import count_parameters, segmenter_of

__all__ = ["PAPER_CONFIGS", "PaperConfig", "main", "measure"]


# the FCN paper's head: fc6 as a 7x7 conv with 4096 channels, fc7 1x1 4096, dropout 0.5
_FCN_PAPER = ["backbone=vgg16", "model.fc_channels=4096", "model.fc_kernel=7", "model.dropout=0.5"]


@dataclass(frozen=True)
class PaperConfig:
    """One paper configuration: how to build it and what its paper reports."""

    label: str
    overrides: tuple[str, ...]
    num_classes: int
    published_params: float | None  # in parameters; None where the paper gives no count
    source: str


PAPER_CONFIGS: tuple[PaperConfig, ...] = (
    PaperConfig("FCN-32s", ("model=fcn32s", *_FCN_PAPER), 21, 134e6, "Long et al. 2015, Table 1"),
    PaperConfig("FCN-16s", ("model=fcn16s", *_FCN_PAPER), 21, 134e6, "Long et al. 2015"),
    PaperConfig("FCN-8s", ("model=fcn8s", *_FCN_PAPER), 21, 134e6, "Long et al. 2015"),
    PaperConfig(
        "DeepLab v1 LargeFOV", ("model=deeplabv1",), 21, 20.5e6, "Chen et al. 2015, Table 2"
    ),
    PaperConfig(
        "DeepLab v3 (ResNet-50, OS 16)",
        ("model=deeplabv3", "backbone=resnet50"),
        21,
        None,
        "Chen et al. 2017 (no count given)",
    ),
    PaperConfig(
        "DeepLab v3+ (ResNet-50, OS 16)",
        ("model=deeplabv3plus", "backbone=resnet50"),
        21,
        None,
        "Chen et al. 2018 (no count given)",
    ),
    PaperConfig(
        "DeepLab v3+ (ResNet-50, OS 16, full 3x3 convs)",
        ("model=deeplabv3plus", "backbone=resnet50", "model.separable=false"),
        21,
        None,
        "segbench's earlier form (no separable convolutions)",
    ),
    PaperConfig("U-Net", ("model=unet",), 2, 31.0e6, "Ronneberger et al. 2015 (commonly cited)"),
    PaperConfig("SegNet", ("model=segnet",), 11, 29.5e6, "Badrinarayanan et al. 2017, Table 6"),
    PaperConfig(
        "SegNet-Basic", ("model=segnet_basic",), 11, 1.425e6, "Badrinarayanan et al. 2017, Table 1"
    ),
    PaperConfig(
        "Bayesian SegNet",
        ("model=bayesian_segnet",),
        11,
        29.5e6,
        "Kendall et al. 2017 (SegNet's weights)",
    ),
    PaperConfig("DeconvNet", ("model=deconvnet",), 21, 252e6, "Noh et al. 2015, Table 1"),
    PaperConfig(
        "PSPNet (ResNet-50, OS 8)",
        ("model=pspnet", "backbone=resnet50"),
        21,
        None,
        "Zhao et al. 2017 (no count given)",
    ),
    PaperConfig(
        "ReSeg (VGG16)",
        ("model=reseg", "backbone=vgg16"),
        11,
        None,
        "Visin et al. 2016 (no count given)",
    ),
    PaperConfig(
        "SegFormer-B0",
        ("model=segformer", "backbone=mit_b0"),
        150,
        3.8e6,
        "Xie et al. 2021, Table 1 (as listed by Papers with Code; 8.4 GFLOPs at 512x512)",
    ),
    PaperConfig(
        "SegFormer-B5",
        ("model=segformer", "backbone=mit_b5"),
        150,
        84.7e6,
        "Xie et al. 2021, Table 1 (as listed by Papers with Code)",
    ),
    PaperConfig(
        "UPerNet (ConvNeXt-T)",
        ("model=upernet", "backbone=convnext_tiny"),
        150,
        60e6,
        "ConvNeXt repository, semantic_segmentation/README.md (60M, 939 GFLOPs at 2048x512)",
    ),
    PaperConfig(
        "UPerNet (Swin-T)",
        ("model=upernet", "backbone=swin_tiny"),
        150,
        60e6,
        "Swin-Transformer-Semantic-Segmentation README.md (60M, 945 GFLOPs at 2048x512)",
    ),
    PaperConfig(
        "Mask2Former (ResNet-50)",
        ("model=mask2former", "backbone=resnet50"),
        150,
        44e6,
        "Cheng et al. 2022, ADE20K table (44M; recalled: the paper was not reachable here)",
    ),
    PaperConfig(
        "Mask2Former (Swin-T)",
        ("model=mask2former", "backbone=swin_tiny"),
        150,
        47e6,
        "Cheng et al. 2022, ADE20K table (47M; recalled: the paper was not reachable here)",
    ),
    PaperConfig(
        "Linear probe (DINOv2 ViT-S/14, lin)",
        ("model=linear_probe", "backbone=vit_small_patch14_dinov2"),
        150,
        21e6,
        "DINOv2 repository README.md (ViT-S/14 distilled: 21 M, the backbone)",
    ),
    PaperConfig(
        "Linear probe (DINOv2 ViT-B/14, lin)",
        ("model=linear_probe", "backbone=vit_base_patch14_dinov2"),
        150,
        86e6,
        "DINOv2 repository README.md (ViT-B/14 distilled: 86 M, the backbone)",
    ),
    PaperConfig(
        "GAN-seg (FCN-8s segmenter)",
        ("model=ganseg",),
        21,
        None,
        "Luc et al. 2016 (no count given)",
    ),
)


def measure(config: PaperConfig, input_size: tuple[int, int]) -> dict:
    """Build ``config`` from ``conf/`` and measure its parameters and FLOPs."""
    cfg = compose_train_config([*config.overrides, f"dataset.num_classes={config.num_classes}"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    net = segmenter_of(model)
    params = count_parameters(net)
    start = time.perf_counter()
    flops = count_flops(model, input_size)
    row = {
        "label": config.label,
        "command": " ".join(config.overrides),
        "backbone": cfg.backbone.name,
        "classes": config.num_classes,
        "params": params,
        "published": config.published_params,
        "source": config.source,
        "gflops": flops / 1e9,
        "seconds": time.perf_counter() - start,
    }
    if config.published_params:
        row["diff_pct"] = 100.0 * (params - config.published_params) / config.published_params
    return row


def format_markdown(rows: list[dict], input_size: tuple[int, int]) -> str:
    h, w = input_size
    lines = [
        f"| model | overrides | classes | params (measured) | params (published) | Δ | "
        f"GFLOPs @ {h}×{w} |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        published = f"{r['published'] / 1e6:.3f}M" if r["published"] else "—"
        diff = f"{r['diff_pct']:+.1f}%" if "diff_pct" in r else "—"
        lines.append(
            f"| {r['label']} | `{r['command']}` | {r['classes']} | {r['params'] / 1e6:.3f}M | "
            f"{published} | {diff} | {r['gflops']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="segbench complexity",
        description="Parameters and GFLOPs of the papers' configurations vs published counts.",
    )
    parser.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--only", nargs="*", help="labels (substring match) to measure")
    args = parser.parse_args(argv)
    size = (args.size[0], args.size[1])
    configs = [
        c
        for c in PAPER_CONFIGS
        if not args.only or any(o.lower() in c.label.lower() for o in args.only)
    ]
    rows = []
    for config in configs:
        rows.append(measure(config, size))
        print(f"measured {config.label}: {rows[-1]['params'] / 1e6:.3f}M", flush=True)
    print()
    print(format_markdown(rows, size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
