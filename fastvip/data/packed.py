"""Packed files as their readers see them: a ``.beton`` and its sidecar (``OUT.beton.meta.json``:
class names, source, skips, and a fingerprint that ties it to its ``.beton``), or a ``.beton``
that FFCV's own tools wrote without one.

Every consumer (loaders, training, predict, merge) reads through here. The sidecar's format
lives here alone, its writing (:func:`commit_with_sidecar`) included, so writer and reader
cannot drift apart.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastvip import atomic
from fastvip.console import printable
from fastvip.errors import FastvipError

META_SUFFIX = ".meta.json"
FORMAT = "fastvip-pack/1"


def meta_path(beton: str | os.PathLike) -> Path:
    """The sidecar written beside a packed file."""
    return Path(str(beton) + META_SUFFIX)


def fingerprint(path: str | os.PathLike) -> str:
    """Cheap identity of a packed file (size + head + tail), stored in the sidecar."""
    import hashlib
    size = os.path.getsize(path)
    h = hashlib.sha1(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 1 << 20:
            f.seek(max(size - (1 << 20), 1 << 20))
            h.update(f.read())
    return h.hexdigest()


def _sidecar(entries: list[dict]) -> dict:
    return {"format": FORMAT, "entries": entries}


def entry_for(beton: Path) -> dict | None:
    """The sidecar entry that describes ``beton`` as it is on disk now (None if none does)."""
    side = meta_path(beton)
    if not beton.is_file() or not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != FORMAT:
        return None
    fp = fingerprint(beton)
    return next((e for e in meta.get("entries", []) if e.get("fingerprint") == fp), None)


def commit_with_sidecar(tmp: Path, out: Path, entry: dict) -> None:
    """Rename the written ``tmp`` to ``out``, with ``entry`` as the sidecar that describes it.

    The sidecar lists the old and the new pack while the two files are swapped, so
    whichever .beton is on disk at a kill has its entry; then only the new one stays.
    """
    previous = entry_for(out)
    atomic.write_json(meta_path(out), _sidecar([entry] + ([previous] if previous else [])))
    atomic.commit(tmp, out)
    atomic.write_json(meta_path(out), _sidecar([entry]))


# ---------------------------------------------------------------- read back

@dataclass
class PackedFile:
    """A packed file as fastvip sees it: path, labels, ids and class names.

    ``sidecar`` is False for a file FFCV's own tools wrote: its class names are the label
    indices and its ids the sample indices, so its labels are read as indices into the
    classes of whatever it is used with (:func:`check_label_indices`).
    """
    path: Path
    classes: list[str]
    labelled: bool
    labels: np.ndarray
    ids: list[str]
    heights: np.ndarray
    widths: np.ndarray
    sidecar: bool = True
    fields: tuple[str, ...] = ("image", "label", "id")

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def open_packed(path: str | os.PathLike) -> PackedFile:
    """Read a ``.beton`` written by ``fastvip pack`` and its sidecar, or one written by FFCV's
    own tools (no sidecar, see :func:`_open_ffcv_written`); clear errors when they disagree."""
    path = Path(path)
    if not path.is_file():
        raise FastvipError(f"data file {path} does not exist")
    side = meta_path(path)
    if not side.is_file():
        return _open_ffcv_written(path, side)
    try:
        sidecar = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise FastvipError(f"cannot read {side}: {e}") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise FastvipError(f"{side} is not a {FORMAT} sidecar")
    meta = entry_for(path)
    if meta is None:
        raise FastvipError(f"{path} does not match {side.name} (one of them was replaced); re-pack it")
    reader = _reader(path)
    names = reader.field_names
    if not {"image", "label", "id"} <= set(names):
        raise FastvipError(f"{path} lacks fastvip's fields image/label/id (has {names})")
    md = reader.metadata
    labels = np.asarray(md[f"f{names.index('label')}"], dtype=np.int64)
    id_md = md[f"f{names.index('id')}"]
    ids = _read_ids(path, reader, id_md)
    image_md = md[f"f{names.index('image')}"]
    if len(labels) != meta["num_samples"]:
        raise FastvipError(f"{path} holds {len(labels)} samples but its sidecar says {meta['num_samples']}")
    return PackedFile(path, list(meta["classes"]), bool(meta["labelled"]), labels, ids,
                      image_md["height"].astype(np.int64), image_md["width"].astype(np.int64),
                      fields=tuple(names))


@dataclass
class ImageRecords:
    """Where each stored image lies in a packed file: byte offset and length, storage mode
    (0 JPEG, else raw pixels) and size, in sample order."""
    ptrs: np.ndarray
    sizes: np.ndarray
    modes: np.ndarray
    heights: np.ndarray
    widths: np.ndarray


def image_records(path: str | os.PathLike) -> ImageRecords:
    """The :class:`ImageRecords` of a packed file's ``image`` field (for loaders that read the
    stored bytes themselves)."""
    reader = _reader(Path(path))
    md = reader.metadata[f"f{reader.field_names.index('image')}"]
    # FFCV keeps no per-image byte count; its allocation table maps each pointer to a size
    table = np.sort(reader.alloc_table, order="ptr")
    pos = np.searchsorted(table["ptr"], md["data_ptr"])
    return ImageRecords(md["data_ptr"].astype(np.int64), table["size"][pos].astype(np.int64),
                        md["mode"].astype(np.int64), md["height"].astype(np.int64), md["width"].astype(np.int64))


def _reader(path: Path, why: str = ""):
    """FFCV's reader of ``path``; a one-line error for anything it cannot parse."""
    try:
        from ffcv.reader import Reader
        return Reader(os.fspath(path))
    except Exception as e:  # noqa: BLE001 - anything FFCV fails on is "not a packed file"
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FastvipError(f"{path} {why}is not a readable FFCV file: {detail}") from None


# More class indices than any classification set has: such "labels" are something else.
MAX_INDEX_CLASSES = 100_000
_WARNED: set[str] = set()


def _open_ffcv_written(path: Path, side: Path) -> PackedFile:
    """A ``.beton`` with no sidecar, as FFCV's own writers make (``write_imagenet.py``: an
    RGBImageField ``image`` in any write mode and an IntField ``label``).

    Class names default to the label indices ``"0"`` .. ``"max label"`` and ids to the sample
    indices, with a one-line warning. A file with fastvip's ``id`` BytesField was written by
    ``fastvip pack`` and lost its sidecar: refused, so the fingerprint check keeps protecting it.
    """
    from ffcv.fields import BytesField, IntField, RGBImageField
    reader = _reader(path, f"has no {side.name} beside it and ")
    handlers = reader.handlers
    if isinstance(handlers.get("id"), BytesField):
        raise FastvipError(f"{path} has no {side.name} beside it but was written by fastvip pack (it has an "
                           "id field): put its sidecar back or re-pack it")
    if not (isinstance(handlers.get("image"), RGBImageField) and isinstance(handlers.get("label"), IntField)):
        has = ", ".join(f"{n} ({type(h).__name__})" for n, h in handlers.items())
        raise FastvipError(f"{path} has no {side.name} beside it and lacks the fields an FFCV-written file "
                           f"needs, image (RGBImageField) and label (IntField); it has {has or 'none'}")
    names = reader.field_names
    labels = np.asarray(reader.metadata[f"f{names.index('label')}"], dtype=np.int64)
    if not len(labels):
        raise FastvipError(f"{path} holds no samples")
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise FastvipError(f"{path}: sample {int(labels.argmin())} has label {low}; a file without a sidecar "
                           "needs class indices >= 0 as labels")
    if high >= MAX_INDEX_CLASSES:
        raise FastvipError(f"{path}: sample {int(labels.argmax())} has label {high}, too large for a class "
                           f"index (at most {MAX_INDEX_CLASSES - 1})")
    image_md = reader.metadata[f"f{names.index('image')}"]
    key = os.fspath(path.resolve())
    if key not in _WARNED:  # loaders, merge and predict each open the file; say it once
        _WARNED.add(key)
        _warn(f"{path} has no {side.name} (written by FFCV's own tools?): class names are its label "
              f"indices 0..{high}, ids its sample indices")
    return PackedFile(path, [str(c) for c in range(high + 1)], True, labels,
                      [str(i) for i in range(len(labels))], image_md["height"].astype(np.int64),
                      image_md["width"].astype(np.int64), sidecar=False, fields=tuple(names))


def _warn(message: str) -> None:
    """One ``warning:`` line on stderr (shown under ``--quiet`` too), from torchrun's rank 0 only."""
    if os.environ.get("RANK", "0") == "0":
        print(printable(f"warning: {message}"), file=sys.stderr, flush=True)


def check_label_indices(packed: PackedFile, classes: list[str], owner: str) -> None:
    """A sidecar-less file's labels are indices into ``classes`` (those of ``owner``): each must fit."""
    high = int(packed.labels.max())
    if high >= len(classes):
        raise FastvipError(f"{packed.path} has label {high} (sample {int(packed.labels.argmax())}), out of range "
                           f"for the {len(classes)} classes of {owner}; without a sidecar its labels are "
                           "read as class indices")


def _read_ids(path: Path, reader, id_md) -> list[str]:
    # FFCV's bytes field stores (ptr, size) per sample; ptr is an absolute file offset.
    data = np.memmap(path, dtype=np.uint8, mode="r")
    return [bytes(data[int(p):int(p) + int(s)]).decode("utf-8", "surrogateescape")
            for p, s in zip(id_md["ptr"], id_md["size"])]
