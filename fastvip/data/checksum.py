"""Per-sample checksums of packed files, kept in the sidecar, checked by every loader on read.

A sample's checksum is XXH3-64 (xxHash, from the ``xxhash`` package) of its stored image
bytes, seeded with XXH3-64 of its label (int64, little-endian) and its id (UTF-8): one
number per sample covers all three fields, and a loader that holds the image bytes checks
it before decoding with the labels and ids it read when it opened the file. The header,
field descriptors, metadata table and allocation table (everything but the samples' data)
have one more checksum of their own, checked when the file is opened.

Python code hashes with the ``xxhash`` package; FFCV's numba-compiled decoder calls the same C
function of that package (``fastvip.loaders.native.xxh3_seeded``, without the GIL), so the
writer and every reader compute the same thing.
"""
from __future__ import annotations

import base64
import os

import numpy as np
import xxhash

ALGORITHM = "xxh3_64(image, seed=xxh3_64(label int64 LE + id UTF-8))"


def meta_seeds(labels: np.ndarray, ids: list[str]) -> np.ndarray:
    """Each sample's seed: XXH3-64 of its label and id as stored."""
    return np.fromiter((xxhash.xxh3_64_intdigest(int(label).to_bytes(8, "little", signed=True)
                                                 + i.encode("utf-8", "surrogateescape"))
                        for label, i in zip(labels, ids)), np.uint64, len(ids))


def _sums(data: np.ndarray, ptrs, sizes, seeds, out) -> None:
    view = memoryview(data)  # slices without copies; xxhash hashes them where they lie
    digest = xxhash.xxh3_64_intdigest
    for k, (p, n, seed) in enumerate(zip(ptrs.tolist(), sizes.tolist(), seeds.tolist())):
        out[k] = digest(view[p:p + n], seed)


def image_sums(data: np.ndarray, ptrs, sizes, seeds) -> np.ndarray:
    """The checksums of samples whose image bytes lie at ``data[ptrs[k]:ptrs[k] + sizes[k]]``
    (``data``: the whole file, memory-mapped)."""
    ptrs, sizes = np.asarray(ptrs, np.int64), np.asarray(sizes, np.int64)
    seeds = np.asarray(seeds, np.uint64)
    out = np.empty(len(ptrs), np.uint64)
    if len(ptrs) and int((ptrs + sizes).max()) > len(data):
        raise ValueError("a sample lies past the end of the file")
    _sums(data, ptrs, sizes, seeds, out)
    return out


def table_ranges(reader) -> list[tuple[int, int]]:
    """The byte ranges of an FFCV file that are not sample data: header, field descriptors and
    metadata table at the start, allocation table at the end (FFCV's own layout)."""
    from fastvip.data import ffcv_compat  # noqa: F401 - before FFCV
    from ffcv.types import HeaderType
    head = HeaderType.itemsize + reader.field_descriptors.nbytes + reader.metadata.nbytes
    size = os.path.getsize(reader.file_name)
    return [(0, head), (int(reader.header["alloc_table_ptr"]), size)]


def tables_sum(path: str | os.PathLike, reader) -> str:
    """XXH3-64 (hex) of the file's header and tables (:func:`table_ranges`)."""
    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        for lo, hi in table_ranges(reader):
            f.seek(lo)
            h.update(f.read(hi - lo))
    return h.hexdigest()


def encode(sums: np.ndarray) -> str:
    """The checksums as the sidecar stores them: base64 of little-endian uint64s."""
    return base64.b64encode(np.asarray(sums, "<u8").tobytes()).decode("ascii")


def decode(text: str, n: int) -> np.ndarray:
    """:func:`encode` read back; ValueError unless it holds ``n`` checksums."""
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    if len(raw) != 8 * n:
        raise ValueError(f"{len(raw) // 8} checksums for {n} samples")
    return np.frombuffer(raw, "<u8").astype(np.uint64)
