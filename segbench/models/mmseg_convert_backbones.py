"""mmsegmentation's backbones → segbench's :class:`~segbench.models.encoders.TimmEncoder`.

- ``ResNetV1c`` (``mmseg/models/backbones/resnet.py``) → timm's ``resnet50c`` / ``resnet101c``:
  the deep stem ``stem.0/1/3/4/6/7`` is timm's ``conv1.0/1/3/4/6`` and ``bn1``; the stages have
  timm's names already.
- ``SwinTransformer`` (``backbones/swin.py``) → timm's ``swin_*`` (``patch_embed``,
  ``layers_<i>``; segbench's Swin forward pads and shifts as mmseg's does). mmseg merges patches
  at the end of a stage, timm at the start of the next; mmseg gathers a 2×2 patch with
  ``nn.Unfold`` (channel ``c·4 + kh·2 + kw``), timm by a reshape (channel ``kw·2C + kh·C + c``):
  the merging LayerNorm and the reduction's input channels are permuted. mmseg keeps the
  relative position index as a buffer, timm recomputes it: it is checked, not copied.
- ``ConvNeXt`` of mmpretrain / mmcls (``downsample_layers``, ``stages.<i>.<j>``) → timm's
  ``convnext_*`` (``stem_0/1``, ``stages_<i>.downsample``, ``stages_<i>.blocks.<j>``).

The per-level output LayerNorms of Swin and ConvNeXt (mmseg's ``norm<i>``) go to the encoder's
``out_norms.<i>`` (``backbone.out_norms=true``, the default of ``swin_tiny``/``convnext_tiny``).
"""

from __future__ import annotations

import re

import torch

from segbench.models.convert import ConversionError, StateDictConverter

__all__ = ["convert_mmseg_backbone", "resnet_v1c_rules"]

_T = r"(?P<t>weight|bias|running_mean|running_var|num_batches_tracked)"


def resnet_v1c_rules(mm: str = "backbone.", ours: str = "encoder.") -> list[tuple[str, str]]:
    """mmseg's ``ResNetV1c`` (``stem.0/1/3/4/6/7``: three conv → BN, ReLUs at 2/5/8;
    ``layerN.M.conv1-3/bn1-3/downsample.0-1``) → timm's ``resnet50c``-style features-only
    model under ``{ours}model.`` (``conv1.0/1/3/4/6``, ``bn1``, the same ``layerN`` keys)."""
    mm, to = re.escape(mm), f"{ours}model."
    return [
        (mm + r"stem\.(?P<i>[01346])\." + _T, to + r"conv1.\g<i>.\g<t>"),
        (mm + r"stem\.7\." + _T, to + r"bn1.\g<t>"),
        (
            mm + r"(?P<b>layer[1-4]\.\d+\.(?:conv[1-3]|bn[1-3]|downsample\.[01]))\." + _T,
            to + r"\g<b>.\g<t>",
        ),
    ]


def _unfold_to_timm(channels: int) -> torch.Tensor:
    """Index ``perm`` with ``timm_tensor = mmseg_tensor[..., perm]`` for a 2×2 patch merging of
    ``channels`` input channels (see the module docstring)."""
    t = torch.arange(4 * channels)
    kw, kh, c = t // (2 * channels), (t // channels) % 2, t % channels
    return c * 4 + kh * 2 + kw


def _swin_index(window: int) -> torch.Tensor:
    """The relative position index timm (and the Swin paper's code) uses for a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    rel = (coords.flatten(1)[:, :, None] - coords.flatten(1)[:, None, :]).permute(1, 2, 0)
    return (rel[..., 0] + window - 1) * (2 * window - 1) + rel[..., 1] + window - 1


def _swin(converter: StateDictConverter, mm: str, ours: str) -> None:
    to, m = f"{ours}model.", re.escape(mm)
    for key in converter.remaining(mm):
        match = re.fullmatch(
            m + r"stages\.(\d+)\.downsample\.(norm\.weight|norm\.bias|reduction\.weight)", key
        )
        if match:  # merging at the end of stage i = timm's at the start of stage i + 1
            tensor = converter.take(key)
            perm = _unfold_to_timm(tensor.shape[-1] // 4)
            target = f"{to}layers_{int(match[1]) + 1}.downsample.{match[2]}"
            converter.put(target, tensor[..., perm].contiguous(), key)
            continue
        if key.endswith("attn.w_msa.relative_position_index"):
            index = converter.source[key]
            window = round((index.shape[0]) ** 0.5)
            if index.is_meta:  # shapes only (a check of the key layout)
                continue
            if index.dim() != 2 or not torch.equal(index.long(), _swin_index(window)):
                raise ConversionError(
                    f"{converter.what}: {key} is not the relative position index of a "
                    f"{window}x{window} window that timm's Swin computes"
                )
    converter.skip(
        m + r"stages\.\d+\.blocks\.\d+\.attn\.w_msa\.relative_position_index",
        "a buffer timm's Swin recomputes from the window size (checked equal)",
    )
    block = m + r"stages\.(?P<i>\d+)\.blocks\.(?P<j>\d+)\."
    ours_block = to + r"layers_\g<i>.blocks.\g<j>."
    wb = r"\.(?P<p>weight|bias)"
    converter.rename(
        [
            (m + r"patch_embed\.projection" + wb, to + r"patch_embed.proj.\g<p>"),
            (m + r"patch_embed\.norm" + wb, to + r"patch_embed.norm.\g<p>"),
            (block + r"norm(?P<n>[12])" + wb, ours_block + r"norm\g<n>.\g<p>"),
            (block + r"attn\.w_msa\.relative_position_bias_table",
             ours_block + "attn.relative_position_bias_table"),
            (block + r"attn\.w_msa\.(?P<l>qkv|proj)" + wb, ours_block + r"attn.\g<l>.\g<p>"),
            (block + r"ffn\.layers\.0\.0" + wb, ours_block + r"mlp.fc1.\g<p>"),
            (block + r"ffn\.layers\.1" + wb, ours_block + r"mlp.fc2.\g<p>"),
            (m + r"norm(?P<i>\d)" + wb, ours + r"out_norms.\g<i>.\g<p>"),
        ],
        prefix=mm,
    )  # fmt: skip


def _convnext(converter: StateDictConverter, mm: str, ours: str) -> None:
    to, m, wb = f"{ours}model.", re.escape(mm), r"\.(?P<p>weight|bias)"
    block = m + r"stages\.(?P<i>\d+)\.(?P<j>\d+)\."
    ours_block = to + r"stages_\g<i>.blocks.\g<j>."
    converter.rename(
        [
            (m + r"downsample_layers\.0\.(?P<k>[01])" + wb, to + r"stem_\g<k>.\g<p>"),
            (m + r"downsample_layers\.(?P<i>[1-9])\.(?P<k>[01])" + wb,
             to + r"stages_\g<i>.downsample.\g<k>.\g<p>"),
            (block + r"depthwise_conv" + wb, ours_block + r"conv_dw.\g<p>"),
            (block + r"norm" + wb, ours_block + r"norm.\g<p>"),
            (block + r"pointwise_conv1" + wb, ours_block + r"mlp.fc1.\g<p>"),
            (block + r"pointwise_conv2" + wb, ours_block + r"mlp.fc2.\g<p>"),
            (block + r"gamma", ours_block + "gamma"),
            (m + r"norm(?P<i>\d)" + wb, ours + r"out_norms.\g<i>.\g<p>"),
        ],
        prefix=mm,
    )  # fmt: skip


def convert_mmseg_backbone(
    converter: StateDictConverter, mm: str = "backbone.", ours: str = "encoder."
) -> str | None:
    """Move the backbone's tensors (``ResNetV1c``, ``SwinTransformer`` or ``ConvNeXt``, told
    apart by their keys) onto the TimmEncoder at ``ours``; returns which it was
    (``resnet_v1c``, ``swin``, ``convnext``; ``None`` when there is no ``mm`` key)."""
    keys = converter.source
    if not any(k.startswith(mm) for k in keys):
        return None  # a head alone; against a network, result() names the encoder as missing
    if f"{mm}stem.0.weight" in keys:
        converter.rename(resnet_v1c_rules(mm, ours), prefix=mm)
        return "resnet_v1c"
    if f"{mm}patch_embed.projection.weight" in keys:
        if f"{mm}absolute_pos_embed" in keys:
            raise ConversionError(
                f"{converter.what}: its Swin adds absolute position embeddings "
                "(use_abs_pos_embed), which timm's Swin has not"
            )
        _swin(converter, mm, ours)
        return "swin"
    if f"{mm}downsample_layers.0.0.weight" in keys:
        _convnext(converter, mm, ours)
        return "convnext"
    raise ConversionError(
        f"{converter.what}: its backbone is none of ResNetV1c (backbone.stem.*), Swin "
        "(backbone.patch_embed.*) or ConvNeXt (backbone.downsample_layers.*)"
    )
