"""Reading weight files: what a file that is not one is, in words, and how a state dict
fails to fit a model. Used by the encoders (``backbone.weights``) and by checkpoint loading."""

from __future__ import annotations

import codecs
import re
import sys
import zipfile
from pathlib import Path

import torch

__all__ = [
    "describe_file",
    "describe_object",
    "read_state_dict",
    "state_dict_mismatch",
    "unreadable_save",
]

# torch.save's legacy (non-zip) format begins with this pickled magic number
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_HEAD_BYTES = 4096


def _as_text(head: bytes) -> str | None:
    """``head`` (a file's first bytes) decoded, if it reads as UTF-8 text; else ``None``."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    text = text.removeprefix("\ufeff")  # a byte-order mark
    if any(not (ch.isprintable() or ch in "\t\n\r\f\v") for ch in text):
        return None
    return text


def _describe_text(path: Path, text: str) -> str:
    """What a text file is (YAML, JSON, other text), in words."""
    kind = "a JSON file" if path.suffix == ".json" else "a text file"
    keys = None
    if path.suffix in (".yaml", ".yml", ".json") or ":" in text:
        import yaml

        try:
            data = yaml.safe_load(path.read_text())  # YAML (JSON is YAML too)
        except Exception:  # not YAML
            data = None
        if isinstance(data, dict):
            keys = [str(k) for k in data][:6]
            if path.suffix != ".json":
                kind = "a YAML file"
    if keys is not None:
        what = f"is {kind} (keys: {', '.join(keys)})"
        if {"model", "dataset"} <= set(keys):
            what += ": a run's config or results, which hold no weights"
        return what
    first = text.strip().splitlines()[0][:60] if text.strip() else ""
    return f"is {kind} (it starts {first!r})"


def describe_file(path: str | Path) -> str | None:
    """What ``path`` is, in words ("is empty", "is a text file ..."), for a file that
    ``torch.load`` could not read; ``None`` when it looks like a ``torch.save`` file (one that
    is corrupted inside, or holds what weights-only loading refuses)."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes: a save or copy that did not finish?)"
    with path.open("rb") as f:
        head = f.read(_HEAD_BYTES)
    if head.startswith(b"PK\x03\x04"):  # a zip archive, as torch.save writes
        if not zipfile.is_zipfile(path):
            return (
                f"is cut short ({size} bytes): it begins as the zip archive torch.save writes "
                "but its end is missing (a save or copy that did not finish?)"
            )
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if not any(name.rsplit("/", 1)[-1] == "data.pkl" for name in names):
            return (
                f"is a zip archive but not a PyTorch save (no data.pkl among its "
                f"{len(names)} entries)"
            )
        return None
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return None
    if head[:1] == b"\x80":  # a pickle's protocol opcode, without torch.save's magic number
        return "is a Python pickle, not a PyTorch save"
    text = _as_text(head)
    if text is not None:
        return _describe_text(path, text)
    return (
        "is not a PyTorch save: neither the zip archive torch.save writes nor a pickle "
        f"(it starts with bytes {head[:8].hex(' ')})"
    )


def describe_object(obj) -> str:
    """What a loaded object is, in words."""
    if isinstance(obj, torch.Tensor):
        return f"a single tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__name__}"


def unreadable_save(err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file that looks like a ``torch.save``
    one, in words."""
    text = str(err)
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if refused:
        # a name of torch's own that torch lacks: the pickle was cut inside it (torch's
        # modules are loaded; nothing is imported to look names up)
        module, _, attr = refused.group(1).rpartition(".")
        loaded = sys.modules.get(module) if module.split(".")[0] == "torch" else None
        if loaded is not None and not hasattr(loaded, attr):
            return (
                f"is a PyTorch save that cannot be read (corrupted or cut short?): it names "
                f"{refused.group(1)}, which does not exist"
            )
        return (
            "holds objects that are not tensors or plain containers, so it is not loaded "
            f"(weights-only loading): it needs {refused.group(1)}"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = next((line for line in lines if "error:" in line.lower()), lines[0] if lines else "")
    return f"is a PyTorch save that cannot be read (corrupted?): {reason or type(err).__name__}"


def read_state_dict(path: str | Path, expected: str) -> dict[str, torch.Tensor]:
    """The tensors of weights file ``path``, read as timm reads a ``weights`` file
    (``timm.models.load_state_dict``: safetensors, or ``torch.load(weights_only=True)``; the
    dict under ``state_dict_ema``/``model_ema``/``state_dict``/``model`` when there is one;
    ``module.``/``_orig_mod.`` prefixes dropped).

    Raises:
        ValueError: the file cannot be read, or holds something else than named tensors; the
            message names it, says what it is and what was ``expected``.
    """
    import timm.models  # timm's own reader, so that what is checked is what timm loads

    path = Path(path)
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as err:
        what = describe_file(path)
        if what is None:
            try:  # it may load, but hold no state dict
                loaded = torch.load(path, map_location="cpu", weights_only=True)
                what = f"holds {describe_object(loaded)}"
            except Exception as again:
                what = unreadable_save(again)
        raise ValueError(
            f"backbone weights file {str(path)!r} {what}; expected {expected}"
        ) from err
    others = [(k, v) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not state or others:
        what = (
            "holds no tensors"
            if not state
            else f"holds {len(others)} entries that are not tensors (e.g. {others[0][0]!r}: "
            f"{describe_object(others[0][1])})"
        )
        raise ValueError(f"backbone weights file {str(path)!r} {what}; expected {expected}")
    return state


def _listed(keys: list[str], show: int) -> str:
    return ", ".join(keys[:show]) + (", ..." if len(keys) > show else "")


def state_dict_mismatch(
    found: dict[str, torch.Tensor],
    wanted: dict[str, torch.Tensor],
    optional: set[str] | frozenset[str] = frozenset(),
    also_fits: dict[str, tuple[int, ...]] | None = None,
    show: int = 5,
) -> str:
    """How state dict ``found`` fails to fit ``wanted`` key for key and shape for shape, in
    words ('' when it fits): the counts and first few missing and unexpected keys, and the
    shape mismatches.

    Keys in ``optional`` may be missing and have other shapes (a classifier that is dropped);
    a missing ``*.num_batches_tracked`` is fine (BatchNorm starts it at 0); ``also_fits`` gives
    a key a second shape that fits (a first conv that timm adapts to other input channels).
    """
    also_fits = also_fits or {}
    missing = [
        k
        for k in wanted
        if k not in found and k not in optional and not k.endswith(".num_batches_tracked")
    ]
    unexpected = [k for k in found if k not in wanted]
    mismatched = [
        f"{k}: file {tuple(v.shape)}, model {tuple(wanted[k].shape)}"
        for k, v in found.items()
        if k in wanted
        and k not in optional
        and tuple(v.shape) not in (tuple(wanted[k].shape), also_fits.get(k))
    ]
    parts = []
    if missing:
        parts.append(
            f"{len(missing)} missing key{'s' * (len(missing) > 1)} ({_listed(missing, show)})"
        )
    if unexpected:
        parts.append(
            f"{len(unexpected)} unexpected key{'s' * (len(unexpected) > 1)} "
            f"({_listed(unexpected, show)})"
        )
    if mismatched:
        parts.append(
            f"{len(mismatched)} shape mismatch{'es' * (len(mismatched) > 1)} "
            f"({'; '.join(mismatched[:show])}{'; ...' if len(mismatched) > show else ''})"
        )
    if missing and unexpected:  # a state dict of a model that holds this one, under a prefix?
        needed = [k for k in wanted if k not in optional and not k.endswith(".num_batches_tracked")]
        parts_of = unexpected[0].split(".")
        for n in range(1, len(parts_of)):
            prefix = ".".join(parts_of[:n]) + "."
            if all(prefix + k in found for k in needed):
                parts.append(
                    f"its keys under {prefix!r} would fit: it holds a larger model; save that "
                    "part's state_dict()"
                )
                break
    return "; ".join(parts)
