"""The ``key=value`` arguments of the deploy verbs (``segbench predict|export|serve``): the
verb's own keys, and every other token passed on as a ``conf/evaluate.yaml`` override."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

__all__ = ["VerbArgs", "parse_key_values"]

# evaluate.yaml's groups and keys that a deploy verb may pass on to the Predictor
EVALUATE_KEYS = ("inference", "fast", "model", "trainer", "dataset", "boundary", "seed")
EVALUATE_KEYS += ("data_root", "allow_targets")


class VerbArgs(argparse.Namespace):
    """The verb's own keys as attributes, and ``overrides`` for the Predictor."""

    overrides: list[str]


def _convert(key: str, text: str, default: Any) -> Any:
    if isinstance(default, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise SystemExit(f"error: {key}={text}: expected true or false")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise SystemExit(f"error: {key}={text}: expected an integer") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise SystemExit(f"error: {key}={text}: expected a number") from None
    return text


def parse_key_values(
    verb: str,
    description: str,
    own: Mapping[str, tuple[Any, str]],
    argv: list[str] | None,
    required: tuple[str, ...] = ("ckpt",),
) -> VerbArgs:
    """``argv`` split into the verb's ``own`` keys (``{key: (default, help)}``) and evaluate.yaml
    overrides (a group or key of :data:`EVALUATE_KEYS`); ``--help`` lists both.

    Raises:
        SystemExit: a token is not ``key=value``, a key is neither the verb's nor an
            evaluation override, a value has the wrong type, or a required key is missing.
    """

    def shown(default: Any) -> str:
        if default is None:
            return "..."
        return str(default).lower() if isinstance(default, bool) else str(default)

    lines = [f"  {k}={shown(d)}  {h}" for k, (d, h) in own.items()]
    parser = argparse.ArgumentParser(
        prog=f"segbench {verb}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="keys:\n" + "\n".join(lines) + "\n\nany other key=value is an evaluate.yaml "
        f"override passed to the model ({', '.join(EVALUATE_KEYS)}: e.g. inference=slide, "
        "fast.channels_last=true, model.mc_samples=4)",
    )
    parser.add_argument("args", nargs="*", metavar="key=value")
    tokens = parser.parse_args(argv).args
    args = VerbArgs(overrides=[])
    for key, (default, _) in own.items():
        setattr(args, key, default)
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: {token!r}: expected key=value (see segbench {verb} --help)")
        if key in own:
            default = own[key][0]
            setattr(args, key, _convert(key, value, default) if default is not None else value)
        elif key.lstrip("+~").split(".")[0].split("/")[0] in EVALUATE_KEYS:
            args.overrides.append(token)
        else:
            raise SystemExit(
                f"error: unknown key {key!r}; segbench {verb} takes {', '.join(own)} and "
                f"evaluate.yaml overrides of {', '.join(EVALUATE_KEYS)}"
            )
    missing = [k for k in required if getattr(args, k) in (None, "")]
    if missing:
        raise SystemExit(f"error: {missing[0]}= is required (see segbench {verb} --help)")
    return args
