"""Hugging Face transformers backbones → segbench's :class:`TimmEncoder`, tensor by tensor.

transformers' segmentation models (UperNet, Mask2Former, ...) hold their backbone as a
``ConvNextBackbone``, ``SwinBackbone`` or ``ResNetBackbone``; segbench holds the same network as
a timm ``features_only`` model inside a :class:`~segbench.models.encoders.TimmEncoder`.
:func:`convert_backbone` moves the backbone's tensors from one naming to the other through a
:class:`~segbench.models.convert.StateDictConverter`, so that the caller's
``converter.result()`` accounts for every tensor of the whole file.

Where the tensors go, for ``ours_prefix`` the TimmEncoder's own prefix in the segbench model
(``"encoder."`` in a :class:`~segbench.models.base.SegmentationModel`, ``""`` for a bare
encoder):

- the timm network: ``{ours_prefix}model.<timm features_only key>`` (``model.stem_0.weight``,
  ``model.stages_1.blocks.0.conv_dw.weight``, ``model.layers_2.blocks.1.attn.qkv.weight``,
  ``model.layer3.0.conv2.weight``);
- the per-level LayerNorms of ConvNeXt and Swin (transformers' ``hidden_states_norms.stageK``):
  ``{ours_prefix}out_norms.<j>.{weight,bias}``, ``j`` the position of ``stageK`` among the
  backbone's ``out_features``. The TimmEncoder must be built with ``out_norms=True`` and return
  the same stages (``out_indices`` null when the backbone returns all four; ResNet has no such
  norms and keeps ``out_norms=False``).

Both key spellings are read: the one of a transformers 5 model in memory (``state_dict()``:
``swin.encoder...``, ``attention.q_proj``, ``mlp.fc1``) and the one of the files on the hub
(``encoder...``, ``attention.self.query``, ``intermediate.dense``).
"""

from __future__ import annotations

import re

from segbench.models.convert import ConversionError, StateDictConverter, stacked

__all__ = ["convert_backbone", "hf_out_stages"]


def hf_out_stages(config: dict) -> list[int]:
    """The stage numbers (1 = the first stage after the stem) a transformers backbone returns:
    its ``out_features`` (``["stage1", ..., "stage4"]``), else its ``out_indices``, else the
    last stage (transformers' default)."""
    names = config.get("out_features")
    if names:
        return sorted(int(str(n).removeprefix("stage")) for n in names if n != "stem")
    indices = config.get("out_indices")
    if indices:
        return sorted(int(i) for i in indices)
    return [len(config.get("depths") or [0] * 4)]


def convert_backbone(
    converter: StateDictConverter, hf_prefix: str, ours_prefix: str, config: dict
) -> None:
    """Move the tensors of a transformers backbone onto a TimmEncoder's keys.

    Args:
        converter: the account of the whole file's conversion (the caller converts the rest
            and calls ``result()``, which refuses anything left over).
        hf_prefix: the backbone's prefix in the file, e.g. ``"backbone."`` (UperNet) or
            ``"model.pixel_level_module.encoder."`` (Mask2Former).
        ours_prefix: the TimmEncoder's prefix in the segbench model, e.g. ``"encoder."``; the
            timm tensors go under ``{ours_prefix}model.`` and the per-level norms under
            ``{ours_prefix}out_norms.`` (see the module docstring).
        config: the backbone's transformers config as a dict (``backbone_config`` of
            ``config.json``), whose ``model_type`` is ``"convnext"``, ``"swin"`` or
            ``"resnet"``.

    Raises:
        ConversionError: for another ``model_type``, or a configuration timm's network does not
            compute the same way (named in the message).
    """
    kind = config.get("model_type")
    if kind not in _CONVERTERS:
        raise ConversionError(
            f"{converter.what}: backbone model_type {kind!r} has no segbench converter; "
            f"expected one of {sorted(_CONVERTERS)}"
        )
    _CONVERTERS[kind](converter, hf_prefix, ours_prefix, config)
    _out_norms(converter, hf_prefix, ours_prefix, config)


def _out_norms(converter: StateDictConverter, hf: str, ours: str, config: dict) -> None:
    """``hidden_states_norms.stageK`` → ``out_norms.<position of K among the out stages>``."""
    for j, stage in enumerate(hf_out_stages(config)):
        for p in ("weight", "bias"):
            key = f"{hf}hidden_states_norms.stage{stage}.{p}"
            if key in converter.source:
                converter.move(key, f"{ours}out_norms.{j}.{p}")


def _rules(hf: str, ours: str, rules: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Rules relative to the two prefixes: the pattern under ``hf`` (escaped), the target
    under ``{ours}model.``."""
    return [(re.escape(hf) + p, f"{ours}model." + r) for p, r in rules]


def _convnext(converter: StateDictConverter, hf: str, ours: str, config: dict) -> None:
    """ConvNextBackbone → timm ``convnext_*`` (features_only: ``stem_0/1``, ``stages_i``)."""
    pre = r"(?:convnext\.)?"  # a ConvNextModel's keys, should a file hold one
    converter.rename(
        _rules(
            hf,
            ours,
            [
                (pre + r"embeddings\.patch_embeddings\.(weight|bias)", r"stem_0.\1"),
                (pre + r"embeddings\.layernorm\.(weight|bias)", r"stem_1.\1"),
                (
                    pre + r"encoder\.stages\.(\d+)\.downsampling_layer\.([01])\.(weight|bias)",
                    r"stages_\1.downsample.\2.\3",
                ),
                (
                    pre + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_scale_parameter",
                    r"stages_\1.blocks.\2.gamma",
                ),
                (
                    pre + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.dwconv\.(weight|bias)",
                    r"stages_\1.blocks.\2.conv_dw.\3",
                ),
                (
                    pre + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm\.(weight|bias)",
                    r"stages_\1.blocks.\2.norm.\3",
                ),
                (
                    pre + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv1\.(weight|bias)",
                    r"stages_\1.blocks.\2.mlp.fc1.\3",
                ),
                (
                    pre + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv2\.(weight|bias)",
                    r"stages_\1.blocks.\2.mlp.fc2.\3",
                ),
            ],
        ),
        prefix=hf,
    )


def _swin(converter: StateDictConverter, hf: str, ours: str, config: dict) -> None:
    """SwinBackbone → timm ``swin_*`` (features_only: ``patch_embed``, ``layers_i``).

    transformers merges patches at the end of a stage, timm at the start of the next: stage
    ``i``'s ``downsample`` becomes ``layers_{i+1}.downsample``. The separate q, k, v
    projections are stacked into timm's ``qkv``.
    """
    if config.get("use_absolute_embeddings"):
        raise ConversionError(
            f"{converter.what}: the Swin backbone adds absolute position embeddings "
            "(use_absolute_embeddings=true), which timm's Swin has not"
        )
    root = hf + ("swin." if any(k.startswith(hf + "swin.") for k in converter.source) else "")
    out = f"{ours}model."
    converter.rename(
        [
            (re.escape(root) + r"embeddings\.patch_embeddings\.projection\.(weight|bias)",
             out + r"patch_embed.proj.\1"),
            (re.escape(root) + r"embeddings\.norm\.(weight|bias)", out + r"patch_embed.norm.\1"),
        ],
        prefix=root,
    )  # fmt: skip
    for i, depth in enumerate(config.get("depths") or (2, 2, 6, 2)):
        stage = f"{root}encoder.layers.{i}."
        for j in range(depth):
            hf_block, block = f"{stage}blocks.{j}.", f"{out}layers_{i}.blocks.{j}."
            for p in ("weight", "bias"):
                qkv = [_first(converter, hf_block, names, p) for names in _QKV]
                converter.put(f"{block}attn.qkv.{p}", stacked(converter, qkv), " + ".join(qkv))
            converter.rename(
                [
                    (re.escape(hf_block) + pattern, block + target)
                    for pattern, target in _SWIN_BLOCK
                ],
                prefix=hf_block,
            )
            converter.skip(
                re.escape(hf_block) + r"attention\.self\.relative_position_index",
                "timm computes the relative position index from the window size",
            )
        converter.rename(
            [(re.escape(stage) + r"downsample\.(norm|reduction)\.(weight|bias)",
              f"{out}layers_{i + 1}.downsample." + r"\1.\2")],
            prefix=stage,
        )  # fmt: skip
    converter.skip(
        re.escape(root) + r"layernorm\.(weight|bias)",
        "SwinModel's final LayerNorm, which SwinBackbone never applies (its levels go through "
        "hidden_states_norms)",
    )


_QKV = (
    ("attention.q_proj", "attention.self.query"),
    ("attention.k_proj", "attention.self.key"),
    ("attention.v_proj", "attention.self.value"),
)
_SWIN_BLOCK = [
    (r"attention\.relative_position_bias\.relative_position_bias_table",
     "attn.relative_position_bias_table"),
    (r"attention\.self\.relative_position_bias_table", "attn.relative_position_bias_table"),
    (r"attention\.(?:o_proj|output\.dense)\.(weight|bias)", r"attn.proj.\1"),
    (r"layernorm_before\.(weight|bias)", r"norm1.\1"),
    (r"layernorm_after\.(weight|bias)", r"norm2.\1"),
    (r"(?:mlp\.fc1|intermediate\.dense)\.(weight|bias)", r"mlp.fc1.\1"),
    (r"(?:mlp\.fc2|output\.dense)\.(weight|bias)", r"mlp.fc2.\1"),
]  # fmt: skip


def _first(converter: StateDictConverter, prefix: str, names: tuple[str, ...], p: str) -> str:
    """The first of ``prefix + name + "." + p`` present in the file (the first one when none
    is, so that ``take`` names it as missing)."""
    keys = [f"{prefix}{name}.{p}" for name in names]
    return next((k for k in keys if k in converter.source), keys[0])


def _resnet(converter: StateDictConverter, hf: str, ours: str, config: dict) -> None:
    """ResNetBackbone → timm ``resnet*`` (torchvision-style ``conv1``/``bn1``/``layerN``).

    timm's ResNets stride the 3x3 conv of a bottleneck (ResNet v1.5) and downsample in the
    first block of stages 2-4 only, which is transformers' ``downsample_in_bottleneck=false``,
    ``downsample_in_first_stage=false``.
    """
    if config.get("downsample_in_bottleneck") or config.get("downsample_in_first_stage"):
        raise ConversionError(
            f"{converter.what}: the ResNet backbone strides its first 1x1 conv or its first "
            "stage (downsample_in_bottleneck / downsample_in_first_stage), timm's ResNet "
            "strides the 3x3 conv of stages 2-4"
        )
    conv = config.get("layer_type", "bottleneck")
    if conv not in ("bottleneck", "basic"):
        raise ConversionError(f"{converter.what}: ResNet layer_type {conv!r} is not supported")
    pre = r"(?:resnet\.)?"
    block = pre + r"encoder\.stages\.(\d+)\.layers\.(\d+)\."
    bn = r"\.normalization\.(weight|bias|running_mean|running_var|num_batches_tracked)"
    rules = [
        (pre + r"embedder\.embedder\.convolution\.weight", "conv1.weight"),
        (pre + r"embedder\.embedder" + bn, r"bn1.\1"),
        (block + r"shortcut\.convolution\.weight", r"layer<\1>.\2.downsample.0.weight"),
        (block + r"shortcut" + bn, r"layer<\1>.\2.downsample.1.\3"),
    ]
    for k in range(3 if conv == "bottleneck" else 2):
        rules += [
            (block + rf"layer\.{k}\.convolution\.weight", rf"layer<\1>.\2.conv{k + 1}.weight"),
            (block + rf"layer\.{k}" + bn, rf"layer<\1>.\2.bn{k + 1}.\3"),
        ]
    for key in converter.remaining(hf):
        for pattern, target in rules:
            match = re.fullmatch(re.escape(hf) + pattern, key)
            if match:  # timm counts the stages from 1: layer<i> -> layer{i+1}
                name = match.expand(target)
                name = re.sub(r"layer<(\d+)>", lambda m: f"layer{int(m.group(1)) + 1}", name)
                converter.move(key, f"{ours}model.{name}")
                break


_CONVERTERS = {"convnext": _convnext, "swin": _swin, "resnet": _resnet}
