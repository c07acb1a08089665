"""Where published checkpoint files live, checked and read, in the caches the libraries use:

- torchvision and mmsegmentation files in the torch hub cache,
  ``$TORCH_HOME/hub/checkpoints/<file name>`` (where ``torch.hub.load_state_dict_from_url``
  and mmengine's ``load_from`` put them), so that a file either library downloaded is used;
- smp and Hugging Face repositories in the Hugging Face hub cache (:mod:`segbench.models.hub`).

Both publishers put the first hex digits of the file's SHA-256 in its name
(``fcn_resnet50_coco-1167a1af.pth``). As ``torch.hub`` does, a download is checked against them
before it takes its name in the cache, and so is a file given by path
(``ckpt=mmseg:/path/<published name>.pth``) and a cached file ``segbench zoo fetch`` finds: one
that differs is refused (a truncated download, or another file under that name). A file already
in the cache is read without hashing it again. Files are read as tensors only:
``torch.load(weights_only=True)``; nothing in them runs.

Downloads (``segbench zoo fetch``) try the server once first and fail fast without network.
``SEGBENCH_ZOO_MIRROR=http://host/path`` replaces the scheme and host of every URL (a mirror
inside a cluster; the tests' local server).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import urlparse

import torch

from segbench.models.pretrained import PretrainedUnavailable, _unreachable

__all__ = [
    "ZooFileError",
    "cache_path",
    "download",
    "hash_prefix",
    "mirrored",
    "read_torch_file",
    "verify",
]

HASH = re.compile(r"-([a-f0-9]{6,})\.[A-Za-z]+$")


class ZooFileError(ValueError):
    """A published checkpoint file that is not what its publisher released."""


def cache_path(file_name: str) -> Path:
    """``$TORCH_HOME/hub/checkpoints/<file_name>`` (``torch.hub.get_dir()`` as it is now)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def hash_prefix(file_name: str) -> str | None:
    """The SHA-256 prefix a published file name carries (``-1167a1af.pth``), or ``None``."""
    match = HASH.search(file_name)
    return match.group(1) if match else None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, file_name: str | None = None) -> None:
    """Check ``path`` against the SHA-256 prefix of ``file_name`` (default: its own name).

    Raises:
        ZooFileError: the digest does not start with the prefix, naming both and the fix.
    """
    prefix = hash_prefix(file_name or path.name)
    if prefix is None:
        return
    digest = sha256(path)
    if not digest.startswith(prefix):
        raise ZooFileError(
            f"{path}: its SHA-256 is {digest[:16]}..., but the publisher's file name says it "
            f"starts with {prefix}: a truncated or altered download, or another file under "
            f"this name. Delete it and fetch it again: rm {path} && segbench zoo fetch <name>"
        )


def mirrored(url: str) -> str:
    """``url`` with its scheme and host replaced by ``SEGBENCH_ZOO_MIRROR`` when it is set."""
    mirror = os.environ.get("SEGBENCH_ZOO_MIRROR", "").strip().rstrip("/")
    if not mirror:
        return url
    return mirror + urlparse(url).path


def download(url: str, file_name: str, timeout: float = 20.0, check_cached: bool = False) -> Path:
    """``file_name`` in the torch hub cache, downloaded from ``url`` (mirrored) when missing:
    the server tried once first (``timeout`` seconds), the SHA-256 prefix checked by
    ``torch.hub.download_url_to_file`` before the file takes its name; ``check_cached``: a
    cached file is hashed and checked too."""
    path = cache_path(file_name)
    if path.is_file():
        if check_cached:
            verify(path)
        return path
    source = mirrored(url)
    why = _unreachable(source, timeout)
    if why:
        raise PretrainedUnavailable(
            f"{file_name} is not in the torch hub cache {path.parent} and {why}. Fetch it "
            "where there is internet (segbench zoo fetch <name>, with the same TORCH_HOME) "
            f"and copy it there, or download {url} into {path.parent}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(source, str(path), hash_prefix(file_name), progress=True)
    except RuntimeError as err:  # torch.hub's hash mismatch
        raise ZooFileError(f"{source}: {err}") from err
    return path


def read_torch_file(path: Path, what: str) -> dict:
    """The object a ``.pth`` file holds, read with ``torch.load(weights_only=True)``.

    Raises:
        ZooFileError: the file is not a PyTorch save of tensors and plain containers.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load fails in many ways on what it cannot read
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ZooFileError(
            f"{what}: {path} cannot be read as tensors and plain containers "
            f"(torch.load(weights_only=True): {first}); segbench never unpickles arbitrary "
            "objects from a downloaded file"
        ) from err
