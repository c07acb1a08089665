"""Hugging Face SegFormer checkpoints → segbench's MiT encoder and SegFormer model.

Two checkpoint kinds are published under Hugging Face's ``transformers`` key names:

- ``nvidia/mit-b0`` … ``nvidia/mit-b5``: ``SegformerForImageClassification``, the ImageNet-1k
  encoders (``segformer.*`` plus an ImageNet ``classifier``), read by
  :func:`convert_mit` (``backbone.pretrained=true`` / ``backbone.weights=...``);
- ``nvidia/segformer-bN-finetuned-*``: ``SegformerForSemanticSegmentation``, encoder and
  all-MLP decode head, read by :func:`convert_segformer`.

Both key layouts are understood: the one of the files on the hub (``segformer.encoder.block.
0.0.attention.self.query.weight``, written by transformers 4) and the one of transformers 5's
``state_dict()`` (``segformer.stages.0.blocks.0.attention.q_proj.weight``); the ``segformer.``
prefix is optional (a bare ``SegformerModel``). Every tensor is accounted for by
:class:`~segbench.models.convert.StateDictConverter`; the checkpoint's ``config.json``
is checked against its tensors and against the segbench network (widths, depths, heads,
reduction ratios, decoder width, classes), so that a checkpoint of another variant is refused
with the one that fits, never loaded in part.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from segbench.models.convert import ConversionError, StateDictConverter
from segbench.models.encoders.mit_variants import HEADS, MIT_VARIANTS, MLP_RATIOS, SR_RATIOS
from segbench.models.hub import hf_repo, read_hf_checkpoint
from segbench.models.pretrained import PretrainedUnavailable

__all__ = ["convert_mit", "convert_segformer", "load_mit_weights", "mit_hub_repo"]

# SegformerConfig's defaults (MiT-B0), for the keys a config.json leaves out
HF_DEFAULTS: dict = {
    "num_channels": 3,
    "num_encoder_blocks": 4,
    "depths": [2, 2, 2, 2],
    "hidden_sizes": [32, 64, 160, 256],
    "num_attention_heads": [1, 2, 5, 8],
    "sr_ratios": [8, 4, 2, 1],
    "mlp_ratios": [4, 4, 4, 4],
    "patch_sizes": [7, 3, 3, 3],
    "strides": [4, 2, 2, 2],
    "hidden_act": "gelu",
    "decoder_hidden_size": 256,
}
_WB = r"(weight|bias)"
_PREFIX = r"(?:segformer\.)?"
# a block's tensors: (transformers 4 name, transformers 5 name, segbench name)
_BLOCK = [
    ("layer_norm_1", "layernorm_before", "norm1"),
    ("attention.self.query", "attention.q_proj", "attn.q"),
    ("attention.self.key", "attention.k_proj", "attn.k"),
    ("attention.self.value", "attention.v_proj", "attn.v"),
    ("attention.self.sr", "attention.sequence_reduction.sequence_reduction", "attn.sr"),
    ("attention.self.layer_norm", "attention.sequence_reduction.layer_norm", "attn.sr_norm"),
    ("attention.output.dense", "attention.o_proj", "attn.proj"),
    ("layer_norm_2", "layernorm_after", "norm2"),
    ("mlp.dense1", "mlp.fc1", "ffn.fc1"),
    ("mlp.dwconv.dwconv", "mlp.dwconv.dwconv", "ffn.dwconv"),
    ("mlp.dense2", "mlp.fc2", "ffn.fc2"),
]
_DECODER = [
    (r"decode_head\.(?:linear_c|linear_projections)\.(\d+)\.proj\." + _WB, r"decoder.proj.\1.\2"),
    (r"decode_head\.linear_fuse\.weight", "decoder.fuse.0.weight"),
    (
        r"decode_head\.batch_norm\.(weight|bias|running_mean|running_var|num_batches_tracked)",
        r"decoder.fuse.1.\1",
    ),
    (r"decode_head\.classifier\." + _WB, r"head.\1"),
]


def _encoder_rules(to: str) -> list[tuple[str, str]]:
    """Rename rules of the encoder's tensors, both key layouts, onto ``<to>stages.*``."""
    rules = []
    for old, new, part in [("proj", "proj", "proj"), ("layer_norm", "layer_norm", "norm")]:
        rules.append((rf"{_PREFIX}encoder\.patch_embeddings\.(\d+)\.{old}\.{_WB}", part))
        rules.append((rf"{_PREFIX}stages\.(\d+)\.patch_embeddings\.{new}\.{_WB}", part))
    rules = [(p, rf"{to}stages.\1.embed.{part}.\2") for p, part in rules]
    for old, new, ours in _BLOCK:
        for pattern in (
            rf"{_PREFIX}encoder\.block\.(\d+)\.(\d+)\.{re.escape(old)}\.{_WB}",
            rf"{_PREFIX}stages\.(\d+)\.blocks\.(\d+)\.{re.escape(new)}\.{_WB}",
        ):
            rules.append((pattern, rf"{to}stages.\1.blocks.\2.{ours}.\3"))
    rules.append((rf"{_PREFIX}encoder\.layer_norm\.(\d+)\.{_WB}", rf"{to}stages.\1.norm.\2"))
    rules.append((rf"{_PREFIX}stages\.(\d+)\.layer_norm\.{_WB}", rf"{to}stages.\1.norm.\2"))
    return rules


def mit_hub_repo(name: str) -> str:
    """The hub repository of MiT variant ``name``'s ImageNet weights (``nvidia/mit-b0``)."""
    return "nvidia/" + name.replace("_", "-")


def _setting(config: Mapping, key: str):
    value = config.get(key, HF_DEFAULTS.get(key))
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else value


def _num_labels(config: Mapping) -> int | None:
    if config.get("num_labels") is not None:
        return int(config["num_labels"])
    return len(config["id2label"]) if config.get("id2label") else None


def _stage_arch(out: Mapping[str, Tensor], to: str) -> dict[str, list[int]]:
    """What the converted tensors say of the encoder: widths, depths, kernel sizes ..."""
    arch: dict[str, list[int]] = {}
    stages = sorted({int(k[len(to) :].split(".")[1]) for k in out if k.startswith(f"{to}stages.")})
    embeds = [out.get(f"{to}stages.{i}.embed.proj.weight") for i in stages]
    if stages != list(range(len(stages))) or any(w is None for w in embeds):
        return arch  # a checkpoint with holes: the converter's own account names them
    arch["hidden_sizes"] = [int(w.shape[0]) for w in embeds]
    arch["patch_sizes"] = [int(w.shape[-1]) for w in embeds]
    arch["num_channels"] = int(embeds[0].shape[1])
    found = (re.match(rf"{re.escape(to)}stages\.(\d+)\.blocks\.(\d+)\.", k) for k in out)
    blocks = {(int(m[1]), int(m[2])) for m in found if m}
    arch["depths"] = [len({j for s, j in blocks if s == i}) for i in stages]
    sr = [out.get(f"{to}stages.{i}.blocks.0.attn.sr.weight") for i in stages]
    arch["sr_ratios"] = [1 if w is None else int(w.shape[-1]) for w in sr]
    fc1 = [out.get(f"{to}stages.{i}.blocks.0.ffn.fc1.weight") for i in stages]
    if all(w is not None for w in fc1):
        ratios = [int(w.shape[0]) / d for w, d in zip(fc1, arch["hidden_sizes"])]
        arch["mlp_ratios"] = [int(r) if r == int(r) else r for r in ratios]
    return arch


def _fitting_variant(config: Mapping) -> str:
    """The backbone option whose architecture a checkpoint's config describes, in words."""
    for name, (widths, depths) in MIT_VARIANTS.items():
        fixed = {"num_attention_heads": HEADS, "sr_ratios": SR_RATIOS, "mlp_ratios": MLP_RATIOS}
        if _setting(config, "hidden_sizes") == widths and _setting(config, "depths") == depths:
            if all(_setting(config, k) == v for k, v in fixed.items()):
                return f"it is a MiT-{name[-2:].upper()}: use backbone={name}"
    return "no MiT variant of segbench has its architecture (give the backbone its widths/depths)"


def _check_encoder(
    config: Mapping | None, out: Mapping[str, Tensor], to: str, target: nn.Module | None, what: str
) -> None:
    """Refuse a config.json that contradicts the tensors, or describes another encoder."""
    if config is None:
        return
    if _setting(config, "hidden_act") != "gelu":
        raise ConversionError(
            f"{what}: its config.json has hidden_act={config['hidden_act']!r}; segbench's MiT "
            "uses GELU (every published SegFormer does)"
        )
    blocks = _setting(config, "num_encoder_blocks")
    if blocks != 4 or len(_setting(config, "depths")) != 4:
        raise ConversionError(
            f"{what}: its config.json describes {blocks} encoder stages; MiT has 4"
        )
    for key, found in _stage_arch(out, to).items():
        said = _setting(config, key)
        if said != found:
            raise ConversionError(
                f"{what}: its config.json says {key}={said}, but its tensors have {key}={found}; "
                "the config and the weights are of different models"
            )
    arch = getattr(target, "arch", None)
    if target is not None and arch is None:
        raise ConversionError(
            f"{what} is a MiT encoder; the segbench encoder {getattr(target, 'name', '?')!r} is "
            "another kind: use a MiT backbone (backbone=mit_b0 ... mit_b5)"
        )
    for key, ours in (arch or {}).items():
        said = _setting(config, key)
        if said != ours:
            hint = (
                f"build the backbone with in_chans={said}"
                if key == "num_channels"
                else _fitting_variant(config)
            )
            raise ConversionError(
                f"{what}: its config.json has {key}={said}, the backbone "
                f"{target.name!r} is built with {key}={ours}; {hint}"
            )


def convert_mit(
    state: Mapping[str, Tensor],
    config: Mapping | None,
    what: str,
    encoder: nn.Module | None = None,
) -> dict[str, Tensor]:
    """A Hugging Face MiT encoder's tensors as a :class:`~segbench.models.encoders.MiTEncoder`
    state dict (``stages.*``).

    Args:
        state: a ``SegformerForImageClassification``, ``SegformerModel`` or
            ``SegformerForSemanticSegmentation`` state dict (either key layout).
        config: its ``config.json`` as a dict (``None``: no config to check).
        what: the checkpoint in words, for messages.
        encoder: the encoder to fit (its ``arch`` and state dict); ``None``: not checked.

    Raises:
        ConversionError: a tensor left over, missing or of another shape, or a config.json
            that contradicts the tensors or the encoder.
    """
    conv = StateDictConverter(state, what)
    conv.rename(_encoder_rules(""))
    conv.skip(
        r"classifier\.(weight|bias)",
        "the ImageNet-1k classifier of SegformerForImageClassification: an encoder has no use "
        "for it",
    )
    conv.skip(
        r"decode_head\..*",
        "the decode head of a SegformerForSemanticSegmentation: backbone weights load the "
        "encoder only (convert_segformer converts the whole model)",
    )
    _check_encoder(config, conv.out, "", encoder, what)
    return conv.result(encoder)


def convert_segformer(
    state: Mapping[str, Tensor],
    config: Mapping | None,
    what: str,
    model: nn.Module | None = None,
) -> dict[str, Tensor]:
    """A Hugging Face ``SegformerForSemanticSegmentation`` state dict as a segbench
    :class:`~segbench.models.segformer.SegFormer` state dict (``encoder.*``, ``decoder.*``,
    ``head.*``).

    Args:
        state: the checkpoint's tensors (either key layout).
        config: its ``config.json`` as a dict (``None``: no config to check).
        what: the checkpoint in words, for messages.
        model: the SegFormer to fit (its encoder's ``arch``, decoder width, ``num_classes`` and
            state dict); ``None``: checked against the config only.

    Raises:
        ConversionError: as :func:`convert_mit`, and for a decoder width or class count that
            differs between the config, the tensors and ``model``.
    """
    conv = StateDictConverter(state, what)
    conv.rename(_encoder_rules("encoder."))
    conv.rename(_DECODER)
    if "decoder.fuse.0.weight" not in conv.out or "head.weight" not in conv.out:
        raise ConversionError(
            f"{what} has no SegFormer decode head (decode_head.linear_fuse, "
            "decode_head.classifier): an ImageNet MiT checkpoint? Load it as the backbone "
            "(backbone.weights=...) instead"
        )
    _check_encoder(config, conv.out, "encoder.", getattr(model, "encoder", None), what)
    found = {
        "decoder_hidden_size": int(conv.out["decoder.fuse.0.weight"].shape[0]),
        "num_labels": int(conv.out["head.weight"].shape[0]),
    }
    said = (
        {} if config is None else {"decoder_hidden_size": _setting(config, "decoder_hidden_size")}
    )
    if config is not None and _num_labels(config) is not None:
        said["num_labels"] = _num_labels(config)
    for key, value in said.items():
        if value != found[key]:
            raise ConversionError(
                f"{what}: its config.json says {key}={value}, but its tensors have "
                f"{key}={found[key]}; the config and the weights are of different models"
            )
    if model is not None:
        ours = {
            "decoder_hidden_size": getattr(model.decoder, "dim", None),
            "num_labels": model.num_classes,
        }
        names = {"decoder_hidden_size": "model.decoder_dim", "num_labels": "num_classes"}
        for key, value in ours.items():
            if value != found[key]:
                raise ConversionError(
                    f"{what} has {key}={found[key]}, the segbench SegFormer is built with "
                    f"{names[key]}={value}; set {names[key]}={found[key]}"
                    + (" (dataset.num_classes)" if key == "num_labels" else "")
                )
    return conv.result(model)


def _read(spec: str) -> tuple[dict[str, Tensor], dict | None, str]:
    """``(tensors, config.json or None, the checkpoint in words)`` of ``hf:<repo>`` or a path."""
    repo = hf_repo(spec)
    if repo is not None:
        state, config = read_hf_checkpoint(repo)
        return state, config, f"Hugging Face checkpoint hf:{repo}"
    from segbench.models.weights import read_state_dict

    path = Path(spec).expanduser()
    expected = (
        "a Hugging Face MiT/SegFormer checkpoint (model.safetensors or pytorch_model.bin, "
        "transformers key names), or hf:<owner>/<repo>, e.g. hf:nvidia/mit-b0"
    )
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights file {str(path)!r} does not exist; expected {expected}"
        )
    state = read_state_dict(path, expected)
    config = None
    beside = path.parent / "config.json"  # as save_pretrained writes it
    if beside.is_file():
        try:
            found = json.loads(beside.read_text())
        except (OSError, ValueError):
            found = None
        if isinstance(found, dict) and found.get("model_type") == "segformer":
            config = found
    return state, config, f"MiT checkpoint {str(path)!r}"


def load_mit_weights(encoder: nn.Module, weights: str | None) -> None:
    """Load ``weights`` (a path or ``hf:<repo>``; ``None``: the variant's ImageNet weights
    ``hf:nvidia/mit-bN``) into MiT ``encoder``, all of it, or refuse."""
    if weights is None:
        name = encoder.name
        widths, depths = MIT_VARIANTS.get(name, (None, None))
        table = {"hidden_sizes": widths, "depths": depths, "num_attention_heads": HEADS,
                 "sr_ratios": SR_RATIOS, "mlp_ratios": MLP_RATIOS, "num_channels": 3}  # fmt: skip
        if any(encoder.arch[k] != v for k, v in table.items()):
            raise ValueError(
                f"backbone {name!r}: no ImageNet weights are published for this MiT "
                "architecture (NVIDIA's are for mit_b0 ... mit_b5 as the paper builds them, "
                "3 input channels); set backbone.pretrained=false or give backbone.weights"
            )
        weights = f"hf:{mit_hub_repo(name)}"
        try:
            state, config, what = _read(str(weights))
        except PretrainedUnavailable as err:  # say which option asked for the file
            raise PretrainedUnavailable(
                f"backbone {name!r}: pretrained=true needs NVIDIA's ImageNet weights; {err}"
            ) from err
    else:
        state, config, what = _read(str(weights))
    encoder.load_state_dict(convert_mit(state, config, what, encoder), strict=True)
