"""The encoders of segmentation_models_pytorch (smp) checkpoints → segbench's encoders, tensor by
tensor, and the backbone overrides that build them.

smp names an encoder in ``config.json``'s ``encoder_name``; segbench converts three kinds:

- ``mit_b0`` … ``mit_b5``: smp's own Mix Transformer (SegFormer's encoder, the authors' code:
  ``patch_embed{i}``, ``block{i}.{j}``, ``norm{i}``, keys and values in one ``attn.kv``) →
  :class:`~segbench.models.encoders.MiTEncoder` (``stages.{i-1}.*``, ``kv`` split into ``k``
  and ``v``), built with ``block_norm_eps=1e-6``: the authors' LayerNorm epsilon in the blocks
  and after each stage (1e-5 in the patch embeddings and reductions, as segbench's);
- ``resnet18`` … ``resnet152``, ``resnext50_32x4d``, ``resnext101_32x8d``: smp's torchvision
  ResNets (``conv1``, ``bn1``, ``layerN.*``; the classifier removed) → timm's model of the same
  name in a :class:`~segbench.models.encoders.TimmEncoder`, whose key names are torchvision's
  (``encoder.model.*``). smp dilates these by ``make_dilated``, every conv of a dilated stage at
  the stage's rate: the TimmEncoder option ``dilate_first_block``. smp keeps ``layer3``/``layer4``
  when ``encoder_depth`` stops before them (never run): skipped, with that reason;
- ``tu-<timm name>``: smp's ``TimmUniversalEncoder``, a timm ``features_only`` model under
  ``encoder.model.*`` exactly as segbench's TimmEncoder holds it (same keys), extra
  ``config.json`` keys passed to ``timm.create_model`` as there (``backbone.model_kwargs``).
  smp dilates them through timm (``output_stride``), as segbench does.

smp's feature list starts with the input (level 0) and, for encoders whose first level is at
stride 4 (MiT, ConvNeXt, ...), an empty stride-2 placeholder; segbench's levels are the real
ones, finest first. :class:`SmpEncoder` says how the two line up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import timm
import torch

from segbench.models.convert import ConversionError, StateDictConverter
from segbench.models.encoders.mit_variants import MIT_VARIANTS

__all__ = ["SmpEncoder", "convert_encoder", "smp_encoder"]

# smp's torchvision ResNets and the timm models of the same architecture and key names
RESNETS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d",
)  # fmt: skip
# segbench backbone options for some of them (conf/backbone/<name>.yaml); others:
# backbone=resnet50 with backbone.name=<timm name> (a plain TimmEncoder config)
BACKBONE_FILES = ("resnet18", "resnet34", "resnet50")
SUPPORTED = "mit_b0 ... mit_b5, " + ", ".join(RESNETS) + " or tu-<timm model>"


@dataclass
class SmpEncoder:
    """An smp encoder as segbench builds it.

    Attributes:
        kind: ``"mit"``, ``"resnet"`` or ``"timm"``.
        name: the MiT variant, or the timm model name (``tu-`` removed).
        strides: the strides of the levels segbench's encoder returns, finest first.
        overrides: the Hydra overrides of the backbone (``backbone=...``, ``backbone.*``).
        layers_unused: source key prefixes smp keeps but never runs (a ResNet cut by
            ``encoder_depth``).
    """

    kind: str
    name: str
    strides: list[int]
    overrides: list[str]
    layers_unused: list[str]


def _value(value) -> str:
    """``value`` as a Hydra override value (JSON: lists, strings quoted, null)."""
    return json.dumps(value)


def _timm_strides(name: str, kwargs: dict) -> list[int]:
    """The level strides of timm's ``features_only`` model ``name`` (built on the meta device,
    no weights, RNG untouched)."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = timm.create_model(name, pretrained=False, features_only=True, **kwargs)
    except Exception as err:  # timm's own refusal: an unknown model, a bad argument
        raise ValueError(
            f"smp encoder 'tu-{name}' with arguments {kwargs}: timm cannot build it as a "
            f"features_only model ({type(err).__name__}: {err})"
        ) from err
    return [int(s) for s in model.feature_info.reduction()]


def smp_encoder(
    encoder_name: str,
    depth: int,
    in_channels: int,
    output_stride: int = 32,
    kwargs: dict | None = None,
) -> SmpEncoder:
    """The segbench encoder of smp encoder ``encoder_name`` cut at ``encoder_depth`` ``depth``
    (smp's levels up to stride ``2**depth``), dilated to ``output_stride``.

    Raises:
        ValueError: an encoder segbench does not convert (named, with the supported ones), or
            arguments it cannot honour.
    """
    kwargs = dict(kwargs or {})
    if not 1 <= int(depth) <= 5:
        raise ValueError(f"smp encoder_depth must be 1 ... 5, got {depth}")
    over = [] if int(in_channels) == 3 else [f"++backbone.in_chans={int(in_channels)}"]
    if encoder_name in MIT_VARIANTS:
        if kwargs or depth != 5 or output_stride != 32:
            raise ValueError(
                f"smp encoder {encoder_name!r}: segbench converts smp's MiT with all four stages "
                f"(encoder_depth=5), undilated and without extra arguments; got encoder_depth="
                f"{depth}, output_stride={output_stride}, arguments {kwargs}"
            )
        over = [f"backbone={encoder_name}", "backbone.block_norm_eps=1e-06", *over]
        return SmpEncoder("mit", encoder_name, [4, 8, 16, 32], over, [])
    if encoder_name in RESNETS:
        if kwargs:
            raise ValueError(
                f"smp encoder {encoder_name!r} takes no further arguments; got {sorted(kwargs)}"
            )
        # smp dilates the stages past output_stride, kept (and skipped here) or not
        name, dilated = encoder_name, output_stride < 2**depth
        strides = [min(2 ** (i + 1), output_stride) for i in range(depth)]
        unused = [f"encoder.layer{i}." for i in range(depth, 5)]  # layer{depth} ... layer4
    elif encoder_name.startswith("tu-"):
        name, dilated = encoder_name[3:], False
        plain = _timm_strides(name, kwargs)
        if plain[0] not in (2, 4) or plain != [plain[0] * 2**i for i in range(len(plain))]:
            raise ValueError(
                f"smp encoder {encoder_name!r}: timm model {name!r} has level strides {plain}; "
                "segbench converts timm encoders whose levels start at stride 2 or 4 and "
                "double (smp's VGG-style stride-1 levels are not supported)"
            )
        if timm.models.model_entrypoint(name.split(".")[0]).__module__.endswith("swin_transformer"):
            raise ValueError(
                f"smp encoder {encoder_name!r}: smp runs timm's Swin forward (fixed img_size, "
                "padding after the window shift), segbench's Swin pads as mmseg and transformers "
                "do; the two differ, so smp Swin checkpoints are not converted"
            )
        strides = [min(s, output_stride) for s in plain if s <= 2**depth]
        if not strides:
            raise ValueError(f"smp encoder {encoder_name!r}: no level at encoder_depth={depth}")
        unused = []
        for key, value in kwargs.items():
            over.append(f"++backbone.model_kwargs.{key}={_value(value)}")
    else:
        raise ValueError(
            f"smp encoder_name {encoder_name!r} is not supported; segbench converts {SUPPORTED}"
        )
    base = name if name in BACKBONE_FILES else "resnet50"
    over = [f"backbone={base}", *([] if base == name else [f"backbone.name={name}"]), *over]
    over.append(f"backbone.out_indices={_value(list(range(len(strides))))}")
    if dilated:
        over.append("backbone.dilate_first_block=true")
    return SmpEncoder("resnet" if name in RESNETS else "timm", name, strides, over, unused)


def convert_encoder(converter: StateDictConverter, encoder: SmpEncoder) -> None:
    """Move the smp encoder's tensors (``encoder.*``) onto segbench's (``encoder.*``)."""
    if encoder.kind == "mit":
        _mit(converter)
        return
    for prefix in encoder.layers_unused:
        converter.skip(
            prefix.replace(".", r"\.") + ".*",
            f"{prefix.rstrip('.')} of smp's ResNet encoder, which it keeps but never runs "
            "(encoder_depth stops before it)",
        )
    if encoder.kind == "resnet":  # torchvision's key names are timm's
        converter.rename([(r"encoder\.(?!model\.)(.+)", r"encoder.model.\1")], prefix="encoder.")
    else:
        converter.rename([(r"encoder\.model\.(.+)", r"encoder.model.\1")], prefix="encoder.")


_MIT_BLOCK = [
    ("norm1", "norm1"),
    ("attn.q", "attn.q"),
    ("attn.proj", "attn.proj"),
    ("attn.sr", "attn.sr"),
    ("attn.norm", "attn.sr_norm"),
    ("norm2", "norm2"),
    ("mlp.fc1", "ffn.fc1"),
    ("mlp.dwconv.dwconv", "ffn.dwconv"),
    ("mlp.fc2", "ffn.fc2"),
]


def _mit(converter: StateDictConverter) -> None:
    """smp's MiT (``patch_embed{i}``, ``block{i}.{j}``, ``norm{i}``, 1-based stages) →
    MiTEncoder's ``stages.{i-1}``; the joint ``attn.kv`` is split into ``attn.k``/``attn.v``
    (smp reshapes its output as (2, heads, d): keys are the first half)."""
    for key in converter.remaining("encoder.block"):
        if key.endswith(".attn.kv.weight") or key.endswith(".attn.kv.bias"):
            stage, block = key.split(".")[1][len("block") :], key.split(".")[2]
            p = key.rsplit(".", 1)[1]
            kv = converter.take(key)
            if kv.shape[0] % 2:
                raise ConversionError(f"{converter.what}: {key} has an odd first dimension")
            half = kv.shape[0] // 2
            ours = f"encoder.stages.{int(stage) - 1}.blocks.{block}.attn"
            converter.put(f"{ours}.k.{p}", kv[:half].clone(), key)
            converter.put(f"{ours}.v.{p}", kv[half:].clone(), key)
    rules = []
    for i in range(1, 5):
        s = i - 1
        rules += [
            (
                rf"encoder\.patch_embed{i}\.(proj|norm)\.(weight|bias)",
                rf"encoder.stages.{s}.embed.\1.\2",
            ),
            (rf"encoder\.norm{i}\.(weight|bias)", rf"encoder.stages.{s}.norm.\1"),
        ]
        for theirs, ours in _MIT_BLOCK:
            rules.append(
                (
                    rf"encoder\.block{i}\.(\d+)\.{theirs.replace('.', '[.]')}\.(weight|bias)",
                    rf"encoder.stages.{s}.blocks.\1.{ours}.\2",
                )
            )
    converter.rename(rules, prefix="encoder.")
