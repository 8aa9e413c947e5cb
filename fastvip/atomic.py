"""Atomic writes: a temp file in the target's directory, fsync, then rename.

A reader never sees a half-written file at the target path; a crash leaves at
most a ``.tmp-*`` file that the next writer of the same target removes.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def temp_path_for(target: str | os.PathLike) -> Path:
    """A fresh temp path beside ``target`` (same filesystem, so rename is atomic)."""
    target = Path(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    return Path(name)


def remove_stale_temps(target: str | os.PathLike) -> list[str]:
    """Delete the temp files (or folders) an interrupted writer of ``target`` left behind."""
    target = Path(target)
    stale = glob.glob(str(target.parent / f".{glob.escape(target.name)}.tmp-*"))
    for path in stale:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    return stale


def fsync_dir(path: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; a committed file gets what a plain open() would give it
_FILE_MODE = 0o666 & ~umask()


def commit(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """fsync ``tmp`` and rename it over ``target`` (with the usual file permissions)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, target)
    fsync_dir(Path(target).parent)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces ``target``, on error it is removed."""
    tmp = temp_path_for(target)
    try:
        yield tmp
        commit(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        Path(tmp).write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    # surrogateescape: ids from non-UTF-8 file names are written back as their original bytes
    write_bytes(target, text.encode("utf-8", "surrogateescape"))


def write_json(target: str | os.PathLike, obj) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")
