"""What a checkpoint's stored config may make segbench run.

A checkpoint carries the run config it was trained with, and evaluating it instantiates that
config's ``_target_`` entries (the model, its encoder, the dataset, the loss, the task ...);
its callbacks, loggers and trainer are never built from it (the loading drops them).
Checkpoints are shared between people, so a config is untrusted input: a ``_target_`` may name
any importable callable (``numpy.savetxt``, ``builtins.open`` ...), which Hydra would call with
the arguments beside it. Before anything is built, every ``_target_`` of a loaded config, at any
depth (also in ``_args_`` and lists), must be one segbench knows: one that a config shipped in
``conf/`` names (segbench's models, encoders, losses, optimizers, schedulers, datasets, tasks,
inference, and the third-party ones those configs use, such as ``torch.optim.SGD``) or one an
earlier segbench named (the store's renamed classes). Anything else is
refused by key and target, unless the user allows it by name (``allow_targets=[...]``: an exact
dotted path, or ``package.*`` for everything under a package of their own).

The tensors are read with ``torch.load(weights_only=True)`` (:func:`load_checkpoint`), so the
checkpoint file itself runs no code either.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

import yaml

from segbench.checkpoints.errors import CheckpointError

__all__ = ["UntrustedTargetError", "check_targets", "known_targets"]

CONF = Path(__file__).resolve().parents[2] / "conf"


class UntrustedTargetError(CheckpointError):
    """A loaded config names a ``_target_`` that segbench does not know."""


# the run's machinery: never built from a checkpoint (its loading drops these keys), so the
# classes configured there (loggers, callbacks, the trainer, Hydra's plugins) are not ones a
# loaded config may name
MACHINERY = ("callbacks", "logger", "trainer", "hydra")


def _targets(node, path: str, skip: Sequence[str] = ()) -> Iterator[tuple[str, object]]:
    """Every ``(key path, _target_ value)`` below ``node``, leaving out the subtrees under a key
    in ``skip``."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield where, value
            elif key not in skip:
                yield from _targets(value, where, skip)
    elif isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            yield from _targets(item, f"{path}[{i}]", skip)


@cache
def known_targets() -> frozenset[str]:
    """Every ``_target_`` named by a config file shipped in ``conf/``, except the run's
    machinery (:data:`MACHINERY`: its groups and keys)."""
    found = set()
    for path in sorted(CONF.rglob("*.yaml")):
        if path.relative_to(CONF).parts[0] in MACHINERY:
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            found.update(v for _, v in _targets(doc, "", MACHINERY) if isinstance(v, str))
    return frozenset(found)


def _allowed(target: str, allow: Sequence[str]) -> bool:
    for entry in allow:
        entry = str(entry)
        if entry.endswith(".*") and target.startswith(entry[:-1]):
            return True
        if target == entry:
            return True
    return False


def check_targets(
    config: dict, source: str, allow: Sequence[str] = (), also_known: Sequence[str] = ()
) -> None:
    """Refuse ``config`` (plain containers, interpolations resolved) if one of its
    ``_target_`` entries is neither known (:func:`known_targets`, ``also_known``: the names
    an earlier segbench used) nor in ``allow``.

    Raises:
        UntrustedTargetError: names ``source`` (the checkpoint), the key and the target, and the
            option that allows a target the user trusts.
    """
    known = known_targets() | set(also_known)
    for where, target in _targets(config, ""):
        if not isinstance(target, str):
            raise UntrustedTargetError(
                f"{source}: {where}={target!r}: a _target_ must be a dotted name; refused "
                "before anything was built"
            )
        if target in known or _allowed(target, allow):
            continue
        module = target.rsplit(".", 1)[0]
        raise UntrustedTargetError(
            f"{source}: {where}={target!r} is not a class or function segbench's configs use, "
            "so loading this checkpoint could run code of the file's choosing; refused before "
            "anything was built. If you wrote that class and trust this checkpoint, allow it "
            f"by name: 'allow_targets=[{target}]' "
            f"(or \"allow_targets=['{module}.*']\" for its whole module)"
        )
