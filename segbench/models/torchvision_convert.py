"""torchvision's semantic-segmentation checkpoints (``torchvision.models.segmentation``: FCN,
DeepLab v3 and LR-ASPP, trained on COCO with the 20 Pascal VOC categories) → segbench networks.

Each published model is a segbench model built from the overrides of its entry in
``conf/zoo/torchvision.yaml`` (``ckpt=torchvision:<name>``), computing the same logits on the
same weights:

- ``fcn_resnet50`` / ``fcn_resnet101``: ``model=dilated_fcn`` with torchvision's head (one 3×3
  conv → BN → ReLU, no input concatenated back) on the timm ResNet at output stride 8, the
  auxiliary FCN head (``aux_classifier``) on ``layer3``;
- ``deeplabv3_resnet50`` / ``deeplabv3_resnet101``: ``model=deeplabv3`` at output stride 8
  (ASPP rates 12, 24, 36), with the auxiliary head;
- ``deeplabv3_mobilenet_v3_large``: ``model=deeplabv3`` at output stride 16 on
  :class:`~segbench.models.encoders.mobilenetv3.MobileNetV3Encoder` with torchvision's taps
  (``backbone.taps=first``: the auxiliary head reads ``features[4]``, the first 40-channel
  block; 10 channels wide, a quarter of its input as torchvision's ``FCNHead``), ASPP rates
  12, 24, 36 (torchvision keeps them at output stride 16);
- ``lraspp_mobilenet_v3_large``: ``model=lraspp`` on the same encoder (no auxiliary head).

torchvision's ResNet tensors (``backbone.*``) have timm's names (``encoder.model.*``), its
MobileNetV3 ones segbench's encoder's (``encoder.features.*``); the heads are renamed rule by
rule. Every tensor is accounted for by :class:`~segbench.models.convert.StateDictConverter`:
one left over, missing (against a model) or of another shape is refused by name.

The ASPP projection's dropout is 0.5 in torchvision (the overrides set ``model.dropout=0.5``)
and the auxiliary loss weight of its training recipe 0.5 (``model.aux_weight=0.5``); neither
changes a prediction.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from segbench.models.convert import ConversionError, StateDictConverter

__all__ = ["ARCHS", "convert_torchvision"]

# the torchvision segmentation models converted
ARCHS = (
    "fcn_resnet50",
    "fcn_resnet101",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
)

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


def _fcn_head(prefix: str, conv: str, cls: str) -> list[tuple[str, str]]:
    """Rules for torchvision's ``FCNHead`` under ``prefix`` (0: 3×3 conv, 1: BN, 2: ReLU,
    3: dropout, 4: 1×1 classifier) onto a segbench ``conv_bn_relu`` at ``conv`` and a
    classifier at ``cls``."""
    return [
        (prefix + r"\.0\.weight", conv + ".0.weight"),
        (prefix + r"\.1\." + _BN, conv + r".1.\1"),
        (prefix + r"\.4\.(weight|bias)", cls + r".\1"),
    ]


def _deeplab_rules() -> list[tuple[str, str]]:
    aspp = r"classifier\.0\."
    return [
        # the 1×1 branch and the three atrous 3×3 branches: conv (0), BN (1)
        (aspp + r"convs\.([0-3])\.0\.weight", r"decoder.aspp.branches.\1.0.weight"),
        (aspp + r"convs\.([0-3])\.1\." + _BN, r"decoder.aspp.branches.\1.1.\2"),
        # image pooling: pool (0), conv (1), BN (2)
        (aspp + r"convs\.4\.1\.weight", "decoder.aspp.branches.4.conv.0.weight"),
        (aspp + r"convs\.4\.2\." + _BN, r"decoder.aspp.branches.4.conv.1.\1"),
        (aspp + r"project\.0\.weight", "decoder.aspp.project.0.0.weight"),
        (aspp + r"project\.1\." + _BN, r"decoder.aspp.project.0.1.\1"),
        # DeepLabHead after the ASPP: 3×3 conv (1), BN (2), ReLU, classifier (4)
        (r"classifier\.1\.weight", "decoder.conv.0.weight"),
        (r"classifier\.2\." + _BN, r"decoder.conv.1.\1"),
        (r"classifier\.4\.(weight|bias)", r"head.\1"),
    ]


def _lraspp_rules() -> list[tuple[str, str]]:
    return [
        (r"classifier\.cbr\.0\.weight", "decoder.cbr.0.weight"),
        (r"classifier\.cbr\.1\." + _BN, r"decoder.cbr.1.\1"),
        (r"classifier\.scale\.1\.weight", "decoder.scale.1.weight"),
        (r"classifier\.(low|high)_classifier\.(weight|bias)", r"decoder.\1_classifier.\2"),
    ]


def _rules(arch: str) -> list[tuple[str, str]]:
    """Every rename rule of torchvision model ``arch``: backbone, head, auxiliary head."""
    if "mobilenet_v3" in arch:  # IntermediateLayerGetter over `features`: backbone.<i>.*
        backbone = [(r"backbone\.(\d+\..+)", r"encoder.features.\1")]
    else:  # IntermediateLayerGetter over the ResNet: conv1, bn1, layer1..4, timm's names
        backbone = [(r"backbone\.((?:conv1|bn1|layer[1-4])\..+)", r"encoder.model.\1")]
    if arch.startswith("fcn_"):
        head = _fcn_head(r"classifier", "decoder.convs.0", "head")
    elif arch.startswith("deeplabv3_"):
        head = _deeplab_rules()
    else:
        head = _lraspp_rules()
    aux = (
        []
        if arch.startswith("lraspp_")
        else _fcn_head("aux_classifier", "aux_head.0", "aux_head.2")
    )
    return backbone + head + aux


def convert_torchvision(
    arch: str,
    state: Mapping[str, Tensor],
    what: str,
    model: nn.Module | None = None,
) -> dict[str, Tensor]:
    """A torchvision segmentation state dict as the state dict of the segbench network its
    ``conf/zoo/torchvision.yaml`` entry builds.

    Args:
        arch: torchvision's model name (``fcn_resnet50``, ``deeplabv3_mobilenet_v3_large``,
            ``lraspp_mobilenet_v3_large``, ...: :data:`ARCHS`).
        state: the checkpoint's tensors (``model.state_dict()`` of torchvision's model, with
            ``aux_classifier.*`` where it was built with ``aux_loss=True``, as the published
            FCN and DeepLab v3 weights are).
        what: the checkpoint in words, for messages.
        model: the segbench network to fit (key for key, shape for shape); ``None``: not
            checked against a network.

    Raises:
        ConversionError: an unknown ``arch``, or any tensor left over, given twice, missing
            or of another shape.
    """
    if arch not in ARCHS:
        raise ConversionError(
            f"{what}: torchvision model {arch!r} is not one segbench converts; known: "
            f"{', '.join(ARCHS)}"
        )
    converter = StateDictConverter(state, what)
    converter.rename(_rules(arch))
    return converter.result(model)
