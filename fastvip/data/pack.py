"""``fastvip pack``: images -> one FFCV ``.beton`` (JPEG storage) + a small sidecar.

Two phases, so that FFCV's writer workers never raise (a raising writer worker
makes ``DatasetWriter`` hang):

1. *Transcode*: our own worker pool opens, validates and (when needed)
   re-encodes every image; results stream into a temp spool file on disk, so
   memory does not grow with the number of images. Failures become listed skips.
2. *Write*: ``DatasetWriter`` copies the spooled JPEG bytes into the
   ``.beton`` through a stock ``RGBImageField`` whose ``encode`` takes bytes
   that are already JPEG (no second lossy encode). The file id goes into a
   ``BytesField``; the class names, which FFCV has no place for, go into
   ``OUT.beton.meta.json``. Both are written to temp files and renamed at the end.

Listing the source is :mod:`fastvip.data.listing`, one image's transcode
:mod:`fastvip.data.transcode`, reading a packed file back :mod:`fastvip.data.packed`.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
import types
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from fastvip import atomic
from fastvip.console import Console
from fastvip.data import jpegcheck
from fastvip.data.listing import Source, natural_key, scan_source
from fastvip.data.packed import FORMAT, commit_with_sidecar, fingerprint, meta_path
from fastvip.data.transcode import MIN_SIDE, quiet_children, transcode_job, worker_init
from fastvip.errors import FastvipError

FFCV_MIN_PAGE = 1 << 21  # FFCV's smallest page size (2 MiB)


# ---------------------------------------------------------------- write

class _Spooled:
    """Indexable view of the spool, handed to FFCV's writer (its workers only copy bytes).

    ``modes``: FFCV's storage mode per sample (0 JPEG, 1 raw pixels; a merge copies both)."""

    def __init__(self, spool: str, offsets, sizes, heights, widths, labels, ids, modes=None):
        self.spool = spool
        self.offsets, self.sizes = offsets, sizes
        self.heights, self.widths, self.labels = heights, widths, labels
        self.ids = ids
        self.modes = np.zeros(len(offsets), np.uint8) if modes is None else modes
        self._data = None

    def __len__(self):
        return len(self.offsets)

    def __getitem__(self, i):
        if self._data is None:  # opened lazily in each writer process
            self._data = np.memmap(self.spool, dtype=np.uint8, mode="r")
        o, n = int(self.offsets[i]), int(self.sizes[i])
        stored = self._data[o:o + n]
        return ((stored, int(self.heights[i]), int(self.widths[i]), int(self.modes[i])), int(self.labels[i]),
                self.ids[i])


def _encode_prejpeg(self, destination, value, malloc):
    """``RGBImageField.encode`` for bytes already stored as FFCV stores them: a JPEG (mode 0)
    or, copied by a merge from a file FFCV wrote, raw HxWx3 pixels (mode 1)."""
    data, height, width, mode = value
    destination["mode"] = mode
    destination["height"], destination["width"] = height, width
    destination["data_ptr"], storage = malloc(data.nbytes)
    storage[:] = data


def ffcv_fields():
    """The fields of a fastvip ``.beton``; all stock FFCV types, so any FFCV reader opens it."""
    from fastvip.data import ffcv_compat  # noqa: F401 - before FFCV
    from ffcv.fields import BytesField, IntField, RGBImageField
    image = RGBImageField(write_mode="jpg")
    # Bound on the instance, not a subclass: FFCV records a field's type by exact class.
    image.encode = types.MethodType(_encode_prejpeg, image)
    return {"image": image, "label": IntField(), "id": BytesField()}


def _id_bytes(name: str) -> np.ndarray:
    return np.frombuffer(name.encode("utf-8", "surrogateescape"), dtype=np.uint8).copy()


@dataclass
class PackResult:
    out: Path
    num_images: int
    num_classes: int
    bytes: int
    skipped: list[tuple[str, str]]
    seconds: float


def pack(src, out, *, max_side: int = 512, quality: int = 90, workers: int = 0,
         force: bool = False, strict: bool = False, console: Console | None = None) -> PackResult:
    """Pack an image folder into ``out`` (see module docstring)."""
    console = console or Console()
    out = Path(out)
    if max_side < MIN_SIDE:
        raise FastvipError(f"--max-side must be >= {MIN_SIDE}")
    if not 1 <= quality <= 100:
        raise FastvipError("--quality must be in 1..100")
    if out.suffix != ".beton":
        raise FastvipError(f"output {out} should end in .beton")
    if out.is_dir():
        raise FastvipError(f"output {out} is a folder")
    if not out.parent.is_dir():
        raise FastvipError(f"output folder {out.parent} does not exist")
    try:  # a real probe: os.access says yes to root even on a read-only file system
        atomic.temp_path_for(out).unlink()
    except OSError as e:
        raise FastvipError(f"output folder {out.parent} is not writable: {e.strerror or e}") from None
    if (out.exists() or meta_path(out).exists()) and not force:
        raise FastvipError(f"{out} exists; use --force to overwrite")
    for target in (out, meta_path(out), out.with_suffix(".spool"), out.with_suffix(".log")):
        atomic.remove_stale_temps(target)  # left by a pack that was killed

    jpegcheck.load()  # missing, it is one error here, not a skip per image
    source = scan_source(src)
    workers = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    n = len(source.files)
    console.log(f"pack: {n} files from {source.root} "
                f"({len(source.classes)} classes)" if source.labelled else
                f"pack: {n} files from {source.root} (unlabelled)")

    with temp_files(out) as (spool, beton_tmp, child_log):
        kept, skipped = _transcode_all(source, spool, max_side, quality, workers, console)
        skipped = source.skipped + skipped
        if strict and skipped:
            raise FastvipError(f"--strict: {len(skipped)} file(s) skipped, first: "
                               f"{skipped[0][0]} ({skipped[0][1]})")
        if not kept["offsets"].size:
            raise FastvipError(f"no image in {source.root} could be read "
                               f"({len(skipped)} skipped, first: {skipped[0][1]})")
        write_beton(beton_tmp, spool, kept, workers, console, child_log, out.name)
        summary = {
            "format": FORMAT,
            "num_samples": int(kept["offsets"].size),
            "labelled": source.labelled,
            "classes": source.classes,
            "max_side": max_side,
            "quality": quality,
            "source": os.fsdecode(source.root.resolve()),
            "fingerprint": fingerprint(beton_tmp),
            "skipped": [{"path": p, "reason": r} for p, r in skipped],
        }
        commit_with_sidecar(beton_tmp, out, summary)

    result = PackResult(out, summary["num_samples"], len(source.classes), out.stat().st_size,
                        skipped, time.perf_counter() - t0)
    _print_summary(result, console)
    return result


def _transcode_all(source: Source, spool: Path, max_side, quality, workers, console):
    n = len(source.files)
    offsets = np.zeros(n, np.int64)
    sizes = np.zeros(n, np.int64)
    heights = np.zeros(n, np.int32)
    widths = np.zeros(n, np.int32)
    ok = np.zeros(n, bool)
    skipped = []
    jobs = ((i, os.fspath(source.root / f), max_side, quality) for i, f in enumerate(source.files))
    pos = 0
    # fork keeps start-up cheap; workers only use PIL/numpy, no threads are running yet.
    ctx = get_context("fork")
    try:
        with open(spool, "wb") as fh, console.progress("transcode", n) as bar, \
                ctx.Pool(workers, initializer=worker_init) as pool:
            for i, (good, payload) in pool.imap_unordered(transcode_job, jobs, chunksize=16):
                if good:
                    data, h, w = payload
                    fh.write(data)
                    offsets[i], sizes[i], heights[i], widths[i], ok[i] = pos, len(data), h, w, True
                    pos += len(data)
                else:
                    skipped.append((source.files[i], payload))
                bar.advance(1)
    except OSError as e:
        raise FastvipError(f"cannot write {spool.parent}: {e.strerror or e}") from None
    keep = np.flatnonzero(ok)
    ids = [Path(source.files[i]).name for i in keep]
    kept = dict(offsets=offsets[keep], sizes=sizes[keep], heights=heights[keep],
                widths=widths[keep], labels=np.asarray(source.labels, np.int64)[keep], ids=ids)
    skipped.sort(key=lambda s: natural_key(s[0]))
    return kept, skipped


@contextmanager
def temp_files(out: Path):
    """The temp files of writing ``out``: spool, ``.beton`` and the log of the processes forked
    meanwhile (:func:`~fastvip.data.transcode.quiet_children`); all removed at the end."""
    spool = atomic.temp_path_for(out.with_suffix(".spool"))
    beton_tmp = atomic.temp_path_for(out)
    child_log = atomic.temp_path_for(out.with_suffix(".log"))
    try:
        with quiet_children(child_log):
            yield spool, beton_tmp, child_log
    finally:
        for p in (spool, beton_tmp, child_log):
            if p.exists():
                p.unlink()


def write_beton(path: Path, spool: Path, kept: dict, workers: int, console: Console,
                child_log: Path, name: str):
    """Run FFCV's ``DatasetWriter`` in a child process and wait for its exit code.

    FFCV waits forever for a writer worker that died (disk full, ...). The child watches
    its workers and exits at once when one fails, so the parent only needs the exit code;
    no signal is involved (a process started with SIGINT ignored, as background jobs of
    non-interactive shells are, would never see ``interrupt_main``).
    """
    dataset = _Spooled(os.fspath(spool), kept["offsets"], kept["sizes"], kept["heights"],
                       kept["widths"], kept["labels"], [_id_bytes(i) for i in kept["ids"]], kept.get("modes"))
    # A sample must fit in one page or FFCV's allocator raises inside a worker.
    largest = int(kept["sizes"].max()) + max(len(i) for i in dataset.ids) + 4096
    page = FFCV_MIN_PAGE
    while page < largest:
        page *= 2
    # Writer workers only copy bytes; each keeps a partly filled page, so small sets get one.
    writers = 1 if len(dataset) < 20000 else max(1, min(workers, 4))
    need = int(kept["sizes"].sum()) + (writers + 1) * page + len(dataset) * 64
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise FastvipError(f"not enough free space in {path.parent}: the pack needs about "
                           f"{need / 2**20:,.0f} MiB, {free / 2**20:,.0f} MiB are free")
    ctx = get_context("fork")
    done = ctx.Value("q", 0)
    child = ctx.Process(target=_writer_child, args=(path, dataset, page, writers, done))
    with console.progress("write", len(dataset)) as bar:
        child.start()
        try:
            while child.is_alive():
                child.join(0.2)
                bar.advance(done.value - bar.done)
        finally:
            if child.is_alive():  # interrupted: the workers die with it (PR_SET_PDEATHSIG)
                child.kill()
                child.join()
    if child.exitcode != 0:
        raise FastvipError(f"writing {name} failed (exit {child.exitcode}): {_last_error(child_log)}")


def _writer_child(path: Path, dataset, page: int, writers: int, done) -> None:
    """Child process: FFCV's writer, its workers watched; exits non-zero at the first failure."""
    import threading
    import traceback
    from fastvip.data import ffcv_compat  # noqa: F401 - before FFCV
    import ffcv.writer
    from ffcv.writer import DatasetWriter

    procs = []

    def record(*args, **kwargs):
        proc = saved_process(*args, **kwargs)
        procs.append(proc)
        return proc

    class Progress:  # FFCV reports progress through a module-level tqdm
        def __init__(self, total):
            pass

        def update(self, n):
            done.value += n

        def close(self):
            pass

    writer = DatasetWriter(os.fspath(path), ffcv_fields(), page_size=page, num_workers=writers)

    def watch():
        while True:
            if any(p.exitcode not in (None, 0) for p in procs):
                _release_shared_memory(writer)
                os._exit(3)  # the workers' tracebacks are in the log
            threading.Event().wait(0.2)

    saved_process = ffcv.writer.Process
    ffcv.writer.Process, ffcv.writer.tqdm = record, Progress
    threading.Thread(target=watch, daemon=True).start()
    try:
        writer.from_indexed_dataset(dataset, chunksize=256)
    except BaseException as e:  # noqa: BLE001 - report it as the last log line, then fail
        traceback.print_exc()
        print(f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
        _release_shared_memory(writer)
        os._exit(4)
    os._exit(0)


def _release_shared_memory(writer) -> None:
    """FFCV frees its metadata block only on success; do it after a failed write."""
    shm = getattr(writer, "metadata_sm", None)
    if shm is not None and not isinstance(shm, int):
        shm.close()
        shm.unlink()


def _last_error(log: Path) -> str:
    try:
        lines = [l.strip() for l in log.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        lines = []
    return lines[-1] if lines else "a writer process exited with an error"


def _print_summary(r: PackResult, console: Console) -> None:
    rows = [("output", os.fspath(r.out)), ("images", f"{r.num_images:,}"),
            ("classes", str(r.num_classes) if r.num_classes else "unlabelled"),
            ("bytes", f"{r.bytes:,}"), ("time", f"{r.seconds:.1f} s "
                                                  f"({r.num_images / max(r.seconds, 1e-9):,.0f} img/s)"),
            ("skipped", str(len(r.skipped)))]
    console.table("pack summary", rows)
    if r.skipped:
        reasons: dict[str, int] = {}
        for _, why in r.skipped:
            reasons[why] = reasons.get(why, 0) + 1
        console.print(f"skipped {len(r.skipped)}: " + "; ".join(f"{k} ({v})" for k, v in reasons.items()))
        for p, why in r.skipped[:20]:
            console.print(f"  {p}: {why}")
        if len(r.skipped) > 20:
            console.print(f"  ... {len(r.skipped) - 20} more in {meta_path(r.out)}")
