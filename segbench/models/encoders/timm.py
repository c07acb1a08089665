"""``TimmEncoder``: a thin adapter over timm's ``features_only`` models, meeting the encoder
contract of :mod:`segbench.models.encoders.base`.

Two kinds of timm models need more than timm's own forward:

- models whose features are channels-last (Swin: ``NHWC``) are returned channels-first;
- Swin (v1, ``swin_*``) runs through :func:`swin_features`, which takes any input size the way
  the segmentation references do (mmseg's Swin, transformers' ``SwinBackbone``): the image
  padded right/bottom to a multiple of the patch size, every block's map padded to a multiple
  of the window *before* its cyclic shift (timm shifts first, then pads), full 7x7 windows and
  shifts at every stage whatever the map size (timm's ``always_partition``; timm's default
  drops the shift where a map is no larger than a window, e.g. stage 4 at 224x224), odd maps
  padded before patch merging. Where nothing is padded it is timm's forward with
  ``always_partition=True``, exactly.

The per-level output norms of the dense-prediction ConvNeXt and Swin (mmseg's ``norm{i}``,
transformers' ``hidden_states_norms``) live here too, as the option ``out_norms``: one
channel LayerNorm per returned level, keys ``out_norms.<j>.weight/bias``, outside timm's
``model.`` keys so that ImageNet weights files still fit ``model`` one to one
(:func:`segbench.models.hf_backbones.convert_backbone` maps transformers' norms onto them).

(This module is ``segbench.models.encoders.timm``; ``import timm`` below is absolute and loads
the timm package itself.)
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models.swin_transformer import window_partition, window_reverse
from torch import Tensor, nn

from segbench.models.encoders.base import levels_until
from segbench.models.pretrained import (
    cached_timm_file,
    hub_unreachable,
    offline,
    unavailable,
)
from segbench.models.weights import read_state_dict, state_dict_mismatch

__all__ = ["TimmEncoder"]


class TimmEncoder(nn.Module):
    """A timm backbone returning a list of feature maps, finest first.

    The levels it returns are fixed when it is built: timm is given ``out_indices`` and its
    ``FeatureListNet`` keeps no module after the last level asked for.

    Args:
        name: timm model name, e.g. ``resnet18``, ``resnet50`` or a ``test_*`` model.
        pretrained: load timm's ImageNet weights through timm (the Hugging Face hub cache,
            :mod:`segbench.models.pretrained`: downloaded when missing and online; offline
            and not cached, refused with the command that fetches them).
        pretrained_tag: which of timm's weight variants (``resnet50.<tag>``, e.g.
            ``a1_in1k``); ``None``: timm's default one.
        weights: path to a local state-dict file of the whole timm model ``name`` (timm's key
            names, as ``timm.create_model(name).state_dict()`` saves them; ``.safetensors`` or a
            ``torch.save`` file, possibly under ``state_dict``/``model``, ``module.`` prefixes
            allowed). It must fit the model key for key and shape for shape (the classifier
            aside, which a feature extractor drops): anything else is refused, never loaded in
            part.
        out_indices: which feature levels to return (default: all).
        output_stride: 32 (plain; also ``None``), 16 or 8 (dilated last stages, as in DeepLab).
        in_chans: number of input channels.
        until_stride: return the levels (of ``out_indices``) up to the first one at this stride
            or coarser, and no layer after it (ReSeg: 4); ``None``: all of them.
        out_norms: a LayerNorm over the channels of every returned level (``out_norms.<j>``),
            as the dense-prediction ConvNeXt and Swin have (mmseg, transformers'
            ``hidden_states_norms``); its eps is the backbone's own LayerNorms' (ConvNeXt 1e-6,
            Swin 1e-5; 1e-5 for a model without any). Off for ResNets, which have none.
        model_kwargs: further arguments of ``timm.create_model`` that change the architecture
            (``depths``, ``dims``, ``embed_dim``, ``num_heads``, ...), e.g. for small test
            models; a weights file must then fit the model they build.
        dilate_first_block: with ``output_stride`` 8 or 16, give every conv of a dilated stage
            the stage's rate, its first block's included (segmentation_models_pytorch's
            ``make_dilated`` on its own ResNets); ``False`` (default): timm's dilation, whose
            first block of a dilated stage keeps the previous stage's rate (as torchvision's
            ``replace_stride_with_dilation``).

    Swin cannot dilate: ``output_stride`` 8 or 16 is refused.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        weights: str | None = None,
        out_indices: list[int] | tuple[int, ...] | None = None,
        output_stride: int | None = 32,
        in_chans: int = 3,
        until_stride: int | None = None,
        pretrained_tag: str | None = None,
        out_norms: bool = False,
        model_kwargs: dict | None = None,
        dilate_first_block: bool = False,
    ) -> None:
        super().__init__()
        if not timm.is_model(name.split(".")[0]):
            raise ValueError(f"backbone name {name!r} is not a timm model")
        self.swin = _is_swin(name)
        kwargs: dict = {**_plain(model_kwargs or {}), "features_only": True, "in_chans": in_chans}
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        output_stride = 32 if output_stride is None else int(output_stride)
        if self.swin:
            if output_stride != 32:
                raise ValueError(
                    f"backbone {name!r} (Swin) cannot dilate: output_stride={output_stride} is "
                    "not possible, only 32 (null). Use a model that reads a stride-32 encoder "
                    "(UPerNet, FPN-style decoders) or a dilatable backbone such as resnet50 or "
                    "convnext_tiny"
                )
            # any input size, and shifted windows at every stage (see swin_features)
            kwargs.update(strict_img_size=False, always_partition=True)
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        if until_stride is not None:
            kwargs["out_indices"] = _indices_until(name, kwargs, until_stride)
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"backbone weights file {str(path)!r} does not exist; expected a local "
                    f"state-dict file for timm model {name!r}"
                )
            _check_weights(path, name, kwargs)
            # timm reads the file itself (loading it non-strictly, hence the check above);
            # source None: the file, never the hub, whatever the model's registry entry says
            kwargs["pretrained_cfg_overlay"] = {"file": str(path), "source": None}
            pretrained = True
        elif pretrained:
            self.model = _pretrained(f"{name}.{pretrained_tag}" if pretrained_tag else name, kwargs)
        self.name = name
        if not hasattr(self, "model"):
            try:
                self.model = timm.create_model(name, pretrained=pretrained, **kwargs)
            except (IndexError, AssertionError) as err:  # timm's own refusal names no key
                if out_indices is None:
                    raise
                raise ValueError(
                    f"backbone.out_indices={list(out_indices)} does not fit timm model {name!r} "
                    f"({err}); expected feature indices from 0 (stride 2) up, e.g. [1, 2, 3, 4], "
                    "or null for all of them"
                ) from err
        if dilate_first_block and output_stride != 32:
            _dilate_whole_stages(self.model, name, kwargs, output_stride)
        info = self.model.feature_info
        self.channels: list[int] = list(info.channels())
        self.strides: list[int] = list(info.reduction())
        self.output_stride = self.strides[-1] if until_stride is not None else output_stride
        self.channels_last = str(getattr(self.model, "output_fmt", "NCHW")).endswith("NHWC")
        self.out_norms = None
        if out_norms:
            eps = next((m.eps for m in self.model.modules() if isinstance(m, nn.LayerNorm)), 1e-5)
            self.out_norms = nn.ModuleList(LayerNorm2d(c, eps=eps) for c in self.channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = swin_features(self.model, x) if self.swin else self.model(x)
        if self.channels_last:  # (B, H, W, C) -> (B, C, H, W)
            features = [f.permute(0, 3, 1, 2).contiguous() for f in features]
        if self.out_norms is not None:
            features = [norm(f) for norm, f in zip(self.out_norms, features, strict=True)]
        return features

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, strides={self.strides}"


def _is_swin(name: str) -> bool:
    """Whether timm model ``name`` is a Swin Transformer (v1)."""
    entry = timm.models.model_entrypoint(name.split(".")[0])
    return entry.__module__ == "timm.models.swin_transformer"


def _plain(value):
    """``value`` with Hydra's containers made plain Python (lists as tuples, as timm wants)."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or type(value).__name__ == "ListConfig":
        return tuple(_plain(v) for v in value)
    return value


def swin_features(model: nn.Module, x: Tensor) -> list[Tensor]:
    """The levels of timm's features-only Swin ``model`` (``patch_embed``, ``layers_<i>``) for
    an input of any size, padded as the segmentation references pad (module docstring).

    Args:
        model: timm's ``FeatureListNet`` over a ``SwinTransformer`` built with
            ``always_partition=True``.
        x: ``(B, C, H, W)`` images.

    Returns:
        the returned levels, ``(B, H/s, W/s, C_s)`` each (channels last, as timm's).
    """
    features = []
    for key, module in model.items():
        if key == "patch_embed":
            ph, pw = module.patch_size
            x = F.pad(x, (0, (-x.shape[-1]) % pw, 0, (-x.shape[-2]) % ph))
            x = module(x)  # (B, H/4, W/4, C)
        elif hasattr(module, "blocks"):  # a stage: merge 2x2 patches (odd maps padded), blocks
            x = module.downsample(x)
            for block in module.blocks:
                x = _swin_block(block, x)
        else:
            x = module(x)
        if key in model.return_layers:
            features.append(x)
    return features


def _swin_block(block: nn.Module, x: Tensor) -> Tensor:
    """One timm ``SwinTransformerBlock`` on ``(B, H, W, C)``: (shifted) window attention on the
    map padded to whole windows, padding before the shift, then the MLP."""
    _, height, width, channels = x.shape
    (wh, ww), (sh, sw) = block.window_size, block.shift_size
    y = block.norm1(x)
    y = F.pad(y, (0, 0, 0, (-width) % ww, 0, (-height) % wh))  # zeros right/bottom
    _, hp, wp, _ = y.shape
    mask = None
    if sh or sw:
        y = torch.roll(y, shifts=(-sh, -sw), dims=(1, 2))
        mask = _shift_mask(hp, wp, (wh, ww), (sh, sw), y)
    windows = window_partition(y, (wh, ww)).view(-1, wh * ww, channels)
    windows = block.attn(windows, mask=mask).view(-1, wh, ww, channels)
    y = window_reverse(windows, (wh, ww), hp, wp)
    if sh or sw:
        y = torch.roll(y, shifts=(sh, sw), dims=(1, 2))
    x = x + block.drop_path1(y[:, :height, :width, :])
    return x + block.drop_path2(block.mlp(block.norm2(x)))


def _shift_mask(
    height: int, width: int, window: tuple[int, int], shift: tuple[int, int], like: Tensor
) -> Tensor:
    """``(windows, N, N)`` attention mask of shifted windows on a padded ``height x width`` map:
    -100 between positions that the cyclic shift brought from different regions."""

    def regions(size: int, win: int, s: int) -> Tensor:
        idx = torch.arange(size, device=like.device)
        return (idx >= size - win).long() + (idx >= size - s).long()  # 0, 1 or 2

    ids = regions(height, window[0], shift[0])[:, None] * 3 + regions(width, window[1], shift[1])
    ids = window_partition(ids[None, :, :, None].to(like.dtype), window).flatten(1)  # (nW, N)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def _pretrained(name: str, kwargs: dict) -> nn.Module:
    """timm model ``name`` with its pretrained weights, loaded by timm from the hub cache (or
    downloaded into it); refused with the fetch command when they cannot be had."""
    cached = cached_timm_file(name)
    if cached is not None:  # read the cached file itself: no hub request, with or without network
        overlay = {"file": str(cached), "source": None}
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    if offline():
        raise unavailable(name, "HF_HUB_OFFLINE is set")
    unreachable = hub_unreachable()  # at once, rather than after the hub client's retries
    if unreachable:
        raise unavailable(name, unreachable)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as err:  # the download failed half-way
        raise unavailable(name, f"could not be downloaded ({type(err).__name__}: {err})") from err


def _dilate_whole_stages(model: nn.Module, name: str, kwargs: dict, output_stride: int) -> None:
    """Give every conv (kernel > 1) of each dilated feature stage of ``model`` the stage's
    dilation rate ``natural stride / output_stride``, with the padding that keeps its size
    (``dilation * (k - 1) / 2``): segmentation_models_pytorch's ``make_dilated``. The natural
    strides are read from a copy of the plain model built on the meta device (RNG restored)."""
    plain = {k: v for k, v in kwargs.items() if k != "output_stride"}
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        natural = timm.create_model(name, pretrained=False, **plain).feature_info.reduction()
    for module_name, stride in zip(model.feature_info.module_name(), natural, strict=True):
        rate = stride // output_stride
        if rate < 2:
            continue
        stage = model[module_name.replace(".", "_")]
        for conv in stage.modules():
            if isinstance(conv, nn.Conv2d) and max(conv.kernel_size) > 1:
                if conv.stride != (1, 1):
                    raise ValueError(
                        f"backbone {name!r}: dilate_first_block found a strided conv in the "
                        f"dilated stage {module_name!r}; timm did not dilate this model"
                    )
                conv.dilation = (rate, rate)
                conv.padding = tuple(rate * (k - 1) // 2 for k in conv.kernel_size)


def _indices_until(name: str, kwargs: dict, until_stride: int) -> tuple[int, ...]:
    """The ``out_indices`` (``kwargs``' or timm's default) up to the first level at stride
    ``until_stride`` or coarser.

    timm states a model's level strides only once it is built, so this asks a copy built on the
    meta device (no memory, no weights); the RNG state is restored afterwards, so that a seeded
    encoder gets the same weights as from a single build.
    """
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        info = timm.create_model(name, pretrained=False, **kwargs).feature_info
    indices = list(info.out_indices)
    return tuple(indices[: levels_until(info.reduction(), until_stride)])


def _check_weights(path: Path, name: str, kwargs: dict) -> None:
    """Refuse weights file ``path`` unless it fits timm model ``name`` (built with ``kwargs``).

    timm loads a feature extractor's weights with ``strict=False`` (it drops the classifier),
    so a file of another model would load nothing and merely be logged. This compares the file
    with the whole model, built on the meta device (no memory, no weights, RNG untouched): every
    key but the classifier's present, nothing else, every shape the same. The first conv may
    have the input channels of timm's pretrained weights, which timm adapts to ``in_chans``.
    """
    expected = f"a state dict of timm model {name!r} (timm.create_model({name!r}).state_dict())"
    found = read_state_dict(path, expected)
    full = {k: v for k, v in kwargs.items() if k not in ("features_only", "out_indices")}
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **full)
        cfg = model.pretrained_cfg
        wanted = model.state_dict()
        also_fits = {}
        source_chans = (cfg.get("input_size") or (3,))[0]
        first_convs = cfg.get("first_conv") or ()
        if source_chans != full.get("in_chans", 3) and first_convs:
            source = timm.create_model(name, pretrained=False, **{**full, "in_chans": source_chans})
            shapes = source.state_dict()
            for conv in (first_convs,) if isinstance(first_convs, str) else first_convs:
                if f"{conv}.weight" in shapes:
                    also_fits[f"{conv}.weight"] = tuple(shapes[f"{conv}.weight"].shape)
    classifiers = cfg.get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else classifiers
    optional = {f"{c}.{p}" for c in classifiers for p in ("weight", "bias")}
    problems = state_dict_mismatch(found, wanted, optional, also_fits)
    if problems:
        raise ValueError(
            f"backbone weights file {str(path)!r} does not fit timm model {name!r}: {problems}. "
            f"Nothing was loaded; expected {expected}"
        )
