"""Published Hugging Face checkpoints (``hf:<owner>/<repo>``) turned into segbench networks'
state dicts: the converter of each family, chosen by the checkpoint's ``config.json``
``model_type``.

Every converter maps the file tensor by tensor through
:class:`~segbench.models.convert.StateDictConverter`: a tensor left over, missing or of
another shape is refused by name. The result has segbench's key names for the network the
checkpoint describes (its own class count); ``init_from=hf:<repo>`` then loads it into the run's
network as it loads a segbench checkpoint (:func:`segbench.engine.build.init_from_checkpoint`).
"""

from __future__ import annotations

import importlib

from torch import Tensor

from segbench.models.hub import read_hf_checkpoint

__all__ = ["CONVERTERS", "convert_hf", "hf_num_labels"]

# config.json's model_type -> (module, function(state, config, what) -> segbench state dict)
CONVERTERS = {
    "segformer": ("segbench.models.segformer_hf", "convert_segformer"),
    "upernet": ("segbench.models.upernet_hf", "convert_upernet"),
    "mask2former": ("segbench.models.mask2former_hf", "convert_mask2former"),
}


def hf_num_labels(config: dict) -> int | None:
    """The class count a Hugging Face ``config.json`` states (``num_labels`` or ``id2label``)."""
    if config.get("num_labels") is not None:
        return int(config["num_labels"])
    labels = config.get("id2label")
    return len(labels) if labels else None


def convert_hf(repo: str) -> tuple[dict[str, Tensor], int | None, dict]:
    """``(segbench state dict, class count, config.json)`` of hub checkpoint ``repo`` (read from
    the hub cache, :func:`~segbench.models.hub.read_hf_checkpoint`)."""
    state, config = read_hf_checkpoint(repo)
    kind = config.get("model_type")
    if kind not in CONVERTERS:
        raise ValueError(
            f"hf:{repo}: its config.json says model_type {kind!r}; segbench converts "
            f"{', '.join(sorted(CONVERTERS))} checkpoints (a semantic-segmentation model of one "
            "of those families, e.g. hf:nvidia/segformer-b0-finetuned-ade-512-512)"
        )
    module, name = CONVERTERS[kind]
    convert = getattr(importlib.import_module(module), name)
    converted = convert(state, config, f"Hugging Face checkpoint hf:{repo}")
    return converted, hf_num_labels(config), config
