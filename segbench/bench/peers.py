"""The peers of ``segbench bench``'s ``peers`` section: the same architecture as a segbench model
built by segmentation_models_pytorch or torchvision (the ``bench`` dependency group), to time
against it in one run."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig
from torch import nn

__all__ = ["peer_model"]


def peer_model(cfg: DictConfig) -> tuple[str, Callable[[], nn.Module]] | None:
    """The same architecture in segmentation_models_pytorch or torchvision, if one exists:
    ``(description, factory)``; ``None`` otherwise. Raises ``ImportError`` when the library
    that has it is not installed."""
    model, backbone = cfg.model.name, cfg.backbone.name
    k = int(cfg.dataset.num_classes)
    stride = cfg.model.get("output_stride")
    if model == "unet" and backbone in ("resnet18", "resnet50"):
        import segmentation_models_pytorch as smp

        return f"smp.Unet({backbone})", lambda: smp.Unet(backbone, encoder_weights=None, classes=k)
    if model == "deeplabv3plus" and backbone in ("resnet18", "resnet50"):
        import segmentation_models_pytorch as smp

        def make():
            return smp.DeepLabV3Plus(
                backbone, encoder_weights=None, classes=k, encoder_output_stride=stride or 16
            )

        return f"smp.DeepLabV3Plus({backbone}, OS {stride or 16})", make
    if model == "segformer" and backbone.startswith("mit_b"):
        import segmentation_models_pytorch as smp

        dim = int(cfg.model.decoder_dim)
        return f"smp.Segformer({backbone})", lambda: smp.Segformer(
            backbone, encoder_weights=None, classes=k, decoder_segmentation_channels=dim
        )
    if model == "upernet" and backbone in ("convnext_tiny", "resnet50"):
        import segmentation_models_pytorch as smp

        encoder = "tu-convnext_tiny" if backbone == "convnext_tiny" else backbone
        width = int(cfg.model.channels)
        # smp's UPerNet has no auxiliary head: segbench's trains one (model.aux=false: none)
        return f"smp.UPerNet({encoder})", lambda: smp.UPerNet(
            encoder, encoder_weights=None, classes=k, decoder_channels=width
        )
    if model == "deeplabv3" and backbone == "resnet50" and stride == 8:
        # torchvision's DeepLabHead: ASPP (rates 12/24/36), a 3x3 conv, the classifier
        from torchvision.models.segmentation import deeplabv3_resnet50

        return "torchvision deeplabv3_resnet50 (OS 8)", lambda: deeplabv3_resnet50(
            weights=None, weights_backbone=None, num_classes=k, aux_loss=False
        )
    return None  # torchvision's fcn_resnet50 is a one-head FCN, not FCN-8s: no peer
