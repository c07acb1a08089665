"""``TimmEncoder``: a thin adapter over timm's ``features_only`` models, meeting the encoder
contract of :mod:`segbench.models.encoders.base`.

(This module is ``segbench.models.encoders.timm``; ``import timm`` below is absolute and loads
the timm package itself.)
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
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
    ) -> None:
        super().__init__()
        if not timm.is_model(name.split(".")[0]):
            raise ValueError(f"backbone name {name!r} is not a timm model")
        kwargs: dict = {"features_only": True, "in_chans": in_chans}
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        output_stride = 32 if output_stride is None else int(output_stride)
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
        info = self.model.feature_info
        self.channels: list[int] = list(info.channels())
        self.strides: list[int] = list(info.reduction())
        self.output_stride = self.strides[-1] if until_stride is not None else output_stride

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.model(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, strides={self.strides}"


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
