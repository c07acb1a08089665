"""An smp ``config.json`` read and checked: the constructor arguments of the architectures
segbench converts (smp 0.6.0's defaults filled in), and the encoder it names
(:mod:`segbench.models.smp_convert_encoders`). Used by :mod:`segbench.models.smp_convert` and
:mod:`segbench.models.smp_convert_families`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from segbench.models.smp_convert_encoders import SmpEncoder, smp_encoder

__all__ = ["SMP_MODEL_CLASSES", "SmpConfig", "read_smp_config"]

_COMMON = {
    "encoder_name": "resnet34",
    "encoder_depth": 5,
    "encoder_weights": "imagenet",
    "in_channels": 3,
    "classes": 1,
    "activation": None,
    "aux_params": None,
}
# the constructor arguments of smp 0.6.0's classes and their defaults (a config.json written by
# an older smp may lack some of them)
SMP_MODEL_CLASSES: dict[str, dict] = {
    "Segformer": {**_COMMON, "decoder_segmentation_channels": 256, "upsampling": 4},
    "UPerNet": {
        **_COMMON,
        "decoder_channels": 256,
        "decoder_use_norm": "batchnorm",
        "upsampling": 4,
    },
    "Unet": {
        **_COMMON,
        "decoder_use_norm": "batchnorm",
        "decoder_channels": [256, 128, 64, 32, 16],
        "decoder_attention_type": None,
        "decoder_interpolation": "nearest",
    },
    "PSPNet": {
        **_COMMON,
        "encoder_depth": 3,
        "psp_out_channels": 512,
        "decoder_use_norm": "batchnorm",
        "psp_dropout": 0.2,
        "upsampling": 8,
    },
    "DeepLabV3Plus": {
        **_COMMON,
        "encoder_output_stride": 16,
        "decoder_channels": 256,
        "decoder_atrous_rates": [12, 24, 36],
        "decoder_aspp_separable": True,
        "decoder_aspp_dropout": 0.5,
        "upsampling": 4,
    },
}
# deprecated spellings smp still reads
_ALIASES = {"decoder_use_batchnorm": "decoder_use_norm", "psp_use_batchnorm": "decoder_use_norm"}
# activations after the logits that keep their per-pixel argmax: segbench returns the logits
_MONOTONIC = (None, "identity", "sigmoid", "softmax", "softmax2d", "logsoftmax", "tanh")


@dataclass
class SmpConfig:
    """An smp ``config.json`` read and checked.

    Attributes:
        model_class: ``_model_class``.
        args: the constructor's arguments, smp's defaults filled in.
        encoder: the segbench encoder it converts to.
    """

    model_class: str
    args: dict
    encoder: SmpEncoder

    @property
    def what(self) -> str:
        return f"smp {self.model_class} ({self.args['encoder_name']})"


def read_smp_config(config: Mapping) -> SmpConfig:
    """Check an smp ``config.json`` and fill in smp's defaults.

    Raises:
        ValueError: an unsupported ``_model_class`` or encoder (named, with the supported
            ones), a class count below 2, an activation that changes the argmax, or arguments
            segbench's network does not compute.
    """
    config = dict(config)
    kind = config.get("_model_class")
    if kind not in SMP_MODEL_CLASSES:
        raise ValueError(
            f"smp config.json: _model_class {kind!r} is not supported; segbench converts "
            f"{', '.join(SMP_MODEL_CLASSES)} (smp's DPT, FPN, Linknet, MAnet, PAN, Unet++ and "
            "DeepLabV3 have no segbench counterpart)"
        )
    defaults = SMP_MODEL_CLASSES[kind]
    args, extra = dict(defaults), {}
    for key, value in config.items():
        key = _ALIASES.get(key, key)
        if key.startswith("_"):
            continue
        if key in defaults:
            args[key] = value
        elif value is not None:  # smp hands the rest to the encoder (timm), None pruned
            extra[key] = value
    if int(args["classes"]) < 2:
        raise ValueError(
            f"smp {kind}: classes={args['classes']}; segbench evaluates multi-class logits by "
            "their argmax, a single-channel (binary, sigmoid) model has none"
        )
    if args["activation"] not in _MONOTONIC:
        raise ValueError(
            f"smp {kind}: activation {args['activation']!r} changes the prediction; segbench "
            f"converts models whose activation is one of {list(_MONOTONIC)} (its logits are "
            "returned before it, with the same argmax)"
        )
    output_stride = int(args.get("encoder_output_stride", 32))
    if kind == "DeepLabV3Plus" and output_stride not in (8, 16):
        raise ValueError(
            f"smp DeepLabV3Plus: encoder_output_stride must be 8 or 16, got {output_stride}"
        )
    depth = int(args["encoder_depth"])
    encoder = smp_encoder(
        str(args["encoder_name"]), depth, int(args["in_channels"]), output_stride, extra
    )
    return SmpConfig(kind, args, encoder)
