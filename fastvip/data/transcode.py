"""Transcoding one image to the JPEG that ``fastvip pack`` stores (a failure is a listed
skip, never a raise), and the set-up of every process pack forks: its transcode pool's
workers and FFCV's writers.
"""
from __future__ import annotations

import io
import os
import signal
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from fastvip.data.jpegcheck import jpeg_problem

MIN_SIDE = 8
# JPEGs are decoded reduced (DCT scaling, at most 1/8 per side) so only the reduced
# size must fit; other formats decode at full size.
MAX_DECODED_PIXELS = 64_000_000   # ~190 MB of RGB per worker
MAX_JPEG_PIXELS = 64 * MAX_DECODED_PIXELS


def transcode(path: str, max_side: int, quality: int) -> tuple[bool, object]:
    """Open, validate and normalise one image -> ``(True, (jpeg, h, w))`` or ``(False, reason)``.

    Never raises. A JPEG that is already RGB, upright and small enough, and that
    libjpeg-turbo decodes without an error or a warning (:mod:`fastvip.data.jpegcheck`),
    is kept byte for byte (no generation loss); everything else is decoded fully by PIL
    (truncated files fail here rather than being kept half-grey; corrupt data that libjpeg
    only warns about is decoded as PIL sees it), EXIF-rotated, converted to RGB,
    downscaled and encoded at ``quality``.
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
            keep = (fmt == "JPEG" and img.mode == "RGB" and orientation in (0, 1)
                    and max(w0, h0) <= max_side and min(w0, h0) >= MIN_SIDE and _light_jpeg(img, quality))
            # the check is the decode that validates a kept JPEG: a cheaper one than PIL's
            if keep and jpeg_problem(data) is None:
                return True, (data, h0, w0)
            if fmt == "JPEG" and max(w0, h0) > max_side:
                # Decode at reduced scale (DCT scaling) so huge JPEGs never exist at full size.
                img.draft("RGB", (max_side, max_side))
            img.load()
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


@contextmanager
def quiet_children(log: Path):
    """Inside, every process forked dies with this one, ignores Ctrl-C and writes its stderr
    to ``log`` (:func:`_in_child_after_fork`)."""
    global _CHILD_LOG
    _CHILD_LOG = os.fspath(log)
    try:
        yield
    finally:
        _CHILD_LOG = None


def worker_init():
    warnings.filterwarnings("ignore")


def transcode_job(args):
    i, path, max_side, quality = args
    return i, transcode(path, max_side, quality)
