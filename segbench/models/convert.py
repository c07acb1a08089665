"""Mapping another library's state dict onto a segbench network, tensor by tensor.

A converter (one per family and source: ``segbench/models/*_hf.py``) says where every tensor
of the foreign file goes; :class:`StateDictConverter` keeps the account. A tensor may be
renamed (regular-expression rules, first match wins), taken and reshaped or split by hand
(``take`` / ``put``), or skipped for a stated reason (an ImageNet classifier an encoder has no
use for, a buffer the network recomputes). :meth:`StateDictConverter.result` then refuses a
tensor left over, one given twice, and (against a module) one missing or of another shape,
naming them: nothing is dropped in silence or left at its random initialisation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from torch import Tensor, nn

__all__ = ["ConversionError", "StateDictConverter", "stacked"]

_SHOW = 10


class ConversionError(ValueError):
    """A foreign checkpoint that does not map onto the segbench network, tensor for tensor."""


def _listed(title: str, items: Sequence[str]) -> list[str]:
    lines = [f"  {title}: {item}" for item in items[:_SHOW]]
    if len(items) > _SHOW:
        lines.append(f"  ... and {len(items) - _SHOW} more {title}")
    return lines


class StateDictConverter:
    """The account of one conversion.

    Args:
        source: the foreign tensors (the file's state dict).
        what: the file in words, for messages (``"Hugging Face checkpoint nvidia/mit-b0"``).
    """

    def __init__(self, source: Mapping[str, Tensor], what: str) -> None:
        self.source = dict(source)
        self.what = what
        self.used: set[str] = set()
        self.skipped: dict[str, str] = {}  # source key -> why
        self.out: dict[str, Tensor] = {}
        self._origin: dict[str, str] = {}  # target key -> the source key(s) it came from
        self._twice: list[str] = []

    def remaining(self, prefix: str = "") -> list[str]:
        """The source keys (under ``prefix``) neither used nor skipped yet, in file order."""
        return [
            k
            for k in self.source
            if k.startswith(prefix) and k not in self.used and k not in self.skipped
        ]

    def take(self, key: str) -> Tensor:
        """Source tensor ``key``, marked used."""
        if key not in self.source:
            raise ConversionError(
                f"{self.what}: it has no tensor {key!r}, which the converter needs; "
                "expected a checkpoint of the architecture the configuration describes"
            )
        if key in self.used:
            self._twice.append(f"{key} (read twice)")
        self.used.add(key)
        return self.source[key]

    def put(self, key: str, tensor: Tensor, origin: str = "") -> None:
        """Target tensor ``key``; each may be given once."""
        if key in self.out:
            self._twice.append(f"{key} (from {self._origin[key]} and {origin or '?'})")
        self.out[key] = tensor
        self._origin[key] = origin or "?"

    def move(self, source_key: str, target_key: str) -> None:
        """``put(target_key, take(source_key))``."""
        self.put(target_key, self.take(source_key), source_key)

    def rename(self, rules: Sequence[tuple[str, str]], prefix: str = "") -> None:
        """Move every remaining source key (under ``prefix``) that a rule matches, renamed by
        the first rule whose pattern matches it (``re.fullmatch``; ``\\1``-style groups in the
        replacement). Keys no rule matches stay for later rules or are reported as left over."""
        compiled = [(re.compile(p), r) for p, r in rules]
        for key in self.remaining(prefix):
            for pattern, replacement in compiled:
                if pattern.fullmatch(key):
                    self.move(key, pattern.sub(replacement, key))
                    break

    def skip(self, pattern: str, why: str) -> None:
        """Leave out the remaining source keys that ``pattern`` matches (``re.fullmatch``),
        recording ``why``; they do not count as left over."""
        compiled = re.compile(pattern)
        for key in self.remaining():
            if compiled.fullmatch(key):
                self.skipped[key] = why

    def result(self, module: nn.Module | Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The converted state dict, once every source tensor is accounted for.

        With ``module`` (or its state dict) the result must also fit it key for key and shape
        for shape, buffers such as ``num_batches_tracked`` aside when the source has no
        counterpart (they start at 0 in a fresh network too).

        Raises:
            ConversionError: naming the tensors left over, given twice, missing or of
                another shape.
        """
        lines = _listed("left over in the file", self.remaining())
        lines += _listed("given twice", self._twice)
        if module is not None:
            wanted = module.state_dict() if isinstance(module, nn.Module) else dict(module)
            missing = [
                k for k in wanted if k not in self.out and not k.endswith("num_batches_tracked")
            ]
            extra = [f"{k} (from {self._origin[k]})" for k in self.out if k not in wanted]
            shapes = [
                f"{k}: {list(v.shape)} from {self._origin[k]}, the network has "
                f"{list(wanted[k].shape)}"
                for k, v in self.out.items()
                if k in wanted and tuple(v.shape) != tuple(wanted[k].shape)
            ]
            lines += _listed("missing from the file", missing)
            lines += _listed("not in the network", extra)
            lines += _listed("of another shape", shapes)
        if lines:
            raise ConversionError(
                f"{self.what} does not map onto the segbench network tensor for tensor:\n"
                + "\n".join(lines)
                + "\nNothing was loaded. Check that the configuration (model, backbone, "
                "num_classes) is the checkpoint's."
            )
        return dict(self.out)

    def load_into(self, module: nn.Module) -> nn.Module:
        """Check the result against ``module`` and load it (strictly but for BatchNorm's
        step counters); returns ``module``."""
        state = self.result(module)
        missing, _ = module.load_state_dict(state, strict=False)
        left = [k for k in missing if not k.endswith("num_batches_tracked")]
        if left:  # result() has checked; a guard against a module whose state_dict() lies
            raise ConversionError(f"{self.what}: not loaded into {left[:_SHOW]}")
        return module


def stacked(converter: StateDictConverter, keys: Iterable[str], dim: int = 0) -> Tensor:
    """The tensors ``keys`` taken and concatenated along ``dim`` (separate q, k, v
    projections into one ``in_proj``)."""
    import torch

    return torch.cat([converter.take(k) for k in keys], dim=dim)
