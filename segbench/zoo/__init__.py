"""Published checkpoints of other libraries evaluated as segbench networks: ``ckpt=<source>:<name>``
wherever ``ckpt=`` is accepted (``evaluate.py``, ``segbench predict``, ``export``, ``serve``).

- :mod:`~segbench.zoo.spec`: what a ``ckpt=`` value names (a file, or ``torchvision:``,
  ``mmseg:``, ``smp:``, ``hf:`` and a name);
- :mod:`~segbench.zoo.registry`: the entries of ``conf/zoo/*.yaml``: where each file is, the
  segbench network it becomes, the publisher's preprocessing, classes and published figures;
- :mod:`~segbench.zoo.files`: the caches the libraries themselves use, hash checks, downloads;
- :mod:`~segbench.zoo.load`: from a spec to the run config and weights an evaluation takes;
- :mod:`~segbench.zoo.cli`: ``segbench zoo list | fetch``.

Every file is read as tensors only (``torch.load(weights_only=True)``, safetensors) and every
tensor is mapped by a converter that refuses one left over or missing
(:class:`~segbench.models.convert.StateDictConverter`).
"""

from segbench.zoo.spec import SOURCES, ZooSpec, parse_spec

__all__ = ["SOURCES", "ZooSpec", "parse_spec"]
