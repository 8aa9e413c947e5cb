"""Merging packed files into one (train + val, for the final models), kept beside the first
and reused while its sources are unchanged.

It copies the stored bytes, so it reads with :mod:`fastvip.data.packed` and writes with
:mod:`fastvip.data.pack`'s writer; neither of those imports it.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from fastvip.console import Console
from fastvip.data.pack import temp_files, write_beton
from fastvip.data.packed import (FORMAT, PackedFile, check_label_indices, commit_with_sidecar, damaged_message,
                                 damaged_samples, entry_for,
                                 fingerprint, image_records, open_packed)
from fastvip.errors import FastvipError


def merged_path(files: list) -> Path:
    """Where the merge of ``files`` is kept: beside the first, named after all (``train+val.beton``)."""
    first = Path(files[0])
    return first.with_name("+".join(Path(f).stem for f in files) + ".beton")


def merge(files: list, *, console: Console | None = None) -> Path:
    """One packed file holding every sample of ``files`` (train + val for the final models).

    The stored bytes (JPEG, or raw pixels in files FFCV wrote) are copied, not re-encoded. The
    result is kept beside the first file (:func:`merged_path`) and reused while its sidecar's
    record of the sources' fingerprints still matches them; see :func:`_merged_classes`.
    """
    console = console or Console()
    files = [Path(f) for f in files]
    packed = [open_packed(f) for f in files]
    if not all(p.labelled for p in packed):
        raise FastvipError("train_data: only labelled files can be merged for training")
    classes = _merged_classes(files, packed)
    out = merged_path(files)
    sources = [{"path": os.fspath(f.resolve()), "fingerprint": fingerprint(f)} for f in files]
    current = entry_for(out)
    if current is not None and current.get("merged_from") == sources:
        return out
    for p in packed:  # a merge writes fresh checksums: it must not copy damage under them
        bad = damaged_samples(p)
        if len(bad):
            raise FastvipError(damaged_message(p, bad, fix="a merge copies sound samples only"))
    t0 = time.perf_counter()
    with temp_files(out) as (spool, beton_tmp, child_log):
        try:
            kept = _spool_stored(files, packed, spool)
            write_beton(beton_tmp, spool, kept, os.cpu_count() or 1, console, child_log, out.name)
            summary = {"format": FORMAT, "num_samples": int(len(kept["labels"])), "labelled": True,
                       "classes": classes, "merged_from": sources,
                       "fingerprint": fingerprint(beton_tmp), "skipped": []}
            commit_with_sidecar(beton_tmp, out, summary)
        except OSError as e:
            raise FastvipError(f"cannot write {out}: {e.strerror or e}") from None
    console.log(f"merge: {' + '.join(f.name for f in files)} -> {out} ({summary['num_samples']:,} images, "
                f"{time.perf_counter() - t0:.1f} s)")
    return out


def _spool_stored(files: list[Path], packed: list[PackedFile], spool: Path) -> dict:
    """Copy the stored bytes of every sample of ``files`` into ``spool``, as they are (JPEG,
    or raw pixels in files FFCV wrote); what :func:`~fastvip.data.pack.write_beton` takes."""
    kept = {k: [] for k in ("offsets", "sizes", "heights", "widths", "labels", "modes")}
    kept["ids"] = []
    pos = 0
    with open(spool, "wb") as fh:
        for f, p in zip(files, packed):
            stored = image_records(f)
            data = np.memmap(f, dtype=np.uint8, mode="r")
            for ptr, size in zip(stored.ptrs, stored.sizes):
                fh.write(data[int(ptr):int(ptr) + int(size)].tobytes())
            kept["offsets"].append(pos + np.concatenate([[0], np.cumsum(stored.sizes)[:-1]]))
            pos += int(stored.sizes.sum())
            kept["sizes"].append(stored.sizes)
            kept["heights"].append(p.heights)
            kept["widths"].append(p.widths)
            kept["labels"].append(p.labels)
            kept["modes"].append(stored.modes)
            kept["ids"] += p.ids
    return {k: (np.concatenate(v) if k != "ids" else v) for k, v in kept.items()}


def _merged_classes(files: list[Path], packed: list[PackedFile]) -> list[str]:
    """The classes of a merge: those of its files with a sidecar (which must agree), into which
    the labels of sidecar-less files are indices; with no sidecar at all, 0..the largest label."""
    named = [(f, p) for f, p in zip(files, packed) if p.sidecar]
    if not named:
        return [str(c) for c in range(max(int(p.labels.max()) for p in packed) + 1)]
    first, ref = named[0]
    for f, p in named[1:]:
        if p.classes != ref.classes:
            raise FastvipError(f"train_data: {f} has {p.num_classes} classes that differ from the "
                               f"{ref.num_classes} of {first}; they cannot be merged")
    for p in packed:
        if not p.sidecar:
            check_label_indices(p, ref.classes, first)
    return ref.classes
