"""ImageNet weights of the encoders, through the libraries' own loading and caches: timm's
encoders from the Hugging Face hub cache (``HF_HOME``, ``HF_HUB_CACHE``), VGG16 and VGG16-BN
from torchvision's weights (``IMAGENET1K_V1``) in the torch hub cache (``TORCH_HOME``).
``HF_HUB_OFFLINE=1`` reads the caches only, for both.

``backbone.pretrained=true`` loads them as timm does; without them in the cache and offline (or
without network), the run stops before training with an error naming the backbone, the hub
repository and file, the cache searched and the command that fetches them, ``segbench weights
fetch <timm name>``, to run where there is internet (on a cluster, a login node sharing the
cache). ``segbench weights list`` shows what the cache holds.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = [
    "PretrainedUnavailable",
    "cached_timm_file",
    "fetch_timm",
    "fetch_torchvision",
    "torchvision_weights",
    "hub_unreachable",
    "hub_cache",
    "offline",
    "timm_source",
    "unavailable",
]

# the files timm looks for in a hub repository, in its order (safetensors first)
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


class PretrainedUnavailable(RuntimeError):
    """Pretrained weights asked for that cannot be had (not cached offline, none exist)."""


def hub_cache() -> Path:
    """The Hugging Face hub cache directory the loaders read (``HF_HUB_CACHE``, else
    ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), as the environment says now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    """Whether the hub may not be reached (``HF_HUB_OFFLINE`` set to a true value)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def timm_source(name: str) -> tuple[str, tuple[str, ...]]:
    """``(hub repository, files to look for)`` of timm model ``name`` (``name.tag`` for a weight
    variant); ``PretrainedUnavailable`` when timm has no pretrained weights for it."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not getattr(cfg, "hf_hub_id", None):
        raise PretrainedUnavailable(
            f"timm has no pretrained weights for {name!r} on the Hugging Face hub (its "
            "pretrained tags: timm.list_pretrained('" + name.split(".")[0] + "*'))"
        )
    files = (cfg.hf_hub_filename,) if getattr(cfg, "hf_hub_filename", None) else HUB_FILES
    return cfg.hf_hub_id, files


def cached_timm_file(name: str) -> Path | None:
    """The cached weights file of timm model ``name``, or ``None`` when the cache lacks it."""
    from huggingface_hub import try_to_load_from_cache

    repo, files = timm_source(name)
    for filename in files:
        found = try_to_load_from_cache(repo, filename, cache_dir=str(hub_cache()))
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def unavailable(name: str, why: str) -> PretrainedUnavailable:
    """The error of weights that could not be had: what, where it was looked for, the fix."""
    repo, files = timm_source(name)
    return PretrainedUnavailable(
        f"backbone {name!r}: pretrained=true needs timm's weights {repo} ({' or '.join(files)}), "
        f"which are not in the Hugging Face cache {hub_cache()} and {why}. Fetch them where "
        f"there is internet: segbench weights fetch {name} (with the same HF_HOME, "
        "or copy the cache here), or give a local file: backbone.weights=/path/to/weights.pth"
    )


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the hub cannot be reached (one connection attempt, ``timeout`` seconds: the hub
    client itself retries for a minute before it gives up), or ``None`` when it can."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    why = _unreachable(endpoint, timeout)
    return f"the hub {endpoint} cannot be reached ({why.split('(', 1)[1]}" if why else None


def fetch_timm(name: str, timeout: float = 20.0) -> Path:
    """Download timm model ``name``'s weights into the hub cache (a no-op when cached); the
    hub is tried once first (``timeout`` seconds), so that a machine without network fails
    fast. Returns the cached file."""
    cached = cached_timm_file(name)
    if cached is not None:
        return cached
    if offline():
        raise unavailable(name, "HF_HUB_OFFLINE is set")
    unreachable = hub_unreachable(timeout)
    if unreachable:
        raise unavailable(name, unreachable)
    from huggingface_hub import hf_hub_download

    repo, files = timm_source(name)
    errors = []
    for filename in files:
        try:
            path = hf_hub_download(repo, filename, cache_dir=str(hub_cache()), etag_timeout=timeout)
            return Path(path)
        except Exception as err:  # noqa: BLE001 - every hub failure is reported below
            errors.append(f"{filename}: {type(err).__name__}: {str(err).splitlines()[0]}")
    raise unavailable(name, "could not be downloaded (" + "; ".join(errors) + ")")


def cached_weights() -> list[tuple[str, str, int]]:
    """``(repository, file, bytes)`` of every model file in the hub cache (timm's weights and
    the ``hf:`` checkpoints), then of the torchvision VGG weights in the torch hub cache
    (repository ``torchvision``)."""
    rows = []
    for repo in sorted(hub_cache().glob("models--*--*")):
        name = repo.name[len("models--") :].replace("--", "/")
        for path in sorted(repo.glob("snapshots/*/*")):
            if path.is_file():
                rows.append((name, path.name, path.stat().st_size))
    for name in TORCHVISION:
        path = torch_hub_file(name)
        if path.is_file():
            rows.append(("torchvision", path.name, path.stat().st_size))
    return rows


# segbench's VGG encoders with torchvision ImageNet weights -> the weights' enum name
TORCHVISION = {"vgg16": "VGG16_Weights", "vgg16_bn": "VGG16_BN_Weights"}


def torchvision_weights(name: str):
    """torchvision's ``IMAGENET1K_V1`` weights enum member of VGG encoder ``name``."""
    import torchvision.models as tvm

    if name not in TORCHVISION:
        raise PretrainedUnavailable(f"torchvision has no ImageNet weights for {name!r}")
    return getattr(tvm, TORCHVISION[name]).IMAGENET1K_V1


def torch_hub_file(name: str) -> Path:
    """Where torchvision keeps VGG encoder ``name``'s weights (``$TORCH_HOME/hub/checkpoints``)."""
    import torch

    url = torchvision_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def fetch_torchvision(name: str, timeout: float = 20.0) -> Path:
    """VGG encoder ``name``'s torchvision weights in the torch hub cache, downloaded there when
    missing (and the download server reachable: checked once, ``timeout`` seconds); refused
    with the URL, the cache and the fetch command otherwise."""
    path = torch_hub_file(name)
    if path.is_file():
        return path
    weights = torchvision_weights(name)
    why = "HF_HUB_OFFLINE is set" if offline() else _unreachable(weights.url, timeout)
    if why:
        raise PretrainedUnavailable(
            f"backbone {name!r}: pretrained=true needs torchvision's weights {weights.url}, "
            f"which are not in the torch hub cache {path.parent} and {why}. Fetch them where "
            f"there is internet: segbench weights fetch {name} (with the same TORCH_HOME, or "
            "copy the file here), or give a local file: backbone.weights=/path/to/weights.pth"
        )
    weights.get_state_dict(progress=True, check_hash=True)  # torchvision's download and check
    return path


def _unreachable(url: str, timeout: float) -> str | None:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as err:
        return f"{parsed.scheme}://{parsed.hostname} cannot be reached ({err})"
    return None
