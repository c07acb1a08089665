"""The encoder contract: what every segbench encoder exposes, and the checks models make on it.

An encoder is an ``nn.Module`` mapping ``(B, C, H, W)`` to a list of feature maps, one per
level, finest first. It exposes

- ``channels``: the channels of every returned level;
- ``strides``: the stride of every returned level (non-decreasing; a dilated encoder repeats
  its output stride);
- ``name``: a label for messages (the backbone config's ``name``); :func:`encoder_name` falls
  back to the class name for foreign encoders.

Decoders read ``channels`` and ``strides`` and never assume a number of levels. Which levels an
encoder returns is fixed when it is built, never edited afterwards: segbench's encoders take
``until_stride`` (see :func:`levels_until`) for models that read only early levels.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["encoder_name", "levels_until", "require_dilated", "require_pooling"]


def encoder_name(encoder: nn.Module) -> str:
    """The encoder's ``name`` (its backbone label), else its class name."""
    return getattr(encoder, "name", type(encoder).__name__)


def levels_until(strides: Sequence[int], until_stride: int | None) -> int:
    """How many levels, finest first, reach up to the first one at stride ``until_stride`` or
    coarser; all of them when none does or ``until_stride`` is ``None``.

    An encoder built with ``until_stride`` returns that many levels and keeps no layer after
    them (a layer whose output is never read would get no gradient, which DDP refuses).
    """
    if until_stride is None:
        return len(strides)
    if int(until_stride) < 1:
        raise ValueError(f"until_stride must be a positive stride or null, got {until_stride}")
    for i, stride in enumerate(strides):
        if stride >= until_stride:
            return i + 1
    return len(strides)


def pick_levels(
    name: str,
    strides: Sequence[int],
    out_indices: Sequence[int] | None,
    until_stride: int | None,
    first: str,
) -> list[int]:
    """The indices of the levels an encoder returns: ``out_indices`` (all when ``None``; timm's
    numbering, finest first, so that ``backbone.out_indices`` means the same on every encoder),
    then cut at ``until_stride`` (:func:`levels_until`). ``first`` names level 0 in the error.
    """
    levels = list(range(len(strides)))
    if out_indices is not None:
        picked = [int(i) for i in out_indices]
        if not picked or picked != sorted(set(picked)) or not set(picked) <= set(levels):
            raise ValueError(
                f"backbone.out_indices={list(out_indices)} does not fit encoder {name!r}: "
                f"expected increasing level indices among {levels} (0 = {first}), or null for "
                "every level"
            )
        levels = picked
    return levels[: levels_until([strides[i] for i in levels], until_stride)]


def require_dilated(
    encoder: nn.Module,
    output_stride: int,
    model_name: str,
    allowed: tuple[int, ...] = (8, 16),
) -> None:
    """Refuse an encoder that does not end at ``output_stride`` (a dilated encoder)."""
    name = encoder_name(encoder)
    if output_stride not in allowed:
        raise ValueError(
            f"{model_name}: output_stride must be one of {list(allowed)}, got {output_stride!r}"
        )
    strides = getattr(encoder, "strides", None)
    if not strides or not getattr(encoder, "channels", None):
        raise ValueError(
            f"{model_name}: encoder {name!r} must expose `channels` and `strides` (one per "
            "feature map); use a segbench backbone such as resnet50 or vgg16"
        )
    if strides[-1] != output_stride:
        raise ValueError(
            f"{model_name}: encoder {name!r} ends at stride {strides[-1]} (strides "
            f"{list(strides)}), expected a dilated encoder with output stride {output_stride}; "
            f"build the backbone with output_stride={output_stride} (the backbone configs "
            "follow model.output_stride: do not set backbone.output_stride yourself)"
        )


def require_pooling(encoder: nn.Module, model_name: str) -> None:
    """Refuse an encoder that cannot hand its max-pooling indices to an unpooling decoder."""
    name = encoder_name(encoder)
    use = "use backbone=vgg16_bn, backbone=segnet_basic or backbone=tiny"
    if not callable(getattr(encoder, "forward_with_indices", None)) or not hasattr(
        encoder, "stage_convs"
    ):
        raise ValueError(
            f"{model_name} upsamples with the encoder's max-pooling indices, but encoder "
            f"{name!r} does not return them (it has no `forward_with_indices`/`stage_convs`); "
            f"{use}"
        )
    if getattr(encoder, "out_levels", None) not in (None, list(range(len(encoder.stage_convs)))):
        raise ValueError(
            f"{model_name} unpools through every level of the encoder, but encoder {name!r} "
            f"returns only the levels {encoder.out_levels} (backbone.out_indices); set "
            "backbone.out_indices=null"
        )
    if encoder.output_stride != encoder.natural_stride:
        raise ValueError(
            f"{model_name} mirrors every 2x2 max-pool of the encoder, but encoder {name!r} is "
            f"dilated (output_stride={encoder.output_stride}, natural stride "
            f"{encoder.natural_stride}); set backbone.output_stride=null or {use}"
        )
