"""Hugging Face UperNet checkpoints (``UperNetForSemanticSegmentation``, e.g.
``openmmlab/upernet-convnext-tiny``, ``openmmlab/upernet-swin-tiny``) → segbench's
:class:`~segbench.models.upernet.UPerNet`.

The backbone (``backbone.*``: ConvNeXt, Swin or ResNet) goes through
:func:`segbench.models.hf_backbones.convert_backbone` onto the :class:`TimmEncoder`'s keys
(``encoder.model.*``, the per-level norms ``encoder.out_norms.*``); the decode head
(``decode_head.*``) onto ``decoder.*`` and ``head.*``; the auxiliary FCN head
(``auxiliary_head.*``) onto ``aux_head.*``. Every tensor is accounted for by
:class:`~segbench.models.convert.StateDictConverter`: one left over, missing (against a
model) or of another shape is refused by name.

The segbench model that takes the result: ``model=upernet`` with the backbone of the checkpoint
(``backbone=convnext_tiny`` / ``swin_tiny``, ``out_norms: true``), ``model.channels`` its
``hidden_size`` and ``model.aux_channels`` its ``auxiliary_channels``.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from segbench.models.convert import ConversionError, StateDictConverter
from segbench.models.hf_backbones import convert_backbone, hf_out_stages

__all__ = ["convert_upernet"]

_BN = r"batch_norm\.(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)"


def _conv_module(hf: str, ours: str) -> list[tuple[str, str]]:
    """Rules for one ``UperNetConvModule`` (conv, BN, ReLU) → ``conv_bn_relu`` (0: conv,
    1: BN); ``hf`` a regular expression, ``ours`` its replacement."""
    return [(hf + r"\.conv\.weight", ours + ".0.weight"), (hf + r"\." + _BN, ours + r".1.\g<p>")]


def _rules() -> list[tuple[str, str]]:
    rules = []
    for hf, ours in [
        (r"decode_head\.psp_modules\.(\d+)\.1", r"decoder.ppm.stages.\1.1"),
        (r"decode_head\.bottleneck", "decoder.bottleneck"),
        (r"decode_head\.lateral_convs\.(\d+)", r"decoder.lateral_convs.\1"),
        (r"decode_head\.fpn_convs\.(\d+)", r"decoder.fpn_convs.\1"),
        (r"decode_head\.fpn_bottleneck", "decoder.fpn_bottleneck"),
        (r"auxiliary_head\.convs\.0", "aux_head.0"),
    ]:
        rules += _conv_module(hf, ours)
    rules += [
        (r"decode_head\.classifier\.(weight|bias)", r"head.\1"),
        (r"auxiliary_head\.classifier\.(weight|bias)", r"aux_head.2.\1"),
    ]
    return rules


def convert_upernet(
    state: Mapping[str, Tensor],
    config: Mapping | None,
    what: str,
    model: nn.Module | None = None,
) -> dict[str, Tensor]:
    """A Hugging Face ``UperNetForSemanticSegmentation`` state dict as a segbench
    :class:`~segbench.models.upernet.UPerNet` state dict.

    Args:
        state: the checkpoint's tensors (the hub files' key names or transformers 5's).
        config: its ``config.json`` as a dict, with a ``backbone_config`` of ``model_type``
            ``convnext``, ``swin`` or ``resnet``.
        what: the checkpoint in words, for messages.
        model: the UPerNet to fit (key for key, shape for shape); ``None``: not checked
            against a network.

    Raises:
        ConversionError: a backbone or head configuration segbench's UPerNet does not
            compute, or any tensor left over, given twice, missing or of another shape.
    """
    config = dict(config or {})
    backbone = config.get("backbone_config")
    if not isinstance(backbone, Mapping) or config.get("use_timm_backbone"):
        raise ConversionError(
            f"{what}: its config.json has no transformers backbone_config (a timm or named "
            "backbone?); segbench converts UperNet checkpoints with a ConvNeXt, Swin or "
            "ResNet backbone_config"
        )
    backbone = dict(backbone)
    stages = hf_out_stages(backbone)
    if len(stages) != 4:
        raise ConversionError(
            f"{what}: its backbone returns the stages {stages}; segbench's UPerNet reads four "
            "levels (strides 4 to 32, the auxiliary head on the third)"
        )
    if config.get("use_auxiliary_head", True) and (
        config.get("auxiliary_num_convs", 1) != 1 or config.get("auxiliary_concat_input", False)
    ):
        raise ConversionError(
            f"{what}: its auxiliary head has auxiliary_num_convs="
            f"{config.get('auxiliary_num_convs')} and auxiliary_concat_input="
            f"{config.get('auxiliary_concat_input')}; segbench's has one conv and no concat"
        )
    converter = StateDictConverter(state, what)
    convert_backbone(converter, "backbone.", "encoder.", backbone)
    converter.rename(_rules())
    return converter.result(model)
