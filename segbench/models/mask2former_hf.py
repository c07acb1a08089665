"""Hugging Face transformers' ``Mask2FormerForUniversalSegmentation`` checkpoints → segbench's
:class:`~segbench.models.mask2former.Mask2Former`, tensor by tensor.

The backbone (ResNet or Swin, as transformers stores it) goes through
:func:`segbench.models.hf_backbones.convert_backbone` onto the :class:`TimmEncoder`'s timm keys;
the pixel decoder, the transformer decoder and the class head are renamed here. transformers'
cross-attention keeps q, k and v in one ``in_proj_weight``, split into segbench's three
projections. transformers counts the prediction before the first decoder layer in its
``decoder_layers`` (10 for the paper's 9 layers). :func:`mask2former_settings` gives the
:class:`Mask2Former` arguments a ``config.json`` describes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from segbench.models.convert import ConversionError, StateDictConverter
from segbench.models.hf_backbones import convert_backbone, hf_out_stages
from segbench.models.mask2former import Mask2Former

__all__ = ["convert_mask2former", "mask2former_settings"]

_PIXEL = r"model\.pixel_level_module\.decoder\."
_TRANSFORMER = r"model\.transformer_module\."
_LAYER = _TRANSFORMER + r"decoder\.layers\.(\d+)\."
_RULES = [
    (_PIXEL + r"level_embed", r"decoder.level_embed"),
    (_PIXEL + r"input_projections\.(\d+)\.([01])\.(weight|bias)", r"decoder.input_proj.\1.\2.\3"),
    (_PIXEL + r"encoder\.layers\.(\d+)\.self_attn\.(\w+)\.(weight|bias)",
     r"decoder.layers.\1.attn.\2.\3"),
    (_PIXEL + r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)",
     r"decoder.layers.\1.norm1.\2"),
    (_PIXEL + r"encoder\.layers\.(\d+)\.(fc1|fc2)\.(weight|bias)", r"decoder.layers.\1.\2.\3"),
    (_PIXEL + r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)",
     r"decoder.layers.\1.norm2.\2"),
    (_PIXEL + r"mask_projection\.(weight|bias)", r"decoder.mask_features.\1"),
    (_TRANSFORMER + r"queries_features\.weight", "head.query_feat"),
    (_TRANSFORMER + r"queries_embedder\.weight", "head.query_pos"),
    (_TRANSFORMER + r"level_embed\.weight", "head.level_embed"),
    (_TRANSFORMER + r"input_projections\.(\d+)\.(weight|bias)", r"head.input_proj.\1.\2"),
    (_LAYER + r"self_attn\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)",
     r"head.layers.\1.self_attn.\2.\3"),
    (_LAYER + r"self_attn_layer_norm\.(weight|bias)", r"head.layers.\1.norm_self.\2"),
    (_LAYER + r"cross_attn\.out_proj\.(weight|bias)", r"head.layers.\1.cross_attn.out_proj.\2"),
    (_LAYER + r"cross_attn_layer_norm\.(weight|bias)", r"head.layers.\1.norm_cross.\2"),
    (_LAYER + r"(fc1|fc2)\.(weight|bias)", r"head.layers.\1.\2.\3"),
    (_LAYER + r"final_layer_norm\.(weight|bias)", r"head.layers.\1.norm_ffn.\2"),
    (_TRANSFORMER + r"decoder\.layernorm\.(weight|bias)", r"head.norm.\1"),
    (r"class_predictor\.(weight|bias)", r"head.class_head.\1"),
]  # fmt: skip


def _check_config(config: Mapping, what: str) -> None:
    """Refuse what segbench's Mask2Former does not compute the same way."""
    if config.get("pre_norm"):
        raise ConversionError(
            f"{what}: its decoder layers normalise before each block (pre_norm=true); "
            "segbench's Mask2Former is the paper's post-norm decoder"
        )
    if config.get("activation_function", "relu") != "relu":
        raise ConversionError(
            f"{what}: activation_function {config['activation_function']!r}; segbench's "
            "Mask2Former uses ReLU"
        )
    if config.get("feature_size", 256) != config.get("mask_feature_size", 256):
        raise ConversionError(
            f"{what}: feature_size {config.get('feature_size')} differs from "
            f"mask_feature_size {config.get('mask_feature_size')}; segbench's Mask2Former "
            "uses one width (hidden_dim) for both"
        )


def mask2former_settings(config: Mapping) -> dict:
    """The :class:`~segbench.models.mask2former.Mask2Former` arguments (all but ``encoder``
    and ``num_classes``) of a transformers ``config.json`` (as a dict)."""
    return {
        "hidden_dim": int(config.get("hidden_dim", 256)),
        "num_queries": int(config.get("num_queries", 100)),
        "dec_layers": int(config.get("decoder_layers", 10)) - 1,
        "heads": int(config.get("num_attention_heads", 8)),
        "dim_feedforward": int(config.get("dim_feedforward", 2048)),
        "enc_layers": int(config.get("encoder_layers", 6)),
        "enc_dim_feedforward": int(config.get("encoder_feedforward_dim", 1024)),
        "common_stride": int(config.get("common_stride", 4)),
        "dropout": float(config.get("dropout", 0.0)),
    }


def _levels(backbone: Mapping) -> tuple[list[int], list[int]] | None:
    """Channels and strides of the levels a transformers backbone config returns (ResNet,
    ConvNeXt: ``hidden_sizes``; Swin: ``embed_dim`` doubling), or ``None``."""
    stages = hf_out_stages(dict(backbone))
    if backbone.get("hidden_sizes"):
        widths = list(backbone["hidden_sizes"])
    elif backbone.get("embed_dim"):
        widths = [int(backbone["embed_dim"]) * 2**i for i in range(len(backbone["depths"]))]
    else:
        return None
    return [widths[k - 1] for k in stages], [2 ** (k + 1) for k in stages]


def _expected(config: Mapping, backbone: Mapping, converted: Mapping[str, Tensor]) -> dict | None:
    """The state dict (on the meta device) that the configuration's pixel decoder, transformer
    decoder and heads have, with the converted backbone's tensors as they are; ``None`` when
    the backbone's levels cannot be read from its config."""
    levels = _levels(backbone)
    if levels is None or "head.class_head.weight" not in converted:
        return None
    num_classes = int(converted["head.class_head.weight"].shape[0]) - 1
    settings = mask2former_settings(config)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        net = Mask2Former(_Levels(*levels), num_classes, **settings)
    wanted = {k: v for k, v in net.state_dict().items() if not k.startswith("encoder.")}
    return {**wanted, **{k: v for k, v in converted.items() if k.startswith("encoder.")}}


class _Levels(nn.Module):
    """A stand-in encoder that only states its levels (to build the decoders' shapes)."""

    def __init__(self, channels: list[int], strides: list[int]) -> None:
        super().__init__()
        self.channels, self.strides = channels, strides


def convert_mask2former(
    state: Mapping[str, Tensor],
    config: Mapping,
    what: str = "Mask2Former checkpoint",
    model: nn.Module | None = None,
) -> dict[str, Tensor]:
    """segbench's :class:`Mask2Former` state dict of a transformers
    ``Mask2FormerForUniversalSegmentation`` state dict.

    Args:
        state: the checkpoint's tensors (``model.safetensors``, or ``model.state_dict()``).
        config: its ``config.json`` as a dict (``Mask2FormerConfig.to_dict()``); the
            ``backbone_config`` says how the backbone maps onto timm's keys.
        what: the checkpoint in words, for messages.
        model: the :class:`Mask2Former` to fit, key for key and shape for shape; ``None``: the
            decoders and heads are checked against those the config describes (the backbone
            against its converter's rules only).

    Raises:
        ConversionError: a tensor left over, missing, given twice or of another shape, or a
            configuration that segbench's Mask2Former does not compute the same way, named.
    """
    _check_config(config, what)
    converter = StateDictConverter(state, what)
    backbone = dict(config.get("backbone_config") or {})
    if config.get("use_timm_backbone") or not backbone:
        raise ConversionError(
            f"{what}: a transformers backbone (backbone_config with a model_type) is expected; "
            "this checkpoint has a timm backbone or none"
        )
    convert_backbone(converter, "model.pixel_level_module.encoder.", "encoder.", backbone)
    # FPN levels: transformers numbers them finest first from 1, segbench coarsest first
    fpn = sorted(
        {
            int(m.group(1))
            for k in converter.remaining()
            if (m := re.fullmatch(_PIXEL + r"adapter_(\d+)\..*", k))
        }
    )
    for j in fpn:
        ours = len(fpn) - j
        converter.rename(
            [
                (_PIXEL + rf"adapter_{j}\.([01])\.(weight|bias)", rf"decoder.lateral.{ours}.\1.\2"),
                (_PIXEL + rf"layer_{j}\.([01])\.(weight|bias)", rf"decoder.output.{ours}.\1.\2"),
            ]
        )
    for key in converter.remaining("model.transformer_module.decoder.layers."):
        m = re.fullmatch(_LAYER + r"cross_attn\.in_proj_(weight|bias)", key)
        if m:
            layer, kind = m.groups()
            q, k, v = converter.take(key).chunk(3, dim=0)
            for name, part in zip(("q_proj", "k_proj", "v_proj"), (q, k, v)):
                converter.put(f"head.layers.{layer}.cross_attn.{name}.{kind}", part, key)
    mlp = _TRANSFORMER + r"decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.(weight|bias)"
    for key in converter.remaining("model.transformer_module.decoder.mask_predictor."):
        m = re.fullmatch(mlp, key)
        if m:  # transformers' blocks 0, 1, 2 are segbench's Sequential 0, 2, 4 (ReLUs between)
            converter.move(key, f"head.mask_head.{2 * int(m.group(1))}.{m.group(2)}")
    converter.rename(_RULES)
    converter.skip(
        r"criterion\.empty_weight",
        "the training loss's class weights (no-object 0.1), which segbench's set loss makes "
        "from task.no_object_weight",
    )
    if model is not None:
        return converter.result(model)
    return converter.result(_expected(config, backbone, converter.out))
