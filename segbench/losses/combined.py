"""A weighted sum of losses from config (``loss=ce_dice``), recording each term for logging."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

__all__ = ["WeightedSum"]


class WeightedSum(nn.Module):
    """A weighted sum of named losses, e.g. cross-entropy + Dice (``loss=ce_dice``).

    Every term must use the same ``num_classes`` and ``ignore_index`` (they become this loss's).
    A term of weight 0 is skipped. After each call, ``last_terms`` maps every computed term's
    name to its unweighted value (a detached tensor), for logging.

    Args:
        terms: ``{name: {"loss": <loss module>, "weight": float}}``; from config each ``loss``
            is a loss config (with ``_target_``), so ``loss.terms.dice.weight=0.5`` overrides a
            weight.
    """

    def __init__(self, terms: Mapping[str, Mapping[str, Any]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("loss.terms is empty; expected {name: {loss: ..., weight: ...}}")
        losses: dict[str, nn.Module] = {}
        self.weights: dict[str, float] = {}
        for name, term in terms.items():
            key = f"loss.terms.{name}"
            if "." in name or not name:
                raise ValueError(f"{key}: a term name must be non-empty and have no '.'")
            if not isinstance(term, Mapping) or set(term) != {"loss", "weight"}:
                found = sorted(term) if isinstance(term, Mapping) else type(term).__name__
                raise ValueError(f"{key} has {found}, expected exactly the keys loss and weight")
            loss, weight = term["loss"], term["weight"]
            if not isinstance(loss, nn.Module):
                raise ValueError(
                    f"{key}.loss is a {type(loss).__name__}, expected a loss module "
                    "(a config with _target_)"
                )
            for attr in ("num_classes", "ignore_index"):
                if not hasattr(loss, attr):
                    raise ValueError(f"{key}.loss ({type(loss).__name__}) has no {attr}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ValueError(f"{key}.weight={weight!r}, expected a number")
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"{key}.weight={weight}, expected a finite number >= 0")
            losses[name] = loss
            self.weights[name] = float(weight)
        if not any(self.weights.values()):
            raise ValueError(f"every loss.terms weight is 0: {self.weights}")
        first, reference = next(iter(losses.items()))
        for name, loss in losses.items():
            for attr in ("num_classes", "ignore_index"):
                if getattr(loss, attr) != getattr(reference, attr):
                    raise ValueError(
                        f"loss.terms.{name}.loss.{attr}={getattr(loss, attr)} but "
                        f"loss.terms.{first}.loss.{attr}={getattr(reference, attr)}; every term "
                        f"must use the same {attr}"
                    )
        self.terms = nn.ModuleDict(losses)
        self.num_classes: int = reference.num_classes
        self.ignore_index: int = reference.ignore_index
        self.last_terms: dict[str, Tensor] = {}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """``logits (B, K, H, W)``, ``target (B, H, W)`` → ``sum(weight * term)``."""
        values = {
            name: loss(logits, target)
            for name, loss in self.terms.items()
            if self.weights[name] > 0
        }
        self.last_terms = {name: value.detach() for name, value in values.items()}
        return sum(self.weights[name] * value for name, value in values.items())
