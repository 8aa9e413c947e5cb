"""C functions declared to numba by symbol name, so that numba caches the code that calls them.

numba will not cache a function that calls C through a ctypes pointer (the address changes
with every process: "uses dynamic globals"), so each process compiled FFCV's decode loop, the
resident loader's kernels and the region decoder's callers again: about 7 s per FFCV loader on
2 cores. Called by name, the symbol is resolved again whenever cached code is loaded.
"""
from __future__ import annotations

import ctypes

import llvmlite.binding as llvm
from numba import types


def declare(name: str, function, signature) -> types.ExternalFunction:
    """Register ``function`` (ctypes) under ``name`` and declare it to numba with ``signature``."""
    llvm.add_symbol(name, ctypes.cast(function, ctypes.c_void_p).value)
    return types.ExternalFunction(name, signature)
