"""What ``segbench predict`` reads: an image, a folder of images, a glob (``**`` recursive,
never through a linked folder) or a video, each file once; and where its inputs live, so that
predictions are never written over them."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "find_inputs",
    "glob_root",
    "input_roots",
    "inside",
    "stems",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def glob_root(spec: str) -> tuple[Path, tuple[str, ...]]:
    """A glob's fixed leading folder and the pattern's components after it."""
    parts = Path(spec).parts
    first = next(i for i, p in enumerate(parts) if any(c in p for c in "*?["))
    return (Path(*parts[:first]) if first else Path(".")), parts[first:]


def _part_regex(part: str) -> str:
    """One path component of a glob as a regular expression (``*`` and ``?`` within the
    component, ``[...]`` a character class)."""
    out, i = [], 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and part.find("]", i + 2 + (part[i + 1 : i + 2] == "!")) != -1:
            start = i + 1 + (part[i + 1 : i + 2] == "!")  # a ']' first is a member
            end = part.find("]", start + 1)
            negate = "^" if start > i + 1 else ""
            out.append(f"[{negate}{part[start:end].replace(chr(92), chr(92) * 2)}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _walk_glob(spec: str) -> list[Path]:
    """The files a ``**`` glob matches, found by walking without following directory links (a
    link to a parent folder would otherwise be walked forever, or each file found again under
    every path through it); hidden files and folders are left out, as ``glob`` does."""
    root, pattern_parts = glob_root(spec)
    regex = ""
    for part in pattern_parts:
        regex += "(?:[^/]+/)*" if part == "**" else _part_regex(part) + "/"
    pattern = re.compile(regex[:-1] if regex.endswith("/") else regex + "[^/]+")
    found = []
    for directory, folders, files in os.walk(root, followlinks=False):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in sorted(files):
            path = Path(directory, name)
            if not name.startswith(".") and pattern.fullmatch(path.relative_to(root).as_posix()):
                found.append(path)
    return sorted(found)


def _once(paths: list[Path]) -> list[Path]:
    """``paths`` with each file once, by its real path (links to one file, or one file reached
    through a linked folder), first occurrence kept."""
    seen, out = set(), []
    for path in paths:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            out.append(path)
    return out


def find_inputs(spec: str) -> list[Path]:
    """The files ``spec`` names: a file, the images of a folder (sorted), or a glob's matches
    (``**`` recursive, never through a linked folder), each file once.

    Raises:
        SystemExit: nothing matches, naming ``spec``.
    """
    path = Path(spec)
    if any(c in spec for c in "*?["):
        if "**" in spec:
            found = _walk_glob(spec)
        else:
            found = [Path(p) for p in sorted(glob.glob(spec)) if Path(p).is_file()]
        if not found:
            raise SystemExit(f"error: input={spec}: the glob matches no file")
        return _once(found)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise SystemExit(
                f"error: input={spec}: the folder holds no image ({', '.join(IMAGE_SUFFIXES)})"
            )
        return _once(found)
    if not path.is_file():
        raise SystemExit(f"error: input={spec}: no such file or folder")
    return [path]


def stems(paths: list[Path]) -> list[str]:
    """A distinct output name per input: its stem, ``_2``, ``_3`` ... for repeats."""
    used: set[str] = set()
    out = []
    for path in paths:
        stem, n = path.stem or "image", 1
        while stem in used:
            n += 1
            stem = f"{path.stem}_{n}"
        used.add(stem)
        out.append(stem)
    return out


def input_roots(spec: str) -> list[Path]:
    """The folders an input spec reads: a folder itself, a glob's fixed part."""
    if any(c in spec for c in "*?["):
        return [glob_root(spec)[0]]
    return [Path(spec)] if Path(spec).is_dir() else []


def inside(path: Path, folder: Path) -> bool:
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents
