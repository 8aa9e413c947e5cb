"""FFCV's C kernels and XXH3 as the loaders' compiled code calls them: by symbol name, cached.

See :mod:`.cdecl` for why.
"""
from __future__ import annotations

import ctypes

import xxhash
from numba import njit, types

from fastvip.data import ffcv_compat  # noqa: F401 - before FFCV
import ffcv._libffcv

from .cdecl import declare


_i64, _ptr, _u64, _u32, _u8 = types.int64, types.intp, types.uint64, types.uint32, types.uint8
_ffcv = ctypes.CDLL(ffcv._libffcv.__file__)
_c_imdecode = declare("fastvip_ffcv_imdecode", _ffcv.imdecode,
                      types.int32(_ptr, _u64, _u32, _u32, _ptr, _u32, _u32, _u32, _u32, _u32, _u32, _u8, _u8))
_c_linear = declare("fastvip_ffcv_resize", _ffcv.resize, types.int32(*(11 * [_i64])))
_c_xxh3 = declare("fastvip_xxh3_64_seeded", ctypes.CDLL(xxhash._xxhash.__file__).XXH3_64bits_withSeed,
                  types.uint64(_ptr, _u64, _u64))


@njit(cache=True, nogil=True)
def imdecode(source, dst, height, width, crop_height, crop_width, offset_x, offset_y, num, denom,
             enable_crop, flip):
    """FFCV's ``libffcv.imdecode`` (TurboJPEG), same arguments."""
    return _c_imdecode(source.ctypes.data, source.size, height, width, dst.ctypes.data, crop_height, crop_width,
                       offset_x, offset_y, num, denom, enable_crop, flip)


@njit(cache=True, nogil=True)
def resize_crop(source, start_row, end_row, start_col, end_col, destination):
    """FFCV's ``libffcv.resize_crop`` (OpenCV's linear resize of a crop), same arguments."""
    return _c_linear(0, source.ctypes.data, source.shape[0], source.shape[1], start_row, end_row, start_col,
                     end_col, destination.ctypes.data, destination.shape[0], destination.shape[1])


@njit(cache=True, nogil=True)
def xxh3_seeded(data, seed):
    """XXH3-64 of the bytes of ``data`` (a contiguous uint8 array) with ``seed``: the sample
    checksum of :mod:`fastvip.data.checksum`, from the same C function."""
    return _c_xxh3(data.ctypes.data, data.size, seed)
