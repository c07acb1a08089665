"""Errors as messages: what ``train.py``, ``evaluate.py`` and ``segbench <verb>`` print when a
run is refused.

segbench's own errors (bad data, a bad or missing checkpoint, a refused run directory, a bad
config value, a missing GPU, a ``???`` key left unset) are the user's to fix: they print one
paragraph on stderr, ``Error: <what is wrong and what to do>``, without a traceback, and exit
with status 1. The traceback goes to the run's log file (``train.log`` / ``evaluate.log``), or
to the terminal with ``HYDRA_FULL_ERROR=1``. Any other exception is a bug and keeps its
traceback.

A misspelt key (``trainer.max_epoch=3``) names the nearest keys of the composed configuration
and the corrected override, instead of Hydra's ``+trainer.max_epoch=3``.

This module imports neither torch nor Lightning: ``segbench --help`` stays instant.
"""

from __future__ import annotations

import difflib
import linecache
import os
import re
import shlex
import sys
import traceback
from pathlib import Path

__all__ = [
    "full_errors",
    "is_user_error",
    "key_suggestion",
    "message_of",
    "missing_value_message",
    "prepare_console",
    "run_app",
    "ReportedError",
]

_PACKAGE = Path(__file__).resolve().parent
_SCRIPTS = {_PACKAGE.parent / "train.py", _PACKAGE.parent / "evaluate.py"}
# built-in exception types segbench raises on purpose for a bad input (a `raise` statement in
# segbench's code); raised anywhere else (torch, a bug) they keep their traceback
_DELIBERATE = (ValueError, OSError, RuntimeError)
# examples of the ??? keys conf/ leaves to the command line
_MISSING_EXAMPLES = {
    "dataset.num_classes": "dataset.num_classes=3",
    "dataset.class_names": "'dataset.class_names=[background,road,car]'",
    "dataset.source.root": "dataset.source.root=/path/to/your/data",
    "ckpt": "ckpt=outputs/train/<date>/<time>_<run>/checkpoints/best.ckpt",
}


class ReportedError(Exception):
    """A user error already reported (its paragraph printed) by a multirun job: Hydra counts
    the job as failed, and :func:`run_app` prints the paragraph again at the end."""


_USER_FULL_ERROR = "SEGBENCH_USER_HYDRA_FULL_ERROR"  # HYDRA_FULL_ERROR as the user set it
_FULL_HINT = "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."


def full_errors() -> bool:
    """Whether the user asked for full tracebacks (``HYDRA_FULL_ERROR=1``, as with Hydra)."""
    return os.environ.get(_USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR")) == "1"


def _unwrap(err: BaseException) -> BaseException:
    """The error behind Hydra's ``InstantiationException`` wrappers."""
    while type(err).__name__ == "InstantiationException" and err.__cause__ is not None:
        err = err.__cause__
    return err


def _raised_in_segbench(err: BaseException) -> bool:
    """Whether ``err`` was raised by a ``raise`` statement of segbench's own code."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    if path not in _SCRIPTS and _PACKAGE not in path.parents:
        return False
    return linecache.getline(str(path), tb.tb_lineno).lstrip().startswith("raise")


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is one the user fixes (a message is enough), not a bug (a traceback)."""
    err = _unwrap(err)
    if isinstance(err, ReportedError):
        return True
    if type(err).__name__ == "MissingMandatoryValue":  # a ??? key of conf/ left unset
        return True
    if isinstance(err, Exception) and any(
        c.__module__.split(".")[0] == "segbench" for c in type(err).__mro__
    ):
        return not isinstance(err, Warning)
    return isinstance(err, _DELIBERATE) and _raised_in_segbench(err)


def _missing_keys(node, prefix: str = "") -> list[str]:
    """The dotted keys of ``node`` left ``???``, interpolations left unresolved."""
    from omegaconf import DictConfig, OmegaConf

    out = []
    for key in node.keys():
        path = f"{prefix}.{key}" if prefix else str(key)
        if path == "hydra" or OmegaConf.is_interpolation(node, key):
            continue
        if OmegaConf.is_missing(node, key):
            out.append(path)
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none():
            out.extend(_missing_keys(child, path))
    return out


def missing_value_message(err: BaseException, cfg=None) -> str:
    """The message of a ``???`` key left unset: every such key of ``cfg``, with examples."""
    key = str(getattr(err, "full_key", "") or "")
    keys = []
    if cfg is not None:
        try:
            keys = _missing_keys(cfg)
        except Exception:  # a config that cannot be walked: name the one key of the error
            keys = []
    if key and key not in keys:
        keys.insert(0, key)
    if not keys:
        return str(err).splitlines()[0]
    names = ", ".join(keys)
    fix = " ".join(_MISSING_EXAMPLES.get(k, f"{k}=<value>") for k in keys)
    what = "has no value" if len(keys) == 1 else "have no value"
    return (
        f"{names} {what}: the configuration leaves {'it' if len(keys) == 1 else 'them'} "
        f"(???) to the command line. Add to the command, with your values: {fix}"
    )


def message_of(err: BaseException, cfg=None) -> str:
    """The paragraph that reports user error ``err`` (``Error: ...``)."""
    err = _unwrap(err)
    if type(err).__name__ == "MissingMandatoryValue":
        text = missing_value_message(err, cfg)
    else:
        text = str(err).strip() or type(err).__name__
        if isinstance(err, FileNotFoundError) and err.filename and text.startswith("[Errno"):
            text = f"no such file or folder: {err.filename}"
    return text if text.startswith("Error") else f"Error: {text}"


# -------------------------------------------------------------------- misspelt config keys


def _dotted_keys(node, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            out.append(path)
            out.extend(_dotted_keys(value, path))
    return out


def _config_keys(err: BaseException) -> list[str]:
    """Every dotted key of the configuration that ``err`` (an OmegaConf key error) was raised
    on, the ``hydra.*`` ones left out."""
    from omegaconf import OmegaConf

    parent = getattr(err, "parent_node", None)
    if parent is None:
        return []
    try:
        root = OmegaConf.to_container(parent._get_root(), resolve=False)
    except Exception:  # an odd node: no suggestion rather than a second error
        return []
    return [k for k in _dotted_keys(root) if k != "hydra" and not k.startswith("hydra.")]


def nearest_keys(key: str, keys: list[str]) -> list[str]:
    """The keys of ``keys`` nearest ``key``: by the whole dotted path, else by its last part."""
    keys = [k for k in keys if not key.startswith(f"{k}.")]  # not its own parents
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.75)
    if close:
        return close
    leaf = key.rsplit(".", 1)[-1]
    leaves = {k: k.rsplit(".", 1)[-1] for k in keys}
    near = difflib.get_close_matches(leaf, list(set(leaves.values())), n=3, cutoff=0.75)
    return sorted(k for k, last in leaves.items() if last in near)[:3]


def key_suggestion(err: BaseException, argv: list[str] | None = None, prog: str = "") -> str:
    """The message of Hydra's ``ConfigCompositionException`` ``err``: for an override of a key
    the configuration does not have, the nearest keys and the corrected command."""
    text = str(err).strip()
    cause = err.__cause__
    match = re.match(r"Could not override '([^']+)'\.\nTo append to your config use \+(.+)", text)
    if match is None or cause is None:
        detail = f"\n{cause}" if cause is not None and str(cause) not in text else ""
        return f"Error: {text}{detail}"
    key, line = match.group(1), match.group(2).strip()
    value = line[len(key) + 1 :] if line.startswith(f"{key}=") else None
    near = nearest_keys(key, _config_keys(cause))
    message = f"Error: {key} is not a key of the configuration"
    if not near or value is None:
        return f"{message}; to add it anyway: +{line}"
    given = [a for a in argv or [] if a.startswith(f"{key}=")]  # a sweep's: the whole list
    fixed = near[0] + (given[0][len(key) :] if given else f"={value}")
    others = f" (or {', '.join(near[1:])})" if len(near) > 1 else ""
    message += f"; did you mean {near[0]}{others}? Use {fixed}"
    if given and prog:
        command = [fixed if a == given[0] else a for a in argv]
        message += ":\n  " + " ".join([prog, *(shlex.quote(a) for a in command)])
    return f"{message}\n(to add {key} as a new key on purpose: +{line})"


# ----------------------------------------------------------------- the command-line wrapper


def prepare_console(argv: list[str]) -> None:
    """Before tqdm is imported: no progress bars of tqdm's (the datasets' caching passes)
    where stderr is not a terminal (a log file, ``nohup``, SLURM), unless ``verbose=true``."""
    if _verbose_argv(argv) or "TQDM_DISABLE" in os.environ:
        return
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty:
        os.environ["TQDM_DISABLE"] = "1"


def _verbose_argv(argv: list[str]) -> bool:
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key in ("verbose", "hydra.verbose") and value.lower() not in ("", "false", "0", "no"):
            return True
    return False


def _strip_hydra_frames(err: BaseException) -> str:
    """``err``'s traceback from the first frame outside Hydra (and this wrapper) on."""
    tb = err.__traceback__
    here = Path(__file__).resolve()
    while tb is not None and tb.tb_next is not None:
        path = Path(tb.tb_frame.f_code.co_filename).resolve()
        if path != here and "hydra" not in path.parts:
            break
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(err), err, tb))


def run_app(app, prog: str) -> None:
    """Run Hydra application ``app`` (a ``@hydra.main`` function) and report its errors:
    a misspelt key with its correction, a user error as its paragraph, a bug with its
    traceback; exit status 1. ``HYDRA_FULL_ERROR=1`` raises them all, as Hydra does."""
    inherited = os.environ.get(_USER_FULL_ERROR)  # a DDP rank started by a wrapped run
    before = os.environ.get("HYDRA_FULL_ERROR")
    user_full = inherited if inherited is not None else before
    os.environ[_USER_FULL_ERROR] = user_full or ""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises: reported here, not by Hydra
    try:
        app()
    except Exception as err:
        if user_full == "1":
            raise
        if type(err).__name__ == "ConfigCompositionException":
            print(key_suggestion(err, sys.argv[1:], prog), file=sys.stderr)
        elif is_user_error(err):
            print(message_of(err), file=sys.stderr)
        else:
            sys.stderr.write(_strip_hydra_frames(err))
            sys.stderr.write(f"\n{_FULL_HINT}\n")
        sys.exit(1)
    finally:
        for key, value in (("HYDRA_FULL_ERROR", before), (_USER_FULL_ERROR, inherited)):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
