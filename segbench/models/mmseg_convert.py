"""mmsegmentation checkpoints → segbench networks, tensor by tensor.

mmsegmentation (OpenMMLab, https://github.com/open-mmlab/mmsegmentation) publishes its model zoo
as ``.pth`` files holding ``{"meta": {...}, "state_dict": {...}}``: the network's tensors under
``backbone.*``, ``decode_head.*`` and ``auxiliary_head.*``, and plain metadata (``CLASSES``,
``PALETTE``, the config text, versions; mmseg 1.x: ``dataset_meta``).
:func:`read_mmseg_checkpoint` reads one without unpickling code (``weights_only=True``) and
:func:`convert_mmseg` maps its tensors onto the segbench network of the family, each of them
through :class:`~segbench.models.convert.StateDictConverter` (a tensor left over, missing or of
another shape is refused by name). Which segbench options build mmseg's network, per published
model, is its entry in ``conf/zoo/mmseg.yaml`` (``ckpt=mmseg:<name>``).

What maps where (mmseg's modules as its code builds them; ``ConvModule`` = conv → BN → ReLU,
keys ``<m>.conv.weight`` / ``<m>.bn.*``, onto segbench's ``conv_bn_relu`` ``<m>.0`` / ``<m>.1``):

- ``backbone.*`` of ``ResNetV1c`` (deep stem ``stem.0-7``, ``layer1-4``) onto timm's
  ``resnet50c`` / ``resnet101c`` (``encoder.model.conv1.*``, ``bn1``, ``layer1-4``: the same
  blocks, timm's dilation of a dilated stage's first block being mmseg's ``contract_dilation``);
  Swin and ConvNeXt (UPerNet) onto timm's: :mod:`.mmseg_convert_backbones`;
- ``decode_head`` of ``FCNHead`` → :class:`~segbench.models.dilated_fcn.DilatedFCN`'s decoder,
  ``PSPHead`` → :class:`~segbench.models.pspnet.PSPNet`'s, ``ASPPHead`` →
  :class:`~segbench.models.deeplab.DeepLabV3` (``project_kernel=3, head_conv=false``),
  ``DepthwiseSeparableASPPHead`` → :class:`~segbench.models.deeplab.DeepLabV3Plus`
  (``separable, project_kernel=3``), ``UPerHead`` → :class:`~segbench.models.upernet.UPerNet`;
  ``conv_seg`` → ``head``;
- ``auxiliary_head`` (``FCNHead``, one conv, no concat) → ``aux_head`` (skipped, with the reason,
  when the segbench network has none);
- mmseg's ASPP concatenates its image-pooling branch first, segbench's last: the fusing conv's
  input channels (and, depthwise-separable, its depthwise conv and BN) are rotated to
  segbench's order here;
- SegFormer (``MixVisionTransformer`` + ``SegformerHead``): :mod:`.mmseg_convert_mit`.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from segbench.models.convert import ConversionError, StateDictConverter
from segbench.models.mmseg_convert_backbones import convert_mmseg_backbone
from segbench.models.mmseg_convert_mit import mit_backbone, segformer_head

__all__ = [
    "MMSEG_CONVERTERS",
    "convert_mmseg",
    "convert_mmseg_segformer",
    "mmseg_classes",
    "read_mmseg_checkpoint",
]

_BN = r"(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)"
# the numpy scalar types some training scripts leave in ``meta`` (a seed, a best score): plain
# data, allowed by name when ``weights_only`` meets them; anything else is refused
_NUMPY_GLOBALS = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype")
_NUMPY_DTYPES = ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
                 "Float16", "Float32", "Float64", "Complex64", "Complex128")  # fmt: skip


def _numpy_global(name: str):
    """``(object, name)`` for a numpy global of :data:`_NUMPY_GLOBALS` or ``numpy.dtypes.*``,
    else ``None``."""
    import numpy as np

    if name in ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"):
        core = getattr(np, "_core", None) or np.core
        return (core.multiarray.scalar, name)
    if name == "numpy.dtype":
        return (np.dtype, name)
    match = re.fullmatch(r"numpy\.dtypes\.(\w+DType)", name)
    if match and hasattr(getattr(np, "dtypes", None), match[1]):
        return (getattr(np.dtypes, match[1]), name)
    return None


def _plain(value):
    """``value`` with numpy scalars as Python numbers (nested containers too)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value.item() if type(value).__module__ == "numpy" and hasattr(value, "item") else value


def read_mmseg_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """``(state_dict, meta)`` of an mmsegmentation ``.pth`` file.

    Read with ``torch.load(..., weights_only=True)``: tensors and plain containers only (numpy
    scalars in ``meta`` allowed and returned as Python numbers). A file pickling anything else
    (mmengine's ``message_hub`` of a checkpoint saved mid-training, an optimizer's objects) is
    refused, naming what it pickles; nothing there is ever executed.

    Raises:
        FileNotFoundError: no such file.
        ConversionError: not a checkpoint of mmseg's layout, or one holding other objects.
    """
    path = Path(path).expanduser()
    what = f"mmsegmentation checkpoint {str(path)!r}"
    if not path.is_file():
        raise FileNotFoundError(f"{what} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - not a torch zip file at all: say so below
            found = []
        allowed = [_numpy_global(name) for name in found]
        if not found or any(a is None for a in allowed):
            others = [n for n, a in zip(found, allowed) if a is None]
            raise ConversionError(
                f"{what} could not be read with weights_only=True: it pickles objects other "
                f"than tensors and plain containers ({', '.join(others) or err}). segbench "
                "never unpickles code; save its 'state_dict' and 'meta' alone (e.g. with "
                "mmsegmentation's tools/misc/publish_model.py after deleting 'message_hub' and "
                "'optimizer') and read that file"
            ) from err
        # a numpy scalar's dtype class only shows when it is unpickled: allow the numeric ones
        allowed += [_numpy_global(f"numpy.dtypes.{t}DType") for t in _NUMPY_DTYPES]
        with torch.serialization.safe_globals([a for a in allowed if a is not None]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError) as err:
        raise ConversionError(f"{what} is not a PyTorch file ({err})") from err
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        keys = list(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ConversionError(
            f"{what} has no 'state_dict' of tensors (found {keys}); expected the "
            "{'meta': ..., 'state_dict': ...} of an mmsegmentation model zoo file"
        )
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    return dict(state), _plain(meta)


def mmseg_classes(meta: Mapping | None) -> list[str] | None:
    """The class names a checkpoint's ``meta`` states: mmseg 0.x ``CLASSES``, 1.x
    ``dataset_meta["classes"]``; ``None`` when it states none."""
    meta = meta or {}
    classes = meta.get("CLASSES") or (meta.get("dataset_meta") or {}).get("classes")
    return [str(c) for c in classes] if classes else None


def _conv_module(mm: str, ours: str) -> list[tuple[str, str]]:
    """Rules for an mmcv ``ConvModule`` (conv without bias, BN) at ``mm`` (a pattern) → a
    segbench ``conv_bn_relu`` at ``ours`` (0: conv, 1: BN)."""
    return [
        (mm + r"\.conv\.weight", ours + ".0.weight"),
        (mm + r"\.bn\." + _BN, ours + r".1.\g<p>"),
    ]


def _separable(mm: str, ours: str) -> list[tuple[str, str]]:
    """Rules for an mmcv ``DepthwiseSeparableConvModule`` → segbench's
    ``separable_conv_bn_relu`` (0/1: depthwise conv/BN, 3/4: pointwise conv/BN)."""
    return [
        (mm + r"\.depthwise_conv\.conv\.weight", ours + ".0.weight"),
        (mm + r"\.depthwise_conv\.bn\." + _BN, ours + r".1.\g<p>"),
        (mm + r"\.pointwise_conv\.conv\.weight", ours + ".3.weight"),
        (mm + r"\.pointwise_conv\.bn\." + _BN, ours + r".4.\g<p>"),
    ]


def _aux_rules() -> list[tuple[str, str]]:
    """mmseg's auxiliary ``FCNHead`` (one conv, no concat) → segbench's ``fcn_aux_head``."""
    return _conv_module(r"auxiliary_head\.convs\.0", "aux_head.0") + [
        (r"auxiliary_head\.conv_seg\.(weight|bias)", r"aux_head.2.\1")
    ]


def _seg_rules() -> list[tuple[str, str]]:
    return [(r"decode_head\.conv_seg\.(weight|bias)", r"head.\1")]


def _pool_last(converter: StateDictConverter, key: str, width: int, dim: int) -> Tensor:
    """Tensor ``key`` with its first ``width`` entries along ``dim`` (mmseg's image-pooling
    branch) moved to the end (segbench's order)."""
    tensor = converter.take(key)
    if tensor.shape[dim] % width:
        raise ConversionError(
            f"{converter.what}: {key} has {tensor.shape[dim]} input channels, no multiple of the "
            f"ASPP width {width}"
        )
    return torch.roll(tensor, -width, dims=dim)


def _aspp(converter: StateDictConverter, separable: bool) -> None:
    """mmseg's ``ASPPHead`` / ``DepthwiseSeparableASPPHead`` ASPP part → ``decoder.aspp``."""
    branches = sorted(
        {
            int(m[1])
            for k in converter.source
            if (m := re.match(r"decode_head\.aspp_modules\.(\d+)\.", k))
        }
    )
    if branches != list(range(len(branches))) or not branches:
        raise ConversionError(
            f"{converter.what}: expected decode_head.aspp_modules.0 ... n (an ASPP head), "
            f"found {branches}"
        )
    pool = "decode_head.image_pool.1.conv.weight"
    if pool not in converter.source:
        converter.take(pool)  # raises, naming it
    width = converter.source[pool].shape[0]  # the branch width: mmseg's `channels`
    rules = _conv_module(
        r"decode_head\.image_pool\.1", f"decoder.aspp.branches.{len(branches)}.conv"
    )
    for j in branches:
        mm, ours = rf"decode_head\.aspp_modules\.{j}", f"decoder.aspp.branches.{j}"
        sep = (
            separable
            and f"decode_head.aspp_modules.{j}.depthwise_conv.conv.weight" in converter.source
        )
        rules += _separable(mm, ours) if sep else _conv_module(mm, ours)
    converter.rename(rules)
    out = "decoder.aspp.project.0"
    if not separable:
        key = "decode_head.bottleneck.conv.weight"
        converter.put(f"{out}.0.weight", _pool_last(converter, key, width, 1), key)
        converter.rename(_conv_module(r"decode_head\.bottleneck", out))
        return
    dw, pw = "decode_head.bottleneck.depthwise_conv", "decode_head.bottleneck.pointwise_conv"
    converter.put(f"{out}.0.weight", _pool_last(converter, f"{dw}.conv.weight", width, 0), dw)
    for p in ("weight", "bias", "running_mean", "running_var"):
        converter.put(f"{out}.1.{p}", _pool_last(converter, f"{dw}.bn.{p}", width, 0), dw)
    converter.put(f"{out}.3.weight", _pool_last(converter, f"{pw}.conv.weight", width, 1), pw)
    converter.rename(
        [(re.escape(dw) + r"\.bn\.num_batches_tracked", f"{out}.1.num_batches_tracked")]
    )
    converter.rename([(re.escape(pw) + r"\.bn\." + _BN, out + r".4.\g<p>")])


def _head_rules(family: str, converter: StateDictConverter) -> list[tuple[str, str]]:
    """Rename rules of the decode head of ``family`` (the ASPP parts are moved by hand)."""
    if family == "fcn":
        return _conv_module(
            r"decode_head\.convs\.(?P<i>\d+)", r"decoder.convs.\g<i>"
        ) + _conv_module(r"decode_head\.conv_cat", "decoder.conv_cat")
    if family == "pspnet":
        return _conv_module(
            r"decode_head\.psp_modules\.(?P<i>\d+)\.1", r"decoder.ppm.stages.\g<i>.1"
        ) + _conv_module(r"decode_head\.bottleneck", "decoder.conv")
    if family == "upernet":
        rules = _conv_module(
            r"decode_head\.psp_modules\.(?P<i>\d+)\.1", r"decoder.ppm.stages.\g<i>.1"
        )
        for name in ("lateral_convs", "fpn_convs"):
            rules += _conv_module(rf"decode_head\.{name}\.(?P<i>\d+)", rf"decoder.{name}.\g<i>")
        for name in ("bottleneck", "fpn_bottleneck"):
            rules += _conv_module(rf"decode_head\.{name}", f"decoder.{name}")
        return rules
    if family == "deeplabv3":
        _aspp(converter, separable=False)
        return []
    if family == "deeplabv3plus":
        _aspp(converter, separable=True)
        return _conv_module(r"decode_head\.c1_bottleneck", "decoder.low_proj") + _separable(
            r"decode_head\.sep_bottleneck\.(?P<i>[01])", r"decoder.fuse.\g<i>"
        )
    raise ConversionError(f"no mmseg converter for family {family!r}")


def _check_classes(converter: StateDictConverter, meta: Mapping | None) -> None:
    """Refuse a ``meta`` whose class list contradicts the classifier's width."""
    classes = mmseg_classes(meta)
    seg = converter.source.get("decode_head.conv_seg.weight")
    if classes is not None and seg is not None and len(classes) != seg.shape[0]:
        raise ConversionError(
            f"{converter.what}: its meta names {len(classes)} classes, its classifier "
            f"decode_head.conv_seg has {seg.shape[0]} outputs"
        )


def _convert_resnet_family(family: str) -> Callable:
    def convert(
        state: Mapping[str, Tensor],
        config: Mapping | None,
        what: str,
        model: nn.Module | None = None,
    ) -> dict[str, Tensor]:
        converter = StateDictConverter(state, what)
        _check_classes(converter, config)
        convert_mmseg_backbone(converter, "backbone.", "encoder.")
        converter.rename(_head_rules(family, converter) + _seg_rules())
        if model is not None and getattr(model, "aux_head", None) is None:
            converter.skip(
                r"auxiliary_head\..*",
                "mmseg's auxiliary FCN head, a training-time loss only: the segbench network "
                "was built without one (model.aux=false)",
            )
        converter.rename(_aux_rules())
        return converter.result(model)

    convert.__name__ = f"convert_mmseg_{family}"
    convert.__doc__ = (
        f"An mmseg {family} checkpoint (ResNetV1c, Swin or ConvNeXt backbone: "
        ":mod:`.mmseg_convert_backbones`) as the segbench network's state "
        "dict; ``config`` is the checkpoint's ``meta`` (its class list is checked), ``model`` "
        "the network to fit (key for key, shape for shape) or ``None``."
    )
    return convert


def convert_mmseg_segformer(
    state: Mapping[str, Tensor],
    config: Mapping | None,
    what: str,
    model: nn.Module | None = None,
) -> dict[str, Tensor]:
    """An mmseg SegFormer checkpoint (``MixVisionTransformer`` + ``SegformerHead``) as the state
    dict of segbench's SegFormer on a MiT backbone with conv → BN → ReLU level projections
    (:mod:`.mmseg_convert_mit`); ``config`` is the checkpoint's ``meta``."""
    converter = StateDictConverter(state, what)
    _check_classes(converter, config)
    mit_backbone(converter, "backbone.", "encoder.")
    segformer_head(converter)
    return converter.result(model)


# family -> convert(state, meta, what, model=None) -> segbench state dict
MMSEG_CONVERTERS: dict[str, Callable] = {
    family: _convert_resnet_family(family)
    for family in ("fcn", "pspnet", "deeplabv3", "deeplabv3plus", "upernet")
}
MMSEG_CONVERTERS["segformer"] = convert_mmseg_segformer


def convert_mmseg(
    family: str,
    state: Mapping[str, Tensor],
    what: str,
    model: nn.Module | None = None,
    meta: Mapping | None = None,
) -> dict[str, Tensor]:
    """An mmsegmentation checkpoint's ``state_dict`` as the state dict of the segbench network
    of ``family`` (``fcn``, ``pspnet``, ``deeplabv3``, ``deeplabv3plus``, ``upernet``,
    ``segformer``; the network the overrides of its ``conf/zoo/mmseg.yaml`` entry build).

    Args:
        family: the mmseg model family.
        state: the checkpoint's ``state_dict`` (:func:`read_mmseg_checkpoint`).
        what: the checkpoint in words, for messages.
        model: the segbench network to fit (key for key, shape for shape); ``None``: unchecked.
        meta: the checkpoint's ``meta``; its class list is checked against the classifier.

    Raises:
        ConversionError: an unknown family, or any tensor left over, missing, given twice or
            of another shape (named).
    """
    if family not in MMSEG_CONVERTERS:
        raise ConversionError(
            f"{what}: no mmseg converter for family {family!r}; expected one of "
            f"{sorted(MMSEG_CONVERTERS)}"
        )
    return MMSEG_CONVERTERS[family](state, meta, what, model)
