"""The region JPEG decoder (``loaders/_jpeg.c``), compiled: callable from Python and numba code.

:func:`decode_region` decodes only a crop of a JPEG (libjpeg-turbo's ``jpeg_crop_scanline``
and ``jpeg_skip_scanlines``; the entropy decoder stops after the crop's last row), at DCT
scale ``num``/8. FFCV's ``imdecode`` decodes the whole image (its crop option goes through
a lossless transform, measured slower than a whole decode; see benchmarks/RESULTS.md).
"""
from __future__ import annotations

import ctypes

import numpy as np
from numba import njit, types

try:
    from . import _jpeg
except ImportError as e:  # a checkout used without `pip install -e .`, or libjpeg-dev was missing then
    raise ImportError("fastvip's region JPEG decoder (loaders/_jpeg.c) is not built: run `pip install -e .` "
                      "in the repository (it needs a C compiler and libjpeg-dev)") from e

from .cdecl import declare

_lib = ctypes.CDLL(_jpeg.__file__)


# called by symbol name, so that numba caches the code that calls them (see cdecl)
_i64, _ptr, _u64 = types.int64, types.intp, types.uint64
_c_decode_region = declare("fastvip_decode_region", _lib.fastvip_decode_region,
                           types.int32(_ptr, _u64, _ptr, _u64, _i64, _i64, _i64, _i64, _i64, _ptr))
_c_resize = declare("fastvip_resize", _lib.fastvip_resize, types.int32(_ptr, _i64, _i64, _i64, _ptr, _i64, _i64, _i64, _i64))

ERRORS = {-1: "libjpeg could not decode the image", -2: "destination buffer too small", -3: "empty or bad crop"}


@njit(cache=True, nogil=True)
def decode_region(source, dst, top, left, h, w, num, info):
    """Decode rows [top, top+h) x columns [left, left+w) (full-resolution pixels) at scale num/8.

    ``dst`` (uint8, C-contiguous) receives ``info[0]`` RGB rows of ``info[1]`` pixels; the crop's
    columns start ``info[2]`` pixels into each row; ``info[3:5]`` = the scaled image's size,
    ``info[5]`` libjpeg's warnings (corrupt data, premature end). ``info`` is an int64 array of 6.
    Returns 0, or a negative code (:data:`ERRORS`). Compiled (callable from Python and from
    numba code: FFCV's decode loop and the resident loader call it).
    """
    return _c_decode_region(source.ctypes.data, source.size, dst.ctypes.data, dst.size, top, left, h, w, num,
                            info.ctypes.data)


def decode_crop(data: bytes | np.ndarray, top: int, left: int, h: int, w: int, num: int = 8) -> np.ndarray:
    """Python convenience: the scaled crop as an (rows, cols, 3) uint8 array (for tests and tools)."""
    src = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else np.ascontiguousarray(data)
    # an upper bound on the scaled crop widened to whole iMCUs (at most 32 px each side at scale 8/8)
    rows = (h * num + 7) // 8 + 1
    cols = (w * num + 7) // 8 + 2 * 32
    dst = np.empty(rows * cols * 3, np.uint8)
    info = np.zeros(6, np.int64)
    code = decode_region(src, dst, top, left, h, w, num, info)
    if code:
        raise ValueError(f"region decode failed: {ERRORS.get(code, code)}")
    n, width, dx = int(info[0]), int(info[1]), int(info[2])
    cw = min((left + w) * num + 7, int(info[4]) * 8) // 8 - (left * num) // 8
    return dst[:n * width * 3].reshape(n, width, 3)[:, dx:dx + cw].copy()


def decode_problem(data: np.ndarray, height: int, width: int) -> str | None:
    """Why a stored JPEG of ``height`` x ``width`` is damaged (libjpeg's error or warnings, a size
    that differs from the stored one), or None when it decodes whole and clean."""
    src = np.ascontiguousarray(data)
    dst = np.empty(height * (width + 64) * 3, np.uint8)
    info = np.zeros(6, np.int64)
    code = decode_region(src, dst, 0, 0, height, width, 8, info)
    if code:
        return ERRORS.get(code, f"libjpeg error {code}")
    if (info[3], info[4]) != (height, width):
        return f"decodes to {info[3]}x{info[4]}, not the stored {height}x{width}"
    if info[5]:
        return f"libjpeg warned {int(info[5])} time(s) (corrupt data or premature end)"
    return None


@njit(cache=True, nogil=True)
def resize(source, top, bottom, left, right, dst, mirror):
    """``dst[:] = source[top:bottom, left:right]`` shrunk with cv2.INTER_AREA's weights (within
    one level), mirrored left-right when ``mirror``; ``source`` and ``dst`` are (h, w, 3) uint8
    with C-contiguous rows. Shrinking only: returns -3 when ``dst`` is larger than the crop on
    either side (OpenCV's linear path is fast there), else 0. numba-compatible."""
    stride = source.strides[0]
    return _c_resize(source.ctypes.data + top * stride + left * 3, stride, bottom - top, right - left,
                     dst.ctypes.data, dst.strides[0], dst.shape[0], dst.shape[1], mirror)
