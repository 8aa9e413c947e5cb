"""Listing a source folder for ``fastvip pack``: which images it holds, their labels and classes.

Kept apart from the packer, so that ``fastvip split`` shares the image extensions without
importing it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fastvip.errors import FastvipError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def natural_key(name: str):
    """Sort key that orders digit runs by value (``img2`` before ``img10``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@dataclass
class Source:
    """What to pack: relative file paths, their labels (-1 = unlabelled), the class list."""
    root: Path
    files: list[str]
    labels: list[int]
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return bool(self.classes)


def _list_images(folder: Path, rel_to: Path, skipped: list) -> list[str]:
    """Image files under ``folder`` (recursively, symlinked folders not followed), natural order.

    Everything that is not packed is listed in ``skipped`` with a reason.
    """
    def unreadable(e: OSError):
        skipped.append((os.fsdecode(os.path.relpath(e.filename or folder, rel_to)),
                        f"unreadable folder: {e.strerror}"))

    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False, onerror=unreadable):
        dirnames.sort(key=natural_key)
        for name in list(dirnames):
            if os.path.islink(os.path.join(dirpath, name)):
                dirnames.remove(name)  # never follow: a link can loop back up the tree
                skipped.append((os.path.relpath(os.path.join(dirpath, name), rel_to),
                                "symlinked folder not followed"))
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), rel_to)
            if Path(name).suffix.lower() in IMAGE_EXTS:
                found.append(rel)
            else:
                skipped.append((rel, "not an image file extension"))
    return sorted(found, key=natural_key)


def _entry_kind(entry: os.DirEntry) -> str:
    try:
        return "dir" if entry.is_dir() else "file" if entry.is_file() else "other"
    except OSError:  # a symlink loop raises instead of answering
        return "other"


def scan_source(src: str | os.PathLike) -> Source:
    """Decide labelled vs unlabelled per DESIGN and list the images to pack."""
    root = Path(src)
    if not root.exists():
        raise FastvipError(f"source {root} does not exist")
    if not root.is_dir():
        raise FastvipError(f"source {root} is not a folder")
    try:
        entries = sorted(os.scandir(root), key=lambda e: natural_key(e.name))
    except OSError as e:
        raise FastvipError(f"cannot read source {root}: {e.strerror}") from None
    skipped: list[tuple[str, str]] = []
    dirs, top_images = [], []
    for e in entries:
        kind = _entry_kind(e)
        if kind == "dir":
            if e.name.startswith("."):
                skipped.append((e.name, "hidden folder ignored"))
            else:
                dirs.append(e.name)
        elif kind == "file":
            if Path(e.name).suffix.lower() in IMAGE_EXTS:
                top_images.append(e.name)
            else:
                skipped.append((e.name, "not an image file extension"))
        else:
            skipped.append((e.name, "not a file or folder (broken or looping symlink?)"))

    if dirs and top_images:
        raise FastvipError(f"source {root} mixes image files and sub-folders; expected class "
                           "folders (labelled) or only images / only imgs/ (unlabelled)")
    if dirs == ["imgs"] or not dirs:
        if dirs:
            files = _list_images(root / "imgs", root, skipped)
        else:
            files = sorted(top_images, key=natural_key)
        if not files:
            raise FastvipError(f"source {root} holds no images ({', '.join(sorted(IMAGE_EXTS))})")
        return Source(root, files, [-1] * len(files), [], skipped)

    classes = sorted(dirs)
    files, labels = [], []
    for label, cls in enumerate(classes):
        found = _list_images(root / cls, root, skipped)
        files += found
        labels += [label] * len(found)
    if not files:
        raise FastvipError(f"source {root} has {len(classes)} class folders but no images")
    return Source(root, files, labels, classes, skipped)
