"""Hugging Face DINOv2 checkpoints (``facebook/dinov2-small``, ``-base`` ...: ``Dinov2Model``)
→ timm's ``vit_*_patch14_dinov2``, the model inside :class:`~segbench.models.encoders.vit.
ViTEncoder`: ``backbone.weights=hf:facebook/dinov2-small``.

Both key layouts are understood: the one of the files on the hub, written by transformers 4
(``encoder.layer.0.attention.attention.query.weight``, ``attention.output.dense``), and the one
of transformers 5's ``state_dict()`` (``attention.q_proj``, ``attention.o_proj``); a
``dinov2.`` prefix (a task model around the backbone) is allowed. The separate query, key and
value projections become timm's fused ``qkv``; the layer scales' ``lambda1`` become ``gamma``.
The masked-image-modelling token (used in DINOv2's training only) is skipped, with that reason.
Every other tensor is accounted for by :class:`~segbench.models.convert.StateDictConverter`
and must fit the timm model shape for shape; the checkpoint's ``config.json`` is checked first
(width, depth, heads, patch size, MLP kind, no register tokens).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from segbench.models.convert import ConversionError, StateDictConverter, stacked
from segbench.models.hub import hf_repo, read_hf_checkpoint

__all__ = ["convert_dinov2", "load_dinov2_weights"]

_WB = r"(weight|bias)"
# a block's tensors, renamed: (transformers 4 | transformers 5 name, timm name)
_BLOCK = [
    (rf"norm1\.{_WB}", r"norm1.\2"),
    (rf"norm2\.{_WB}", r"norm2.\2"),
    (rf"attention\.(?:output\.dense|o_proj)\.{_WB}", r"attn.proj.\2"),
    (r"layer_scale1\.lambda1", r"ls1.gamma"),
    (r"layer_scale2\.lambda1", r"ls2.gamma"),
    (rf"mlp\.(fc1|fc2)\.{_WB}", r"mlp.\2.\3"),
]
_QKV = {  # the separate projections timm fuses, in its order
    "query": ("attention.attention.query", "attention.q_proj"),
    "key": ("attention.attention.key", "attention.k_proj"),
    "value": ("attention.attention.value", "attention.v_proj"),
}


def _prefix(source: Mapping[str, Tensor]) -> str:
    """``"dinov2."`` when the checkpoint wraps the backbone (a task model), else ``""``."""
    return "dinov2." if any(k.startswith("dinov2.embeddings.") for k in source) else ""


def convert_dinov2(source: Mapping[str, Tensor], what: str) -> StateDictConverter:
    """The account of Hugging Face DINOv2 tensors ``source`` mapped to timm's key names.

    Call ``.result(model)`` or ``.load_into(model)`` on it with the timm model (all of its
    blocks) to check and load. ``what`` names the checkpoint in messages.
    """
    conv = StateDictConverter(source, what)
    p = re.escape(_prefix(source))
    conv.skip(
        rf"{p}embeddings\.mask_token",
        "DINOv2's masked-image-modelling token (iBOT training); unused on whole images",
    )
    conv.rename(
        [
            (rf"{p}embeddings\.cls_token", "cls_token"),
            (rf"{p}embeddings\.position_embeddings", "pos_embed"),
            (rf"{p}embeddings\.patch_embeddings\.projection\.{_WB}", r"patch_embed.proj.\1"),
            (rf"{p}layernorm\.{_WB}", r"norm.\1"),
            *[(rf"{p}encoder\.layer\.(\d+)\.{a}", rf"blocks.\1.{b}") for a, b in _BLOCK],
        ]
    )
    layers = sorted(
        {
            int(m.group(1))
            for k in conv.remaining()
            if (m := re.match(rf"{p}encoder\.layer\.(\d+)\.", k))
        }
    )
    for i in layers:
        for part in ("weight", "bias"):
            keys = []
            for old, new in _QKV.values():
                found = [f"{_prefix(source)}encoder.layer.{i}.{n}.{part}" for n in (old, new)]
                keys.append(next((k for k in found if k in conv.source), found[1]))
            conv.put(f"blocks.{i}.attn.qkv.{part}", stacked(conv, keys), " + ".join(keys))
    return conv


def _check_config(config: Mapping, model: nn.Module, what: str) -> None:
    """Refuse a ``config.json`` of another architecture than timm ``model``."""
    kind = config.get("model_type")
    if kind != "dinov2":
        raise ConversionError(
            f"{what}: model_type {kind!r}, expected 'dinov2' (a Dinov2Model checkpoint such as "
            "facebook/dinov2-small; register-token and SwiGLU variants are not supported)"
        )
    wanted = {
        "hidden_size": int(model.embed_dim),
        "num_hidden_layers": len(model.blocks),
        "num_attention_heads": int(model.blocks[0].attn.num_heads),
        "patch_size": int(model.patch_embed.patch_size[0]),
        "use_swiglu_ffn": False,
    }
    found = {k: config.get(k, {"patch_size": 14, "use_swiglu_ffn": False}.get(k)) for k in wanted}
    wrong = [
        f"{k}={found[k]!r} (the backbone has {v!r})" for k, v in wanted.items() if found[k] != v
    ]
    if wrong:
        raise ConversionError(
            f"{what} does not fit the backbone: {', '.join(wrong)}. Nothing was loaded; pick "
            "the backbone of its size (dinov2-small: vit_small_patch14_dinov2, dinov2-base: "
            "vit_base_patch14_dinov2)"
        )


def load_dinov2_weights(model: nn.Module, spec: str) -> None:
    """Load ``hf:<owner>/<repo>`` (a Dinov2Model checkpoint, from the hub cache) into timm
    ViT ``model``, every block of it present; refused, naming the tensors, when it does not
    fit."""
    repo = hf_repo(spec)
    if repo is None:
        raise ValueError(
            f"{spec!r}: expected hf:<owner>/<repository>, e.g. hf:facebook/dinov2-small"
        )
    state, config = read_hf_checkpoint(repo)
    what = f"Hugging Face checkpoint {repo}"
    _check_config(config, model, what)
    convert_dinov2(state, what).load_into(model)
