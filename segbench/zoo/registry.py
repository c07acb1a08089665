"""The published checkpoints segbench knows: ``conf/zoo/<source>.yaml`` (and the same files in
the directories of ``SEGBENCH_ZOO_PATH``), one entry per name.

An entry says where the file is and what it becomes::

    fcn_resnet50:
      url: https://download.pytorch.org/models/fcn_resnet50_coco-1167a1af.pth  # or repo: owner/name
      arch: fcn_resnet50        # the converter's architecture (torchvision) or family (mmseg)
      overrides: [model=dilated_fcn, backbone=resnet50, model.num_convs=1, ...]  # the network
      dataset: voc              # conf/dataset: its classes are the checkpoint's
      classes: [__background__, aeroplane, ...]   # the publisher's list, in its order
      class_map: {__background__: background}    # publisher's name -> the dataset's
      preprocessing: {mean: [...], std: [...], resize_short: 520}   # the publisher's
      inference: {mode: whole}  # how the publisher predicts (conf/inference keys)
      published: {params: 35322218, gmacs: 152.7, gmacs_input: 520x520, size_mb: 135.0}
      reference: {...}          # the published figures, as conf/experiment's reference: block

:func:`entries` reads and checks them (a bad key is refused naming the file and the key).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from segbench.reference import check_reference
from segbench.zoo.spec import SOURCES, ZooSpec

__all__ = ["ZOO", "ZooEntry", "ZooEntryError", "entries", "find_entry", "zoo_dirs"]

ZOO = Path(__file__).resolve().parents[2] / "conf" / "zoo"

_KEYS = {
    "url",
    "repo",
    "arch",
    "overrides",
    "dataset",
    "classes",
    "class_map",
    "preprocessing",
    "inference",
    "published",
    "reference",
    "notes",
}
_PREPROCESSING = {"mean", "std", "resize_short"}
_INFERENCE = {"mode", "crop", "stride", "scales", "flip", "rescale", "rescale_divisor"}
_PUBLISHED = {"params", "gmacs", "gmacs_input", "size_mb"}


class ZooEntryError(ValueError):
    """A ``conf/zoo`` entry that does not say what it must."""


@dataclass(frozen=True)
class ZooEntry:
    """One published checkpoint (see the module docstring for the keys)."""

    source: str
    name: str
    arch: str
    overrides: tuple[str, ...]
    dataset: str
    url: str | None = None
    repo: str | None = None
    classes: tuple[str, ...] | None = None
    class_map: dict = field(default_factory=dict)
    preprocessing: dict = field(default_factory=dict)
    inference: dict = field(default_factory=dict)
    published: dict = field(default_factory=dict)
    reference: dict | None = None
    notes: str = ""

    @property
    def spec(self) -> ZooSpec:
        return ZooSpec(self.source, self.name)

    @property
    def file_name(self) -> str | None:
        """The published file's name (the last part of its URL), ``None`` for a repository."""
        return self.url.rsplit("/", 1)[-1] if self.url else None


def _entry(source: str, name: str, node: dict, where: str) -> ZooEntry:
    if not isinstance(node, dict):
        raise ZooEntryError(f"{where}: expected a mapping of {', '.join(sorted(_KEYS))}")
    unknown = sorted(set(node) - _KEYS)
    if unknown:
        raise ZooEntryError(f"{where}.{unknown[0]}: unknown key; an entry has {sorted(_KEYS)}")
    for key in ("arch", "dataset"):
        if not isinstance(node.get(key), str) or not node[key]:
            raise ZooEntryError(f"{where}.{key}: expected a non-empty string")
    if bool(node.get("url")) == bool(node.get("repo")):
        raise ZooEntryError(f"{where}: expected one of url (a file) or repo (a hub repository)")
    overrides = node.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ZooEntryError(f"{where}.overrides: expected a list of Hydra overrides")
    for key, allowed in (
        ("preprocessing", _PREPROCESSING),
        ("inference", _INFERENCE),
        ("published", _PUBLISHED),
    ):
        value = node.get(key) or {}
        if not isinstance(value, dict) or set(value) - allowed:
            bad = sorted(set(value) - allowed) if isinstance(value, dict) else value
            raise ZooEntryError(
                f"{where}.{key}: {bad!r} not allowed; the keys are {sorted(allowed)}"
            )
    reference = check_reference(node.get("reference"), f"{where}.reference")
    classes = node.get("classes")
    return ZooEntry(
        source=source,
        name=name,
        arch=node["arch"],
        overrides=tuple(overrides),
        dataset=node["dataset"],
        url=node.get("url"),
        repo=node.get("repo"),
        classes=tuple(str(c) for c in classes) if classes else None,
        class_map=dict(node.get("class_map") or {}),
        preprocessing=dict(node.get("preprocessing") or {}),
        inference=dict(node.get("inference") or {}),
        published=dict(node.get("published") or {}),
        reference=reference,
        notes=str(node.get("notes") or ""),
    )


def zoo_dirs() -> tuple[Path, ...]:
    """``conf/zoo``, then the directories of ``SEGBENCH_ZOO_PATH`` (``os.pathsep``-separated):
    a lab's own entries, in the same ``<source>.yaml`` files, without editing segbench."""
    extra = [
        Path(p).expanduser() for p in os.environ.get("SEGBENCH_ZOO_PATH", "").split(os.pathsep)
    ]
    return (ZOO, *(p for p in extra if str(p) not in ("", ".")))


def entries() -> dict[ZooSpec, ZooEntry]:
    """Every entry of ``<dir>/<source>.yaml`` for the directories of :func:`zoo_dirs`, by spec,
    in file order; a later directory's entry of the same name replaces an earlier one.

    Raises:
        ZooEntryError: a file of an unknown source, or an entry with a bad key.
    """
    files = [p for d in zoo_dirs() for p in sorted(d.glob("*.yaml"))]
    return _entries(tuple((p, p.stat().st_mtime_ns) for p in files))  # read again when edited


@cache
def _entries(files: tuple[tuple[Path, int], ...]) -> dict[ZooSpec, ZooEntry]:
    found: dict[ZooSpec, ZooEntry] = {}
    for path, _ in files:
        source = path.stem
        if source not in SOURCES:
            raise ZooEntryError(f"{path}: no source {source!r}; the sources are {list(SOURCES)}")
        try:
            table = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ZooEntryError(f"{path}: not valid YAML ({err})") from err
        if not isinstance(table, dict):
            raise ZooEntryError(f"{path}: expected a mapping of entry names to entries")
        for name, node in table.items():
            entry = _entry(source, str(name), node, f"{path.name}: {name}")
            found[entry.spec] = entry
    return found


def find_entry(spec: ZooSpec) -> ZooEntry | None:
    """The entry named by ``spec``; a local mmseg file by the published file name it bears."""
    table = entries()
    if spec in table:
        return table[spec]
    if spec.source in ("mmseg", "torchvision"):
        file_name = Path(spec.name).name
        for entry in table.values():
            if entry.source == spec.source and entry.file_name == file_name:
                return entry
    return None
