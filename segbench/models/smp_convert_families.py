"""The decoders and heads of segmentation_models_pytorch (smp) checkpoints → segbench's
families, one converter per smp class, and the overrides that build each network.

Every converter has the signature of :mod:`segbench.models.hf_convert`'s,
``convert_<family>(state, config, what, model=None) -> state dict``, maps the encoder through
:func:`segbench.models.smp_convert_encoders.convert_encoder` and the rest by rename rules, and
ends with :meth:`~segbench.models.convert.StateDictConverter.result`: a tensor left over,
missing or of another shape is refused by name. smp's ``classification_head`` (``aux_params``:
an image-level classifier on the last encoder level, a second output besides the mask) has no
segbench counterpart and is skipped with that reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping

from torch import Tensor, nn

from segbench.models.convert import StateDictConverter
from segbench.models.smp_convert_config import SmpConfig, read_smp_config
from segbench.models.smp_convert_encoders import convert_encoder

__all__ = [
    "FAMILIES",
    "convert_deeplabv3plus",
    "convert_pspnet",
    "convert_segformer",
    "convert_unet",
    "convert_upernet",
]


def _start(state: Mapping[str, Tensor], config: Mapping, what: str) -> tuple:
    """``(checked config, converter)`` with the encoder converted and the auxiliary
    classifier and the head accounted for."""
    cfg = read_smp_config(config)
    converter = StateDictConverter(state, what)
    convert_encoder(converter, cfg.encoder)
    converter.skip(
        r"classification_head\..*",
        "smp's aux_params classifier: image-level labels from the last encoder level, not the "
        "mask; segbench evaluates the mask only",
    )
    converter.rename([(r"segmentation_head\.0\.(weight|bias)", r"head.\1")])
    return cfg, converter


def _moved(theirs: str, ours: str) -> tuple[str, str]:
    """A rule moving everything under module ``theirs`` to module ``ours`` (same structure)."""
    return re.escape(theirs) + r"\.(.+)", ours + r".\1"


def _value(value) -> str:
    return json.dumps(value)


def _use_norm(cfg: SmpConfig) -> bool:
    """Whether smp's decoder convs have BatchNorm (``decoder_use_norm``): True, or False for
    none (``"identity"``); any other normalisation is refused."""
    norm = cfg.args.get("decoder_use_norm", "batchnorm")
    if norm in (True, "batchnorm"):
        return True
    if norm in (False, "identity"):
        return False
    raise ValueError(
        f"{cfg.what}: decoder_use_norm={norm!r}; segbench converts 'batchnorm' (or True) "
        "and, where its model has the option, 'identity' (False)"
    )


# --- Segformer -----------------------------------------------------------------------------


def _segformer_overrides(cfg: SmpConfig) -> list[str]:
    if cfg.encoder.kind != "mit" or int(cfg.args["encoder_depth"]) != 5:
        raise ValueError(
            f"{cfg.what}: segbench converts smp's Segformer on its MiT encoders (mit_b0 ... "
            "mit_b5, encoder_depth 5), whose four levels the decoder fuses at input/4"
        )
    return [
        "model=segformer",
        *cfg.encoder.overrides,
        f"model.decoder_dim={int(cfg.args['decoder_segmentation_channels'])}",
        "model.levels=4",
        f"model.head_upsample={int(cfg.args['upsampling'])}",
    ]


def convert_segformer(
    state: Mapping[str, Tensor], config: Mapping, what: str, model: nn.Module | None = None
) -> dict[str, Tensor]:
    """smp ``Segformer`` → :class:`~segbench.models.segformer.SegFormer`: the MLP of each
    level (``decoder.mlp_stage.k``, coarsest first) → ``decoder.proj.{3-k}`` (finest first),
    the fusion conv → ``decoder.fuse``, the classifier → ``head``."""
    cfg, converter = _start(state, config, what)
    _segformer_overrides(cfg)
    rules = [
        (rf"decoder\.mlp_stage\.{k}\.linear\.(weight|bias)", rf"decoder.proj.{3 - k}.\1")
        for k in range(4)
    ]
    converter.rename([*rules, _moved("decoder.fuse_stage", "decoder.fuse")])
    return converter.result(model)


# --- UPerNet --------------------------------------------------------------------------------


def _upernet_levels(cfg: SmpConfig) -> int:
    """How many levels smp's UPerNet decoder reads: those at stride 4 and coarser."""
    levels = sum(1 for s in cfg.encoder.strides if s >= 4)
    if int(cfg.args["encoder_depth"]) < 3 or levels < 2:
        raise ValueError(f"{cfg.what}: UPerNet needs encoder_depth 3 or more")
    if not _use_norm(cfg):
        raise ValueError(f"{cfg.what}: decoder_use_norm must be 'batchnorm' for UPerNet")
    return levels


def _upernet_overrides(cfg: SmpConfig) -> list[str]:
    _upernet_levels(cfg)
    return [
        "model=upernet",
        *cfg.encoder.overrides,
        f"model.channels={int(cfg.args['decoder_channels'])}",
        "model.min_stride=4",
        "model.aux=false",
        "model.level_norms=true",
        f"model.head_upsample={int(cfg.args['upsampling'])}",
    ]


def convert_upernet(
    state: Mapping[str, Tensor], config: Mapping, what: str, model: nn.Module | None = None
) -> dict[str, Tensor]:
    """smp ``UPerNet`` → :class:`~segbench.models.upernet.UPerNet` (``level_norms``): the
    level norms (``decoder.feature_norms``) → ``decoder.norms``, the pyramid pooling
    (``decoder.psp.blocks``, ``out_conv``) → ``decoder.ppm.stages``/``decoder.bottleneck``, the
    FPN blocks (smp's coarsest first) → ``decoder.lateral_convs``/``fpn_convs`` (finest first),
    the fusion conv → ``decoder.fpn_bottleneck``."""
    cfg, converter = _start(state, config, what)
    n = _upernet_levels(cfg)
    rules = [
        _moved("decoder.feature_norms", "decoder.norms"),
        (r"decoder\.psp\.blocks\.(\d+)\.(.+)", r"decoder.ppm.stages.\1.\2"),
        _moved("decoder.psp.out_conv", "decoder.bottleneck"),
        _moved("decoder.fusion_block", "decoder.fpn_bottleneck"),
    ]
    for k in range(n - 1):  # smp's block k reads the level n-2-k (finest first)
        rules += [
            _moved(
                f"decoder.fpn_lateral_blocks.{k}.conv_norm_relu",
                f"decoder.lateral_convs.{n - 2 - k}",
            ),
            _moved(f"decoder.fpn_conv_blocks.{k}", f"decoder.fpn_convs.{n - 2 - k}"),
        ]
    converter.rename(rules)
    return converter.result(model)


# --- Unet ----------------------------------------------------------------------------------


def _unet_overrides(cfg: SmpConfig) -> list[str]:
    args = cfg.args
    if args["decoder_attention_type"] is not None:
        raise ValueError(
            f"{cfg.what}: decoder_attention_type={args['decoder_attention_type']!r}; segbench's "
            "U-Net has no attention blocks (only None is converted)"
        )
    widths = [int(c) for c in args["decoder_channels"]]
    if len(widths) != int(args["encoder_depth"]):
        raise ValueError(f"{cfg.what}: decoder_channels needs one width per encoder level")
    return [
        "model=unet",
        *cfg.encoder.overrides,
        f"model.decoder_channels={_value(widths[::-1])}",  # smp's coarse first, ours finest
        f"model.batch_norm={_value(_use_norm(cfg))}",
        f"model.upsample={args['decoder_interpolation']}",
        "model.full_resolution=true",
        "model.head_kernel=3",
    ]


def convert_unet(
    state: Mapping[str, Tensor], config: Mapping, what: str, model: nn.Module | None = None
) -> dict[str, Tensor]:
    """smp ``Unet`` → :class:`~segbench.models.unet.UNet` (interpolation ``upsample``,
    ``full_resolution``): decoder block ``i`` (coarse to fine, the same order) → its
    ``conv1``/``conv2`` → ``decoder.blocks.i.0``/``.1``; the 3×3 classifier → ``head``."""
    cfg, converter = _start(state, config, what)
    _unet_overrides(cfg)
    converter.rename(
        [
            (r"decoder\.blocks\.(\d+)\.conv1\.(.+)", r"decoder.blocks.\1.0.\2"),
            (r"decoder\.blocks\.(\d+)\.conv2\.(.+)", r"decoder.blocks.\1.1.\2"),
        ]
    )
    return converter.result(model)


# --- PSPNet --------------------------------------------------------------------------------


def _pspnet_overrides(cfg: SmpConfig) -> list[str]:
    depth = int(cfg.args["encoder_depth"])
    if depth not in (3, 4) or not _use_norm(cfg):
        raise ValueError(
            f"{cfg.what}: segbench converts smp's PSPNet with encoder_depth 3 (smp's default) or "
            f"4, its pooling on a stride-8 or 16 level (got {depth}), and decoder_use_norm "
            "'batchnorm'"
        )
    return [
        "model=pspnet",
        *cfg.encoder.overrides,
        "backbone.output_stride=null",  # smp cuts the encoder there, undilated
        f"model.output_stride={cfg.encoder.strides[-1]}",
        f"model.channels={int(cfg.args['psp_out_channels'])}",
        "model.aux=false",
        "model.ppm_global_bn=false",
        "model.ppm_align_corners=true",
        "model.ppm_input_last=true",
        "model.conv_kernel=1",
        "model.head_kernel=3",
        f"model.head_upsample={int(cfg.args['upsampling'])}",
    ]


def convert_pspnet(
    state: Mapping[str, Tensor], config: Mapping, what: str, model: nn.Module | None = None
) -> dict[str, Tensor]:
    """smp ``PSPNet`` → :class:`~segbench.models.pspnet.PSPNet` (its smp options): the bins'
    convs (``decoder.psp.blocks.b.pool.1``) → ``decoder.ppm.stages.b.1``, the 1×1 conv
    (``decoder.conv``) → ``decoder.conv``, the 3×3 classifier → ``head``."""
    cfg, converter = _start(state, config, what)
    _pspnet_overrides(cfg)
    converter.rename(
        [
            (r"decoder\.psp\.blocks\.(\d+)\.pool\.1\.(.+)", r"decoder.ppm.stages.\1.1.\2"),
            _moved("decoder.conv", "decoder.conv"),
        ]
    )
    return converter.result(model)


# --- DeepLabV3Plus -------------------------------------------------------------------------


def _deeplabv3plus_overrides(cfg: SmpConfig) -> list[str]:
    args = cfg.args
    if int(args["encoder_depth"]) < 3:
        raise ValueError(f"{cfg.what}: DeepLabV3Plus needs encoder_depth 3 or more")
    return [
        "model=deeplabv3plus_smp",
        *cfg.encoder.overrides,
        f"model.output_stride={cfg.encoder.strides[-1]}",
        f"model.atrous_rates={_value([int(r) for r in args['decoder_atrous_rates']])}",
        f"model.channels={int(args['decoder_channels'])}",
        f"model.separable={_value(bool(args['decoder_aspp_separable']))}",
        f"model.dropout={float(args['decoder_aspp_dropout'])}",
        f"model.head_upsample={int(args['upsampling'])}",
    ]


def convert_deeplabv3plus(
    state: Mapping[str, Tensor], config: Mapping, what: str, model: nn.Module | None = None
) -> dict[str, Tensor]:
    """smp ``DeepLabV3Plus`` → :class:`~segbench.models.deeplabv3plus_smp.DeepLabV3PlusSMP`:
    the ASPP (``decoder.aspp.0``: ``convs.i``, ``project``) → ``decoder.aspp`` (``branches.i``,
    ``project.0``; the pooling branch's conv and BN → ``branches.4.conv``), the separable conv
    after it (``decoder.aspp.1``/``.2``) → ``decoder.aspp_conv``, ``decoder.block1`` →
    ``decoder.low_proj``, ``decoder.block2`` → ``decoder.fuse``, the classifier → ``head``."""
    cfg, converter = _start(state, config, what)
    _deeplabv3plus_overrides(cfg)
    converter.rename(
        [
            (r"decoder\.aspp\.0\.convs\.4\.1\.(.+)", r"decoder.aspp.branches.4.conv.0.\1"),
            (r"decoder\.aspp\.0\.convs\.4\.2\.(.+)", r"decoder.aspp.branches.4.conv.1.\1"),
            (r"decoder\.aspp\.0\.convs\.([0-3])\.(.+)", r"decoder.aspp.branches.\1.\2"),
            _moved("decoder.aspp.0.project", "decoder.aspp.project.0"),
            _moved("decoder.aspp.1", "decoder.aspp_conv.0"),
            _moved("decoder.aspp.2", "decoder.aspp_conv.1"),
            _moved("decoder.block1", "decoder.low_proj"),
            _moved("decoder.block2", "decoder.fuse"),
        ]
    )
    return converter.result(model)


# smp's _model_class -> (overrides builder, converter)
FAMILIES: dict[str, tuple[Callable, Callable]] = {
    "Segformer": (_segformer_overrides, convert_segformer),
    "UPerNet": (_upernet_overrides, convert_upernet),
    "Unet": (_unet_overrides, convert_unet),
    "PSPNet": (_pspnet_overrides, convert_pspnet),
    "DeepLabV3Plus": (_deeplabv3plus_overrides, convert_deeplabv3plus),
}
