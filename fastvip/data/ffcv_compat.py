"""FFCV, imported and patched for fastvip: import this module before anything from ``ffcv``.

Two changes to FFCV 1.0.2, neither of which alters what it computes:

- **A cheap import.** ``ffcv.fields.rgb_image`` builds ``IMAGE_MODES`` (two constants,
  ``jpg`` 0 and ``raw`` 1) as a numba typed ``Dict``, and filling it compiles numba's dict
  implementation: 5-6 s of the start of every process that imports FFCV, measured on 2 cores
  (``python -X importtime -c "import ffcv"``). FFCV reads it only from Python, never inside
  compiled code, so it is imported here with a plain dict in its place; nothing else FFCV
  imports uses a typed ``Dict``.
- **numba's shared types left alone.** FFCV's memory managers mark their state read-only by
  setting ``mutable = False`` on ``nb.uint8[::1]`` and friends (``state_type``), which are
  numba's interned type objects: from then on every ``uint8[::1]`` in the process is read-only
  and its hash changes, which corrupts numba's dispatchers that already hold it as a key (a
  ``KeyError`` or an endless loop inside numba, once compiled code is cached). The patched
  ``state_type`` builds read-only types of its own, the same types FFCV meant.

A process that imported FFCV before this module gets the second change only.
"""
import sys

if "ffcv" not in sys.modules:
    import numba.typed

    _typed = numba.typed.Dict
    numba.typed.Dict = dict
    try:
        import ffcv  # noqa: F401
    finally:
        numba.typed.Dict = _typed

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402
from ffcv.memory_managers.os_cache import OSCacheManager  # noqa: E402
from ffcv.memory_managers.process_cache.manager import ProcessCacheManager  # noqa: E402
from ffcv.pipeline.compiler import Compiler  # noqa: E402


def _readonly(dtype, ndim: int = 1):
    return nb.types.Array(dtype, ndim, "C", readonly=True)


def _os_state_type(self):
    # FFCV's: (the file's bytes, read-only; allocation pointers; sizes)
    return nb.types.Tuple([_readonly(nb.uint8), nb.uint64[::1], nb.uint64[::1]])


def _os_compile_reader(self):
    def read(address, mem_state):  # FFCV's, as it is
        size = mem_state[2][np.searchsorted(mem_state[1], address)]
        return mem_state[0][address:address + size]
    return Compiler.compile(read, _readonly(nb.uint8)(nb.uint64, self.state_type))


def _process_state_type(self):
    # FFCV's: (pages, pointers, sizes, page to slot), all read-only
    return nb.types.Tuple([_readonly(nb.uint8, 2), _readonly(nb.uint64), _readonly(nb.uint64), _readonly(nb.uint32)])


if not getattr(OSCacheManager, "_fastvip_patched", False):
    OSCacheManager.state_type = property(_os_state_type)
    OSCacheManager.compile_reader = _os_compile_reader
    ProcessCacheManager.state_type = property(_process_state_type)
    OSCacheManager._fastvip_patched = True
