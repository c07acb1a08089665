"""mmsegmentation's SegFormer (Xie et al., NeurIPS 2021) → segbench's MiT encoder and SegFormer.

mmseg's ``MixVisionTransformer`` (``mmseg/models/backbones/mit.py``) holds stage ``i`` as
``layers.<i>.0`` (``PatchEmbed``: ``projection`` conv, ``norm``), ``layers.<i>.1.<j>`` (the
blocks: ``norm1``; ``attn.attn``, a ``torch.nn.MultiheadAttention`` with q, k, v stacked in
``in_proj_weight``/``in_proj_bias`` and ``out_proj``; the reduction ``attn.sr`` conv and
``attn.norm``; ``norm2``; ``ffn.layers.0/1/4``: 1×1 conv, 3×3 depthwise conv, 1×1 conv) and
``layers.<i>.2`` (the stage's LayerNorm). :func:`mit_backbone` moves them onto
:class:`~segbench.models.encoders.MiTEncoder`'s ``stages.<i>.embed/blocks.<j>/norm`` (q, k, v
split, the 1×1 convs' ``(out, in, 1, 1)`` weights as the linear layers' ``(out, in)``).

mmseg's ``SegformerHead`` differs from the paper's all-MLP head (Hugging Face's port, segbench's
default): each level goes through a 1×1 conv → BN → ReLU (``convs.<i>``, an mmcv
``ConvModule``), not a linear layer, and the levels are concatenated finest first (segbench:
coarsest first, as the authors' code), which :func:`segformer_head` turns around in the fusing
conv's input channels. The per-level conv → BN → ReLU needs segbench's SegFormer to build its
level projections that way (``decoder.proj.<i>.0`` conv, ``.1`` BN).
"""

from __future__ import annotations

import re

import torch

from segbench.models.convert import ConversionError, StateDictConverter

__all__ = ["mit_backbone", "segformer_head"]

_WB = r"(?P<p>weight|bias)"
_BN = r"(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)"


def mit_backbone(
    converter: StateDictConverter, mm: str = "backbone.", ours: str = "encoder."
) -> None:
    """Move mmseg's ``MixVisionTransformer`` tensors (under ``mm``) onto a ``MiTEncoder`` (under
    ``ours``); the caller's ``converter.result()`` refuses anything left over."""
    layer = re.escape(mm) + r"layers\.(?P<i>\d+)\."
    block = layer + r"1\.(?P<j>\d+)\."
    stage, blk = ours + r"stages.\g<i>.", ours + r"stages.\g<i>.blocks.\g<j>."
    for key in converter.remaining(mm):  # by hand: q, k, v stacked; 1x1 convs as linears
        match = re.fullmatch(block + r"attn\.attn\.in_proj_(?P<p>weight|bias)", key)
        if match:
            target = match.expand(blk)
            tensor = converter.take(key)
            if tensor.shape[0] % 3:
                raise ConversionError(
                    f"{converter.what}: {key} {list(tensor.shape)} is no q/k/v stack"
                )
            for name, part in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                converter.put(f"{target}attn.{name}.{match['p']}", part.clone(), key)
            continue
        match = re.fullmatch(block + r"ffn\.layers\.(?P<l>[04])\.weight", key)
        if match:
            tensor = converter.take(key)
            if tensor.dim() != 4 or tensor.shape[-2:] != (1, 1):
                raise ConversionError(
                    f"{converter.what}: {key} {list(tensor.shape)} is no 1x1 conv"
                )
            fc = "fc1" if match["l"] == "0" else "fc2"
            converter.put(f"{match.expand(blk)}ffn.{fc}.weight", tensor[:, :, 0, 0].clone(), key)
    converter.rename(
        [
            (layer + r"0\.projection\." + _WB, stage + r"embed.proj.\g<p>"),
            (layer + r"0\.norm\." + _WB, stage + r"embed.norm.\g<p>"),
            (block + r"norm(?P<n>[12])\." + _WB, blk + r"norm\g<n>.\g<p>"),
            (block + r"attn\.attn\.out_proj\." + _WB, blk + r"attn.proj.\g<p>"),
            (block + r"attn\.sr\." + _WB, blk + r"attn.sr.\g<p>"),
            (block + r"attn\.norm\." + _WB, blk + r"attn.sr_norm.\g<p>"),
            (block + r"ffn\.layers\.0\.bias", blk + "ffn.fc1.bias"),
            (block + r"ffn\.layers\.1\." + _WB, blk + r"ffn.dwconv.\g<p>"),
            (block + r"ffn\.layers\.4\.bias", blk + "ffn.fc2.bias"),
            (layer + r"2\." + _WB, stage + r"norm.\g<p>"),
        ],
        prefix=mm,
    )


def segformer_head(converter: StateDictConverter) -> None:
    """mmseg's ``SegformerHead`` (``decode_head.convs.<i>``, ``fusion_conv``, ``conv_seg``) →
    segbench's SegFormer decoder with per-level conv → BN → ReLU projections
    (``decoder.proj.<i>.0/1``), ``decoder.fuse.0/1`` (input blocks reversed: segbench
    concatenates the coarsest level first) and ``head``."""
    levels = sorted(
        {int(m[1]) for k in converter.source if (m := re.match(r"decode_head\.convs\.(\d+)\.", k))}
    )
    if not levels or levels != list(range(len(levels))):
        raise ConversionError(
            f"{converter.what}: expected decode_head.convs.0 ... n (a SegformerHead), "
            f"found {levels}"
        )
    fusion = converter.take("decode_head.fusion_conv.conv.weight")  # (C, n*C, 1, 1)
    if fusion.shape[1] % len(levels):
        raise ConversionError(
            f"{converter.what}: decode_head.fusion_conv reads {fusion.shape[1]} channels, no "
            f"multiple of its {len(levels)} levels"
        )
    blocks = fusion.split(fusion.shape[1] // len(levels), dim=1)  # finest level first
    converter.put(
        "decoder.fuse.0.weight", torch.cat(blocks[::-1], dim=1), "decode_head.fusion_conv"
    )
    converter.rename(
        [
            (r"decode_head\.convs\.(?P<i>\d+)\.conv\.weight", r"decoder.proj.\g<i>.0.weight"),
            (r"decode_head\.convs\.(?P<i>\d+)\.bn\." + _BN, r"decoder.proj.\g<i>.1.\g<p>"),
            (r"decode_head\.fusion_conv\.bn\." + _BN, r"decoder.fuse.1.\g<p>"),
            (r"decode_head\.conv_seg\.(weight|bias)", r"head.\1"),
        ]
    )
