"""libjpeg-turbo's verdict on a JPEG's bytes, through its TurboJPEG API (ctypes).

``fastvip pack`` keeps a source JPEG byte for byte only when it decodes with neither an
error nor a warning: libjpeg's warnings (corrupt data, extraneous bytes before a marker, a
premature end padded with grey) count as damage in the loaders, and PIL, which pack decodes
with, never reports them. The check decodes at 1/8 scale: every coefficient is still
entropy-decoded (where the warnings come from) and the file is read to its end marker, at a
fraction of a full decode's cost.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading

from fastvip.errors import FastvipError

_TJPF_RGB = 0
_TJFLAG_FASTDCT = 2048
_TJERR_WARNING = 0
_lib = None
_local = threading.local()  # a TurboJPEG handle is not to be shared between threads


def load():
    """The TurboJPEG library (loaded once), or the one-line error that names the package."""
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("turbojpeg")
        if name is None:
            raise FastvipError("libturbojpeg is not installed (it is one of FFCV's system packages): "
                               "`sudo apt-get install libturbojpeg0-dev`, or `make setup`")
        lib = ctypes.CDLL(name)
        if not hasattr(lib, "tjGetErrorCode"):
            raise FastvipError(f"{name} is older than TurboJPEG 2.0, which tells warnings from errors; "
                               "install libjpeg-turbo 2.0 or later (`make setup` installs it)")
        lib.tjInitDecompress.restype = ctypes.c_void_p
        lib.tjDecompressHeader3.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong] + [
            ctypes.POINTER(ctypes.c_int)] * 4
        lib.tjDecompress2.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p,
                                      ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.tjGetErrorCode.argtypes = [ctypes.c_void_p]
        lib.tjGetErrorStr2.argtypes = [ctypes.c_void_p]
        lib.tjGetErrorStr2.restype = ctypes.c_char_p
        _lib = lib
    return _lib


def _handle(lib):
    # one per thread for the life of the process (pack's workers are processes): never freed
    if getattr(_local, "handle", None) is None:
        handle = lib.tjInitDecompress()
        if not handle:
            raise MemoryError("tjInitDecompress failed")
        _local.handle = handle
    return _local.handle


def jpeg_problem(data: bytes) -> str | None:
    """libjpeg-turbo's error or first warning decoding ``data``, or None when it decodes clean."""
    lib = load()
    h = _handle(lib)
    w, ht, sub, cs = (ctypes.c_int() for _ in range(4))
    if lib.tjDecompressHeader3(h, data, len(data), *(ctypes.byref(v) for v in (w, ht, sub, cs))) != 0:
        return f"libjpeg: {lib.tjGetErrorStr2(h).decode(errors='replace')}"
    # TurboJPEG picks the largest scale that fits: ceil(side / 8) asks for 1/8
    sw, sh = -(-w.value // 8), -(-ht.value // 8)
    dst = ctypes.create_string_buffer(max(1, sw * sh * 3))
    if lib.tjDecompress2(h, data, len(data), dst, sw, 0, sh, _TJPF_RGB, _TJFLAG_FASTDCT) != 0:
        kind = "warned" if lib.tjGetErrorCode(h) == _TJERR_WARNING else "failed"
        return f"libjpeg {kind}: {lib.tjGetErrorStr2(h).decode(errors='replace')}"
    return None
