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
from fastvip.data import checksum
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
    entry = {**entry, "checksums": file_checksums(tmp)}
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
    checksums: np.ndarray | None = None  # per sample (:mod:`fastvip.data.checksum`); None: the file has none
    _seeds: np.ndarray | None = None
    _records: "ImageRecords | None" = None

    @property
    def seeds(self) -> np.ndarray:
        """Each sample's checksum seed (label and id as stored), computed once."""
        if self._seeds is None:
            self._seeds = checksum.meta_seeds(self.labels, self.ids)
        return self._seeds

    @property
    def records(self) -> "ImageRecords":
        """Where each stored image lies (:func:`image_records`), read once."""
        if self._records is None:
            self._records = image_records(self.path)
        return self._records

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
    meta = entry_for(path) or _damaged_entry(path, sidecar)
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
    packed = PackedFile(path, list(meta["classes"]), bool(meta["labelled"]), labels, ids,
                        image_md["height"].astype(np.int64), image_md["width"].astype(np.int64),
                        fields=tuple(names), checksums=_sample_sums(path, meta, len(labels)))
    if packed.checksums is not None and checksum.tables_sum(path, reader) != meta["checksums"]["tables"]:
        raise DamagedPacked(packed, "its header or tables (labels, sizes and places of the samples)")
    return packed


class DamagedPacked(FastvipError):
    """A packed file whose header or tables fail their checksum; ``samples``: those it affects
    (their label, id or place changed), as far as they can be told."""

    def __init__(self, packed: PackedFile, what: str):
        try:
            self.samples = damaged_samples(packed)
        except Exception:  # noqa: BLE001 - tables too damaged to tell samples apart
            self.samples = np.zeros(0, np.int64)
        self.packed = packed
        named = ""
        if len(self.samples):
            i = int(self.samples[0])
            named = (f"; it affects sample {i} (id {printable(packed.ids[i])})"
                     + (f" and {len(self.samples) - 1} more" if len(self.samples) > 1 else ""))
        super().__init__(f"{packed.path}: {what} are damaged: they do not match their checksum{named}; run "
                         f"`fastvip verify {packed.path}`, then re-pack it")


def _damaged_entry(path: Path, sidecar: dict) -> dict:
    """The sidecar entry of a file whose identity (:func:`fingerprint`) no longer matches: the one
    with checksums and the same size (damaged in place: the checksums say where), or an error
    that says what happened (cut short, or replaced)."""
    size = os.path.getsize(path)
    entries = [e for e in sidecar.get("entries", []) if isinstance(e, dict)]
    sized = [e for e in entries if isinstance(e.get("checksums"), dict) and "bytes" in e["checksums"]]
    same = [e for e in sized if e["checksums"]["bytes"] == size]
    if same:
        return same[0]
    longer = [e for e in sized if e["checksums"]["bytes"] > size]
    if longer:
        raise FastvipError(f"{path} is {size:,} bytes but was {longer[0]['checksums']['bytes']:,} when packed: it was "
                           "cut short (copied while being written?); copy it again or re-pack it")
    raise FastvipError(f"{path} does not match {meta_path(path).name} (one of them was replaced); re-pack it")


def _sample_sums(path: Path, meta: dict, n: int) -> np.ndarray | None:
    """The per-sample checksums of a sidecar entry; None, with one notice line, for a file
    packed before fastvip wrote them."""
    sums = meta.get("checksums")
    if sums is None:
        _notice_once(path, f"{path} carries no per-sample checksums (packed before fastvip wrote them), so "
                           f"damaged samples go unnoticed; `fastvip verify --add-checksums {path}` adds them")
        return None
    try:
        if not isinstance(sums["tables"], str):
            raise TypeError("tables is not a string")
        return checksum.decode(sums["samples"], n)
    except (KeyError, TypeError, ValueError) as e:
        raise FastvipError(f"{meta_path(path)}: its checksums are unreadable ({e}); re-pack {path}") from None


def file_checksums(path: str | os.PathLike) -> dict:
    """The sidecar's ``checksums`` of a packed file as it is now: header and tables, and every sample."""
    reader = _reader(Path(path))
    names, md = reader.field_names, reader.metadata
    labels = np.asarray(md[f"f{names.index('label')}"], dtype=np.int64)
    ids = _read_ids(Path(path), reader, md[f"f{names.index('id')}"])
    rec = image_records(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    sums = checksum.image_sums(data, rec.ptrs, rec.sizes, checksum.meta_seeds(labels, ids))
    return {"algorithm": checksum.ALGORITHM, "bytes": os.path.getsize(path),
            "tables": checksum.tables_sum(path, reader), "samples": checksum.encode(sums)}


def add_checksums(path: str | os.PathLike) -> None:
    """Add :func:`file_checksums` to the sidecar entry of a packed file that has none (atomic)."""
    path = Path(path)
    meta = entry_for(path)
    if meta is None:
        raise FastvipError(f"{path} does not match {meta_path(path).name}; re-pack it")
    atomic.write_json(meta_path(path), _sidecar([{**meta, "checksums": file_checksums(path)}]))


def damaged_samples(packed: PackedFile, indices=None) -> np.ndarray:
    """The samples among ``indices`` (all by default) whose stored bytes, label or id no longer
    match their checksum, sorted; empty for a file without checksums."""
    idx = np.arange(packed.num_samples) if indices is None else np.unique(np.asarray(indices, np.int64))
    if packed.checksums is None or not len(idx):
        return idx[:0]
    rec = packed.records
    data = np.memmap(packed.path, dtype=np.uint8, mode="r")
    ptrs, sizes = rec.ptrs[idx], rec.sizes[idx]
    inside = (ptrs >= 0) & (sizes >= 0) & (ptrs + sizes <= len(data))  # damaged tables can point anywhere
    sums = checksum.image_sums(data, ptrs[inside], sizes[inside], packed.seeds[idx][inside])
    ok = np.zeros(len(idx), bool)
    ok[inside] = sums == packed.checksums[idx][inside]
    return idx[~ok]


# why a sample is damaged: the two ways a loader finds out
CHECKSUM_MISMATCH = "its bytes do not match their checksum"
JPEG_WARNED = "libjpeg reported corrupt data decoding it (a warning or an error)"


def damaged_message(packed: PackedFile, bad, *, all_known: bool = True, why: str = CHECKSUM_MISMATCH,
                    fix: str = "or set skip_damaged=true to leave damaged samples out") -> str:
    """One line for damaged samples ``bad`` (indices): the file, the first sample's index and
    id, why, how many, and the fix."""
    bad = np.asarray(bad)
    i = int(bad[0])
    more = f" ({len(bad)} damaged samples in all)" if all_known and len(bad) > 1 else ""
    return (f"{packed.path}: sample {i} (id {printable(packed.ids[i])}) is damaged: {why}{more}; "
            f"run `fastvip verify {'' if why == CHECKSUM_MISMATCH else '--decode '}{packed.path}`, "
            f"then re-pack it ({fix})")


def skip_notice(packed: PackedFile, i: int, why: str = CHECKSUM_MISMATCH) -> None:
    """The console line for one damaged sample left out (``skip_damaged``)."""
    _warn(f"{packed.path}: sample {int(i)} (id {printable(packed.ids[int(i)])}) is damaged ({why}); "
          "left out (skip_damaged)")


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
    pos = np.minimum(np.searchsorted(table["ptr"], md["data_ptr"]), max(len(table) - 1, 0))
    sizes = table["size"][pos].astype(np.int64) if len(table) else np.zeros(len(md), np.int64)
    if len(table):  # a pointer the table does not hold (damaged tables): size -1
        sizes[table["ptr"][pos] != md["data_ptr"]] = -1
    return ImageRecords(md["data_ptr"].astype(np.int64), sizes,
                        md["mode"].astype(np.int64), md["height"].astype(np.int64), md["width"].astype(np.int64))


def _reader(path: Path, why: str = ""):
    """FFCV's reader of ``path``; a one-line error for anything it cannot parse."""
    try:
        from fastvip.data import ffcv_compat  # noqa: F401 - before FFCV
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
    from fastvip.data import ffcv_compat  # noqa: F401 - before FFCV
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
    _notice_once(path, f"{path} has no {side.name} (written by FFCV's own tools?): class names are its label "
                       f"indices 0..{high}, ids its sample indices; it carries no per-sample checksums")
    return PackedFile(path, [str(c) for c in range(high + 1)], True, labels,
                      [str(i) for i in range(len(labels))], image_md["height"].astype(np.int64),
                      image_md["width"].astype(np.int64), sidecar=False, fields=tuple(names))


def _notice_once(path: Path, message: str) -> None:
    key = os.fspath(path.resolve())
    if key not in _WARNED:  # loaders, merge and predict each open the file; say it once
        _WARNED.add(key)
        _warn(message)


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
