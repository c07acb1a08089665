"""What a ``ckpt=`` value names: a checkpoint file ``train.py`` wrote, or a published checkpoint
of another library as ``<source>:<name>``::

    torchvision:fcn_resnet50                      # conf/zoo/torchvision.yaml
    mmseg:pspnet_r50-d8_4xb2-40k_cityscapes-512x1024   # an mmsegmentation metafile name
    mmseg:/path/to/pspnet_r50-d8_512x1024_40k_cityscapes_20200605_003338-2966598c.pth
    smp:smp-hub/segformer-b0-512x512-ade-160k     # a segmentation_models.pytorch hub repository
    hf:nvidia/segformer-b0-finetuned-ade-512-512  # a Hugging Face transformers repository
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SOURCES", "ZooSpec", "parse_spec", "slug"]

# source -> what its names are, for messages
SOURCES = {
    "torchvision": "a torchvision segmentation model (segbench zoo list --source torchvision)",
    "mmseg": "an mmsegmentation metafile model name or a local .pth file named as published",
    "smp": "a segmentation_models.pytorch hub repository <owner>/<name> (e.g. smp-hub/...)",
    "hf": "a Hugging Face transformers repository <owner>/<name>",
}


@dataclass(frozen=True)
class ZooSpec:
    """A published checkpoint named by ``source:name``."""

    source: str
    name: str

    def __str__(self) -> str:
        return f"{self.source}:{self.name}"


def parse_spec(value: object) -> ZooSpec | None:
    """The published checkpoint ``value`` names, or ``None`` for a path (no known source
    prefix; a Windows drive letter such as ``C:`` is a path).

    Raises:
        ValueError: a known source with an empty name.
    """
    if not isinstance(value, str) or ":" not in value:
        return None
    source, _, name = value.partition(":")
    if source not in SOURCES:
        return None
    name = name.strip()
    if not name:
        raise ValueError(
            f"ckpt={value}: no name after '{source}:'; expected {SOURCES[source]}, e.g. "
            "ckpt=torchvision:fcn_resnet50 (segbench zoo list shows them all)"
        )
    return ZooSpec(source, name)


def slug(spec: ZooSpec) -> str:
    """A file-name-safe form of ``spec`` (``torchvision_fcn_resnet50``), for default output
    directories."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{spec.source}_{spec.name}").strip("_")
