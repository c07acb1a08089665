"""Published checkpoints on the Hugging Face hub (``hf:<owner>/<repo>``), read from the hub
cache the way the ImageNet weights are (:mod:`segbench.models.pretrained`): offline first, the
file in the cache is used without asking the hub; missing and offline (or the hub unreachable),
refused with the repository, the cache and the command that fetches it,
``segbench weights fetch hf:<owner>/<repo>``.

Weights are read as tensors only: ``model.safetensors`` with safetensors, an older
``pytorch_model.bin`` with ``torch.load(weights_only=True)``; ``config.json`` as JSON. Nothing
in a downloaded repository is imported or run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from segbench.models.pretrained import PretrainedUnavailable, hub_cache, hub_unreachable, offline

__all__ = ["HF_PREFIX", "fetch_hf", "hf_repo", "read_hf_checkpoint"]

HF_PREFIX = "hf:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def hf_repo(spec: str | None) -> str | None:
    """``owner/name`` of a ``hf:owner/name`` spec; ``None`` for anything else (a path)."""
    if not isinstance(spec, str) or not spec.startswith(HF_PREFIX):
        return None
    repo = spec[len(HF_PREFIX) :].strip("/")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"{spec!r}: expected hf:<owner>/<repository>, e.g. hf:nvidia/mit-b0")
    return repo


def _cached(repo: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=str(hub_cache()))
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _unavailable(repo: str, why: str) -> PretrainedUnavailable:
    return PretrainedUnavailable(
        f"hf:{repo}: the checkpoint ({' or '.join(WEIGHT_FILES)} and config.json) is not in the "
        f"Hugging Face cache {hub_cache()} and {why}. Fetch it where there is internet: "
        f"segbench weights fetch hf:{repo} (with the same HF_HOME, or copy the cache here)"
    )


def cached_files(repo: str) -> tuple[Path, Path] | None:
    """``(weights, config.json)`` of ``repo`` in the hub cache, or ``None``."""
    config = _cached(repo, "config.json")
    for filename in WEIGHT_FILES:
        weights = _cached(repo, filename)
        if weights is not None and config is not None:
            return weights, config
    return None


def fetch_hf(repo: str, timeout: float = 20.0) -> Path:
    """``repo``'s weights and ``config.json`` in the hub cache, downloaded when missing (the
    hub tried once first, ``timeout`` seconds). Returns the weights file."""
    found = cached_files(repo)
    if found is not None:
        return found[0]
    if offline():
        raise _unavailable(repo, "HF_HUB_OFFLINE is set")
    unreachable = hub_unreachable(timeout)
    if unreachable:
        raise _unavailable(repo, unreachable)
    from huggingface_hub import hf_hub_download

    errors = []
    try:
        hf_hub_download(repo, "config.json", cache_dir=str(hub_cache()), etag_timeout=timeout)
    except Exception as err:  # noqa: BLE001 - reported below
        raise _unavailable(repo, f"its config.json could not be downloaded ({err})") from err
    for filename in WEIGHT_FILES:
        try:
            path = hf_hub_download(repo, filename, cache_dir=str(hub_cache()), etag_timeout=timeout)
            return Path(path)
        except Exception as err:  # noqa: BLE001 - every hub failure is reported below
            errors.append(f"{filename}: {type(err).__name__}: {str(err).splitlines()[0]}")
    raise _unavailable(repo, "could not be downloaded (" + "; ".join(errors) + ")")


def read_hf_checkpoint(repo: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict and ``config.json`` of hub repository ``repo`` (from the cache, fetched
    when missing and online)."""
    found = cached_files(repo)
    if found is None:
        fetch_hf(repo)
        found = cached_files(repo)
        if found is None:
            raise _unavailable(repo, "was not found after the download")
    weights, config_path = found
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"hf:{repo}: {config_path} is not a JSON file ({err})") from err
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"hf:{repo}: {weights} holds no state dict of tensors")
    return state, config
