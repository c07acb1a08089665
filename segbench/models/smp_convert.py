"""segmentation_models_pytorch (smp) checkpoints → segbench networks: the converter of each
architecture, chosen by ``config.json``'s ``_model_class``, and the Hydra overrides that build
the matching network.

smp writes a model with ``save_pretrained`` / ``push_to_hub`` (huggingface_hub's
``PyTorchModelHubMixin``, e.g. the ``smp-hub/segformer-*`` and ``smp-hub/upernet-*``
repositories) as ``config.json``, the class name under ``_model_class`` and the constructor's
keyword arguments (``encoder_name``, ``classes``, decoder widths ...), and ``model.safetensors``,
the model's state dict (``encoder.*``, ``decoder.*``, ``segmentation_head.*``). smp's
topologies are segbench's families with options (each model's YAML documents them):

==============  ===========================  ==============================================
_model_class    segbench model               options smp's topology needs
==============  ===========================  ==============================================
Segformer       ``model=segformer``          ``head_upsample``; MiT ``block_norm_eps=1e-6``
UPerNet         ``model=upernet``            ``level_norms``, ``head_upsample``, ``aux=false``
Unet            ``model=unet``               ``upsample``, ``full_resolution``, ``head_kernel``
PSPNet          ``model=pspnet``             ``ppm_*``, ``conv_kernel``, ``head_*``, shallow
                                             encoder (``encoder_depth`` 3: stride 8)
DeepLabV3Plus   ``model=deeplabv3plus_smp``  its own module (smp's separable convs, one
                                             fusion conv, ``align_corners=True`` upsampling)
==============  ===========================  ==============================================

The encoders (``mit_b*``, smp's torchvision ResNets, ``tu-<timm name>``) are converted by
:mod:`segbench.models.smp_convert_encoders`, the decoders by
:mod:`segbench.models.smp_convert_families`. The class count is the checkpoint's ``classes``:
:func:`smp_overrides` sets ``model.num_classes`` to it, whatever the dataset config says.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from segbench.models.smp_convert_config import SMP_MODEL_CLASSES, SmpConfig, read_smp_config
from segbench.models.smp_convert_families import FAMILIES

__all__ = [
    "SMP_MODEL_CLASSES",
    "SmpConfig",
    "convert_smp",
    "read_smp_config",
    "smp_num_classes",
    "smp_overrides",
]


def smp_num_classes(config: Mapping) -> int:
    """The class count of an smp checkpoint (``classes`` of its ``config.json``)."""
    return int(read_smp_config(config).args["classes"])


def smp_overrides(config: Mapping) -> list[str]:
    """The Hydra overrides of ``conf/train.yaml`` that build the segbench network of an smp
    checkpoint from its ``config.json``: model, backbone, widths, the options of smp's topology
    and ``model.num_classes`` (the checkpoint's ``classes``; it wins over the dataset's count,
    which should be the same for an evaluation to make sense).

    Raises:
        ValueError: as :func:`read_smp_config`.
    """
    cfg = read_smp_config(config)
    overrides = FAMILIES[cfg.model_class][0](cfg)
    return [*overrides, f"model.num_classes={int(cfg.args['classes'])}"]


def convert_smp(
    state: Mapping[str, Tensor],
    config: Mapping,
    what: str,
    model: nn.Module | None = None,
) -> dict[str, Tensor]:
    """An smp checkpoint's state dict as the state dict of the segbench network
    :func:`smp_overrides` builds, by the converter of its ``_model_class``.

    Args:
        state: ``model.safetensors``' tensors.
        config: its ``config.json`` as a dict.
        what: the checkpoint in words, for messages.
        model: the segbench network to fit (key for key, shape for shape); ``None``: not
            checked against a network.

    Raises:
        ValueError: an unsupported configuration (:func:`read_smp_config`).
        ConversionError: a tensor left over, missing or of another shape.
    """
    cfg = read_smp_config(config)
    return FAMILIES[cfg.model_class][1](state, config, what, model)
