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
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import sys
import time
import types
import warnings
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from fastvip import atomic
from fastvip.console import Console, printable
from fastvip.errors import FastvipError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MIN_SIDE = 8
# JPEGs are decoded reduced (DCT scaling, at most 1/8 per side) so only the reduced
# size must fit; other formats decode at full size.
MAX_DECODED_PIXELS = 64_000_000   # ~190 MB of RGB per worker
MAX_JPEG_PIXELS = 64 * MAX_DECODED_PIXELS
META_SUFFIX = ".meta.json"
FORMAT = "fastvip-pack/1"
FFCV_MIN_PAGE = 1 << 21  # FFCV's smallest page size (2 MiB)


def meta_path(beton: str | os.PathLike) -> Path:
    """The sidecar written beside a packed file."""
    return Path(str(beton) + META_SUFFIX)


def _natural_key(name: str):
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
        dirnames.sort(key=_natural_key)
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
    return sorted(found, key=_natural_key)


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
        entries = sorted(os.scandir(root), key=lambda e: _natural_key(e.name))
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
            files = sorted(top_images, key=_natural_key)
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


# ---------------------------------------------------------------- transcode

def transcode(path: str, max_side: int, quality: int) -> tuple[bool, object]:
    """Open, validate and normalise one image -> ``(True, (jpeg, h, w))`` or ``(False, reason)``.

    Never raises. A JPEG that is already RGB, upright and small enough is kept
    byte for byte (no generation loss); everything else is decoded fully
    (truncated files fail here rather than being kept half-grey), EXIF-rotated,
    converted to RGB, downscaled and encoded at ``quality``.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError
    Image.MAX_IMAGE_PIXELS = None  # replaced by the limits below, which know about draft()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open(path, "rb") as f:
                data = f.read()
            if not data:
                return False, "empty file"
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            w0, h0 = img.size
            limit = MAX_JPEG_PIXELS if fmt == "JPEG" else MAX_DECODED_PIXELS
            if w0 * h0 > limit:
                return False, f"image too large to decode ({w0}x{h0})"
            orientation = img.getexif().get(0x0112, 1)
            if fmt == "JPEG" and max(w0, h0) > max_side:
                # Decode at reduced scale (DCT scaling) so huge JPEGs never exist at full size.
                img.draft("RGB", (max_side, max_side))
            img.load()
            keep = (fmt == "JPEG" and img.mode == "RGB" and orientation in (0, 1)
                    and max(w0, h0) <= max_side and min(w0, h0) >= MIN_SIDE and _light_jpeg(img, quality))
            if keep:
                return True, (data, h0, w0)
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
            w, h = img.size
            if min(w, h) < MIN_SIDE:
                return False, f"too small ({w0}x{h0} px, need >= {MIN_SIDE})"
            if max(w, h) > max_side:
                s = max_side / max(w, h)
                img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC,
                                 reducing_gap=3.0)
                w, h = img.size
            out = io.BytesIO()
            img.save(out, format="JPEG", quality=quality)
            return True, (out.getvalue(), h, w)
    except UnidentifiedImageError:
        return False, "not a readable image"
    except OSError as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            return False, "truncated image"
        return False, f"unreadable: {msg}"
    except Exception as e:  # noqa: BLE001 - any decoder failure is a listed skip, never a crash
        return False, f"{type(e).__name__}: {e}"


# libjpeg's standard luminance quantization table (quality 50)
_STD_LUMA_SUM = sum([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57,
                     69, 56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55,
                     64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100,
                     103, 99])


def jpeg_quality(img) -> float | None:
    """Estimated libjpeg quality of a JPEG from its luminance table (None if unknown)."""
    tables = getattr(img, "quantization", None)
    if not tables or 0 not in tables:
        return None
    scale = 100.0 * sum(tables[0]) / _STD_LUMA_SUM  # libjpeg: table = std * scale / 100
    return (200.0 - scale) / 2.0 if scale <= 100 else 5000.0 / scale


def _light_jpeg(img, quality: int) -> bool:
    """Keep the original bytes only when re-encoding would not make it cheaper to decode:
    4:2:0 chroma and a quality no higher than ``quality``. Heavier JPEGs (4:4:4, q95+,
    as many ImageNet files are) decode markedly slower, so they are re-encoded."""
    from PIL import JpegImagePlugin
    q = jpeg_quality(img)
    return JpegImagePlugin.get_sampling(img) == 2 and q is not None and q <= quality + 0.5


def _to_rgb(img):
    from PIL import Image
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit / 32-bit integer greyscale: scale to 8 bit rather than clip.
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img, mask=img.getchannel("A"))
        return bg
    return img.convert("RGB")


# ---------------------------------------------------------------- child processes

_CHILD_LOG: str | None = None   # set while pack runs: children fork with these settings


def _in_child_after_fork() -> None:
    """Every process pack forks (its pool, FFCV's writers) dies with pack and stays quiet.

    PR_SET_PDEATHSIG: a SIGKILL of pack alone (not its group) still ends the workers,
    so none keeps writing. Ctrl-C is handled by pack, which removes its temp files.
    A writer's traceback goes to a log that pack turns into a one-line error.
    """
    if _CHILD_LOG is None:
        return
    parent = _FORKING_PID
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd = os.open(_CHILD_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)


_FORKING_PID = os.getpid()


def _before_fork() -> None:
    global _FORKING_PID
    _FORKING_PID = os.getpid()  # pack itself, or its writer child forking FFCV's workers


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_in_child_after_fork)


def _worker_init():
    warnings.filterwarnings("ignore")


def _transcode_job(args):
    i, path, max_side, quality = args
    return i, transcode(path, max_side, quality)


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

    source = scan_source(src)
    workers = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    n = len(source.files)
    console.log(f"pack: {n} files from {source.root} "
                f"({len(source.classes)} classes)" if source.labelled else
                f"pack: {n} files from {source.root} (unlabelled)")

    global _CHILD_LOG
    spool = atomic.temp_path_for(out.with_suffix(".spool"))
    beton_tmp = atomic.temp_path_for(out)
    child_log = atomic.temp_path_for(out.with_suffix(".log"))
    _CHILD_LOG = os.fspath(child_log)
    try:
        kept, skipped = _transcode_all(source, spool, max_side, quality, workers, console)
        skipped = source.skipped + skipped
        if strict and skipped:
            raise FastvipError(f"--strict: {len(skipped)} file(s) skipped, first: "
                               f"{skipped[0][0]} ({skipped[0][1]})")
        if not kept["offsets"].size:
            raise FastvipError(f"no image in {source.root} could be read "
                               f"({len(skipped)} skipped, first: {skipped[0][1]})")
        _write_beton(beton_tmp, spool, kept, workers, console, child_log, out.name)
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
        # The sidecar lists the old and the new pack while the two files are swapped, so
        # whichever .beton is on disk at a kill has its entry; then only the new one stays.
        previous = _entry_for(out)
        atomic.write_json(meta_path(out), _sidecar([summary] + ([previous] if previous else [])))
        atomic.commit(beton_tmp, out)
        atomic.write_json(meta_path(out), _sidecar([summary]))
    finally:
        _CHILD_LOG = None
        for p in (spool, beton_tmp, child_log):
            if p.exists():
                p.unlink()

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
                ctx.Pool(workers, initializer=_worker_init) as pool:
            for i, (good, payload) in pool.imap_unordered(_transcode_job, jobs, chunksize=16):
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
    skipped.sort(key=lambda s: _natural_key(s[0]))
    return kept, skipped


def _write_beton(path: Path, spool: Path, kept: dict, workers: int, console: Console,
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
    current = _entry_for(out)
    if current is not None and current.get("merged_from") == sources:
        return out
    from ffcv.reader import Reader
    t0 = time.perf_counter()
    spool = atomic.temp_path_for(out.with_suffix(".spool"))
    beton_tmp = atomic.temp_path_for(out)
    child_log = atomic.temp_path_for(out.with_suffix(".log"))
    kept = {k: [] for k in ("offsets", "sizes", "heights", "widths", "labels", "modes")}
    kept["ids"] = []
    pos = 0
    global _CHILD_LOG
    _CHILD_LOG = os.fspath(child_log)  # FFCV writer tracebacks -> a one-line error
    try:
        with open(spool, "wb") as fh:
            for f, p in zip(files, packed):
                reader = Reader(os.fspath(f))
                md = reader.metadata[f"f{reader.field_names.index('image')}"]
                table = np.sort(reader.alloc_table, order="ptr")  # pointer -> stored size
                sizes = table["size"][np.searchsorted(table["ptr"], md["data_ptr"])].astype(np.int64)
                data = np.memmap(f, dtype=np.uint8, mode="r")
                for ptr, size in zip(md["data_ptr"], sizes):
                    fh.write(data[int(ptr):int(ptr) + int(size)].tobytes())
                kept["offsets"].append(pos + np.concatenate([[0], np.cumsum(sizes)[:-1]]))
                pos += int(sizes.sum())
                kept["sizes"].append(sizes)
                kept["heights"].append(p.heights)
                kept["widths"].append(p.widths)
                kept["labels"].append(p.labels)
                kept["modes"].append(md["mode"])
                kept["ids"] += p.ids
        kept = {k: (np.concatenate(v) if k != "ids" else v) for k, v in kept.items()}
        _write_beton(beton_tmp, spool, kept, os.cpu_count() or 1, console, child_log, out.name)
        summary = {"format": FORMAT, "num_samples": int(len(kept["labels"])), "labelled": True,
                   "classes": classes, "merged_from": sources,
                   "fingerprint": fingerprint(beton_tmp), "skipped": []}
        previous = _entry_for(out)
        atomic.write_json(meta_path(out), _sidecar([summary] + ([previous] if previous else [])))
        atomic.commit(beton_tmp, out)
        atomic.write_json(meta_path(out), _sidecar([summary]))
    except OSError as e:
        raise FastvipError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        _CHILD_LOG = None
        for tmp in (spool, beton_tmp, child_log):
            if tmp.exists():
                tmp.unlink()
    console.log(f"merge: {' + '.join(f.name for f in files)} -> {out} ({summary['num_samples']:,} images, "
                f"{time.perf_counter() - t0:.1f} s)")
    return out


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


def _last_error(log: Path) -> str:
    try:
        lines = [l.strip() for l in log.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        lines = []
    return lines[-1] if lines else "a writer process exited with an error"


def _sidecar(entries: list[dict]) -> dict:
    return {"format": FORMAT, "entries": entries}


def _entry_for(beton: Path) -> dict | None:
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
    meta = _entry_for(path)
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

